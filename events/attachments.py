"""Images a job carries in `attachments`: their two shapes, the types we accept, and the one check of both. Pure.

A job's attachment is either the image itself or a reference to an upload of its owner:

    {"type": "image", "media_type": "image/png", "data_base64": "iVBORw0KGgo…"}   (inside the JSON body's limit)
    {"type": "image", "attachment_id": "att_…"}                                   (from POST /api/v1/attachments)

The API checks the shape when a job is submitted; the worker decodes the same shape when it runs the job.
"""

from __future__ import annotations

import binascii
import io
import re
import secrets
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from PIL import Image, UnidentifiedImageError

from events.errors import UnsupportedMediaError

IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF"}
ATTACHMENT_ID = re.compile(r"^att_[A-Za-z0-9]{22}$")
ATTACHMENT_TTL_S = 24 * 3600  # an upload is for the jobs that follow it, not an archive
MAX_PIXELS = 40_000_000  # 40 megapixels: past a phone camera's output, far below a bomb's claim
_KEYS = {"type", "media_type", "data_base64", "attachment_id", "name"}
_ACCEPTED = "PNG, JPEG, WebP or GIF"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


# Base64 text whose bytes begin with each type's signature (what `sniff` checks), as JSON Schema patterns: the
# OpenAPI document then describes exactly the inline images the API accepts. Each prefix covers whole 4-character
# groups; tests check real images of every type against them.
_BASE64 = r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
SIGNATURE_BASE64 = {
    "image/png": r"iVBORw0KGg[o-r][A-Za-z0-9+/]",
    "image/jpeg": r"/9j/",
    "image/gif": r"R0lGOD[dl]h",
    "image/webp": r"UklGR[g-v][A-Za-z0-9+/]{4}[BFJNRVZdhlptx159]XRUJQ",
}


def data_pattern(media_types: Sequence[str]) -> str:
    """The pattern of `data_base64` for images of these types."""
    prefixes = "|".join(SIGNATURE_BASE64[t] for t in media_types)
    alone = "iVBORw0KGgo=|" if "image/png" in media_types else ""  # a PNG's 8-byte signature and nothing else
    return f"^(?:{alone}(?:{prefixes}){_BASE64})$"


def json_schema() -> dict[str, Any]:
    """One attachment as JSON Schema: an upload's id, or inline base64 of an image (with or without media_type)."""
    name = {"type": "string", "maxLength": 200}

    def inline(media_type: str | None) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "required": ["type", "data_base64"] + (["media_type"] if media_type else []),
            "properties": {
                "type": {"const": "image"},
                "data_base64": {
                    "type": "string",
                    "pattern": data_pattern([media_type] if media_type else list(IMAGE_TYPES)),
                    "contentEncoding": "base64",
                },
                "name": name,
            },
            "additionalProperties": False,
        }
        if media_type:
            schema["properties"]["media_type"] = {"const": media_type}
        return schema

    upload = {
        "type": "object",
        "required": ["type", "attachment_id"],
        "properties": {
            "type": {"const": "image"},
            "attachment_id": {"type": "string", "pattern": ATTACHMENT_ID.pattern},
            "name": name,
        },
        "additionalProperties": False,
    }
    return {
        "description": "An image: inline (PNG, JPEG, WebP or GIF as base64) or the id of an upload "
        "(POST /api/v1/attachments).",
        "anyOf": [upload, inline(None), *(inline(t) for t in IMAGE_TYPES)],
    }


class AttachmentError(ValueError):
    """Raised when an attachment is not an image of a type we accept, or is not in one of the two shapes."""


class ImageRefusedError(UnsupportedMediaError, AttachmentError):
    """Raised when bytes are not an image we can read: 415 for an upload, a 400 field error inside a job's body."""


@dataclass(frozen=True)
class InlineImage:
    """An image sent inside the job's body."""

    media_type: str
    data: bytes
    name: str = ""


@dataclass(frozen=True)
class UploadedImage:
    """A reference to an image its owner uploaded to POST /api/v1/attachments."""

    attachment_id: str
    name: str = ""


