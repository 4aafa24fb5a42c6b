"""Throughputs for `rationale-bench plan`: measured on a GPU where a measurement exists, scaled
to each model by parameter count and sequence length, and labelled "assumed" where none does.

Measurements are the records benchmarks/gpu_check.py writes (benchmarks/results/gpu_check.json;
smoke records are ignored). Each gives, for a model shape of N linear-layer parameters at a
sequence length S_ref: fine-tuning tokens/s (full and LoRA), prompt (prefill) tokens/s of
direct scoring, and generated tokens/s, with the attention share a_ref (attention FLOPs over
linear-layer FLOPs at S_ref). A model of N' parameters at length S' is planned with the
nearest measured shape (in log parameters) of the same kind:

    fine-tuning and prefill:  rate' = rate * N (1 + a_ref) / (N' (1 + a_ref S'/S_ref))
    generation:               rate' = rate * N / N'   (each decoding step reads every weight)

Where no record exists, ASSUMED (the 1B-shape rates the paper config used to carry) is scaled
the same way, and the plan prints it as assumed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Not measured: the Llama-3.2-1B-level rates formerly typed into configs/paper.yaml
# (models.llama32_1b.plan), kept only as a labelled fallback until a GPU record exists.
ASSUMED = {
    "finetune_full": {"tokens_per_s": 25000.0, "parameters": 1.236e9, "seq_len": 2048},
    "finetune_lora": {"tokens_per_s": 25000.0, "parameters": 1.236e9, "seq_len": 2048},
    "prefill": {"tokens_per_s": 150000.0, "parameters": 1.236e9, "seq_len": 1800},
    "generate": {"tokens_per_s": 15000.0, "parameters": 1.236e9, "seq_len": 1800},
}
SIZE_IN_NAME = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?|\d+p\d+)\s*([bBmM])(?![a-zA-Z])")


@dataclass(frozen=True)
class Rate:
    """Tokens per second of one kind of work for one model, and where the figure comes from."""

    tokens_per_s: float
    measured: bool
    basis: str

    @property
    def label(self) -> str:
        return "measured" if self.measured else "assumed"


def parameter_count(settings: Mapping[str, Any]) -> float | None:
    """A model's parameters: ``parameters`` in its settings, else the size in its source name
    (Qwen2.5-0.5B-Instruct, gemma-2-2b-it, ...); None when neither says."""
    if settings.get("parameters"):
        return float(settings["parameters"])
    name = str(settings.get("source", "")).split("/")[-1]
    match = SIZE_IN_NAME.search(name)
    if not match:
        return None
    value = float(match.group(1).replace("p", "."))
    return value * (1e9 if match.group(2).lower() == "b" else 1e6)


def read_measurements(results_dir: Path) -> list[dict[str, Any]]:
    """Reference points from the GPU check records in ``results_dir`` (smoke runs ignored)."""
    points = []
    for path in sorted(Path(results_dir).glob("gpu_check*.json")):
        record = json.loads(path.read_text())
        if record.get("smoke"):
            continue
        gpu = record.get("machine", {}).get("gpu", "unknown GPU")
        points += _points_of(record.get("figures", {}), f"{path.name}, {gpu}")
    return points


def _points_of(figures: Mapping[str, Any], source: str) -> list[dict[str, Any]]:
    points = []
    for item in figures.get("training", []):
        if "tokens_per_s" in item:
            points.append(
                {
                    "kind": f"finetune_{item['method']}",
                    "tokens_per_s": item["tokens_per_s"],
                    "parameters": item["linear_parameters"],
                    "seq_len": item["seq_len"],
                    "attention_share": item["attention_share"],
                    "source": f"{source}, {item['shape']}",
                }
            )
    for shape, item in figures.get("scoring", {}).items():
        if "prompt_tokens_per_s" in item:
            points.append(
                {
                    "kind": "prefill",
                    "tokens_per_s": item["prompt_tokens_per_s"],
                    "parameters": item["linear_parameters"],
                    "seq_len": item["mean_prompt_tokens"],
                    "attention_share": item["attention_share"],
                    "source": f"{source}, {shape}",
                }
            )
    for shape, item in figures.get("generation", {}).items():
        if "tokens_per_s" in item:
            points.append(
                {
                    "kind": "generate",
                    "tokens_per_s": item["tokens_per_s"],
                    "parameters": item["linear_parameters"],
                    "source": f"{source}, {shape}",
                }
            )
    return points


def rate_for(kind: str, parameters: float, seq_len: float, points: list[dict]) -> Rate:
    """The rate of ``kind`` for a model of ``parameters`` at ``seq_len`` (module docstring)."""
    candidates = [p for p in points if p["kind"] == kind]
    if candidates:
        ref = min(candidates, key=lambda p: abs(math.log(p["parameters"] / parameters)))
        measured, basis = True, ref["source"]
    else:
        ref = {"attention_share": 0.0, **ASSUMED[kind]}
        measured, basis = False, "1B-shape rate, no GPU check record: run benchmarks/gpu_check.py"
    scale = ref["parameters"] / parameters
    if kind != "generate":
        share = ref.get("attention_share", 0.0)
        scale *= (1 + share) / (1 + share * seq_len / ref["seq_len"])
    return Rate(ref["tokens_per_s"] * scale, measured, basis)
