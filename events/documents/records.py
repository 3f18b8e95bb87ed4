"""A document's record as Redis holds it and as clients see it. Pure."""

from __future__ import annotations

import re
import uuid
from typing import Any, Mapping

from events.money.amounts import micros_to_usd

DOC_ID = re.compile(r"^doc_[0-9a-f]{32}$")
STATUSES = ("processing", "ready", "failed")
INGEST_TASK = "agentic.ingest_document"
DROP_VECTORS_TASK = "agentic.drop_document_vectors"
UPLOAD_TTL_S = 24 * 3600  # uploaded bytes wait this long for a worker
MAX_NAME_CHARS = 200


def new_doc_id() -> str:
    """A new document id."""
    return f"doc_{uuid.uuid4().hex}"


def clean_name(filename: str | None, doc_id: str) -> str:
    """A display name from the uploaded file's name: its last path part, printable, at most 200 characters."""
    name = re.split(r"[\\/]", filename or "")[-1]
    name = "".join(c for c in name if c.isprintable()).strip()
    return name[:MAX_NAME_CHARS] or doc_id


def view(record: Mapping[str, str]) -> dict[str, Any]:
    """The record as the API shows it."""
    shown: dict[str, Any] = {
        "id": record.get("id", ""),
        "name": record.get("name", ""),
        "content_type": record.get("content_type", ""),
        "bytes": int(record.get("bytes") or 0),
        "status": record.get("status", "processing"),
        "chunks": int(record.get("chunks") or 0),
        "created_at": float(record.get("created_at") or 0),
    }
    if record.get("ready_at"):
        shown["ready_at"] = float(record["ready_at"])
    if record.get("status") == "ready":
        shown["embedding_model"] = record.get("embedding_model", "")  # '' : searched by its words only
        shown["embedding_cost_usd"] = micros_to_usd(int(record.get("embedding_cost_micros") or 0))
    if record.get("embedding_error"):
        shown["warning"] = record["embedding_error"]
    if record.get("error"):
        shown["error"] = record["error"]
    if record.get("owner"):
        shown["user_id"] = record["owner"]
    return shown