def new_attachment_id() -> str:
    """A fresh id: `att_` and 22 random base62 characters (about 131 bits)."""
    return "att_" + "".join(secrets.choice(_BASE62) for _ in range(22))


def sniff(data: bytes) -> str | None:
    """The image type the bytes themselves declare (their magic number), whatever the client said; else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def check_image_bytes(data: bytes, claimed: str | None = None) -> str:
    """The media type of `data`; raises AttachmentError if it is not an accepted image or not what was claimed."""
    found = sniff(data)
    if found is None:
        raise ImageRefusedError(f"the data is not a {_ACCEPTED} image")
    if claimed and claimed != found:
        raise ImageRefusedError(f"media_type says {claimed} but the data is {found}; send the right media_type")
    return found


def check_image_header(data: bytes) -> tuple[int, int]:
    """(width, height) from the image's header, without decoding its pixels; raises ImageRefusedError if the
    header cannot be read or claims no pixels or more than MAX_PIXELS (the bound the vision agent decodes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=list(IMAGE_TYPES.values())) as image:  # reads the header only
                width, height = image.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageRefusedError(
                f"the image claims more than {MAX_PIXELS:,} pixels (a possible decompression bomb); send a smaller one"
            ) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            raise ImageRefusedError(f"the image's header cannot be read as a {_ACCEPTED} image") from None
    if width <= 0 or height <= 0 or width * height > MAX_PIXELS:
        raise ImageRefusedError(
            f"the image claims {width}x{height} pixels; send one of 1 to {MAX_PIXELS:,} pixels"
            + (" (a possible decompression bomb)" if width * height > MAX_PIXELS else "")
        )
    return width, height


def parse(item: Any, max_bytes: int) -> InlineImage | UploadedImage:
    """One attachment in either shape; raises AttachmentError saying what is wrong and how to send it."""
    if not isinstance(item, Mapping):
        raise AttachmentError('must be an object like {"type": "image", "attachment_id": "att_…"}')
    unknown = sorted(set(item) - _KEYS)
    if unknown:
        raise AttachmentError(f"has unknown field {unknown[0]!r}; use type, media_type, data_base64, attachment_id")
    if item.get("type") != "image":
        raise AttachmentError('type must be "image" (the only kind of attachment an agent reads)')
    name = item.get("name", "")
    if not isinstance(name, str) or len(name) > 200:
        raise AttachmentError("name must be text of at most 200 characters")
    has_data, has_id = "data_base64" in item, "attachment_id" in item
    if has_data == has_id:
        raise AttachmentError("give exactly one of data_base64 (the image) and attachment_id (an upload)")
    if has_id:
        if "media_type" in item:
            raise AttachmentError("media_type goes with data_base64; an upload's type is known from its bytes")
        attachment_id = item["attachment_id"]
        if not isinstance(attachment_id, str) or not ATTACHMENT_ID.match(attachment_id):
            raise AttachmentError("attachment_id must be an id from POST /api/v1/attachments, like att_…")
        return UploadedImage(attachment_id, name)
    claimed = item.get("media_type")
    if "media_type" in item and (not isinstance(claimed, str) or claimed not in IMAGE_TYPES):
        raise AttachmentError(f"media_type must be one of {', '.join(IMAGE_TYPES)}")
    encoded = item["data_base64"]
    if not isinstance(encoded, str) or len(encoded) > (max_bytes * 4) // 3 + 4:
        raise AttachmentError(f"data_base64 must be base64 text of an image of at most {max_bytes} bytes")
    try:
        data = binascii.a2b_base64(encoded, strict_mode=True)
    except binascii.Error as ex:
        raise AttachmentError(f"data_base64 is not valid base64 ({ex})") from None
    return InlineImage(check_image_bytes(data, claimed), data, name)


def parse_all(items: Sequence[Any], max_bytes: int) -> list[InlineImage | UploadedImage]:
    """Every attachment of a job; the error names the attachment's position."""
    parsed = []
    for i, item in enumerate(items):
        try:
            parsed.append(parse(item, max_bytes))
        except AttachmentError as ex:
            raise AttachmentError(f"attachment {i}: {ex}") from None
    return parsed
