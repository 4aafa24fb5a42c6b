"""Robust execution of chat-completion requests against an OpenAI-compatible teacher endpoint.

This module knows nothing about patients or prompts: callers hand it `ChatRequest`s and get
`ChatResult`s back. What it does guarantee:

* **PHI guard** - requests only go to loopback / private-network hosts unless the host is
  explicitly allow-listed (`teacher.allowed_hosts`), and redirects are never followed.
* **Explicit sampling** - temperature, top_p, max_tokens and seed are sent with every request,
  because servers silently apply their own defaults otherwise.
* **Resumability** - every completed request is appended to a JSONL cache and fsync'ed at once,
  so a killed run loses at most the requests in flight and a rerun only sends what is missing.
* **Own retry loop** - exponential backoff with full jitter on 429/5xx/timeouts/connection
  errors/malformed or empty responses/validator rejections, honouring `Retry-After`; the SDK's
  internal retries are disabled so every attempt is counted.
* **Key secrecy** - the API key is read from an environment variable at call time, passed only
  to the HTTP client, and scrubbed from every message this module produces.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.utils
import hashlib
import ipaddress
import json
import logging
import math
import os
import random
import ssl
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx2
import openai
from tqdm import tqdm

__all__ = [
    "ChatRequest",
    "ChatResult",
    "EndpointConfig",
    "PHIGuardError",
    "ResponseCache",
    "TeacherConfigError",
    "TeacherError",
    "UsageSummary",
    "cache_key",
    "check_phi_guard",
    "run_chat_requests",
]

logger = logging.getLogger("rationale_bench.teacher.generate")

# Local servers (vLLM, llama.cpp) ignore the key, but the SDK insists on a non-empty one.
DUMMY_API_KEY = "not-needed"

_T = TypeVar("_T")

# Connections per HTTP pool (see _Run.run_all); requests beyond it use further pools.
_CONNECTIONS_PER_POOL = 16

# Networks that never leave the site: loopback, RFC 1918, unique-local and link-local.
_SAFE_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class TeacherError(RuntimeError):
    """A request (or the whole run) failed for good; completed results are already cached."""

    def __init__(
        self,
        message: str,
        *,
        request_key: str | None = None,
        last_error: str | None = None,
        failed_keys: Sequence[str] = (),
        fatal: bool = False,
    ) -> None:
        super().__init__(message)
        self.request_key = request_key
        self.last_error = last_error
        self.failed_keys = tuple(failed_keys)
        # Every request would hit this error (401/403/404/redirect): another round cannot help.
        self.fatal = fatal
        self.usage: UsageSummary | None = None  # what the failed run sent, for the caller's sums


class TeacherConfigError(TeacherError, ValueError):
    """The endpoint configuration cannot work (e.g. the API key variable is unset)."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, fatal=True, **kwargs)


class PHIGuardError(ValueError):
    """The teacher endpoint is not a host patient data may be sent to."""


# --------------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointConfig:
    """Where and how to call the teacher. Holds the *name* of the key variable, never the key."""

    base_url: str
    model: str
    api_key_env: str | None
    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None
    concurrency: int = 16
    request_timeout_s: float = 60
    max_attempts: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    allowed_hosts: tuple[str, ...] = ()
    price_per_1k_prompt: float | None = None
    price_per_1k_completion: float | None = None

    def __post_init__(self) -> None:
        # Configs arrive from YAML as lists; keep the dataclass hashable and immutable.
        object.__setattr__(self, "allowed_hosts", tuple(self.allowed_hosts))
        if self.concurrency < 1:
            raise ValueError(f"teacher.concurrency must be >= 1, got {self.concurrency}")
        if self.max_attempts < 1:
            raise ValueError(f"teacher.openai.http_attempts must be >= 1, got {self.max_attempts}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"teacher.request_timeout_s must be > 0, got {self.request_timeout_s}")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0:
            raise ValueError("teacher.backoff_base_s and teacher.backoff_max_s must be >= 0")
        if self.max_tokens < 1:
            raise ValueError(f"teacher.max_tokens must be >= 1, got {self.max_tokens}")

    def sampling(self) -> dict[str, Any]:
        """The sampling settings sent explicitly with every request (and part of the cache key)."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class ChatRequest:
    """One chat request; `key` is the caller's id (e.g. subject id + style) for the result."""

    key: str
    messages: tuple[dict[str, str], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(self.messages))
        if not self.messages:
            raise ValueError(f"ChatRequest {self.key!r} has no messages")
        for m in self.messages:
            if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
                raise ValueError(f"ChatRequest {self.key!r}: every message needs a 'role' string")
            if not isinstance(m.get("content"), str):
                raise ValueError(
                    f"ChatRequest {self.key!r}: every message needs a 'content' string"
                )


@dataclass(frozen=True)
class ChatResult:
    """The teacher's answer to one `ChatRequest`."""

    key: str
    content: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cache_key: str
    from_cache: bool
    attempts: int  # HTTP attempts made in this run (0 for a cache hit)
    model: str  # as reported by the server
    sampling: dict[str, Any] = field(default_factory=dict)


@dataclass
class UsageSummary:
    """What a run cost. Tokens and cost cover responses received in this run (not cache hits)."""

    requests_sent: int = 0  # HTTP attempts, retries included
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0  # failed attempts (retried or not)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# PHI guard
# --------------------------------------------------------------------------------------------


def _normalise_host(host: str) -> str:
    host = host.strip().lower()
    if "://" in host:  # tolerate a URL in teacher.allowed_hosts
        host = urlsplit(host).hostname or host
    host = host.rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host))  # canonical form, so "::0001" matches "::1"
    return host


