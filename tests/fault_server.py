"""A small fault-injecting OpenAI-compatible HTTP server (stdlib only) for the openai backend tests.

``FaultServer(script)`` serves ``POST /v1/chat/completions`` on 127.0.0.1 (a free port) from a
thread. Each request consumes the next entry of ``script`` (the last entry repeats):

* ``"ok"`` — a chat completion with ``n`` choices (``n`` from the request, or ``one_choice=True`` to
  answer one choice like servers that ignore ``n``), with logprobs;
* an int status (``429``, ``500``, ``503``, ``400``...) — an OpenAI-shaped error body;
* ``("sleep", seconds)`` — wait, then answer ``ok`` (a client timeout shorter than that fails);
* ``"garbage"`` — 200 with a non-JSON body; ``"empty"`` — 200 with ``{}`` (no choices);
* ``("reject", word)`` — 400 when the request body contains ``word`` (e.g. a guided-decoding
  field), else ``ok``.

``requests`` records every request (headers and JSON body) for assertions.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TURN = "Thought: I should search for it.\nAction: search[red shoes]"


def completion(body: dict[str, Any], n: int) -> dict[str, Any]:
    """An OpenAI chat.completion object with ``n`` identical-format choices and token logprobs."""
    tokens = ["Thought", ":", " I", " should", " search", "\n", "Action", ":", " search", "[red", " shoes", "]"]
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": TURN},
            "finish_reason": "stop",
            "logprobs": {"content": [{"token": t, "logprob": -0.5, "bytes": None, "top_logprobs": []} for t in tokens]},
        }
        for i in range(n)
    ]
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": choices,
        "usage": {"prompt_tokens": 42, "completion_tokens": len(tokens) * n, "total_tokens": 42 + len(tokens) * n},
    }


class FaultServer:
    """Context manager: ``with FaultServer(["ok"]) as srv: srv.base_url``."""

    def __init__(self, script: list[Any], *, one_choice: bool = False):
        self.script = list(script)
        self.one_choice = one_choice
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FaultServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def next_action(self) -> Any:
        with self._lock:
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, payload: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def do_GET(self) -> None:
                self._send(200, json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode())

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw or b"{}")
                with server._lock:
                    server.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                action = server.next_action()
                if isinstance(action, tuple) and action[0] == "sleep":
                    time.sleep(action[1])
                    action = "ok"
                if isinstance(action, tuple) and action[0] == "reject":
                    action = 400 if action[1] in raw.decode() else "ok"
                if action == "ok":
                    n = 1 if server.one_choice else int(body.get("n") or 1)
                    self._send(200, json.dumps(completion(body, n)).encode())
                elif action == "garbage":
                    self._send(200, b"<html>upstream proxy error: not json", "text/html")
                elif action == "empty":
                    self._send(200, b"{}")
                else:
                    error = {"error": {"message": f"injected fault {action}", "type": "fault", "code": action}}
                    self._send(int(action), json.dumps(error).encode())

        return Handler
