"""Asking the store's running server instead of opening the store: the CLI's fast path for recall.

A fresh process that opens the store and searches it by meaning pays for numpy,
the vector index and the embedding model before it can answer; a server on the
same store has all of them loaded. When one is announced (see
:mod:`neuralsync.discovery`), ``neuralsync recall`` sends it the query over
loopback; when there is none, or it cannot answer, the CLI searches the store
itself. Bad input is refused by the server exactly as the facade refuses it.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..discovery import read_server_info, server_token
from ..errors import InvalidInput
from ..json_input import parse_json
from ..model import Memory

TIMEOUT_S = 10.0


def recall_via_server(home: Path, request: dict[str, Any]) -> list[Memory] | None:
    """The server's answer to ``POST /v1/recall`` with ``request``; None when no server can answer."""
    info = read_server_info(home)
    token = server_token(home) if info is not None else None
    if info is None or token is None:
        return None
    parts = urlsplit(info.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=TIMEOUT_S)
    try:
        conn.request("POST", "/v1/recall", body=json.dumps(request).encode("utf-8"),
                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        status, body = response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None  # gone or stuck: search locally
    finally:
        conn.close()
    try:
        answer = parse_json(body)  # one rule for JSON read from a socket, bounded
    except ValueError:  # InvalidInput is one
        return None
    if status == 422 and isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        error = answer["error"]
        raise InvalidInput(str(error.get("field") or "query"), str(error.get("message") or "invalid input"))
    if status != 200:
        return None
    return [Memory(**{**item, "tags": tuple(item["tags"])}) for item in answer["items"]]
