"""A fault-injecting OpenAI-compatible chat server for tests (standard library only).

In-process::

    with FakeOpenAIServer(latency_ms=100, faults=mixed_faults(0.3), seed=1) as server:
        run_chat_requests(..., EndpointConfig(base_url=server.base_url, ...), ...)
        server.requests_received

As a script::

    python tests/fake_openai_server.py --port 8000 --latency-ms 100 --fault-rate 0.3

`POST /v1/chat/completions` answers with content that is a pure function of the request's
messages (see `expected_content`), so tests can check every result. Faults are drawn from a
seeded RNG keyed on (seed, request content, how many times that content was seen), so which
attempt of which request fails does not depend on thread scheduling.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Fault kinds, in the fixed order used to map a uniform draw onto a fault.
FAULT_KINDS: tuple[str, ...] = (
    "rate_limit_0",  # 429 with Retry-After: 0
    "rate_limit_1",  # 429 with Retry-After: 1
    "server_error_500",
    "server_error_503",  # 503 with Retry-After: 0
    "stall",  # sleep past the client timeout, then drop the connection
    "malformed_json",  # 200 with a body that is not JSON
    "missing_choices",  # 200 with JSON lacking "choices"
    "empty_content",  # 200 with content ""
    "drop_connection",  # close the socket without any response
)


def mixed_faults(total: float) -> dict[str, float]:
    """Every fault kind, in equal shares adding up to `total`."""
    return dict.fromkeys(FAULT_KINDS, total / len(FAULT_KINDS))


def content_digest(messages: Sequence[Mapping[str, Any]]) -> str:
    """Identifies a request's content (what a client cache would key on, minus sampling)."""
    canonical = json.dumps(list(messages), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def expected_content(messages: Sequence[Mapping[str, Any]]) -> str:
    """The answer the server gives for `messages` (deterministic, echoes the last user turn)."""
    last_user = next(
        (str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    digest = hashlib.sha256(last_user.encode("utf-8")).hexdigest()[:12]
    echo = " ".join(last_user.split()[:6])
    return f"Rationale for {digest}: the history ({echo}) points towards the outcome."


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stalled handler threads must not delay shutdown
    request_queue_size = 1024  # bursts of concurrent connects must not be refused
    allow_reuse_address = True
    fake: FakeOpenAIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that gave up (timeouts) make writes fail; that is expected here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real inference servers
    # Without these, headers and body go out in two segments and Nagle + delayed ACK add
    # ~40 ms to every answer, which real servers (uvicorn) do not.
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024  # one write per response; flushed after each request
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output clean

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), headers)

    def _error(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        err = {"error": {"message": message, "type": "fake_error", "code": str(status)}}
        self._send_json(status, err, headers)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        fake = self.server.fake
        if self.path.rstrip("/") == "/v1/models":
            model = {"id": fake.model, "object": "model", "created": 0, "owned_by": "fake"}
            self._send_json(200, {"object": "list", "data": [model]})
        else:
            self._error(404, f"no route GET {self.path}")

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        fake = self.server.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route POST {self.path}")
            return
        try:
            body = json.loads(raw)
            messages = body["messages"]
        except (ValueError, KeyError, TypeError):
            self._error(400, "request body must be JSON with 'messages'")
            return
        auth = self.headers.get("Authorization", "")
        fault = fake._record(body, auth)
        try:
            self._answer(fake, body, messages, auth, fault)
        finally:
            fake._leave()

    def _answer(
        self, fake: FakeOpenAIServer, body: Any, messages: Any, auth: str, fault: str | None
    ) -> None:
        if fake.latency_s > 0:
            fake._stop.wait(fake.latency_s)

        if fake.require_api_key is not None and auth != f"Bearer {fake.require_api_key}":
            presented = auth.removeprefix("Bearer ")
            shown = presented if fake.echo_key_in_errors else presented[:3] + "***"
            self._error(401, f"Incorrect API key provided: {shown}.")
            return
        if fake.force_status is not None:
            self._error(fake.force_status, f"forced status {fake.force_status}")
            return

        if fault == "rate_limit_0":
            self._error(429, "rate limited", {"Retry-After": "0"})
        elif fault == "rate_limit_1":
            self._error(429, "rate limited", {"Retry-After": "1"})
        elif fault == "server_error_500":
            self._error(500, "internal error")
        elif fault == "server_error_503":
            self._error(503, "overloaded", {"Retry-After": "0"})
        elif fault == "stall":
            fake._stop.wait(fake.stall_s)
            self.close_connection = True  # the client has given up; just hang up
        elif fault == "malformed_json":
            self._send(200, b'{"id": "chatcmpl-broken", "choices": [{"message": {"con')
        elif fault == "drop_connection":
            self.close_connection = True  # no status line, no headers: the client sees EOF
        else:
            finish_reason = "stop"
            if fault == "empty_content":
                content = ""
            elif fake.responder is not None:
                content = fake.responder(body)
                if isinstance(content, tuple):  # (content, finish_reason)
                    content, finish_reason = content
            else:
                content = expected_content(messages)
            completion = fake._completion(body, content, finish_reason)
            if fault == "missing_choices":
                del completion["choices"]
            self._send_json(200, completion)
            if fault is None:
                with fake._lock:
                    fake.answered[content_digest(messages)] += 1


class FakeOpenAIServer:
    """In-process fake teacher endpoint on 127.0.0.1 (ephemeral port by default).

    faults: kind -> probability per request (kinds in FAULT_KINDS; they must sum to <= 1).
    max_faults_per_content: after this many faulted answers for the same content, always
        answer properly (bounds retries so fault tests cannot fail by bad luck).
    require_api_key: answer 401 unless "Authorization: Bearer <key>" matches.
    echo_key_in_errors: put the full presented key in the 401 message (a careless server),
        to prove the client scrubs it.
    force_status: answer every chat request with this HTTP status.
    responder: computes the answer's content from the request body (messages and sampling
        settings), in place of `expected_content`; lets tests play a teacher that reasons,
        predicts or fails quality control depending on the prompt and the seed. It may return
        (content, finish_reason) to play a cut-off answer ("length").
    answered: content_digest -> proper answers sent (faults not counted).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0.0,
        faults: Mapping[str, float] | None = None,
        seed: int = 0,
        stall_s: float = 3.0,
        max_faults_per_content: int | None = None,
        model: str = "fake-teacher",
        require_api_key: str | None = None,
        echo_key_in_errors: bool = False,
        force_status: int | None = None,
        responder: Callable[[dict[str, Any]], str | tuple[str, str]] | None = None,
    ) -> None:
        self.faults = dict(faults or {})
        unknown = set(self.faults) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        if sum(self.faults.values()) > 1.0 + 1e-9:
            raise ValueError("fault probabilities must sum to <= 1")
        self.latency_s = latency_ms / 1000.0
        self.seed = seed
        self.stall_s = stall_s
        self.max_faults_per_content = max_faults_per_content
        self.model = model
        self.require_api_key = require_api_key
        self.echo_key_in_errors = echo_key_in_errors
        self.force_status = force_status
        self.responder = responder

        self._lock = threading.Lock()
        self._stop = threading.Event()  # wakes sleeping handlers on shutdown
        self.requests_received = 0
        self.content_counts: Counter[str] = Counter()  # content_digest -> requests seen
        self.answered: Counter[str] = Counter()  # content_digest -> proper answers sent
        self.fault_counts: Counter[str] = Counter()  # fault kind -> times injected
        self.request_bodies: list[dict[str, Any]] = []
        self.seen_auth_headers: list[str] = []
        self._faulted: dict[str, int] = {}  # content_digest -> faults injected
        self._inflight = 0
        self.max_inflight = 0  # peak number of chat requests being handled at once

        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.fake = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self._httpd.server_address[0]}:{self.port}/v1"

    def _record(self, body: dict[str, Any], auth: str) -> str | None:
        """Count the request and decide its fault (None = answer properly)."""
        digest = content_digest(body.get("messages") or [])
        with self._lock:
            self.requests_received += 1
            self.request_bodies.append(body)
            self.seen_auth_headers.append(auth)
            self._inflight += 1
            self.max_inflight = max(self.max_inflight, self._inflight)
            seen_before = self.content_counts[digest]
            self.content_counts[digest] += 1
            faulted_before = self._faulted.get(digest, 0)
            cap = self.max_faults_per_content
            if cap is not None and faulted_before >= cap:
                return None
            draw = random.Random(f"{self.seed}|{digest}|{seen_before}").random()
            acc = 0.0
            for kind in FAULT_KINDS:
                acc += self.faults.get(kind, 0.0)
                if draw < acc:
                    self._faulted[digest] = faulted_before + 1
                    self.fault_counts[kind] += 1
                    return kind
            return None

    def _completion(
        self, body: dict[str, Any], content: str, finish_reason: str = "stop"
    ) -> dict[str, Any]:
        prompt_words = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        return {
            "id": f"chatcmpl-{hashlib.sha256(content.encode()).hexdigest()[:16]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_words,
                "completion_tokens": len(content.split()),
                "total_tokens": prompt_words + len(content.split()),
            },
        }

    def _leave(self) -> None:
        with self._lock:
            self._inflight -= 1

    def reset_counters(self) -> None:
        with self._lock:
            self.requests_received = 0
            self.content_counts.clear()
            self.answered.clear()
            self.fault_counts.clear()
            self.request_bodies.clear()
            self.seen_auth_headers.clear()
            self._faulted.clear()
            self.max_inflight = 0

    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-openai:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stall-s", type=float, default=3.0)
    parser.add_argument("--model", default="fake-teacher")
    parser.add_argument(
        "--fault-rate", type=float, default=0.0, help="total fault share, split over all kinds"
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND=P",
        help=f"one fault kind's share (repeatable); kinds: {', '.join(FAULT_KINDS)}",
    )
    parser.add_argument("--max-faults-per-content", type=int, default=None)
    parser.add_argument("--require-api-key", default=None)
    args = parser.parse_args(argv)

    faults = mixed_faults(args.fault_rate) if args.fault_rate else {}
    for item in args.fault:
        kind, _, share = item.partition("=")
        faults[kind] = float(share)
    server = FakeOpenAIServer(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        faults=faults,
        seed=args.seed,
        stall_s=args.stall_s,
        max_faults_per_content=args.max_faults_per_content,
        model=args.model,
        require_api_key=args.require_api_key,
    )
    server.start()
    print(f"fake OpenAI server on {server.base_url} (faults: {faults or 'none'})", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        c = server.fault_counts
        print(f"served {server.requests_received} chat requests; faults: {dict(c)}", flush=True)


if __name__ == "__main__":
    main()
