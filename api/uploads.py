"""Reading an upload: the `file` part of a multipart/form-data body, within MAX_UPLOAD_BYTES.

Shared by POST /api/v1/documents and POST /api/v1/attachments; each judges the file's type itself. 413 when
Content-Length already says the body is too large, or once the part's bytes pass the limit while being read (a
chunked body); 415 for a body that is not a form; 400 `malformed_form` for a form that cannot be read (part headers
that are not text, a body cut off before its closing boundary), `missing_file` for one without a `file` part.
"""

from __future__ import annotations

from dataclasses import dataclass

import falcon
import falcon.asgi

from api.body import printable
from api.http_errors import bad_request
from events.errors import ContentTooLargeError, UnsupportedMediaError

READ_SIZE = 64 * 1024
FORM_OVERHEAD = 64 * 1024  # multipart boundaries, part headers and small fields around the file


@dataclass(frozen=True)
class Upload:
    """The `file` part: its name and content type as the client sent them, and its bytes."""

    filename: str
    content_type: str
    data: bytes


def too_large(limit: int, what: str, advice: str) -> ContentTooLargeError:
    """413 for an upload of `what` ("An image") over `limit` bytes."""
    return ContentTooLargeError(f"{what} must be at most {limit} bytes (MAX_UPLOAD_BYTES); {advice}.")


def unsupported(problem: str, accepted: str) -> UnsupportedMediaError:
    """415 saying what is wrong and what is `accepted`."""
    return UnsupportedMediaError(f"{problem} {accepted}")


async def read_file_part(req: falcon.asgi.Request, limit: int, what: str, advice: str, accepted: str) -> Upload:
    """The form's `file` part, at most `limit` bytes; errors name `what` is uploaded and what is `accepted`.

    The whole form is read to its closing boundary, so a body cut off in the middle is refused, not stored short.
    """
    if req.content_length is not None and req.content_length > limit + FORM_OVERHEAD:
        raise too_large(limit, what, advice)
    if (req.content_type or "").split(";")[0].strip().lower() != falcon.MEDIA_MULTIPART:
        got = printable(req.content_type or "none")
        raise unsupported(f"Send it as multipart/form-data with a 'file' part (got {got}).", accepted)
    upload = None
    other = 0  # bytes of the parts that are not the file, read and dropped: bounded too (a chunked body has no
    # Content-Length to refuse it by)
    try:
        form = await req.get_media()
        async for part in form:
            if upload is not None or part.name != "file":
                while chunk := await part.stream.read(READ_SIZE):
                    other += len(chunk)
                    if other > FORM_OVERHEAD:
                        raise too_large(limit, what, advice)
                continue
            data = bytearray()
            while chunk := await part.stream.read(READ_SIZE):
                data += chunk
                if len(data) > limit:
                    raise too_large(limit, what, advice)
            claimed = (part.content_type or "").split(";")[0].strip().lower()
            upload = Upload(part.filename or "", claimed, bytes(data))
    except falcon.MediaMalformedError as ex:
        raise bad_request(f"The multipart form cannot be read: {ex.description}", code="malformed_form") from None
    except (UnicodeError, LookupError):
        # Falcon decodes a part's name, file name and Content-Type as it is asked for them.
        raise bad_request(
            "The multipart form cannot be read: a part's headers are not valid text; send its name, file name and "
            "Content-Type as UTF-8 (or percent-encoded).",
            code="malformed_form",
        ) from None
    if upload is None:
        raise bad_request(f"The form has no 'file' part. {accepted}", code="missing_file")
    return upload
