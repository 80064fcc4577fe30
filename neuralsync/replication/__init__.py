"""Replication between machines: Byzantine-tolerant sync of the op log with trusted peers.

:mod:`.wire` (messages, bounds, the Bloom filter), :mod:`.replica` (one store's
side: what to send, the one receive path), :mod:`.protocol` (client and server
rounds), :mod:`.peers` and :mod:`.signing` (who may talk, and how a request
proves it), :mod:`.transport` (HTTP), and :mod:`.service` (all of it for one store).
"""
