"""`rationale-bench plan` from measured throughputs: scaled to each model by parameter count and
sequence length, each rate labelled measured (with its record) or assumed."""

from __future__ import annotations

import json

import pytest
import yaml

from rationale_bench import cli, throughput
from rationale_bench.throughput import parameter_count, rate_for, read_measurements

REPO = cli.REPO

POINT = {
    "kind": "finetune_lora",
    "tokens_per_s": 20000.0,
    "parameters": 1e9,
    "seq_len": 2048,
    "attention_share": 0.1,
    "source": "gpu_check.json, NVIDIA H200, llama32_1b",
}


@pytest.mark.parametrize(
    "source, expected",
    [
        ("Qwen/Qwen2.5-0.5B-Instruct", 0.5e9),
        ("Qwen/Qwen2.5-1.5B-Instruct", 1.5e9),
        ("meta-llama/Llama-3.2-1B-Instruct", 1e9),
        ("google/gemma-2-2b-it", 2e9),
        ("meta-llama/Llama-3.1-8B-Instruct", 8e9),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", 7e9),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", 135e6),
        ("build_tiny", None),
    ],
)
def test_parameter_count_from_the_name(source, expected):
    assert parameter_count({"source": source}) == expected


def test_parameter_count_setting_wins():
    assert parameter_count({"source": "Org/Model-7B", "parameters": 6.7e9}) == 6.7e9


def test_measured_rates_scale_with_parameters_and_length():
    same = rate_for("finetune_lora", 1e9, 2048, [POINT])
    assert same.measured and same.label == "measured" and "H200" in same.basis
    assert same.tokens_per_s == pytest.approx(20000.0)
    assert rate_for("finetune_lora", 2e9, 2048, [POINT]).tokens_per_s == pytest.approx(10000.0)
    longer = rate_for("finetune_lora", 1e9, 4096, [POINT]).tokens_per_s
    assert longer == pytest.approx(20000.0 * 1.1 / 1.2)  # attention grows with the length
    generate = dict(POINT, kind="generate", tokens_per_s=3000.0)
    assert rate_for("generate", 8e9, 9999, [generate]).tokens_per_s == pytest.approx(375.0)


def test_nearest_measured_shape_is_the_reference():
    big = dict(POINT, parameters=8e9, tokens_per_s=3000.0, source="llama31_8b")
    assert rate_for("finetune_lora", 7e9, 2048, [POINT, big]).basis == "llama31_8b"
    assert rate_for("finetune_lora", 0.5e9, 2048, [POINT, big]).basis == POINT["source"]


def test_without_a_measurement_the_rate_is_assumed():
    rate = rate_for("finetune_full", 1.236e9, 2048, [POINT])  # only LoRA was measured
    assert not rate.measured and rate.label == "assumed"
    assert rate.tokens_per_s == throughput.ASSUMED["finetune_full"]["tokens_per_s"]


def gpu_check_record(smoke: bool) -> dict:
    train = {
        "shape": "llama32_1b",
        "method": "lora",
        "tokens_per_s": 20000.0,
        "linear_parameters": 1.2e9,
        "seq_len": 2048,
        "attention_share": 0.1,
    }
    scoring = {
        "prompt_tokens_per_s": 90000.0,
        "linear_parameters": 1.2e9,
        "mean_prompt_tokens": 1800,
        "attention_share": 0.05,
    }
    generation = {"tokens_per_s": 4000.0, "linear_parameters": 1.2e9}
    return {
        "smoke": smoke,
        "machine": {"gpu": "NVIDIA H200"},
        "figures": {
            "training": [train, {"shape": "llama31_8b", "method": "lora", "error": "OOM"}],
            "scoring": {"llama32_1b": scoring},
            "generation": {"llama32_1b": generation},
        },
    }


def test_records_are_read_and_smoke_records_ignored(tmp_path):
    (tmp_path / "gpu_check.json").write_text(json.dumps(gpu_check_record(False)))
    (tmp_path / "gpu_check.smoke.json").write_text(json.dumps(gpu_check_record(True)))
    points = read_measurements(tmp_path)
    assert sorted(p["kind"] for p in points) == ["finetune_lora", "generate", "prefill"]
    assert all(p["source"].startswith("gpu_check.json, NVIDIA H200") for p in points)


def test_paper_plan_labels_measured_and_assumed_rates(tmp_path, capsys):
    config = cli.load_config(REPO / "configs" / "paper.yaml")
    assumed = cli.estimate(config)
    assert all(not rate.measured for rates in assumed["rates"].values() for rate in rates.values())
    (tmp_path / "gpu_check.json").write_text(json.dumps(gpu_check_record(False)))
    measured = cli.estimate(config, read_measurements(tmp_path))
    rates = measured["rates"]["llama32_1b"]
    assert rates["finetune"].measured and rates["prefill"].measured and rates["generate"].measured
    assert measured["gpu_hours"] != assumed["gpu_hours"] and not measured["unsized"]
    cli.print_rates(measured, str(tmp_path))
    out = capsys.readouterr().out
    assert "measured: gpu_check.json, NVIDIA H200, llama32_1b" in out


def test_a_model_of_unknown_size_is_named_not_guessed(tmp_path, capsys):
    config = cli.load_config(REPO / "configs" / "paper.yaml")
    config["models"]["llama32_1b"]["source"] = "/data/models/my-model"
    cost = cli.estimate(config)
    assert cost["unsized"] == ["llama32_1b"] and "llama32_1b" not in cost["rates"]
    cli.print_rates(cost, "benchmarks/results")
    assert "set models.llama32_1b.parameters" in capsys.readouterr().out


def test_paper_config_has_no_typed_in_throughputs():
    paper = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    assert all("plan" not in model for model in paper["models"].values())
