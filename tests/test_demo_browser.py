"""The demo page in a real browser (Debian's Chromium driven by Playwright): each agent, with uploads, streamed
by EventSource; screenshots go to each test's tmp dir."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Browser, expect

from tests.conftest import create_user
from tests.stack import Stack


def test_demo_page_submits_a_job_and_streams_it_with_event_source(
    browser: Browser, stack: Stack, tmp_path: Path
) -> None:
    _, key = create_user(stack.env["REDIS_URL"])
    page = browser.new_page()
    try:
        page.goto(f"{stack.url}/api/v1/stream/demo")
        page.wait_for_selector("#agent option", state="attached")
        page.fill("#key", key)
        page.select_option("#agent", "query")
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


def _halves_png() -> bytes:
    image = Image.new("RGB", (64, 48), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 32, 48))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


NOTE = b"The lighthouse keeper of Skerryvore was named Alan Stevenson. He built the tower in 1844.\n"
# agent, query, file to attach (name, type, bytes) or None, text the answer must hold
AGENT_RUNS = [
    ("query", "What is (12+30)*2?", None, "(12+30)*2 = 84"),
    ("math", "Solve x**2 - 4 = 0", None, "2"),
    ("code", "```python\nprint(6 * 7)\n```", None, "42"),
    ("rag", "Who was the lighthouse keeper of Skerryvore?", ("note.txt", "text/plain", NOTE), "Stevenson"),
    ("vision", "What colours are in this image?", ("halves.png", "image/png", _halves_png()), "64x48"),
]


@pytest.mark.parametrize(("agent", "query", "attachment", "expected"), AGENT_RUNS, ids=[r[0] for r in AGENT_RUNS])
def test_demo_page_runs_each_agent_with_tokens_tool_steps_and_cost(
    browser: Browser,
    stack: Stack,
    tmp_path: Path,
    agent: str,
    query: str,
    attachment: tuple[str, str, bytes] | None,
    expected: str,
) -> None:
    _, key = create_user(stack.env["REDIS_URL"])
    page = browser.new_page(viewport={"width": 1000, "height": 1100})
    try:
        page.goto(f"{stack.url}/api/v1/stream/demo")
        page.wait_for_selector(f"#agent option:text-is('{agent}')", state="attached")
        page.fill("#key", key)
        page.select_option("#agent", agent)
        if attachment is not None:
            name, mime, data = attachment
            page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": data}])
        page.fill("#query", query)
        page.click("#go")
        expect(page.locator("#status")).to_have_text(re.compile(r": done$"), timeout=60_000)
        assert expected in page.text_content("#answer")
        expect(page.locator("#steps li.ok").first).to_be_visible()
        expect(page.locator("#cost")).to_have_text(re.compile(r"^cost \$\d"))
        page.screenshot(path=str(tmp_path / f"demo-{agent}.png"), full_page=True)
    finally:
        page.close()


def test_demo_page_reports_a_refused_upload(browser: Browser, stack: Stack) -> None:
    _, key = create_user(stack.env["REDIS_URL"])
    page = browser.new_page()
    try:
        page.goto(f"{stack.url}/api/v1/stream/demo")
        page.wait_for_selector("#agent option", state="attached")
        page.fill("#key", key)
        page.select_option("#agent", "vision")
        page.set_input_files("#file", files=[{"name": "fake.png", "mimeType": "image/png", "buffer": b"not a png"}])
        page.click("#go")
        expect(page.locator("#status")).to_have_text(re.compile(r"^error: upload refused \(415\)"))
    finally:
        page.close()
