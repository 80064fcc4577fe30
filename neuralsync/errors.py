"""One exception hierarchy for the whole package.

Transient failures (``StoreBusy``) are separate types from permanent ones
(``InvalidInput``, ``NotFound``, ``IntegrityError``) so callers can decide to
retry without parsing messages. Driver errors are translated at the storage
boundary and never leak as ``sqlite3`` exceptions.
"""

from __future__ import annotations


class NeuralSyncError(Exception):
    """Base class of every error neuralsync raises on purpose."""


class InvalidInput(NeuralSyncError, ValueError):
    """A caller-supplied value is malformed; ``field`` names which one."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class NotFound(NeuralSyncError, KeyError):
    """The requested memory (or other object) does not exist or is gone; ``field`` names the key asked by."""

    def __init__(self, what: str, field: str = "id") -> None:
        self.what = what
        self.field = field
        super().__init__(what)

    def __str__(self) -> str:  # KeyError would repr() the argument
        return f"not found: {self.what}"


class StoreBusy(NeuralSyncError):
    """The store stayed locked by another writer past the configured timeout (transient)."""


class StoreError(NeuralSyncError):
    """The database could not be opened or used (permissions, disk full, not a database)."""


class IntegrityError(NeuralSyncError):
    """Stored data failed a consistency check: bad hash, bad signature, broken log."""


class InvalidOp(IntegrityError):
    """An op is malformed or fails a validity rule; it is rejected, never applied."""


class SyncRejected(NeuralSyncError):
    """A peer's sync message was refused by rule (reason in the message; ``field`` names the part)."""

    def __init__(self, message: str, status: int = 400, field: str = "body") -> None:
        super().__init__(message)
        self.status = status
        self.field = field


class SyncUnavailable(NeuralSyncError):
    """A peer could not be reached or did not answer in time."""


class ServerUnavailable(NeuralSyncError):
    """The memory server could not be reached, or refused the request (its token); retry later."""


class DependencyMissing(NeuralSyncError):
    """An optional part (MCP SDK, HTTP server) is not installed; the message names the pip line."""


class EmbeddingUnavailable(NeuralSyncError):
    """The configured embedder cannot be loaded; the message says how to install it."""


class ConfigError(NeuralSyncError):
    """A configuration value or file is invalid."""
