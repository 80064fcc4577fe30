"""A fake model endpoint on 127.0.0.1 for driving the real agent CLIs offline (issue 16).

It answers Anthropic's Messages API (``POST /v1/messages``, streamed or not) and
Gemini's ``generateContent`` / ``streamGenerateContent`` / ``countTokens`` and
OpenAI's Responses API (``POST /v1/responses``, streamed, as Codex CLI asks) with
one short text reply, and records every request body so a test can assert what
the CLI sent to the model. Anything else gets a 404 JSON error.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPLY = "ok from the fake model"


class FakeModel:
    """``with FakeModel() as model: ... model.url ... model.requests``."""

    def __init__(self, reply: str = REPLY) -> None:
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                with owner.lock:
                    owner.requests.append({"path": self.path, "body": body})
                if self.path.split("?")[0].endswith("/responses"):
                    self._responses(str(body.get("model") or "fake"))
                    return
                if ":" in self.path.split("?")[0].rsplit("/", 1)[-1]:  # Gemini: /v1beta/models/M:method
                    self._gemini(self.path.split("?")[0].rsplit(":", 1)[-1])
                    return
                if not self.path.startswith("/v1/messages") or self.path.startswith("/v1/messages/count_tokens"):
                    self._json(200 if "count_tokens" in self.path else 404,
                               {"input_tokens": 10} if "count_tokens" in self.path else
                               {"type": "error", "error": {"type": "not_found_error", "message": self.path}})
                    return
                if body.get("stream"):
                    self._stream(str(body.get("model") or "fake"))
                else:
                    self._json(200, _message(str(body.get("model") or "fake"), owner.reply))

            def do_GET(self) -> None:
                self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.end_headers()

            def _json(self, status: int, doc: dict[str, Any]) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _gemini(self, method: str) -> None:
                if method == "countTokens":
                    self._json(200, {"totalTokens": 10})
                    return
                answer = {"candidates": [{"content": {"role": "model", "parts": [{"text": owner.reply}]},
                                          "finishReason": "STOP", "index": 0}],
                          "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5,
                                            "totalTokenCount": 15}}
                if method != "streamGenerateContent":
                    self._json(200, answer)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.wfile.write(f"data: {json.dumps(answer)}\r\n\r\n".encode())
                self.wfile.flush()
                self.close_connection = True

            def _responses(self, model: str) -> None:
                item = {"type": "message", "id": "msg_fake", "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": owner.reply, "annotations": []}]}
                usage = {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5,
                         "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15}
                base = {"id": "resp_fake", "object": "response", "model": model, "created_at": 0}
                events = [
                    {"type": "response.created", "response": {**base, "status": "in_progress", "output": []}},
                    {"type": "response.output_item.added", "output_index": 0,
                     "item": {**item, "status": "in_progress", "content": []}},
                    {"type": "response.output_text.delta", "output_index": 0, "content_index": 0,
                     "item_id": "msg_fake", "delta": owner.reply},
                    {"type": "response.output_item.done", "output_index": 0, "item": item},
                    {"type": "response.completed", "response": {**base, "status": "completed", "output": [item],
                                                                "usage": usage}},
                ]
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for number, event in enumerate(events):
                    self.wfile.write(f"event: {event['type']}\ndata: {json.dumps({**event, 'sequence_number': number})}"
                                     "\n\n".encode())
                self.wfile.flush()
                self.close_connection = True

            def _stream(self, model: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                message = _message(model, owner.reply)
                events = [
                    ("message_start", {"type": "message_start", "message": {**message, "content": [],
                                                                            "stop_reason": None}}),
                    ("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}}),
                    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": owner.reply}}),
                    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                          "stop_sequence": None},
                                       "usage": {"output_tokens": 5}}),
                    ("message_stop", {"type": "message_stop"}),
                ]
                for name, data in events:
                    self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeModel:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def sent_strings(self) -> str:
        """Every string in every request the CLI sent to the messages route, one per line: what the
        model was given (system prompt, messages, reminders), unescaped."""
        with self.lock:
            bodies = [r["body"] for r in self.requests
                      if r["path"].startswith("/v1/messages") or ":" in r["path"] or "/responses" in r["path"]]
        return "\n".join(_strings(bodies))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _message(model: str, reply: str) -> dict[str, Any]:
    return {"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": reply}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 5}}