def _is_safe_ip(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is really 10.0.0.1
    return any(ip in net for net in _SAFE_NETWORKS if net.version == ip.version)


def check_phi_guard(base_url: str, allowed_hosts: Sequence[str]) -> None:
    """Refuse endpoints outside loopback/private networks unless explicitly allow-listed.

    Hostnames other than "localhost" are refused unless allow-listed; DNS is deliberately not
    consulted because what a name resolves to can change between this check and the request.
    """
    try:
        parts = urlsplit(base_url)
        host = parts.hostname
        _ = parts.port  # raises on a malformed port
    except ValueError as exc:
        raise PHIGuardError(f"teacher.base_url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise PHIGuardError(
            "teacher.base_url must be an http:// or https:// URL with a host, "
            f"e.g. http://127.0.0.1:8000/v1 (got scheme {parts.scheme!r}, host {host!r})"
        )
    host = _normalise_host(host)
    if host == "localhost" or _is_safe_ip(host):
        return
    if host in {_normalise_host(h) for h in allowed_hosts}:
        logger.info(
            "PHI guard: %s is not a local address but is listed in teacher.allowed_hosts", host
        )
        return
    kind = "hostname" if not _is_ip(host) else "public IP address"
    raise PHIGuardError(
        f"Refusing to send patient data (protected health information) to teacher host {host!r}: "
        f"it is a {kind}, not loopback (127.0.0.0/8, ::1, localhost) or a private-network "
        "address (10/8, 172.16/12, 192.168/16, fc00::/7, link-local), and it is not in "
        "teacher.allowed_hosts. Hostnames are never resolved to decide this. If your data-use "
        "agreement covers this endpoint, add it to the config: "
        f"teacher.allowed_hosts: [{host!r}]"
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _redacted_url(base_url: str) -> str:
    """scheme://host:port/path only - drops any user:password@ and query string."""
    try:
        parts = urlsplit(base_url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable base_url>"
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def cache_key(
    model: str, messages: Sequence[Mapping[str, Any]], sampling: Mapping[str, Any]
) -> str:
    """sha256 (hex) of the canonical JSON of everything that determines the answer."""
    payload = {
        "model": model,
        "messages": [dict(m) for m in messages],
        "sampling": dict(sampling),
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _cache_record(raw: bytes) -> dict[str, Any]:
    """One line of a cache file as a record; ValueError when it is not one (JSONDecodeError
    and UnicodeDecodeError included)."""
    rec = json.loads(raw)
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    if not isinstance(rec.get("cache_key"), str):
        raise ValueError("no cache_key")
    if not isinstance(rec.get("content"), str):
        raise ValueError("no content")
    return rec


class ResponseCache:
    """Append-only JSONL cache of completed requests, durable after every `put`.

    A record holds only the answer (content, finish_reason, usage, model, sampling, created);
    never the API key, request headers or the prompt itself. When a key appears twice the last
    record wins (that is how a regenerated answer replaces a rejected one).
    """

    def __init__(self, path: Path | str, read_also: Sequence[Path | str] = ()) -> None:
        self.path = Path(path)
        self.skipped_lines = 0  # unparseable lines, e.g. a line cut short by SIGKILL
        self._records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        # Other shards' caches (read only): answers paid for under another shard layout are
        # reused rather than bought again. Our own file loads last, so its records win.
        for other in read_also:
            if Path(other).resolve() != self.path.resolve():
                self._load(Path(other))
        self._load(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab")  # noqa: SIM115 - kept open for the cache's lifetime
        # A truncated last line has no newline; start the next record on a fresh line so it
        # is not glued onto the garbage and lost too.
        if self._fh.tell() > 0 and not self._ends_with_newline():
            self._fh.write(b"\n")
            self._fh.flush()

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def _load(self, path: Path) -> None:
        if not path.exists():
            return
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    rec = _cache_record(raw)
                except ValueError as exc:
                    self.skipped_lines += 1
                    logger.warning(
                        "teacher cache %s: skipping unreadable line %d (%s); the request will "
                        "be sent again",
                        path,
                        lineno,
                        type(exc).__name__,
                    )
                    continue
                self._records[rec["cache_key"]] = rec

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored record for `key` (a copy), or None."""
        rec = self._records.get(key)
        return dict(rec) if rec is not None else None

    def put_many(self, results: Sequence[ChatResult]) -> None:
        """Append records, flush and fsync once before returning (group commit)."""
        records = [self._record(r) for r in results]
        data = b"".join(
            (json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
            for rec in records
        )
        with self._lock:
            self._fh.write(data)
            self._fh.flush()
            os.fsync(self._fh.fileno())
            for rec in records:
                self._records[rec["cache_key"]] = rec

    @staticmethod
    def _record(result: ChatResult) -> dict[str, Any]:
        return {
            "cache_key": result.cache_key,
            "content": result.content,
            "finish_reason": result.finish_reason,
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
            },
            "model": result.model,
            "sampling": dict(result.sampling),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Retry machinery
# --------------------------------------------------------------------------------------------


class _AttemptFailed(Exception):
    """One attempt failed. `retryable=False` ends the request; `fatal=True` ends the run."""

    def __init__(
        self,
        reason: str,
        *,
        retryable: bool = True,
        fatal: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.fatal = fatal
        self.retry_after = retry_after


class _Stopped(Exception):
    """The run is stopping; this request was not sent."""


class _RequestFailed(Exception):
    def __init__(self, cache_key_: str, request_key: str, reason: str, attempts: int, fatal: bool):
        super().__init__(reason)
        self.cache_key = cache_key_
        self.request_key = request_key
        self.reason = reason
        self.attempts = attempts
        self.fatal = fatal


def _parse_retry_after(headers: Mapping[str, str] | None, cap_s: float) -> float | None:
    """Seconds to wait from Retry-After(-ms) - seconds or an HTTP date - capped at `cap_s`."""
    if not headers:
        return None
    delay: float | None = None
    ms = headers.get("retry-after-ms")
    value = headers.get("retry-after")
    if ms is not None:
        with contextlib.suppress(ValueError):
            delay = float(ms) / 1000.0
    if delay is None and value is not None:
        try:
            delay = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            delay = (when - datetime.now(UTC)).total_seconds()
    if delay is None or math.isnan(delay):
        return None
    return min(max(delay, 0.0), cap_s)


def _backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full jitter: uniform(0, min(max, base * 2**(attempt-1)))."""
    ceiling = min(max_s, base_s * (2.0 ** min(attempt - 1, 60)))
    return rng.uniform(0.0, ceiling)


class _Redactor:
    """Scrubs the API key out of any text before it reaches an exception or a log record."""

    def __init__(self, secret: str | None) -> None:
        # Very short "keys" would shred ordinary text; such keys offer no secrecy anyway.
        self._secret = secret if secret and len(secret) >= 4 else None

    def __call__(self, text: str) -> str:
        if self._secret is None:
            return text
        return text.replace(self._secret, "***")


def _parse_completion(body: bytes) -> tuple[str, str | None, int, int, str | None]:
    """(content, finish_reason, prompt_tokens, completion_tokens, model) or _AttemptFailed."""
    try:
        data = json.loads(body)
    except ValueError:
        raise _AttemptFailed(
            f"malformed response: body is not valid JSON ({len(body)} bytes)"
        ) from None
    if not isinstance(data, dict):
        raise _AttemptFailed("malformed response: body is not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _AttemptFailed("malformed response: no choices")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str) or not content.strip():
        raise _AttemptFailed("empty content in response")
    finish_reason = choices[0].get("finish_reason")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}

    def _tokens(name: str) -> int:
        value = usage.get(name)
        return value if isinstance(value, int) and value >= 0 else 0

    model = data.get("model") if isinstance(data.get("model"), str) else None
    return (
        content,
        finish_reason if isinstance(finish_reason, str) else None,
        _tokens("prompt_tokens"),
        _tokens("completion_tokens"),
        model,
    )


def _classify_status(
    exc: openai.APIStatusError, endpoint: EndpointConfig, redact: _Redactor
) -> _AttemptFailed:
    status = exc.status_code
    detail = redact(str(exc))
    if status == 429 or status >= 500 or status in (408, 409):
        retry_after = None
        if status in (429, 503):
            retry_after = _parse_retry_after(exc.response.headers, endpoint.backoff_max_s)
        return _AttemptFailed(f"HTTP {status}: {detail}", retry_after=retry_after)
    if status in (401, 403):
        if endpoint.api_key_env:
            hint = f"check the API key in env var {endpoint.api_key_env}"
        else:
            hint = (
                "the endpoint wants an API key: set teacher.api_key_env to the name of the "
                "environment variable holding it"
            )
        return _AttemptFailed(
            f"HTTP {status} (not authorised) from the teacher endpoint - {hint}. Server said: "
            f"{detail}",
            retryable=False,
            fatal=True,
        )
    if status == 404:
        return _AttemptFailed(
            f"HTTP 404 from the teacher endpoint - check teacher.base_url (usually ends in /v1) "
            f"and that teacher.model {endpoint.model!r} is served there. Server said: {detail}",
            retryable=False,
            fatal=True,
        )
    if 300 <= status < 400:
        return _AttemptFailed(
            f"HTTP {status} redirect from the teacher endpoint; redirects are not followed "
            "(patient data must not leave for an unchecked host) - point teacher.base_url at "
            "the final URL",
            retryable=False,
            fatal=True,
        )
    # 400, 422, ...: this request is bad, the others may be fine.
    return _AttemptFailed(
        f"HTTP {status} (request rejected, not retried): {detail}", retryable=False
    )


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _client(
    endpoint: EndpointConfig, api_key: str, connections: int, tls: ssl.SSLContext
) -> openai.AsyncOpenAI:
    http_client = openai.DefaultAsyncHttpx2Client(
        timeout=endpoint.request_timeout_s,
        verify=tls,
        # Following a redirect would hand the body to a host the PHI guard never saw.
        follow_redirects=False,
        # Nor may a proxy from HTTP(S)_PROXY / ALL_PROXY (or .netrc credentials) reroute
        # patient data: the guard checked base_url, so requests go to base_url directly.
        trust_env=False,
        limits=httpx2.Limits(
            max_connections=connections + 2, max_keepalive_connections=connections
        ),
    )
    return openai.AsyncOpenAI(
        base_url=endpoint.base_url,
        api_key=api_key,
        max_retries=0,  # our own loop retries, so we control and count every attempt
        timeout=endpoint.request_timeout_s,
        http_client=http_client,
    )


def _connection_slots(
    endpoint: EndpointConfig, api_key: str
) -> tuple[list[openai.AsyncOpenAI], asyncio.Queue[openai.AsyncOpenAI]]:
    """The clients (connection pools) and one slot per request allowed in flight."""
    # Several small connection pools instead of one: the HTTP pool scans its connections
    # on every request and release (probing idle sockets), so one pool of `concurrency`
    # connections costs O(concurrency) CPU per request on the single event-loop thread.
    n_pools = math.ceil(endpoint.concurrency / _CONNECTIONS_PER_POOL)
    # One TLS context for all pools: loading the CA bundle costs tens of ms per context.
    tls = ssl.create_default_context()
    per_pool = math.ceil(endpoint.concurrency / n_pools)
    clients = [_client(endpoint, api_key, per_pool, tls) for _ in range(n_pools)]
    # One slot per allowed request in flight, each bound to a pool, handed out in turn.
    slots: asyncio.Queue[openai.AsyncOpenAI] = asyncio.Queue()
    for i in range(endpoint.concurrency):
        slots.put_nowait(clients[i % n_pools])
    return clients, slots


@dataclass
class _Tally:
    """What the requests of one run came to, in the order their outcomes arrived."""

    done: dict[str, ChatResult] = field(default_factory=dict)  # by cache key
    failed: list[_RequestFailed] = field(default_factory=list)
    consecutive_failed: int = 0
    abort: _RequestFailed | None = None  # the failure that stopped the run early


class _TaskWindow:
    """The request tasks of one run, created in a bounded window, each reporting exactly one
    outcome on a queue: waiting on all N tasks at once would cost O(N) per completion, i.e.
    O(N^2) for a long run."""

    def __init__(
        self, run: _Run, slots: asyncio.Queue[openai.AsyncOpenAI], pending: Mapping[str, Any]
    ) -> None:
        self.run = run
        self.slots = slots
        self.outcomes: asyncio.Queue[tuple[ChatResult | None, BaseException | None]] = (
            asyncio.Queue()
        )
        self.size = 4 * run.endpoint.concurrency  # room for requests sleeping in backoff
        self.todo = iter(pending.items())
        self.live: set[asyncio.Task[None]] = set()
        self.created = self.received = 0

    async def _report(self, ckey: str, request: ChatRequest) -> None:
        try:
            result = await self.run.one(self.slots, ckey, request)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the main loop as is
            self.outcomes.put_nowait((None, exc))
        else:
            self.outcomes.put_nowait((result, None))

    def refill(self) -> None:
        # Count unreported tasks, not `live`: done-callbacks run a loop iteration late.
        while not self.run.stopping and self.created - self.received < self.size:
            item = next(self.todo, None)
            if item is None:
                return
            task = asyncio.create_task(self._report(*item), name=f"teacher:{item[1].key}")
            self.live.add(task)
            task.add_done_callback(self.live.discard)
            self.created += 1

    def unreported(self) -> bool:
        return self.received < self.created

    async def next_outcome(self) -> tuple[ChatResult | None, BaseException | None]:
        outcome = await self.outcomes.get()
        self.received += 1
        return outcome

    async def cancel_live(self) -> None:
        for task in list(self.live):
            task.cancel()
        if self.live:
            await asyncio.gather(*self.live, return_exceptions=True)


class _GroupCommit:
    """Writes answers to the cache as they arrive, one fsync for everything finished since
    the last: one fsync costs milliseconds, and one per result would cap a run at a few
    hundred results per second."""

    def __init__(self, cache: ResponseCache) -> None:
        self.cache = cache
        self._to_commit: list[tuple[ChatResult, asyncio.Future[None]]] = []
        self._commit_wanted = asyncio.Event()

    async def commit(self, result: ChatResult) -> None:
        """Return once `result` is durably in the cache."""
        done = asyncio.get_running_loop().create_future()
        self._to_commit.append((result, done))
        self._commit_wanted.set()
        await done

    async def run(self) -> None:
        """Commit until cancelled (a task of its own)."""
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            batch, self._to_commit = self._to_commit, []
            if not batch:
                continue
            try:
                # Off the event loop, so a slow disk does not stall requests in flight.
                await asyncio.to_thread(self.cache.put_many, [r for r, _ in batch])
            except Exception as exc:  # e.g. disk full: every waiting request fails the run
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Cancel the committing `task`, then write what it had not committed yet."""
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # Answers that arrived but were not yet committed are complete: keep them.
        leftovers, self._to_commit = self._to_commit, []
        if leftovers:
            self.cache.put_many([r for r, _ in leftovers])


class _Run:
    """Mutable state of one `run_chat_requests` call (single event loop, so no locking)."""

    def __init__(
        self,
        endpoint: EndpointConfig,
        api_key: str,
        cache: ResponseCache,
        usage: UsageSummary,
        validate: Callable[[str], str | None] | None,
        bar: tqdm | None,
    ) -> None:
        self.endpoint = endpoint
        self.api_key = api_key
        self.cache = cache
        self.usage = usage
        self.validate = validate
        self.bar = bar
        self.redact = _Redactor(api_key)
        self.sampling = endpoint.sampling()
        # seed=None means "no seed": omit it rather than send null, which some servers reject.
        self.sampling_kwargs = {k: v for k, v in self.sampling.items() if v is not None}
        self.rng = random.Random()
        # Set on the first run-ending error, so requests waiting for a slot are not sent.
        self.stopping = False
        # Group commit: results finished while an fsync is under way share the next one.
        self.commits = _GroupCommit(cache)

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix(
                failures=self.usage.failures, retries=self.usage.retries, refresh=False
            )

    # ---------------------------------------------------------------- one HTTP attempt

    def _body(self, request: ChatRequest) -> bytes:
        body = {
            "model": self.endpoint.model,
            "messages": [dict(m) for m in request.messages],
            **self.sampling_kwargs,
        }
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    async def _attempt(
        self, client: openai.AsyncOpenAI, request: ChatRequest
    ) -> tuple[str, str | None, int, int, str | None]:
        try:
            # The low-level post of the same client (auth, base_url, error classes) rather than
            # chat.completions.create: create() walks the whole message list through the SDK's
            # TypedDict transform (a third of the client's CPU per request, and a no-op for plain
            # role/content messages), and a body given as a dict is deep-copied per attempt; the
            # event loop's CPU per request is what bounds throughput.
            raw = await client.post(
                "/chat/completions",
                cast_to=httpx2.Response,
                content=self._body(request),
            )
        except openai.APITimeoutError:
            raise _AttemptFailed(
                f"timed out after {self.endpoint.request_timeout_s:g}s (teacher.request_timeout_s)"
            ) from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__
            detail = f"{type(cause).__name__}: {cause}" if cause else str(exc)
            raise _AttemptFailed(f"connection error: {self.redact(detail)}") from None
        except openai.APIStatusError as exc:
            raise _classify_status(exc, self.endpoint, self.redact) from None
        except openai.APIError as exc:  # e.g. APIResponseValidationError
            raise _AttemptFailed(f"bad response: {self.redact(str(exc))}") from None
        return _parse_completion(raw.content)

    # ---------------------------------------------------------------- one request, retried

    async def one(
        self,
        slots: asyncio.Queue[openai.AsyncOpenAI],
        ckey: str,
        request: ChatRequest,
    ) -> ChatResult:
        ep = self.endpoint
        for attempt in range(1, ep.max_attempts + 1):
            outcome = await self._try_once(slots, ckey, request, attempt)
            if isinstance(outcome, ChatResult):
                await self.commits.commit(outcome)
                return outcome
            self.usage.failures += 1
            self._postfix()
            if not outcome.retryable or attempt == ep.max_attempts:
                self.stopping = self.stopping or outcome.fatal
                raise _RequestFailed(ckey, request.key, outcome.reason, attempt, outcome.fatal)
            self.usage.retries += 1
            await self._back_off(request, attempt, outcome)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _try_once(
        self,
        slots: asyncio.Queue[openai.AsyncOpenAI],
        ckey: str,
        request: ChatRequest,
        attempt: int,
    ) -> ChatResult | _AttemptFailed:
        """One attempt: the answer, or why it failed (an HTTP error or the validator's
        rejection). Raises _Stopped, sending nothing, once the run is stopping."""
        client = await slots.get()  # a free slot bounds what is in flight
        try:
            if self.stopping:
                raise _Stopped
            self.usage.requests_sent += 1
            try:
                content, finish, p_tok, c_tok, model = await self._attempt(client, request)
            except _AttemptFailed as failure:
                return failure
        finally:
            slots.put_nowait(client)
        # Tokens were spent whether or not the validator likes the answer.
        self.usage.prompt_tokens += p_tok
        self.usage.completion_tokens += c_tok
        reason = self.validate(content) if self.validate is not None else None
        if reason is not None:
            return _AttemptFailed(f"rejected by validator: {self.redact(str(reason))}")
        return ChatResult(
            key=request.key,
            content=content,
            finish_reason=finish,
            prompt_tokens=p_tok,
            completion_tokens=c_tok,
            cache_key=ckey,
            from_cache=False,
            attempts=attempt,
            model=model or self.endpoint.model,
            sampling=dict(self.sampling),
        )

    async def _back_off(self, request: ChatRequest, attempt: int, failure: _AttemptFailed) -> None:
        """Wait before the next attempt: as long as the server asked, else full jitter."""
        ep = self.endpoint
        if failure.retry_after is not None:
            delay = failure.retry_after
        else:
            delay = _backoff_delay(attempt, ep.backoff_base_s, ep.backoff_max_s, self.rng)
        logger.debug(
            "teacher request %r attempt %d/%d failed (%s); retrying in %.2fs",
            request.key,
            attempt,
            ep.max_attempts,
            failure.reason,
            delay,
        )
        await asyncio.sleep(delay)

    # ---------------------------------------------------------------- every request

    async def run_all(self, pending: Mapping[str, ChatRequest]) -> dict[str, ChatResult]:
        """Send every pending request; returns results by cache key.

        A request that fails for good does not stop the others (one pathological prompt must
        not block a long run). The run stops early on errors that every request would hit
        (401/403/404/redirect) or when `concurrency` requests in a row fail for good (the
        endpoint is down). Either way TeacherError is raised once nothing is in flight.
        """
        clients, slots = _connection_slots(self.endpoint, self.api_key)
        window = _TaskWindow(self, slots, pending)
        tally = _Tally()
        committer = asyncio.create_task(self.commits.run(), name="teacher:cache-commit")
        async with contextlib.AsyncExitStack() as stack:
            for client in clients:
                await stack.enter_async_context(client)
            try:
                await self._collect(window, tally)
            finally:
                await window.cancel_live()
                await self.commits.stop(committer)
        if tally.abort is not None or tally.failed:
            raise _run_failed(tally, len(pending), self.endpoint, self.cache.path, self.redact)
        return tally.done

    async def _collect(self, window: _TaskWindow, tally: _Tally) -> None:
        """Take the outcomes as they arrive, keeping the window full, until every request has
        reported or the run stops early."""
        window.refill()
        while window.unreported():
            result, exc = await window.next_outcome()
            if exc is None:
                assert result is not None
                tally.done[result.cache_key] = result
                tally.consecutive_failed = 0
            elif isinstance(exc, _RequestFailed):
                self._count_failure(tally, exc)
            elif isinstance(exc, _Stopped):
                continue
            else:
                raise exc
            if self.bar is not None:
                self.bar.update(1)
                self._postfix()
            if tally.abort is not None:
                break
            window.refill()

    def _count_failure(self, tally: _Tally, failure: _RequestFailed) -> None:
        tally.failed.append(failure)
        tally.consecutive_failed += 1
        logger.warning(
            "teacher request %r failed after %d attempt(s): %s",
            failure.request_key,
            failure.attempts,
            failure.reason,
        )
        stop = failure.fatal or tally.consecutive_failed >= self.endpoint.concurrency
        if tally.abort is None and stop:
            tally.abort = failure
            self.stopping = True


def _run_failed(
    tally: _Tally, n_pending: int, endpoint: EndpointConfig, cache: Path, redact: _Redactor
) -> TeacherError:
    """The error of a run with requests that failed for good: the first failure's reason,
    which requests have no result, and that a rerun resumes from the cache."""
    first = tally.abort or tally.failed[0]
    keys = [f.request_key for f in tally.failed]
    shown = ", ".join(repr(k) for k in keys[:5]) + (" ..." if len(keys) > 5 else "")
    reason = first.reason.rstrip(". ")
    if first.fatal:
        head = (
            f"Teacher request {first.request_key!r} failed: {reason}. Stopped the run "
            "because this error would hit every request"
        )
    else:
        head = (
            f"Teacher request {first.request_key!r} failed after {first.attempts} "
            f"attempt(s) (teacher.openai.http_attempts={endpoint.max_attempts}); "
            f"last error: {reason}"
        )
        if tally.abort is not None:
            head += f". Stopped the run after {tally.consecutive_failed} failures in a row"
    message = (
        f"{head}. Failed: {shown}; {n_pending - len(tally.done)} of {n_pending} "
        f"requests sent in this run have no result. All completed results are safely "
        f"cached in {cache}; rerunning resumes from there."
    )
    return TeacherError(
        redact(message),
        request_key=first.request_key,
        last_error=redact(first.reason),
        failed_keys=keys,
        fatal=first.fatal,
    )


class _LineWriter:
    """A stream for tqdm that turns each redraw into its own line (for log files)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "\n").replace("\x1b[A", "")
        lines = [line.rstrip() for line in text.split("\n")]
        if any(lines):
            self.stream.write("\n".join(line for line in lines if line) + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _run_sync(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine from synchronous code, even if this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    # Called from inside a running loop (Jupyter, an async caller): use a private loop on a
    # worker thread rather than nesting loops.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="teacher") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def _resolve_api_key(endpoint: EndpointConfig) -> str:
    if endpoint.api_key_env is None:
        return DUMMY_API_KEY
    key = os.environ.get(endpoint.api_key_env, "")
    if not key.strip():
        raise TeacherConfigError(
            f"teacher.api_key_env names the environment variable {endpoint.api_key_env!r}, but "
            "it is unset or empty. Export it (e.g. `export "
            f"{endpoint.api_key_env}=...`) or set teacher.api_key_env to null for a local server "
            "that needs no key."
        )
    return key.strip()


def _check_unique_keys(requests: Sequence[ChatRequest]) -> None:
    keys = [r.key for r in requests]
    if len(set(keys)) != len(keys):
        dupes = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise ValueError(f"ChatRequest keys must be unique; duplicated: {dupes}")


def _answer_from_cache(
    by_ckey: Mapping[str, list[ChatRequest]],
    cache: ResponseCache,
    endpoint: EndpointConfig,
    validate: Callable[[str], str | None] | None,
    usage: UsageSummary,
) -> tuple[dict[str, ChatResult], dict[str, ChatRequest]]:
    """(results by request key of the cached answers the validator accepts, the requests still
    to send by cache key: one per distinct cache key)."""
    sampling = endpoint.sampling()
    results: dict[str, ChatResult] = {}
    pending: dict[str, ChatRequest] = {}
    for ckey, reqs in by_ckey.items():
        rec = cache.get(ckey)
        if rec is not None and validate is not None:
            reason = validate(rec["content"])
            if reason is not None:
                logger.info(
                    "teacher cache: cached answer for %r rejected by validator (%s); "
                    "requesting a new one",
                    reqs[0].key,
                    reason,
                )
                rec = None
        if rec is None:
            pending[ckey] = reqs[0]
            continue
        rec_usage = rec.get("usage") or {}
        for req in reqs:
            usage.cache_hits += 1
            results[req.key] = ChatResult(
                key=req.key,
                content=rec["content"],
                finish_reason=rec.get("finish_reason"),
                prompt_tokens=int(rec_usage.get("prompt_tokens") or 0),
                completion_tokens=int(rec_usage.get("completion_tokens") or 0),
                cache_key=ckey,
                from_cache=True,
                attempts=0,
                model=rec.get("model") or endpoint.model,
                sampling=dict(rec.get("sampling") or sampling),
            )
    return results, pending


def _progress_bar(total: int, description: str, progress: bool) -> tqdm:
    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=description,
        unit="req",
        # In a log file (a Snakemake job) one line every 30 s instead of a bar
        # redrawn with carriage returns.
        file=sys.stderr if interactive else _LineWriter(sys.stderr),
        dynamic_ncols=interactive,
        ncols=None if interactive else 110,
        mininterval=0.1 if interactive else 30.0,
        ascii=not interactive,
        disable=not progress,
    )


def _send_pending(
    pending: Mapping[str, ChatRequest],
    endpoint: EndpointConfig,
    cache: ResponseCache,
    usage: UsageSummary,
    validate: Callable[[str], str | None] | None,
    progress: tuple[str, bool],
    t0: float,
) -> dict[str, ChatResult]:
    """Send the requests no cached answer serves; results by cache key. ``progress``: the
    bar's description and whether to show it. A TeacherError carries the run's usage."""
    api_key = _resolve_api_key(endpoint)
    bar = _progress_bar(len(pending), *progress)
    run = _Run(endpoint, api_key, cache, usage, validate, bar)
    try:
        return _run_sync(lambda: run.run_all(pending))
    except TeacherError as error:
        error.usage = usage  # completed by the finally block below
        raise
    finally:
        bar.close()
        usage.wall_s = time.monotonic() - t0
        _finish_usage(usage, endpoint)
        logger.info("teacher usage: %s", usage.as_dict())


def run_chat_requests(
    requests: Sequence[ChatRequest],
    endpoint: EndpointConfig,
    cache_path: Path,
    *,
    progress: bool = True,
    validate: Callable[[str], str | None] | None = None,
    read_also: Sequence[Path] = (),
    description: str = "teacher",
) -> tuple[dict[str, ChatResult], UsageSummary]:
    """Answer every request, from the cache where possible; returns results by request key.

    `validate(content)` returns None to accept an answer or a reason string to reject it; a
    rejection is a retryable failure. Cached answers are validated too, and a rejected cached
    answer is requested again (that is how QC regeneration works). Identical requests (same
    cache key) are sent once. The API key is only needed when something must be sent.
    `read_also`: further cache files (other shards') consulted for answers, never written.
    Raises PHIGuardError, TeacherConfigError or TeacherError.
    """
    t0 = time.monotonic()
    check_phi_guard(endpoint.base_url, endpoint.allowed_hosts)
    _check_unique_keys(requests)
    sampling = endpoint.sampling()
    usage = UsageSummary()
    by_ckey: dict[str, list[ChatRequest]] = {}
    for req in requests:
        by_ckey.setdefault(cache_key(endpoint.model, req.messages, sampling), []).append(req)

    with ResponseCache(cache_path, read_also) as cache:
        results, pending = _answer_from_cache(by_ckey, cache, endpoint, validate, usage)
        n_cached = len(by_ckey) - len(pending)
        logger.info(
            "teacher: %d requests (%d distinct), %d answered from cache, %d to send to %s "
            "(model %s, concurrency %d)",
            len(requests),
            len(by_ckey),
            n_cached,
            len(pending),
            _redacted_url(endpoint.base_url),
            endpoint.model,
            endpoint.concurrency,
        )
        if pending:
            bar = (f"{description} ({n_cached} cached)", progress)
            sent = _send_pending(pending, endpoint, cache, usage, validate, bar, t0)
            for ckey, res in sent.items():
                for req in by_ckey[ckey]:
                    results[req.key] = replace(res, key=req.key)

    usage.wall_s = time.monotonic() - t0
    _finish_usage(usage, endpoint)
    return results, usage


def _finish_usage(usage: UsageSummary, endpoint: EndpointConfig) -> None:
    pp, pc = endpoint.price_per_1k_prompt, endpoint.price_per_1k_completion
    if pp is None and pc is None:
        usage.cost = None
        return
    usage.cost = usage.prompt_tokens / 1000 * (pp or 0.0) + usage.completion_tokens / 1000 * (
        pc or 0.0
    )
