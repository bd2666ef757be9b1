"""What the service refuses, each with its HTTP status and a stable error code for clients.

Problems with the photo or the settings are the runtime's own errors (runtime/errors.py); app.py maps those.
"""

from __future__ import annotations


class ServiceError(Exception):
    status = 400
    code = "bad_request"
    headers: dict[str, str] = {}


class UploadTooLarge(ServiceError):
    status, code = 413, "upload_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class BadForm(ServiceError):
    """The multipart body is malformed, misses the face photo, or has unknown or repeated fields."""

    status, code = 422, "bad_form"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


class JobNotFound(ServiceError):
    status, code = 404, "not_found"


class NotFinished(ServiceError):
    """The job has no image (yet, or ever: it failed or was cancelled)."""

    status, code = 409, "no_image"


class QueueFull(ServiceError):
    status, code = 429, "queue_full"

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class NotReady(ServiceError):
    status, code = 503, "not_ready"

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


def job_error_code(exc: Exception) -> str:
    """The stable code a client sees for one of the runtime's errors (runtime/errors.py)."""
    from instantid_edge.runtime import errors

    codes = (
        (errors.NoFaceError, "no_face"),
        (errors.InputImageError, "bad_image"),
        (errors.ConfigError, "bad_settings"),
        (errors.NumericalError, "numerical_error"),
    )
    return next((code for kind, code in codes if isinstance(exc, kind)), "failed")
