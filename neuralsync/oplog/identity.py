"""This replica's Ed25519 identity: generated on first open, stored mode 0600."""

from __future__ import annotations

import os
import time
from pathlib import Path

import nacl.signing

from ..errors import ConfigError

KEY_BYTES = 32


def load_or_create_key(path: Path) -> nacl.signing.SigningKey:
    """Return the signing key at ``path``, creating it atomically if absent.

    Several processes may open a new store at once: the key is written to a
    private temporary file and hard-linked into place, so exactly one key wins
    and no process ever reads a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(50):
        if path.exists():
            return _read_key(path)
        _try_create(path)
    raise ConfigError(f"could not create or read the identity key at {path}")


def _try_create(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, nacl.signing.SigningKey.generate().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process won the race; its key is used
    finally:
        tmp.unlink(missing_ok=True)


def _read_key(path: Path) -> nacl.signing.SigningKey:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"identity key {path} is readable by others (mode {mode:o}); chmod 600 it")
    raw = path.read_bytes()
    if len(raw) != KEY_BYTES:
        raise ConfigError(f"identity key {path} is {len(raw)} bytes, expected {KEY_BYTES}")
    return nacl.signing.SigningKey(raw)
