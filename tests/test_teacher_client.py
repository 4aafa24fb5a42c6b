"""Tests for rationale_bench.teacher.client against the fault-injecting fake server."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the fake server lives next to us

from fake_openai_server import (  # noqa: E402
    FAULT_KINDS,
    FakeOpenAIServer,
    expected_content,
    mixed_faults,
)

from rationale_bench.teacher.client import (  # noqa: E402
    ChatRequest,
    EndpointConfig,
    PHIGuardError,
    ResponseCache,
    TeacherConfigError,
    TeacherError,
    _backoff_delay,
    _parse_retry_after,
    cache_key,
    check_phi_guard,
    run_chat_requests,
)

SECRET = "sk-test-SECRET123"


def make_requests(n: int, prefix: str = "subj") -> list[ChatRequest]:
    return [
        ChatRequest(
            key=f"{prefix}{i:04d}/brief",
            messages=(
                {"role": "system", "content": "You explain disease predictions."},
                {"role": "user", "content": f"Patient {prefix}{i}: E11.9 then I10, age {40 + i}."},
            ),
        )
        for i in range(n)
    ]


def endpoint(base_url: str, **overrides: Any) -> EndpointConfig:
    """Fast-failing settings for tests: short timeout, tiny backoff."""
    cfg: dict[str, Any] = {
        "base_url": base_url,
        "model": "teacher-7b",
        "api_key_env": None,
        "temperature": 0.3,
        "top_p": 0.95,
        "max_tokens": 256,
        "seed": 1234,
        "concurrency": 16,
        "request_timeout_s": 0.5,
        "max_attempts": 6,
        "backoff_base_s": 0.005,
        "backoff_max_s": 0.02,
    }
    cfg.update(overrides)
    return EndpointConfig(**cfg)


def cached_keys(path: Path) -> set[str]:
    """cache_keys of the complete records in a cache file (parsed independently)."""
    keys = set()
    for line in path.read_bytes().splitlines():
        with contextlib.suppress(ValueError, KeyError):  # skip a truncated last line
            keys.add(json.loads(line)["cache_key"])
    return keys


# ---------------------------------------------------------------------------- PHI guard


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/v1",
        "http://127.9.9.9/v1",
        "http://localhost:8000/v1",
        "http://LOCALHOST/v1",
        "http://[::1]:8000/v1",
        "http://10.1.2.3/v1",
        "http://172.16.0.1/v1",
        "http://172.31.255.254/v1",
        "https://192.168.1.10:8443/v1",
        "http://[fd12:3456::1]/v1",
        "http://169.254.10.1/v1",
        "http://[fe80::1]/v1",
        "http://[::ffff:10.0.0.7]/v1",
    ],
)
def test_phi_guard_allows_loopback_and_private(url: str) -> None:
    check_phi_guard(url, ())


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://8.8.8.8/v1", "8.8.8.8"),
        ("https://api.openai.com/v1", "api.openai.com"),
        ("http://172.32.0.1/v1", "172.32.0.1"),
        ("http://[2001:4860::8888]/v1", "2001:4860::8888"),
        ("http://0.0.0.0:8000/v1", "0.0.0.0"),
        ("http://gpu-node-3:8000/v1", "gpu-node-3"),  # not resolved, even if it is local
        ("http://10.0.0.1@evil.example.com/v1", "evil.example.com"),  # userinfo trick
    ],
)
def test_phi_guard_refuses_public_hosts(url: str, host: str) -> None:
    with pytest.raises(PHIGuardError) as info:
        check_phi_guard(url, ())
    msg = str(info.value)
    assert "teacher.allowed_hosts" in msg
    assert host in msg
    assert "protected health information" in msg
    assert isinstance(info.value, ValueError)


def test_phi_guard_allow_list() -> None:
    check_phi_guard("https://api.openai.com/v1", ["API.openai.com"])
    check_phi_guard("http://8.8.8.8:80/v1", ("8.8.8.8",))
    check_phi_guard("http://[2001:4860::8888]/v1", ["[2001:4860:0::8888]"])
    check_phi_guard("https://api.openai.com/v1", ["https://api.openai.com/"])
    with pytest.raises(PHIGuardError):
        check_phi_guard("https://api.other.com/v1", ["api.openai.com"])


@pytest.mark.parametrize("url", ["127.0.0.1:8000/v1", "ftp://127.0.0.1/v1", "http:///v1"])
def test_phi_guard_rejects_unusable_urls(url: str) -> None:
    with pytest.raises(PHIGuardError):
        check_phi_guard(url, ())


def test_run_checks_phi_guard_before_anything_else(tmp_path: Path) -> None:
    # Guard first: even the unset key variable is not reported, and nothing is cached.
    ep = endpoint("http://203.0.113.5/v1", api_key_env="RB_SURELY_UNSET_VAR")
    with pytest.raises(PHIGuardError, match="teacher.allowed_hosts"):
        run_chat_requests(make_requests(2), ep, tmp_path / "c.jsonl", progress=False)
    assert not (tmp_path / "c.jsonl").exists()


# ---------------------------------------------------------------------------- cache key


def test_cache_key_canonical_and_sensitive() -> None:
    msgs = [{"role": "user", "content": "x"}]
    s = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 8, "seed": 1}
    k = cache_key("m", msgs, s)
    assert len(k) == 64 and int(k, 16) >= 0
    assert cache_key("m", [{"content": "x", "role": "user"}], dict(reversed(s.items()))) == k
    assert cache_key("m2", msgs, s) != k
    assert cache_key("m", msgs, {**s, "seed": 2}) != k
    assert cache_key("m", [{"role": "user", "content": "y"}], s) != k


# ---------------------------------------------------------------------------- happy path


def test_happy_path_results_usage_and_explicit_sampling(tmp_path: Path) -> None:
    reqs = make_requests(20)
    with FakeOpenAIServer() as server:
        ep = endpoint(
            server.base_url,
            price_per_1k_prompt=0.5,
            price_per_1k_completion=1.5,
            seed=None,
            concurrency=3,  # fewer than N/4: exercises the bounded task window
        )
        results, usage = run_chat_requests(reqs, ep, tmp_path / "cache.jsonl", progress=False)
        bodies = list(server.request_bodies)

    assert set(results) == {r.key for r in reqs}
    for r in reqs:
        res = results[r.key]
        assert res.content == expected_content(r.messages)
        assert res.key == r.key and not res.from_cache and res.attempts == 1
        assert res.finish_reason == "stop" and res.model == "teacher-7b"
        assert res.sampling == ep.sampling()
        assert res.cache_key == cache_key(ep.model, r.messages, ep.sampling())

    assert usage.requests_sent == 20 and usage.cache_hits == 0
    assert usage.retries == 0 and usage.failures == 0
    assert usage.prompt_tokens == sum(r.prompt_tokens for r in results.values()) > 0
    assert usage.completion_tokens == sum(r.completion_tokens for r in results.values()) > 0
    expected_cost = usage.prompt_tokens / 1000 * 0.5 + usage.completion_tokens / 1000 * 1.5
    assert usage.cost == pytest.approx(expected_cost)
    assert set(usage.as_dict()) >= {"requests_sent", "cache_hits", "retries", "cost", "wall_s"}

    # Sampling is sent explicitly every time (seed=None is omitted rather than sent as null).
    assert len(bodies) == 20
    for body in bodies:
        assert body["model"] == "teacher-7b"
        assert body["temperature"] == 0.3 and body["top_p"] == 0.95
        assert body["max_tokens"] == 256
        assert "seed" not in body

    records = [json.loads(line) for line in (tmp_path / "cache.jsonl").read_text().splitlines()]
    assert len(records) == 20
    assert set(records[0]) == {
        "cache_key",
        "content",
        "finish_reason",
        "usage",
        "model",
        "sampling",
        "created",
    }


def test_seed_sent_and_cost_none_without_prices(tmp_path: Path) -> None:
    with FakeOpenAIServer() as server:
        _, usage = run_chat_requests(
            make_requests(1), endpoint(server.base_url), tmp_path / "c.jsonl", progress=False
        )
        assert server.request_bodies[0]["seed"] == 1234
    assert usage.cost is None


def test_identical_requests_sent_once(tmp_path: Path) -> None:
    msgs = ({"role": "user", "content": "same history"},)
    reqs = [ChatRequest(key="a", messages=msgs), ChatRequest(key="b", messages=msgs)]
    with FakeOpenAIServer() as server:
        results, usage = run_chat_requests(
            reqs, endpoint(server.base_url), tmp_path / "c.jsonl", progress=False
        )
        assert server.requests_received == 1
    assert results["a"].content == results["b"].content == expected_content(msgs)
    assert results["b"].key == "b"
    with pytest.raises(ValueError, match="unique"):
        run_chat_requests([reqs[0], reqs[0]], endpoint("http://127.0.0.1:9/v1"), tmp_path / "x")


# ---------------------------------------------------------------------------- faults


def test_mixed_faults_complete_then_second_run_is_all_cache_hits(tmp_path: Path) -> None:
    reqs = make_requests(90)
    cache = tmp_path / "cache.jsonl"
    with FakeOpenAIServer(
        faults=mixed_faults(0.3), seed=7, stall_s=2.0, max_faults_per_content=3
    ) as server:
        ep = endpoint(server.base_url, concurrency=32)
        results, usage = run_chat_requests(reqs, ep, cache, progress=False)
        injected = Counter(server.fault_counts)
        received = server.requests_received

        assert {r.key: results[r.key].content for r in reqs} == {
            r.key: expected_content(r.messages) for r in reqs
        }
        assert set(injected) == set(FAULT_KINDS)  # every kind of fault really happened
        assert usage.failures == sum(injected.values()) > 0
        assert usage.retries == usage.failures  # nothing ran out of attempts
        assert usage.requests_sent == received == len(reqs) + usage.retries
        assert any(r.attempts > 1 for r in results.values())

        server.reset_counters()
        again, usage2 = run_chat_requests(reqs, ep, cache, progress=False)
        assert server.requests_received == 0
    assert usage2.requests_sent == 0 and usage2.cache_hits == len(reqs)
    assert all(r.from_cache and r.attempts == 0 for r in again.values())
    assert {k: r.content for k, r in again.items()} == {k: r.content for k, r in results.items()}


def test_stall_longer_than_timeout_is_retried(tmp_path: Path) -> None:
    with FakeOpenAIServer(faults={"stall": 1.0}, max_faults_per_content=1, stall_s=5) as server:
        results, usage = run_chat_requests(
            make_requests(3),
            endpoint(server.base_url, request_timeout_s=0.3),
            tmp_path / "c.jsonl",
            progress=False,
        )
    assert usage.failures == 3 and len(results) == 3
    assert all(r.attempts == 2 for r in results.values())


def test_retry_after_header_is_honoured(tmp_path: Path, monkeypatch) -> None:
    """The client waits the server's Retry-After (1 s), not its own tiny backoff: the delay it
    asks the event loop for is recorded (no wall-clock measurement)."""
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float, *args, **kwargs):
        delays.append(delay)
        return await real_sleep(delay, *args, **kwargs)

    monkeypatch.setattr(asyncio, "sleep", recording_sleep)
    with FakeOpenAIServer(faults={"rate_limit_1": 1.0}, max_faults_per_content=1) as server:
        results, usage = run_chat_requests(
            make_requests(1),
            endpoint(server.base_url, backoff_max_s=5.0),
            tmp_path / "c.jsonl",
            progress=False,
        )
        assert server.requests_received == 2
    assert usage.retries == 1 and len(results) == 1
    assert 1.0 in delays, delays


def test_parse_retry_after() -> None:
    assert _parse_retry_after({"retry-after": "0"}, 60) == 0
    assert _parse_retry_after({"retry-after": "1.5"}, 60) == 1.5
    assert _parse_retry_after({"retry-after": "600"}, 60) == 60  # capped
    assert _parse_retry_after({"retry-after-ms": "250"}, 60) == 0.25
    assert _parse_retry_after({"retry-after": "soon"}, 60) is None
    assert _parse_retry_after({}, 60) is None
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (_parse_retry_after({"retry-after": future}, 60) or 0) <= 30
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert _parse_retry_after({"retry-after": past}, 60) == 0


def test_backoff_is_full_jitter_and_capped() -> None:
    rng = random.Random(0)
    for attempt in range(1, 12):
        ceiling = min(8.0, 0.5 * 2 ** (attempt - 1))
        delays = [_backoff_delay(attempt, 0.5, 8.0, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert min(delays) < ceiling * 0.2 and max(delays) > ceiling * 0.8


def test_validator_rejection_is_retried(tmp_path: Path) -> None:
    seen: Counter[str] = Counter()

    def reject_first_draft(content: str) -> str | None:
        seen[content] += 1
        return "QC: first draft rejected" if seen[content] == 1 else None

    reqs = make_requests(5)
    with FakeOpenAIServer() as server:
        results, usage = run_chat_requests(
            reqs,
            endpoint(server.base_url),
            tmp_path / "c.jsonl",
            progress=False,
            validate=reject_first_draft,
        )
        assert server.requests_received == 10
    assert usage.retries == 5 and all(r.attempts == 2 for r in results.values())


def test_one_failing_request_does_not_block_the_others(tmp_path: Path) -> None:
    reqs = make_requests(6)
    bad = expected_content(reqs[2].messages)
    cache = tmp_path / "c.jsonl"
    with FakeOpenAIServer() as server:
        ep = endpoint(server.base_url, max_attempts=2)
        with pytest.raises(TeacherError) as info:
            run_chat_requests(
                reqs, ep, cache, progress=False, validate=lambda c: "bad" if c == bad else None
            )
        assert info.value.request_key == reqs[2].key
        assert info.value.failed_keys == (reqs[2].key,)
        assert "rejected by validator: bad" in str(info.value)
        assert len(cached_keys(cache)) == 5  # everything else finished and was cached

        # A cached answer that the (new) validator rejects is requested again.
        server.reset_counters()
        results, usage = run_chat_requests(reqs, ep, cache, progress=False)
        assert server.requests_received == 1 and usage.cache_hits == 5
        assert len(results) == 6


# ---------------------------------------------------------------------------- non-retryable


@pytest.mark.parametrize(
    ("status", "needle"),
    [
        (401, "check the API key in env var RB_TEST_KEY"),
        (403, "check the API key in env var RB_TEST_KEY"),
        (404, "teacher.base_url"),
        (400, "not retried"),
        (307, "redirects are not followed"),
    ],
)
def test_client_errors_fail_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int, needle: str
) -> None:
    monkeypatch.setenv("RB_TEST_KEY", SECRET)
    with FakeOpenAIServer(force_status=status) as server:
        ep = endpoint(server.base_url, api_key_env="RB_TEST_KEY", concurrency=1)
        with pytest.raises(TeacherError) as info:
            run_chat_requests(make_requests(1), ep, tmp_path / "c.jsonl", progress=False)
        assert server.requests_received == 1  # no retries
    assert needle in str(info.value) and f"HTTP {status}" in str(info.value)
    assert SECRET not in str(info.value)


def test_wrong_key_401_does_not_leak_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RB_TEST_KEY", SECRET)
    # A careless server that echoes the full presented key in its error message.
    with FakeOpenAIServer(require_api_key="sk-the-right-one", echo_key_in_errors=True) as server:
        ep = endpoint(server.base_url, api_key_env="RB_TEST_KEY", concurrency=4)
        with pytest.raises(TeacherError) as info:
            run_chat_requests(make_requests(50), ep, tmp_path / "c.jsonl", progress=False)
        assert server.requests_received <= 4  # stopped at once, not 50 x 6 attempts
        assert server.seen_auth_headers[0] == f"Bearer {SECRET}"
    text = f"{info.value} {info.value!r} {info.value.args} {info.value.last_error}"
    assert "401" in text and "RB_TEST_KEY" in text
    assert SECRET not in text


def test_max_attempts_exhausted_names_the_request(tmp_path: Path) -> None:
    req = ChatRequest(key="subject-7/brief", messages=({"role": "user", "content": "hx"},))
    with FakeOpenAIServer(faults={"server_error_500": 1.0}) as server:
        with pytest.raises(TeacherError) as info:
            run_chat_requests(
                [req], endpoint(server.base_url, max_attempts=3), tmp_path / "c", progress=False
            )
        assert server.requests_received == 3
    msg = str(info.value)
    assert "'subject-7/brief'" in msg and "3 attempt" in msg and "HTTP 500" in msg
    assert "cached" in msg and "rerun" in msg
    assert info.value.request_key == "subject-7/brief"


def test_endpoint_down_stops_the_run_early(tmp_path: Path) -> None:
    with FakeOpenAIServer(force_status=502) as server:
        ep = endpoint(server.base_url, concurrency=2, max_attempts=2)
        with pytest.raises(TeacherError, match="in a row") as info:
            run_chat_requests(make_requests(40), ep, tmp_path / "c.jsonl", progress=False)
        assert server.requests_received <= 16  # not 40 requests x 2 attempts
    assert "HTTP 502" in str(info.value)


def test_missing_key_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RB_UNSET_KEY_VAR", raising=False)
    reqs = make_requests(2)
    cache = tmp_path / "c.jsonl"
    with FakeOpenAIServer() as server:
        ep = endpoint(server.base_url, api_key_env="RB_UNSET_KEY_VAR")
        with pytest.raises(TeacherConfigError, match="RB_UNSET_KEY_VAR"):
            run_chat_requests(reqs, ep, cache, progress=False)
        assert server.requests_received == 0
        # Fully cached work needs no key at all.
        run_chat_requests(reqs, endpoint(server.base_url), cache, progress=False)
        results, usage = run_chat_requests(reqs, ep, cache, progress=False)
    assert usage.cache_hits == 2 and len(results) == 2


# ---------------------------------------------------------------------------- secrecy


def test_api_key_never_leaves_the_request(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RB_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)  # everything: ours, openai's, httpx2's, httpcore2's
    cache = tmp_path / "cache.jsonl"
    reqs = make_requests(30)
    with FakeOpenAIServer(
        require_api_key=SECRET, faults=mixed_faults(0.3), seed=3, max_faults_per_content=2
    ) as server:
        ep = endpoint(server.base_url, api_key_env="RB_TEST_KEY")
        results, usage = run_chat_requests(reqs, ep, cache, progress=True)
        # The key was really used...
        assert server.seen_auth_headers
        assert set(server.seen_auth_headers) == {f"Bearer {SECRET}"}
    with FakeOpenAIServer(require_api_key="sk-other", echo_key_in_errors=True) as server:
        ep_bad = endpoint(server.base_url, api_key_env="RB_TEST_KEY")
        with pytest.raises(TeacherError) as info:
            run_chat_requests(make_requests(3, "x"), ep_bad, cache, progress=True)
    with FakeOpenAIServer(faults={"drop_connection": 1.0}) as server:
        ep_drop = endpoint(server.base_url, api_key_env="RB_TEST_KEY", max_attempts=2)
        with pytest.raises(TeacherError) as info2:
            run_chat_requests(make_requests(1, "y"), ep_drop, cache, progress=True)

    # ...but appears nowhere we write.
    out, err = capfd.readouterr()
    haystacks = {
        "cache": cache.read_text(),
        "logs": caplog.text + "".join(str(r.__dict__) for r in caplog.records),
        "exception": f"{info.value} {info.value!r} {info.value.__dict__}",
        "exception2": f"{info2.value} {info2.value!r} {info2.value.__dict__}",
        "stdout/stderr": out + err,
        "objects": f"{ep} {usage} {list(results.values())}",
    }
    assert "teacher" in err  # the progress bar went to stderr
    loggers = {r.name.split(".")[0] for r in caplog.records}
    assert {"rationale_bench", "openai", "httpx2", "httpcore2"} <= loggers  # all were captured
    assert "401" in haystacks["exception"]
    for where, text in haystacks.items():
        assert SECRET not in text, where
        assert "SECRET123" not in text, where


# ---------------------------------------------------------------------------- cache robustness


def test_truncated_last_line_is_tolerated(tmp_path: Path) -> None:
    reqs = make_requests(4)
    cache = tmp_path / "c.jsonl"
    with FakeOpenAIServer() as server:
        ep = endpoint(server.base_url)
        run_chat_requests(reqs, ep, cache, progress=False)
        lines = cache.read_bytes().splitlines(keepends=True)
        # Simulate SIGKILL mid-write of the last record.
        cache.write_bytes(b"".join(lines[:3]) + lines[3][: len(lines[3]) // 2])

        c = ResponseCache(cache)
        assert len(c) == 3 and c.skipped_lines == 1
        c.close()

        server.reset_counters()
        results, usage = run_chat_requests(reqs, ep, cache, progress=False)
        assert server.requests_received == 1
    assert usage.cache_hits == 3 and len(results) == 4
    # The new record went onto its own line, so it survives the next load.
    c = ResponseCache(cache)
    assert len(c) == 4 and c.skipped_lines == 1
    assert c.get(results[reqs[3].key].cache_key)["content"] == results[reqs[3].key].content
    c.close()


_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from rationale_bench.teacher.client import ChatRequest, EndpointConfig, run_chat_requests

    base_url, cache, reqs_file = sys.argv[1:4]
    reqs = [ChatRequest(key=r["key"], messages=tuple(r["messages"]))
            for r in json.loads(Path(reqs_file).read_text())]
    ep = EndpointConfig(base_url=base_url, model="teacher-7b", api_key_env=None,
                        temperature=0.3, top_p=0.95, max_tokens=256, seed=1234, concurrency=4)
    run_chat_requests(reqs, ep, Path(cache), progress=False)
    """
)


