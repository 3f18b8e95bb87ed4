"""The `vision` agent end to end: images inline or uploaded, Pillow's facts offline, image parts to a real model."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from typing import Any

import httpx
import jsonschema
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from events import attachments
from events.attachments import IMAGE_TYPES
from tests.conftest import create_user
from tests.llmsim import SimControl
from tests.sse import read_events
from tests.stack import Stack, wait_for
from tests.test_security import audit_records
from workers.agents.imagefacts import colour_name

GPS = {1: "N", 2: (51.0, 28.0, 39.0), 3: "W", 4: (0.0, 7.0, 12.0)}


def halves_png(width: int = 64, height: int = 48) -> bytes:
    """A PNG whose left half is pure blue and right half pure red."""
    image = Image.new("RGB", (width, height), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, width // 2, height))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def camera_jpeg() -> bytes:
    """A green JPEG with a camera's EXIF, location included."""
    exif = Image.Exif()
    exif[0x010F] = "Acme"  # Make
    exif[0x0110] = "Snapper 3"  # Model
    exif[0x8825] = GPS  # GPSInfo
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (0, 128, 0)).save(out, "JPEG", exif=exif)
    return out.getvalue()


def inline(data: bytes, media_type: str = "image/png") -> dict[str, str]:
    return {"type": "image", "media_type": media_type, "data_base64": base64.b64encode(data).decode()}


def run(client: httpx.Client, query: str, attachments: list[dict[str, Any]]) -> tuple[dict[str, Any], list[Any]]:
    resp = client.post("/api/v1/jobs", json={"agent_type": "vision", "query": query, "attachments": attachments})
    assert resp.status_code == 202, resp.text
    job = client.get(f"/api/v1/jobs/{resp.json()['id']}", params={"wait": 30}).json()
    _, events = read_events(client, f"/api/v1/jobs/{job['id']}/events")
    return job, events


def upload(client: httpx.Client, data: bytes, name: str = "pic.png", kind: str = "image/png") -> httpx.Response:
    return client.post("/api/v1/attachments", files={"file": (name, data, kind)})


def encoded(fmt: str, size: tuple[int, int]) -> str:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(out, fmt)
    return base64.b64encode(out.getvalue()).decode()


@pytest.mark.parametrize("media_type", sorted(attachments.IMAGE_TYPES))
def test_real_images_of_every_type_fit_the_schema_and_the_check(media_type: str) -> None:
    schema = attachments.json_schema()
    for size in [(1, 1), (7, 3), (64, 48)]:
        item = {"type": "image", "media_type": media_type, "data_base64": encoded(IMAGE_TYPES[media_type], size)}
        jsonschema.validate(item, schema)
        jsonschema.validate({k: v for k, v in item.items() if k != "media_type"}, schema)
        assert attachments.parse(item, 10**6).media_type == media_type


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(attachments.IMAGE_TYPES)).flatmap(
        lambda t: st.tuples(st.just(t), st.from_regex(attachments.data_pattern([t]).replace("$", r"\Z")))
    )
)
def test_every_schema_valid_inline_image_passes_the_submit_check(pair: tuple[str, str]) -> None:
    media_type, data = pair
    assert attachments.parse({"type": "image", "media_type": media_type, "data_base64": data}, 10**7)


