"""The prepared device check (benchmarks/gpu_check.py): its CPU smoke mode runs here so that it
never rots, and its FLOP accounting is checked against the published model sizes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_count_the_published_llama_32_1b(gpu_check):
    model = gpu_check.build_model("llama32_1b", "meta", torch.float32)
    # 16 layers x (q, k, v, o, gate, up, down) + the tied output head; 1,235,814,400 parameters
    # in all (Hugging Face's count) less the 2048-wide norms.
    assert gpu_check.linear_parameters(model) == 1_235_746_816
    n, attention = 1_235_746_816, 12 * 16 * 2048 * 2048
    assert gpu_check.flops_per_token(model, 2048, None) == 6 * n + attention
    lora = 11_272_192
    assert gpu_check.flops_per_token(model, 2048, lora) == 4 * (n - lora) + 6 * lora + attention


def test_smoke_run_writes_a_smoke_record(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setenv("RATIONALE_BENCH_RESULTS_DIR", str(tmp_path))
    path = gpu_check.main(["--smoke"])
    assert path == tmp_path / "gpu_check.smoke.json"
    record = json.loads(path.read_text())
    assert record["smoke"] is True and record["benchmark"] == "gpu_check"
    figures = record["figures"]
    assert figures["device"] == "cpu" and figures["cuda_tests"]["run"] is False
    assert [(t["shape"], t["method"]) for t in figures["training"]] == [
        ("tiny", "full"),
        ("tiny", "lora"),
    ]
    for item in figures["training"]:
        assert "error" not in item and item["tokens_per_s"] > 0 and item["mfu"] is None
    lora = figures["training"][1]
    assert 0 < lora["lora_parameters"] < lora["linear_parameters"]
    assert lora["gradient_checkpointing"] and not figures["training"][0]["gradient_checkpointing"]
    scoring, generation = figures["scoring"]["tiny"], figures["generation"]["tiny"]
    assert "error" not in scoring and "error" not in generation
    # Batched scoring reads the same probabilities as the naive per-example path.
    assert scoring["max_probability_difference"] < 1e-5
    assert generation["tokens_per_s"] > 0 and generation["naive_tokens_per_s"] > 0
    # No GPU figure is claimed from a smoke run.
    assert all(t["measured"] is None and t["met"] is None for t in figures["targets"].values())


def test_scoring_throughput_smoke_writes_a_record(tmp_path, monkeypatch):
    monkeypatch.setenv("RATIONALE_BENCH_RESULTS_DIR", str(tmp_path))
    path = REPO / "benchmarks" / "scoring_throughput.py"
    spec = importlib.util.spec_from_file_location("scoring_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    record = json.loads(module.main(["--smoke", "--device", "cpu"]).read_text())
    figures = record["figures"]
    assert record["smoke"] is True and figures["device"] == "cpu"
    assert figures["max_probability_difference"] < 1e-5  # both paths read the same probability
    assert figures["examples_per_s"] > 0 and figures["peak_memory"] == "max RSS"
