"""Routes of /api/v1/attachments: upload an image for a later job (`attachments: [{"type": "image",
"attachment_id": …}]`), and read back what was stored. An upload lives a day; it is its uploader's alone: another
user's id answers 404, like one that does not exist, and a job naming it fails to find it; both are audited as
`access.denied`.
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
from api.permissions import Permission
from api.uploads import read_file_part
from events import attachments
from events.documents.records import clean_name
from events.envelope import text_map
from events.store import keyspace
from settings import Settings

_META = ("id", "media_type", "bytes", "name", "created_at", "expires_at")
ACCEPTED = "Upload a PNG, JPEG, WebP or GIF image as the multipart part named 'file'."


async def read_image(req: falcon.asgi.Request, limit: int) -> tuple[str, str, bytes]:
    """(file name, media type, bytes) of the form's `file` part (api/uploads.py): 415 for anything but an image
    whose header we read, judged by its bytes, not its name."""
    upload = await read_file_part(req, limit, "An image", "send a smaller one", ACCEPTED)
    claimed = upload.content_type if upload.content_type in attachments.IMAGE_TYPES else None
    kind = attachments.check_image_bytes(upload.data, claimed)
    attachments.check_image_header(upload.data)
    return upload.filename, kind, upload.data


async def check_uploads(req: falcon.asgi.Request, redis: Any, audit: AuditLog, items: list[Any]) -> None:
    """At submit: 404 unless every `attachment_id` in `items` (already shape-checked) is an upload of the caller.

    The worker looks uploads up under the job owner's name too, so this only answers earlier and clearer. Uploads
    are keyed by their owner, so another user's cannot be told from a missing one: every miss is audited as
    `access.denied` with the id probed."""
    owner = principal_of(req).user_id
    for i, item in enumerate(items):
        attachment_id = item.get("attachment_id") if isinstance(item, dict) else None
        if attachment_id and not await redis.exists(keyspace.attachment(owner, attachment_id)):
            await audit.access_denied(req, attachment_id)
            raise not_found(
                f"attachments[{i}]: there is no upload {printable(attachment_id)!r} of yours (uploads expire after "
                "a day); upload the image with POST /api/v1/attachments.",
                code="attachment_not_found",
            )


def _view(record: dict[str, str]) -> dict[str, Any]:
    return {
        "id": record["id"],
        "type": "image",
        "media_type": record["media_type"],
        "bytes": int(record["bytes"]),
        "name": record.get("name", ""),
        "created_at": float(record["created_at"]),
        "expires_at": float(record["expires_at"]),
    }


class AttachmentsResource:
    """POST uploads an image (multipart/form-data, part `file`): 201 with its id for a job's `attachments`."""

    permissions = {"POST": Permission.JOBS_SUBMIT}

    def __init__(self, redis: Any, settings: Settings, audit: AuditLog, clock: Any) -> None:
        self.redis = redis
        self.settings = settings
        self.audit = audit
        self.clock = clock

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Store the image for a day under the uploader's name."""
        filename, kind, data = await read_image(req, self.settings.max_upload_bytes)
        user = principal_of(req).user_id
        now = self.clock()
        record = {
            "id": attachments.new_attachment_id(),
            "media_type": kind,
            "bytes": str(len(data)),
            "name": clean_name(filename, ""),
            "created_at": f"{now:.6f}",
            "expires_at": f"{now + attachments.ATTACHMENT_TTL_S:.6f}",
        }
        key = keyspace.attachment(user, record["id"])
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping={**record, "data": data})
        pipe.expire(key, attachments.ATTACHMENT_TTL_S)
        await pipe.execute()
        await self.audit.record(
            user, "attachment.upload", resource=record["id"], ip=client_ip(req), details={"bytes": len(data)}
        )
        resp.status = falcon.HTTP_201
        resp.location = f"/api/v1/attachments/{record['id']}"
        resp.media = _view(record)


class AttachmentResource:
    """GET what was stored for one of your uploads (not its bytes); another user's id answers 404."""

    permissions = {"GET": Permission.JOBS_READ}

    def __init__(self, redis: Any, audit: AuditLog) -> None:
        self.redis = redis
        self.audit = audit

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, attachment_id: str) -> None:
        """The upload's type, size, name and expiry."""
        user = principal_of(req).user_id
        values = []
        if attachments.ATTACHMENT_ID.match(attachment_id):
            values = await self.redis.hmget(keyspace.attachment(user, attachment_id), *_META)
            if values[0] is None:
                # Keyed by owner: another user's upload cannot be told from a missing one, so every miss is audited.
                await self.audit.access_denied(req, attachment_id)
        if not values or values[0] is None:
            raise not_found(
                f"There is no attachment {printable(attachment_id)!r} of yours; uploads expire after a day.",
                code="attachment_not_found",
            )
        resp.media = _view(text_map(dict(zip(_META, values, strict=True))))
