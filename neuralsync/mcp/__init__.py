"""The MCP server (:mod:`.server`): the memory as tools for any MCP client, on the official MCP SDK.

Importing this package imports nothing heavy; the SDK is loaded by :mod:`.server`.
"""
