"""A scripted OpenAI-compatible HTTP server on loopback.

It speaks enough of the Chat Completions API for `langchain_openai.ChatOpenAI` (and therefore
our real client code) to talk to it over a real socket. Answers are scripted per structured
output schema name (`GapReport`, `GroundedPrompt`, `Verdict`, `Intent`), taken from
`response_format.json_schema.name`, a forced tool call, or the schema title in JSON mode; plain
requests (the react policy's) are "text". Every request body is recorded so tests can assert
what the model was sent.

A scripted answer is a dict (sent as JSON content), a raw string (sent as content), or a reply
spec for plain requests: `{"tool_calls": [{"name": ..., "arguments": {...} or "raw"}],
"content": ..., "usage": {"prompt_tokens": n, "completion_tokens": m}}` (every key optional,
at least one of them given) answers with OpenAI tool calls and/or content and that usage.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_REPLY_KEYS = frozenset({"tool_calls", "content", "usage", "finish_reason"})


def _is_reply_spec(answer: Any) -> bool:
    """A reply spec (tool calls / content / usage), not a structured answer to send as JSON."""
    return (
        isinstance(answer, dict)
        and bool(answer)
        and set(answer) <= _REPLY_KEYS
        and ("tool_calls" in answer or "usage" in answer or "content" in answer)
    )


class ScriptedLLM:
    def __init__(self, models: tuple[str, ...] = ("scripted-llm", "scripted-vlm")) -> None:
        self.models = models
        self.script: dict[str, list[Any]] = defaultdict(list)
        self.requests: list[dict[str, Any]] = []
        self.hold: dict[str, threading.Event] = {}
        self.arrived: dict[str, threading.Event] = defaultdict(threading.Event)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- scripting ------------------------------------------------------------------------------
    def add(self, schema: str, *answers: Any) -> ScriptedLLM:
        """Queue answers for a schema; each is a dict (sent as JSON) or a raw string."""
        self.script[schema].extend(answers)
        return self

    def block(self, schema: str) -> threading.Event:
        """Requests for `schema` wait until the returned event is set (see `arrived`)."""
        event = threading.Event()
        self.hold[schema] = event
        return event

    def calls(self, schema: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["_schema"] == schema]

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> ScriptedLLM:
        self._thread.start()
        return self

    def stop(self) -> None:
        for event in self.hold.values():
            event.set()
        self._server.shutdown()
        self._server.server_close()

    # -- protocol -------------------------------------------------------------------------------
    @staticmethod
    def schema_name(body: dict[str, Any]) -> str:
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            return str(fmt["json_schema"]["name"])
        if fmt.get("type") == "json_object" and "schema" in fmt:
            return str(fmt["schema"].get("title", "json"))
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            return str(choice["function"]["name"])
        return "text"

    def _answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        schema = self.schema_name(body)
        with self._lock:
            self.requests.append({**body, "_schema": schema})
        self.arrived[schema].set()
        if schema in self.hold:
            self.hold[schema].wait(timeout=120)
        with self._lock:
            queue = self.script.get(schema) or []
            answer = queue.pop(0) if queue else None
        if answer is None:
            return 500, {"error": {"message": f"scripted server: no answer left for {schema}"}}
        usage = {"prompt_tokens": 10, "completion_tokens": 10}
        forced = isinstance(body.get("tool_choice"), dict)
        if not forced and _is_reply_spec(answer):
            usage.update(answer.get("usage") or {})
            message: dict[str, Any] = {"role": "assistant", "content": answer.get("content")}
            calls = answer.get("tool_calls") or []
            if calls:
                message["tool_calls"] = [
                    {
                        "id": c.get("id") or f"call_{len(self.requests)}_{i}",
                        "type": "function",
                        "function": {
                            "name": c["name"],
                            "arguments": c["arguments"]
                            if isinstance(c.get("arguments"), str)
                            else json.dumps(c.get("arguments") or {}),
                        },
                    }
                    for i, c in enumerate(calls)
                ]
            reason = answer.get("finish_reason")
            return 200, self._completion(body, message, usage, finish_reason=reason)
        content = answer if isinstance(answer, str) else json.dumps(answer)
        message = {"role": "assistant", "content": content}
        if forced:
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": schema, "arguments": content},
                    }
                ],
            }
        return 200, self._completion(body, message, usage)

    def _completion(
        self,
        body: dict[str, Any],
        message: dict[str, Any],
        usage: dict[str, int],
        finish_reason: str | None = None,
    ) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.models[0]),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": finish_reason
                    or ("tool_calls" if message.get("tool_calls") else "stop"),
                }
            ],
            "usage": {**usage, "total_tokens": sum(usage.values())},
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    data = [{"id": m, "object": "model", "owned_by": "test"} for m in outer.models]
                    self._send(200, {"object": "list", "data": data})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": "not found"}})
                    return
                status, payload = outer._answer(body)
                # the client may have been killed while we held its answer
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._send(status, payload)

        return Handler