@pytest.mark.parametrize(
    "item",
    [
        {"type": "image", "media_type": "IMAGE/PNG", "data_base64": "iVBORw0KGgo="},
        {"type": "image", "media_type": None, "data_base64": "iVBORw0KGgo="},
        {"type": "image", "media_type": "image/png", "attachment_id": "att_" + "a" * 22},
        {"type": "image", "data_base64": "iVBORw0KGgo"},
        {"type": "image", "data_base64": "/9j/", "name": "n" * 201},
        {"type": "image", "data_base64": "/9j/", "attachment_id": "att_" + "a" * 22},
    ],
)
def test_what_the_schema_refuses_the_check_refuses(item: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(item, attachments.json_schema())
    with pytest.raises(attachments.AttachmentError):
        attachments.parse(item, 10**6)


def test_offline_vision_states_the_size_and_colours_of_an_inline_png(alice: httpx.Client) -> None:
    job, events = run(alice, "What is in this picture?", [inline(halves_png())])
    assert job["status"] == "succeeded", job
    assert "[offline model]" in job["result"] and "64x48 pixels" in job["result"] and "PNG" in job["result"]
    assert "blue #0000ff 50%" in job["result"] and "red #ff0000 50%" in job["result"]
    assert [e.event for e in events if e.event.startswith("tool_")] == ["tool_start", "tool_end"]
    assert next(e for e in events if e.event == "tool_end").data["data"]["ok"]


def test_an_uploaded_image_is_used_by_id_and_only_by_its_owner(
    alice: httpx.Client, stack: Stack, user_factory: Any
) -> None:
    resp = upload(alice, halves_png(30, 20))
    assert resp.status_code == 201, resp.text
    stored = resp.json()
    assert (
        stored["media_type"] == "image/png" and stored["bytes"] > 0 and resp.headers["location"].endswith(stored["id"])
    )
    assert alice.get(f"/api/v1/attachments/{stored['id']}").json() == stored
    job, _ = run(alice, "Describe it", [{"type": "image", "attachment_id": stored["id"]}])
    assert job["status"] == "succeeded" and "30x20 pixels" in job["result"], job

    _, key = user_factory("user")
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as mallory:
        assert mallory.get(f"/api/v1/attachments/{stored['id']}").status_code == 404
        theirs = mallory.post(
            "/api/v1/jobs",
            json={
                "agent_type": "vision",
                "query": "Describe it",
                "attachments": [{"type": "image", "attachment_id": stored["id"]}],
            },
        )
    assert theirs.status_code == 404 and theirs.json()["code"] == "attachment_not_found"  # refused at submit


def test_probing_another_users_attachment_is_audited_as_access_denied(
    alice: httpx.Client, stack: Stack, user_factory: Any
) -> None:
    stored = upload(alice, halves_png(30, 20)).json()
    mallory_id, key = user_factory("user")
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as mallory:
        assert mallory.get(f"/api/v1/attachments/{stored['id']}").status_code == 404
        item = {"type": "image", "attachment_id": stored["id"]}
        resp = mallory.post(
            "/api/v1/jobs", json={"agent_type": "vision", "query": "Describe it", "attachments": [item]}
        )
        assert resp.status_code == 404
    r = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
    probes = wait_for(
        lambda: (
            len(found := [e for e in audit_records(r) if e["actor"] == mallory_id and e["action"] == "access.denied"])
            >= 2
            and found
        ),
        timeout=10,
        what="two access.denied records",
    )
    assert [p["resource"] for p in probes] == [stored["id"], stored["id"]], probes


def test_exif_is_summarised_without_location(alice: httpx.Client) -> None:
    job, events = run(alice, "Which camera took this?", [inline(camera_jpeg(), "image/jpeg")])
    assert job["status"] == "succeeded", job
    assert "Make=Acme" in job["result"] and "Model=Snapper 3" in job["result"] and "40x30" in job["result"]
    assert "location (GPS) tags present but withheld" in job["result"]
    everything = json.dumps([e.data for e in events]) + job["result"]
    assert "GPSInfo" not in everything and "51.0" not in everything and "28.0" not in everything


@pytest.mark.parametrize(
    ("attachment", "says"),
    [
        (inline(b"plain text, not an image"), "not a PNG, JPEG, WebP or GIF image"),
        (inline(halves_png(), "image/jpeg"), "media_type says image/jpeg but the data is image/png"),
        ({"type": "image", "data_base64": "%%%"}, "not valid base64"),
        ({"type": "image"}, "exactly one of data_base64"),
        ({"type": "audio", "attachment_id": "att_x"}, 'type must be "image"'),
        ({"type": "image", "attachment_id": "../../etc"}, "attachment_id must be an id"),
        ({"type": "image", "url": "http://example.com/a.png"}, "unknown field 'url'"),
    ],
)
def test_a_bad_attachment_is_refused_with_a_clear_400(alice: httpx.Client, attachment: Any, says: str) -> None:
    resp = alice.post("/api/v1/jobs", json={"agent_type": "vision", "query": "what?", "attachments": [attachment]})
    assert resp.status_code == 400 and says in resp.json()["description"], resp.text
    assert "attachments" in resp.json()["description"]


def test_a_damaged_image_gives_a_clear_tool_error(alice: httpx.Client) -> None:
    damaged = halves_png()[:60]  # a PNG's signature and header, then nothing
    job, events = run(alice, "What is this?", [inline(damaged)])
    end = next(e for e in events if e.event == "tool_end").data["data"]
    assert not end["ok"] and "damaged and cannot be decoded" in end["result"]
    assert job["status"] == "succeeded" and "damaged and cannot be decoded" in job["result"]


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims `width`x`height` pixels (its pixel data is a 1x1 image's)."""
    real = halves_png(1, 1)
    ihdr = struct.pack(">II", width, height) + real[24:29]
    return real[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + real[33:]


def bomb_png() -> bytes:
    out = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(out, "PNG")  # 100 megapixels in about 12 KB
    return out.getvalue()


@pytest.mark.parametrize(
    ("image", "says"),
    [
        (png_claiming(100_000, 100_000), "decompression bomb"),
        (png_claiming(0, 0), "cannot be read"),  # Pillow refuses a header of no pixels
        (png_claiming(40_000, 1_001), "decompression bomb"),  # past MAX_PIXELS, under Pillow's own bound
        (bomb_png(), "decompression bomb"),
    ],
    ids=["10-gigapixel-claim", "no-pixels", "41-megapixels", "real-100-megapixels"],
)
def test_an_image_whose_header_is_unreadable_or_too_large_is_refused_at_upload(
    alice: httpx.Client, image: bytes, says: str
) -> None:
    """An upload is refused at once; the same bytes sent inline with a job are refused by the worker's tool
    (its own bound), since a JSON Schema can say an image's signature but not whether its header reads."""
    resp = upload(alice, image)
    assert resp.status_code == 415 and says in resp.json()["description"], resp.text
    _, events = run(alice, "What is this?", [inline(image)])
    end = next(e for e in events if e.event == "tool_end").data["data"]
    assert not end["ok"], end


def test_a_vision_job_without_an_image_fails_saying_how_to_attach_one(alice: httpx.Client) -> None:
    job, _ = run(alice, "What is in the picture?", [])
    assert job["status"] == "failed" and "needs an image" in job["error"]["message"]


def test_uploads_that_are_not_images_or_too_large_are_refused(alice: httpx.Client, stack: Stack) -> None:
    assert upload(alice, b"%PDF-1.4 not an image", "a.pdf", "application/pdf").status_code == 415
    assert alice.post("/api/v1/attachments", json={"file": "x"}).status_code == 415
    assert alice.post("/api/v1/attachments", files={"other": ("a.png", halves_png(), "image/png")}).status_code == 400
    limit = 10 * 1024 * 1024  # MAX_UPLOAD_BYTES's default, which the test stack keeps
    too_big = halves_png() + b"\0" * limit
    resp = upload(alice, too_big)
    assert resp.status_code == 413 and "MAX_UPLOAD_BYTES" in resp.json()["description"]
    _, key = create_user(stack.env["REDIS_URL"], "readonly")
    resp = httpx.post(
        f"{stack.url}/api/v1/attachments",
        files={"file": ("a.png", halves_png(), "image/png")},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status_code == 403


# ---- with a model (the simulator as the OpenAI-compatible service) ------------------------------------------------


def test_with_a_model_the_image_goes_as_an_image_url_part_and_the_tool_is_offered(
    sim_gpt4o: tuple[Stack, SimControl],
) -> None:
    stack, control = sim_gpt4o
    control.reset()
    control.script({"kind": "tool_call", "name": "image_facts", "arguments": {}})
    _, key = create_user(stack.env["REDIS_URL"])
    png = halves_png()
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        stored = upload(client, png).json()
        job, _ = run(client, "What colours?", [{"type": "image", "attachment_id": stored["id"]}])
    assert job["status"] == "succeeded", job
    assert "blue #0000ff 50%" in job["result"]  # the simulator echoes the tool's result
    first = control.requests()[0]["body"]
    assert first["model"] == "gpt-4o"
    user = next(m for m in first["messages"] if m["role"] == "user")
    assert user["content"][0] == {"type": "text", "text": "What colours?"}
    assert user["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()},
    }
    assert [t["function"]["name"] for t in first["tools"]] == ["image_facts"]


def test_post_stream_vision_takes_an_inline_image_and_streams_content(alice: httpx.Client) -> None:
    body = {"query": "Describe it", "attachments": [inline(halves_png(16, 8))]}
    with alice.stream("POST", "/api/v1/stream/vision", json=body) as resp:
        assert resp.status_code == 200
        text = resp.read().decode()
    envelopes = [json.loads(b[len("data: ") :]) for b in text.split("\n\n") if b.startswith("data: ")]
    streamed = "".join(e["content"] for e in envelopes if e["type"] == "token")
    assert envelopes[-1]["type"] == "done" and streamed == envelopes[-1]["data"]["result"]
    assert "16x8 pixels" in streamed


@pytest.mark.parametrize(
    ("rgb", "name"),
    [
        ((200, 40, 40), "red"),  # nearest-in-RGB would call this brown
        ((0, 0, 255), "blue"),
        ((0, 100, 0), "dark green"),
        ((139, 69, 19), "brown"),
        ((255, 192, 203), "pink"),
        ((255, 165, 0), "orange"),
        ((128, 128, 128), "grey"),
        ((5, 5, 5), "black"),
        ((250, 250, 250), "white"),
        ((150, 190, 255), "light blue"),
    ],
)
def test_colours_are_named_by_hue_and_lightness(rgb: tuple[int, int, int], name: str) -> None:
    assert colour_name(rgb) == name
