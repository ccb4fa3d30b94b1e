"""Exceptions that become JSON error responses at the HTTP edge.

Each carries its status code and a message meant for the client; the handlers
registered in ``backend.app`` turn them into ``{"error": ..., "status": ...}``.
Anything else becomes a 500 with a generic message, and the traceback goes to
the log only, never to the client.
"""

from __future__ import annotations


class APIError(Exception):
    """Base class: an error with an HTTP status and a message safe to show."""

    status_code = 500

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code

    def to_json(self) -> dict:
        """The response body: the message and the status, as every error of the API answers."""
        return {"error": self.message, "status": self.status_code}


class BadRequest(APIError):
    """The request body is malformed or a field has the wrong type."""

    status_code = 400


class Unauthorized(APIError):
    """Missing or wrong credentials. The message never says which."""

    status_code = 401

    def __init__(self) -> None:
        super().__init__("authentication required")


class Busy(APIError):
    """Every thread this worker lends to /predict is taken: try again shortly (``Retry-After``)."""

    status_code = 503


class ImageError(Exception):
    """A task's image is missing, refused, unreachable, undecodable or too large.

    ``reason`` is one of ``REASONS``: a small fixed set, so that /metrics can
    count failures by it (messages name files and hosts, too many to be labels).
    """

    REASONS = ("missing", "refused", "unreachable", "undecodable", "too_large")

    def __init__(self, message: str, reason: str = "unreachable") -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown image failure reason {reason!r}")
        super().__init__(message)
        self.reason = reason
