"""Integrations with AI command-line tools: MCP registration and the ``*-ns`` wrappers.

- :mod:`neuralsync.integrations.install`: ``install``/``uninstall`` register the
  ``neuralsync`` MCP server in Claude Code, Codex CLI and Gemini CLI configs.
- :mod:`neuralsync.integrations.wrap`: ``nswrap`` and the ``claude-ns``,
  ``codex-ns``, ``gemini-ns`` entry points.
- :mod:`neuralsync.integrations.neuralsync2`: reading a NeuralSync2 home for ``neuralsync import``.

Nothing is re-exported here: the submodule ``install`` and a function of the same
name would shadow each other, and keeping this package empty keeps it free to import.
"""
