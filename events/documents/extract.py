"""Which uploads we accept, and their text: plain text, Markdown and PDF (through pypdf). Pure."""

from __future__ import annotations

import io
import logging

PLAIN, MARKDOWN, PDF = "text/plain", "text/markdown", "application/pdf"
MEDIA_TYPES = (PLAIN, MARKDOWN, PDF)
EXTENSIONS = {".txt": PLAIN, ".text": PLAIN, ".md": MARKDOWN, ".markdown": MARKDOWN, ".pdf": PDF}
# What browsers and curl send for files they cannot name: the extension decides then.
GENERIC = {"", "application/octet-stream", "binary/octet-stream"}


class ExtractError(ValueError):
    """Raised when an upload's text cannot be read (a damaged PDF, text that is not UTF-8)."""


def media_type(content_type: str | None, filename: str | None) -> str | None:
    """The media type we will read the upload as, or None when it is not one we accept.

    The part's content type decides; a generic one (application/octet-stream, none) defers to the extension.
    """
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared in ("text/x-markdown",):
        declared = MARKDOWN
    if declared in MEDIA_TYPES:
        return declared
    if declared in GENERIC:
        name = (filename or "").lower()
        for extension, kind in EXTENSIONS.items():
            if name.endswith(extension):
                return kind
    return None


def extract_text(data: bytes, kind: str) -> str:
    """The text of an upload of media type `kind` (one of MEDIA_TYPES)."""
    if kind == PDF:
        return _pdf_text(data)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as ex:
        raise ExtractError(f"The file is not UTF-8 text (byte {ex.start} is not valid); save it as UTF-8.") from None


def _pdf_text(data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # damaged-but-readable files warn on every page
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise ExtractError("The PDF is encrypted; upload a copy without a password.")
        pages = [page.extract_text() or "" for page in reader.pages]
    except ExtractError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as ex:
        raise ExtractError(f"The PDF cannot be read ({ex}); check that the file is a complete PDF.") from ex
    return "\n\n".join(p.strip() for p in pages if p.strip())
