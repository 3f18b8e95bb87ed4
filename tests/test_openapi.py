"""The OpenAPI document describes every route; Swagger UI and ReDoc render it in a real browser."""

from __future__ import annotations

import httpx
import pytest
from openapi_spec_validator import validate
from playwright.sync_api import expect, sync_playwright

from api.app import create_app
from api.openapi import route_table
from events.catalog import AGENT_TYPES
from settings import Settings
from tests.stack import Stack, base_env
from tests.test_demo_browser import CHROMIUM, FLAGS


@pytest.fixture(scope="module")
def spec(stack: Stack) -> dict:
    resp = httpx.get(f"{stack.url}/api/v1/openapi.json")
    assert resp.status_code == 200
    return resp.json()


def test_the_document_is_valid_openapi_and_describes_every_route(spec: dict) -> None:
    validate(spec)
    app = create_app(Settings.from_env(base_env("redis://127.0.0.1:1/0")))
    served = {(path, method.lower()) for path, method, _, _ in route_table(app)}
    described = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert served == described
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op["summary"], (method, path)
            public = op["x-permission"] == "public"
            assert (op.get("security") == []) is public, (method, path)
            assert "401" in op["responses"] or public


def test_request_schemas_match_what_the_api_accepts(spec: dict, alice: httpx.Client) -> None:
    submit = spec["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert sorted(submit["required"]) == ["agent_type", "query"] and submit["additionalProperties"] is False
    agents = submit["properties"]["agent_type"]["enum"]
    assert agents == sorted(AGENT_TYPES) == ["code", "math", "query", "rag", "vision"]
    too_many = submit["properties"]["max_tokens"]["maximum"] + 1
    resp = alice.post("/api/v1/jobs", json={"agent_type": "query", "query": "hi", "max_tokens": too_many})
    assert resp.status_code == 400 and "max_tokens" in resp.json()["description"]


def test_swagger_ui_and_redoc_render_the_api(stack: Stack) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(f"{stack.url}/docs")
            expect(page.locator(".opblock-summary-path").first).to_be_visible(timeout=20_000)
            assert page.locator(".opblock").count() >= 30
            page.goto(f"{stack.url}/redoc")
            expect(page.get_by_text("Agentic job backend").first).to_be_visible(timeout=20_000)
        finally:
            browser.close()
