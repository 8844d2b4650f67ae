"""The error hierarchy; the API edge maps it once to Cloudflare's envelope."""

from __future__ import annotations


class RagError(Exception):
    """Base of every error this service raises on purpose."""

    status_code = 500
    code = 7000
    transient = False  # worth retrying later: a timeout, a 5xx, a rate limit, a lost connection

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if transient is not None:
            self.transient = transient


class InvalidRequest(RagError):
    """Bad input from an API caller or a CLI user."""

    status_code = 400
    code = 7001


class NotFound(RagError):
    status_code = 404
    code = 7002


class Unauthorized(RagError):
    status_code = 401
    code = 10000


class Forbidden(RagError):
    """A valid token whose scope does not cover the request."""

    status_code = 403
    code = 10001


class Conflict(RagError):
    status_code = 409
    code = 7003


class ClientGone(RagError):
    """The client closed the connection: nobody is left to read the response."""

    status_code = 499  # nginx's "client closed request"
    code = 7004


class SourceError(RagError):
    """The object source (folder, S3, R2) failed or refused an object."""

    status_code = 502
    code = 7010


class ObjectTooLarge(SourceError):
    status_code = 413
    code = 7011


class SyncInCooldown(RagError):
    """A sync asked too soon after the last one began, or while one runs or is queued (AI
    Search's 429 with code 7020); the message starts with `sync_in_cooldown`."""

    status_code = 429
    code = 7020

    def __init__(self, reason: str) -> None:
        super().__init__(f"sync_in_cooldown: {reason}")


class ExtractError(RagError):
    """A document's text could not be read (corrupt, encrypted, unsupported...)."""

    status_code = 422
    code = 7012  # 7020 is AI Search's sync_in_cooldown


class NoTextError(ExtractError):
    """The document is readable but holds no text: the item is skipped, not failed."""


class BackendError(RagError):
    """A model or index backend failed."""

    status_code = 502
    code = 7030


class UpstreamError(BackendError):
    """An upstream service (Workers AI, Vectorize, an answer server) failed or answered with
    an error. `message` holds what it said (for the log and the CLI); an API client sees only
    `summary`, since an upstream's text is not ours to pass on."""

    def __init__(self, message: str, *, summary: str, transient: bool | None = None) -> None:
        super().__init__(message, transient=transient)
        self.summary = summary


def public_message(exc: RagError) -> str:
    """What an API client is told of an error."""
    return exc.summary if isinstance(exc, UpstreamError) else exc.message


class RateLimited(BackendError):
    status_code = 429
    code = 7031
    transient = True


class IndexMismatch(BackendError):
    """Vectors of another model, pooling or dimension were offered to an index."""

    status_code = 409
    code = 7032
