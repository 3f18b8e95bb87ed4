"""Routes of /api/v1/documents: upload (multipart), list, get and delete a user's documents for the `rag` agent.

An upload is saved with status `processing` and ingested by a worker (text extraction, chunking, embedding,
indexing), which makes it `ready` or `failed`. Another user's document answers 404, like one that does not exist.
"""

from __future__ import annotations

from typing import Any

import falcon
import falcon.asgi

from api.address import client_ip
from api.audit import AuditLog
from api.auth import principal_of
from api.body import printable
from api.http_errors import not_found
from api.permissions import Permission, allowed
from api.uploads import read_file_part, unsupported
from events.documents import records
from events.documents.document_store import DocumentStore
from events.documents.extract import MEDIA_TYPES, media_type
from settings import Settings

ACCEPTED = "Upload text/plain, text/markdown or application/pdf (.txt, .md or .pdf)."


async def read_upload(req: falcon.asgi.Request, limit: int) -> tuple[str, str, bytes]:
    """(file name, media type, bytes) of the form's `file` part (api/uploads.py): 415 for a type we do not read,
    by its declared type or its file name."""
    upload = await read_file_part(req, limit, "A document", "split it or raise the limit", ACCEPTED)
    kind = media_type(upload.content_type, upload.filename)
    if kind is None:
        raise unsupported(f"The file's type {printable(upload.content_type or 'none')} is not one we read.", ACCEPTED)
    return upload.filename, kind, upload.data


class DocumentsResource:
    """POST uploads a document (multipart/form-data, part `file`); GET lists yours (admins: ?all or ?user_id)."""

    permissions = {"POST": Permission.DOCS_UPLOAD, "GET": Permission.DOCS_READ}

    def __init__(self, store: DocumentStore, settings: Settings, audit: AuditLog, clock: Any) -> None:
        self.store = store
        self.settings = settings
        self.audit = audit
        self.clock = clock

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Upload a document: 202 with its record (status `processing` until a worker has indexed it)."""
        filename, kind, data = await read_upload(req, self.settings.max_upload_bytes)
        principal = principal_of(req)
        doc_id = records.new_doc_id()
        record = {
            "id": doc_id,
            "owner": principal.user_id,
            "name": records.clean_name(filename, doc_id),
            "content_type": kind,
            "bytes": str(len(data)),
            "status": "processing",
            "chunks": "0",
            "created_at": str(self.clock()),
        }
        await self.store.create(record, data)
        await self.audit.record(
            principal.user_id,
            "doc.upload",
            resource=doc_id,
            ip=client_ip(req),
            details={"name": record["name"], "content_type": kind, "bytes": len(data)},
        )
        resp.status = falcon.HTTP_202
        resp.location = f"/api/v1/documents/{doc_id}"
        resp.media = records.view({k: v for k, v in record.items() if k != "owner"})

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """List documents, newest first: ?limit= (1-100); admins ?all=true or ?user_id=."""
        principal, query = principal_of(req), req.context.query
        admin = allowed(principal.role, Permission.DOCS_READ_ALL)
        if query.user_id and query.user_id != principal.user_id and not admin:
            await self.audit.access_denied(req, f"documents of {query.user_id}")  # as another's costs answer
            raise not_found(f"There is no user {query.user_id!r} whose documents you can see.", code="user_not_found")
        if query.all and admin:
            found = await self.store.list(None, query.limit)
        else:
            found = await self.store.list(query.user_id or principal.user_id, query.limit)
        shown = [records.view(r if admin else {k: v for k, v in r.items() if k != "owner"}) for r in found]
        resp.media = {"documents": shown, "accepted_types": list(MEDIA_TYPES)}


class DocumentResource:
    """GET one document's record; DELETE removes it, its chunks and its vectors (gone from search at once)."""

    permissions = {"GET": Permission.DOCS_READ, "DELETE": Permission.DOCS_UPLOAD}

    def __init__(self, store: DocumentStore, audit: AuditLog) -> None:
        self.store = store
        self.audit = audit

    async def _visible(self, req: falcon.asgi.Request, doc_id: str) -> dict[str, str]:
        """The document if this request may see it; 404 otherwise (another user's is audited as access.denied)."""
        principal = principal_of(req)
        if records.DOC_ID.match(doc_id):
            owner = await self.store.owner(doc_id)
            if owner is not None and (owner == principal.user_id or allowed(principal.role, Permission.DOCS_READ_ALL)):
                record = await self.store.get(owner, doc_id)
                if record is not None:
                    return record
            elif owner is not None:
                await self.audit.access_denied(req, doc_id)
        raise not_found(f"There is no document {printable(doc_id)!r} that you can see.", code="document_not_found")

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, doc_id: str) -> None:
        """One document: name, type, size, status (processing, ready, failed), chunks."""
        record = await self._visible(req, doc_id)
        admin = allowed(principal_of(req).role, Permission.DOCS_READ_ALL)
        resp.media = records.view(record if admin else {k: v for k, v in record.items() if k != "owner"})

    async def on_delete(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, doc_id: str) -> None:
        """Delete a document: 204; the `rag` agent no longer finds it."""
        record = await self._visible(req, doc_id)
        await self.store.delete(record["owner"], doc_id)
        principal = principal_of(req)
        await self.audit.record(
            principal.user_id, "doc.delete", resource=doc_id, ip=client_ip(req), details={"owner": record["owner"]}
        )
        resp.status = falcon.HTTP_204
