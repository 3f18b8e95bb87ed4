"""POST/GET/DELETE /api/v1/documents over HTTP against the real stack (API, Celery workers, Redis)."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
import redis
from PIL import Image

from events.store import keyspace
from tests.pdfs import make_pdf
from tests.stack import wait_for

TEA = "Green tea is brewed with water at about 80 degrees Celsius for two minutes."
LIMIT = 10 * 1024 * 1024  # MAX_UPLOAD_BYTES's default, which the session's stack uses


def upload(client: httpx.Client, name: str, data: bytes, kind: str = "text/plain", status: int = 202) -> dict[str, Any]:
    resp = client.post("/api/v1/documents", files={"file": (name, data, kind)})
    assert resp.status_code == status, resp.text
    return resp.json()


def ready(client: httpx.Client, doc_id: str) -> dict[str, Any]:
    """The document once a worker has ingested it."""
    return wait_for(
        lambda: (d := client.get(f"/api/v1/documents/{doc_id}").json())["status"] != "processing" and d,
        timeout=30,
        what=f"document {doc_id} to be ingested",
    )


def test_upload_answers_202_then_the_document_becomes_ready_with_chunks(alice: httpx.Client, r) -> None:  # type: ignore[no-untyped-def]
    version = int(r.get(keyspace.docs_version(alice.user_id)) or 0)
    resp = alice.post("/api/v1/documents", files={"file": ("tea notes.txt", (TEA + "\n\n") * 40, "text/plain")})
    assert resp.status_code == 202, resp.text
    doc = resp.json()
    assert doc["id"].startswith("doc_") and resp.headers["location"] == f"/api/v1/documents/{doc['id']}"
    assert doc["status"] in ("processing", "ready") and doc["name"] == "tea notes.txt"
    assert doc["content_type"] == "text/plain" and doc["bytes"] == len((TEA + "\n\n") * 40)
    assert "user_id" not in doc and doc["created_at"] > 0
    done = ready(alice, doc["id"])
    assert done["status"] == "ready" and done["chunks"] > 1
    assert int(r.get(keyspace.docs_version(alice.user_id))) == version + 1  # the response cache's key moved
    listed = alice.get("/api/v1/documents").json()["documents"]
    assert [d["id"] for d in listed] == [doc["id"]]


def test_pdf_and_markdown_by_extension_are_parsed(alice: httpx.Client) -> None:
    pdf = make_pdf([["Quarterly report.", "Revenue grew by 12 percent."], ["Costs fell by 3 percent."]])
    doc = upload(alice, "report.pdf", pdf, "application/octet-stream")
    assert doc["content_type"] == "application/pdf"
    md = upload(alice, "notes.md", b"# Notes\n\n*Tea* is good.", "application/octet-stream")
    assert md["content_type"] == "text/markdown"
    assert ready(alice, doc["id"])["status"] == "ready" and ready(alice, md["id"])["status"] == "ready"


def test_a_damaged_pdf_is_accepted_then_failed_with_a_reason(alice: httpx.Client) -> None:
    doc = upload(alice, "broken.pdf", b"%PDF-1.7\n1 0 obj garbage", "application/pdf")
    done = ready(alice, doc["id"])
    assert done["status"] == "failed" and "cannot be read" in done["error"]


@pytest.mark.parametrize(
    ("name", "kind"),
    [("photo.png", "image/png"), ("cv.doc", "application/msword"), ("blob.bin", "application/octet-stream")],
)
def test_unsupported_types_answer_415_with_our_error_body(alice: httpx.Client, name: str, kind: str) -> None:
    resp = alice.post("/api/v1/documents", files={"file": (name, b"\x89PNG....", kind)})
    assert resp.status_code == 415
    body = resp.json()
    assert body["code"] == "unsupported_media_type" and "text/plain" in body["description"]


def test_a_body_that_is_not_a_form_answers_415_and_a_form_without_file_400(alice: httpx.Client) -> None:
    resp = alice.post("/api/v1/documents", json={"file": "hello"})
    assert resp.status_code == 415 and resp.json()["code"] == "unsupported_media_type"
    resp = alice.post("/api/v1/documents", data={"note": "no file"}, files={"other": ("a.txt", b"x", "text/plain")})
    assert resp.status_code == 400 and resp.json()["code"] == "missing_file"


def test_uploads_over_the_limit_answer_413_by_content_length_and_by_counting(alice: httpx.Client) -> None:
    big = b"a" * (LIMIT + 1)
    resp = alice.post("/api/v1/documents", files={"file": ("big.txt", big, "text/plain")})
    assert resp.status_code == 413 and resp.json()["code"] == "upload_too_large"

    def chunked():  # no Content-Length: the API must count while it reads
        boundary = b"--xyz"
        yield boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n'
        yield b"Content-Type: text/plain\r\n\r\n"
        for _ in range(11):
            yield b"b" * (1024 * 1024)
        yield b"\r\n" + boundary + b"--\r\n"

    resp = alice.post(
        "/api/v1/documents", content=chunked(), headers={"Content-Type": "multipart/form-data; boundary=xyz"}
    )
    assert resp.status_code == 413 and "MAX_UPLOAD_BYTES" in resp.json()["description"]
    assert alice.get("/api/v1/documents").json()["documents"] == []  # nothing was saved

    def padded():  # a small file, then a part that never ends: the parts around the file are counted too
        boundary = b"--xyz"
        yield boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nhello\r\n'
        yield boundary + b'\r\nContent-Disposition: form-data; name="padding"\r\n\r\n'
        for _ in range(11):
            yield b"p" * (1024 * 1024)
        yield b"\r\n" + boundary + b"--\r\n"

    resp = alice.post(
        "/api/v1/documents", content=padded(), headers={"Content-Type": "multipart/form-data; boundary=xyz"}
    )
    assert resp.status_code == 413 and resp.json()["code"] == "upload_too_large"
    assert alice.get("/api/v1/documents").json()["documents"] == []


def test_another_users_document_is_404_for_get_and_delete_and_absent_from_lists(client_for) -> None:  # type: ignore[no-untyped-def]
    alice, bob = client_for(), client_for()
    doc = upload(alice, "tea.txt", TEA.encode())
    assert bob.get(f"/api/v1/documents/{doc['id']}").status_code == 404
    resp = bob.delete(f"/api/v1/documents/{doc['id']}")
    assert resp.status_code == 404 and resp.json()["code"] == "document_not_found"
    assert bob.get("/api/v1/documents").json()["documents"] == []
    probe = bob.get("/api/v1/documents", params={"user_id": alice.user_id})  # as for another user's costs
    assert probe.status_code == 404 and probe.json()["code"] == "user_not_found"
    assert bob.get("/api/v1/documents", params={"user_id": bob.user_id}).json()["documents"] == []
    assert bob.get("/api/v1/documents", params={"all": "true"}).json()["documents"] == []
    assert alice.get(f"/api/v1/documents/{doc['id']}").status_code == 200  # still there
    assert bob.get("/api/v1/documents/doc_0123").status_code == 404


def test_delete_removes_the_document_and_bumps_the_version(alice: httpx.Client, r) -> None:  # type: ignore[no-untyped-def]
    doc = ready(alice, upload(alice, "tea.txt", TEA.encode())["id"])
    version = int(r.get(keyspace.docs_version(alice.user_id)))
    assert alice.delete(f"/api/v1/documents/{doc['id']}").status_code == 204
    assert int(r.get(keyspace.docs_version(alice.user_id))) == version + 1
    assert alice.get(f"/api/v1/documents/{doc['id']}").status_code == 404
    assert alice.delete(f"/api/v1/documents/{doc['id']}").status_code == 404
    assert not r.exists(keyspace.doc_chunks(alice.user_id, doc["id"]))
    actions = [e for e in r.xrange(keyspace.AUDIT_STREAM, "-", "+") if doc["id"] in str(e)]
    assert any("doc.upload" in str(e) for e in actions) and any("doc.delete" in str(e) for e in actions)


def test_readonly_may_list_but_not_upload_and_admin_sees_every_user(client_for) -> None:  # type: ignore[no-untyped-def]
    reader, admin, owner = client_for("readonly"), client_for("admin"), client_for()
    assert reader.get("/api/v1/documents").status_code == 200
    assert reader.post("/api/v1/documents", files={"file": ("a.txt", b"x", "text/plain")}).status_code == 403
    doc = upload(owner, "tea.txt", TEA.encode())
    everyone = admin.get("/api/v1/documents", params={"all": "true"}).json()["documents"]
    assert doc["id"] in {d["id"] for d in everyone}
    theirs = admin.get("/api/v1/documents", params={"user_id": owner.user_id}).json()["documents"]
    assert [(d["id"], d["user_id"]) for d in theirs] == [(doc["id"], owner.user_id)]
    assert admin.get(f"/api/v1/documents/{doc['id']}").json()["user_id"] == owner.user_id


def test_openapi_documents_the_upload_form_and_permissions(alice: httpx.Client) -> None:
    spec = alice.get("/api/v1/openapi.json").json()
    post = spec["paths"]["/api/v1/documents"]["post"]
    assert "multipart/form-data" in post["requestBody"]["content"] and post["x-permission"] == "docs:upload"
    assert spec["paths"]["/api/v1/documents/{doc_id}"]["delete"]["x-permission"] == "docs:upload"
    assert spec["paths"]["/api/v1/documents"]["get"]["x-permission"] == "docs:read"


def raw_form(part_headers: bytes, body: bytes = b"hello", closed: bool = True) -> bytes:
    """A multipart body with boundary XyZ and one part, its header lines given byte for byte."""
    return b"--XyZ\r\n" + part_headers + b"\r\n\r\n" + body + (b"\r\n--XyZ--\r\n" if closed else b"")


def png_1x1() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (1, 1)).save(out, "PNG")
    return out.getvalue()


PNG_1X1 = png_1x1()


@pytest.mark.parametrize("route", ["/api/v1/documents", "/api/v1/attachments"])
@pytest.mark.parametrize(
    "form",
    [
        raw_form(b'Content-Disposition: form-data; name="file"; filename="a\xff.txt"\r\nContent-Type: text/plain'),
        raw_form(b'Content-Disposition: form-data; name="file"; filename="a\xed\xb0\x80.txt"'),
        raw_form(b'Content-Disposition: form-data; name="fi\xffle"; filename="a.txt"'),
        raw_form(
            b'Content-Disposition: form-data; name="file"; filename="a.txt"\r\nContent-Type: text/plain; charset=\xff'
        ),
        raw_form(
            b'Content-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png',
            PNG_1X1,
            closed=False,
        ),
        raw_form(b'Content-Disposition: form-data; name="file"', b"abc", closed=False),
    ],
    ids=["filename-ff", "filename-surrogate", "name-ff", "content-type-ff", "truncated-image", "truncated-text"],
)
def test_forms_with_undecodable_part_headers_or_no_closing_boundary_answer_400_and_store_nothing(
    alice: httpx.Client,
    r: redis.Redis,
    route: str,
    form: bytes,
) -> None:
    before = len(alice.get("/api/v1/documents").json()["documents"])
    resp = alice.post(route, content=form, headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert resp.status_code == 400 and resp.json()["code"] == "malformed_form", resp.text
    assert len(alice.get("/api/v1/documents").json()["documents"]) == before
    assert not list(r.scan_iter(keyspace.attachment(alice.user_id, "*")))  # type: ignore[attr-defined]


def test_a_closed_raw_form_is_still_accepted(alice: httpx.Client) -> None:
    form = raw_form(b'Content-Disposition: form-data; name="file"; filename="a.txt"\r\nContent-Type: text/plain')
    resp = alice.post("/api/v1/documents", content=form, headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert resp.status_code == 202 and resp.json()["bytes"] == 5, resp.text


@pytest.mark.parametrize(("sent", "kept"), [(b"a\x00b\r.txt", "ab.txt"), (b"../../etc/passwd.txt", "passwd.txt")])
def test_attachments_and_documents_clean_a_file_name_alike(alice: httpx.Client, sent: bytes, kept: str) -> None:
    names = []
    for route, kind, data in [
        ("/api/v1/documents", b"text/plain", b"hello"),
        ("/api/v1/attachments", b"image/png", PNG_1X1),
    ]:
        headers = b'Content-Disposition: form-data; name="file"; filename="' + sent + b'"\r\nContent-Type: ' + kind
        form = raw_form(headers, data)
        resp = alice.post(route, content=form, headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
        assert resp.status_code in (201, 202), resp.text
        names.append(resp.json()["name"])
    assert names == [kept, kept]
