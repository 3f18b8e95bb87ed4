"""The one base of the errors a request can run into, with the HTTP status and code that answer it.

Domain code raises these; the API maps every one of them in one place (api/http_errors.py), so no resource translates
errors by hand. Pure: no HTTP framework here, only the numbers and words an answer needs.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Mapping


class DomainError(Exception):
    """Raised when a request cannot be done as asked; `status` and `code` say how the API answers it.

    `figures` are extra fields of the error body (a 402's budget figures); `headers` go with the answer.
    """

    status: int = 400
    code: str = "invalid_request"

    def __init__(
        self,
        description: str,
        *,
        code: str | None = None,
        figures: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        if code is not None:
            self.code = code
        self.figures = dict(figures or {})
        self.headers = dict(headers or {})

    @property
    def title(self) -> str:
        """The status's reason phrase, e.g. 'Not Found'."""
        return HTTPStatus(self.status).phrase


class ContentTooLargeError(DomainError):
    """Raised when an upload is larger than the limit for its kind (MAX_UPLOAD_BYTES)."""

    status = 413
    code = "upload_too_large"


class UnsupportedMediaError(DomainError):
    """Raised when a body or an uploaded file is of a type this route does not read."""

    status = 415
    code = "unsupported_media_type"
