"""neuralsync: a persistent memory shared by AI command-line tools.

Public door: ``from neuralsync.unified_memory_api import UnifiedMemoryAPI, MemoryConfig``.
This module stays light so ``neuralsync --help`` starts fast; the API is
imported lazily on attribute access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .utils import now_ms

__version__ = "0.1.0"
__all__ = ["now_ms", "UnifiedMemoryAPI", "MemoryConfig", "__version__"]

if TYPE_CHECKING:
    from .unified_memory_api import MemoryConfig, UnifiedMemoryAPI


def __getattr__(name: str) -> Any:
    if name in ("UnifiedMemoryAPI", "MemoryConfig"):
        from . import unified_memory_api

        return getattr(unified_memory_api, name)
    raise AttributeError(name)
