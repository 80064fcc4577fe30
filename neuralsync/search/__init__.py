"""Offline semantic search: embedders (``embed``) and a derived ANN index (``vector``).

Both modules import their heavy optional dependencies (wordllama, usearch,
sentence-transformers) lazily, so importing this package is always cheap.
"""
