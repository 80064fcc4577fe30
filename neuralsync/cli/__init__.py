"""``neuralsync`` command line: a thin adapter over ``UnifiedMemoryAPI``.

:mod:`.app` (the parser, the entry point and the memory commands), :mod:`.services`
(servers, tokens, installers), :mod:`.sync` (peers and sync), :mod:`.transfer`
(JSON Lines import and export), :mod:`.output` and :mod:`.progress` (what people see).
"""

from .app import main

__all__ = ["main"]
