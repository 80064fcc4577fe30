"""Replicas that trust each other and talk through the signed sync path minus the socket (not collected)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from neuralsync.errors import SyncRejected
from neuralsync.replication.protocol import Transport
from neuralsync.replication.signing import NONCE_HEADER, SIGNATURE_HEADER, sign_request, verify_reply
from neuralsync.unified_memory_api import UnifiedMemoryAPI


def introduce(apis: Mapping[str, UnifiedMemoryAPI]) -> None:
    """Every replica adds every other one as a peer (at a URL never dialled: transports are in-process)."""
    for name, api in apis.items():
        for other, peer in apis.items():
            if other != name:
                api.add_peer(other, f"http://{other}.invalid:8373", peer.identity())


def signed_transport(src: UnifiedMemoryAPI, dst: UnifiedMemoryAPI, target: str) -> Transport:
    """What ``HttpTransport`` does, minus the socket: sign, let ``dst`` serve, check the answer's signature."""

    def send(body: bytes) -> bytes:
        headers = sign_request(src.log.key, dst.log.author, body)
        status, answer, reply_headers = dst.replication.serve(headers, body)
        if status != 200:
            raise SyncRejected(f"{target} refused the sync ({status}): {json.loads(answer)['error']['message']}")
        verify_reply(dst.log.author, headers[NONCE_HEADER], answer, reply_headers.get(SIGNATURE_HEADER))
        return answer

    return send
