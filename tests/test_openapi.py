"""The OpenAPI document describes every route; Swagger UI and ReDoc render it in a real browser."""

from __future__ import annotations

import re

import httpx
import pytest
from openapi_spec_validator import validate
from playwright.sync_api import expect, sync_playwright

from api.app import create_app
from api.openapi import route_table
from events.catalog import AGENT_TYPES
from settings import Settings
from tests.conftest import CHROMIUM, FLAGS
from tests.stack import Stack, base_env


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


def test_each_upload_route_documents_its_own_file_types_and_413_415(spec: dict) -> None:
    described = {}
    for path, types in [("/api/v1/documents", "application/pdf"), ("/api/v1/attachments", "image/png")]:
        op = spec["paths"][path]["post"]
        form = op["requestBody"]["content"]["multipart/form-data"]
        described[path] = form["schema"]["properties"]["file"]["description"]
        assert types in form["encoding"]["file"]["contentType"]
        assert "MAX_UPLOAD_BYTES" in op["responses"]["413"]["description"]
        assert "JSON" not in op["responses"]["415"]["description"]
    assert ".pdf" in described["/api/v1/documents"] and "PNG" in described["/api/v1/attachments"]
    assert ".pdf" not in described["/api/v1/attachments"]
    assert spec["paths"]["/api/v1/jobs"]["post"]["responses"]["415"]["description"] == "Not JSON"


def test_the_headers_the_api_checks_are_documented_with_their_shapes(spec: dict, alice: httpx.Client) -> None:
    def header(path: str, method: str, name: str) -> dict:
        params = spec["paths"][path][method]["x-request-headers"]
        return next(p for p in params if p["in"] == "header" and p["name"] == name)

    key = header("/api/v1/jobs", "post", "Idempotency-Key")["schema"]
    last = header("/api/v1/jobs/{job_id}/events", "get", "Last-Event-ID")["schema"]
    assert re.fullmatch(key["pattern"], "retry-1") and not re.fullmatch(key["pattern"], "has space")
    assert key["maxLength"] == 255 and not re.fullmatch(key["pattern"], "k" * 256)
    assert re.fullmatch(last["pattern"], "1700000000000-0") and not re.fullmatch(last["pattern"], "nope")
    resp = alice.post(
        "/api/v1/jobs", json={"agent_type": "query", "query": "hi"}, headers={"Idempotency-Key": "k" * 256}
    )
    assert resp.status_code == 400  # what the document says the API refuses, it refuses
