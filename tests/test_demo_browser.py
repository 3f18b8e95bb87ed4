"""The demo page in a real browser (Debian's Chromium driven by Playwright): EventSource streams a job."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from tests.conftest import create_user
from tests.stack import Stack

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


def test_demo_page_submits_a_job_and_streams_it_with_event_source(
    browser: Browser, stack: Stack, tmp_path: Path
) -> None:
    _, key = create_user(stack.env["REDIS_URL"])
    page = browser.new_page()
    try:
        page.goto(f"{stack.url}/api/v1/stream/demo")
        page.wait_for_selector("#agent option", state="attached")
        page.fill("#key", key)
        page.fill("#query", "What is (12+30)*2?")
        page.click("#go")
        expect(page.locator("#status")).to_have_text(re.compile(r": done$"), timeout=20_000)
        assert "(12+30)*2 = 84" in page.text_content("#answer")
        log = page.text_content("#log")
        assert " start " in log and " token " in log and " tool_end " in log
        page.screenshot(path=str(tmp_path / "demo.png"))
    finally:
        page.close()


def test_demo_page_shows_the_error_for_a_bad_key(browser: Browser, stack: Stack) -> None:
    page = browser.new_page()
    try:
        page.goto(f"{stack.url}/api/v1/stream/demo")
        page.fill("#key", "sk_live_wrong")
        page.click("#go")
        expect(page.locator("#status")).to_have_text(re.compile(r"^error 401"))
    finally:
        page.close()
