"""The names of the bundled embedders, known without importing them (no numpy, no model).

A name identifies the vector space (model and dimensions); it is stored with the vectors and
the index, and compared when a store is opened, so a fresh process can tell whether its
embedder changed without loading anything. ``tests/test_embed.py`` checks these against the
names the embedders themselves report.
"""

from __future__ import annotations

MINILM_NAME = "minilm-l6-v2-q8:384"  # int8 kernels; "minilm-l6-v2-int8" was the float kernel


def known_name(spec: str) -> str | None:
    """The ``name`` of the embedder ``spec`` builds, for the bundled embedders whose name does not
    depend on a model or a server (None otherwise). Cheap: nothing is imported or loaded."""
    kind, _, rest = ((spec or "").strip() or "minilm").partition(":")
    parts = rest.split(":") if rest else []
    kind = kind.lower()
    if kind in ("minilm", "minilm-l6-v2-q8", "minilm-l6-v2-int8") and rest in ("", "384"):
        return MINILM_NAME
    if kind in ("wordllama", "hashing"):
        if len(parts) == 2 and parts[0] in ("l2_supercat", "v1"):
            parts = parts[1:]
        if len(parts) <= 1 and (not parts or parts[0].isdigit()):
            dims = parts[0] if parts else "256"
            return f"wordllama:l2_supercat:{dims}" if kind == "wordllama" else f"hashing:v1:{dims}"
    return None