def test_sigkill_then_resume_sends_exactly_the_missing(tmp_path: Path) -> None:
    reqs = make_requests(40)
    cache = tmp_path / "cache.jsonl"
    reqs_file = tmp_path / "reqs.json"
    reqs_file.write_text(json.dumps([{"key": r.key, "messages": r.messages} for r in reqs]))

    with FakeOpenAIServer(latency_ms=150) as slow:
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, slow.base_url, str(cache), str(reqs_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 60
            while len(cached_keys(cache) if cache.exists() else ()) < 8:
                assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
                assert time.monotonic() < deadline, "child never cached anything"
                time.sleep(0.02)
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
            if child.stderr:
                child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    done = cached_keys(cache)
    missing = len(reqs) - len(done)
    assert 0 < missing < len(reqs)

    # A fresh server, so requests the dead child left in socket buffers cannot be counted.
    with FakeOpenAIServer() as server:
        ep = endpoint(server.base_url)
        results, usage = run_chat_requests(reqs, ep, cache, progress=False)
        assert server.requests_received == missing
    assert usage.requests_sent == missing and usage.cache_hits == len(reqs) - missing
    assert len(results) == len(reqs)
    assert all(results[r.key].content == expected_content(r.messages) for r in reqs)


# ---------------------------------------------------------------------------- concurrency


def test_concurrency_fills_every_slot_and_no_more(tmp_path: Path) -> None:
    """Requests run in parallel up to the configured concurrency, counted at the server (the
    throughput this gives is measured by benchmarks/teacher_throughput.py, not here)."""
    n, concurrency = 96, 32
    # Each answer takes 0.5 s: far longer than sending 32 requests, so a client that keeps
    # every slot busy is seen with all 32 in flight at once.
    with FakeOpenAIServer(latency_ms=500) as server:
        ep = endpoint(server.base_url, concurrency=concurrency, request_timeout_s=30)
        results, usage = run_chat_requests(
            make_requests(n), ep, tmp_path / "c.jsonl", progress=False
        )
        peak, received = server.max_inflight, server.requests_received
    assert len(results) == n and usage.retries == 0 and received == n
    assert peak == concurrency, f"peak in flight {peak}, concurrency {concurrency}"


def test_works_inside_a_running_event_loop(tmp_path: Path) -> None:
    with FakeOpenAIServer() as server:
        ep = endpoint(server.base_url)

        async def caller() -> int:
            results, _ = run_chat_requests(make_requests(3), ep, tmp_path / "c", progress=False)
            return len(results)

        assert asyncio.run(caller()) == 3


# ---------------------------------------------------------------------------- fake server


def test_fake_server_models_and_script_mode() -> None:
    with FakeOpenAIServer(model="m-x") as server:
        with urllib.request.urlopen(f"{server.base_url}/models", timeout=5) as resp:
            data = json.load(resp)
        assert data["data"][0]["id"] == "m-x"

    script = Path(__file__).with_name("fake_openai_server.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--latency-ms", "1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        base_url = line.split(" on ")[1].split()[0]
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        req = urllib.request.Request(
            f"{base_url}/chat/completions",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            answer = json.load(resp)
        assert answer["choices"][0]["message"]["content"] == expected_content(
            [{"role": "user", "content": "hi"}]
        )
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        if proc.stdout:
            proc.stdout.close()
