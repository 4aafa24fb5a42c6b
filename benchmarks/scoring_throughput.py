"""Direct scoring throughput and peak memory against a naive per-example `generate` baseline.

Both score the same held-out-like sequences with the same model (a Llama with a 49,152-token
vocabulary, as SmolLM2's, randomly initialised: no download), reading P(Yes)/(P(Yes)+P(No)) at
the next token. Ours: `scoring.answer_probabilities` (length-sorted batches, logits of the last
position only). Baseline: `model.generate(max_new_tokens=1, output_scores=True)` one example at a
time, the usual first attempt. Each method runs in its own process so peak memory (max RSS on
the CPU, peak allocated GPU memory on CUDA) is its own. Prints examples/s, the ratio (target
>= 5) and the largest probability difference, and writes benchmarks/results/scoring_throughput.json.

The device is CUDA when present (weights in bf16, as evaluation.precision auto), else the CPU
(one thread by default, so the figure does not depend on the machine's load; --threads 0 keeps
torch's default). --smoke: a few short sequences, seconds (run by the test suite).
Run: PYTHONPATH=src python benchmarks/scoring_throughput.py [--examples 64] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
VOCAB = 49_152


def build(seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=6,
        num_key_value_heads=6,
        max_position_embeddings=1024,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=1,
    )
    return LlamaForCausalLM(config).eval()


def sequences(n: int, low: int = 200, high: int = 600, seed: int = 1) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    return [[rng.randrange(3, VOCAB) for _ in range(rng.randrange(low, high))] for _ in range(n)]


def select_device(name: str, threads: int):
    """CUDA when asked or present ('auto'), else the CPU; the thread cap only on the CPU."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cpu" and threads > 0:
        torch.set_num_threads(threads)
    return device


def peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(method: str, args: argparse.Namespace) -> dict:
    import torch
    from gpu_check import naive_probability

    from rationale_bench.evaluate.scoring import answer_probabilities

    device = select_device(args.device, args.threads)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build().to(device=device, dtype=dtype)
    seqs = sequences(args.examples, args.min_len, args.max_len)
    yes, no = 11, 12
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    if method == "ours":
        probs, _ = answer_probabilities(model, seqs, {True: [yes], False: [no]}, 0, args.batch_size)
    else:  # the device check's baseline: one generate call per example
        with torch.inference_mode():
            probs = [naive_probability(model, seq, yes, no, device) for seq in seqs]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    return {
        "method": method,
        "device": str(device),
        "examples_per_s": len(seqs) / elapsed,
        "peak_mb": peak_mb(device),
        "probs": probs,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--min-len", type=int, default=200)
    parser.add_argument("--max-len", type=int, default=600)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch default)")
    parser.add_argument("--smoke", action="store_true", help="4 short sequences, seconds")
    parser.add_argument("--method", choices=["ours", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.examples, args.batch_size, args.min_len, args.max_len = 4, 2, 16, 32
    return args


def run_method(method: str, args: argparse.Namespace) -> dict:
    """One method in its own process, so that its peak memory is its own."""
    cmd = [sys.executable, __file__, "--method", method, "--examples", str(args.examples)]
    cmd += ["--batch-size", str(args.batch_size), "--min-len", str(args.min_len)]
    cmd += ["--max-len", str(args.max_len), "--device", args.device]
    cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> Path | None:
    from results_record import write_result

    args = parse_args(argv)
    if args.method:
        print(json.dumps(run(args.method, args)))
        return None
    naive, ours = run_method("naive", args), run_method("ours", args)
    diff = max(abs(a - b) for a, b in zip(ours["probs"], naive["probs"], strict=True))
    ratio = ours["examples_per_s"] / naive["examples_per_s"]
    print(
        f"{args.examples} examples of {args.min_len}-{args.max_len} tokens, vocabulary "
        f"{VOCAB:,}, on {ours['device']}"
    )
    print(
        f"naive per-example generate: {naive['examples_per_s']:.2f} examples/s, "
        f"peak {naive['peak_mb']:.0f} MB"
    )
    print(
        f"batched direct scoring:     {ours['examples_per_s']:.2f} examples/s, "
        f"peak {ours['peak_mb']:.0f} MB"
    )
    print(
        f"ratio ours / naive: {ratio:.1f}x (target >= 5); largest probability difference {diff:.2e}"
    )
    figures = {
        "device": ours["device"],
        "examples_per_s": ours["examples_per_s"],
        "naive_examples_per_s": naive["examples_per_s"],
        "speedup": ratio,
        "target_speedup": 5.0,
        "peak_mb": ours["peak_mb"],
        "naive_peak_mb": naive["peak_mb"],
        "peak_memory": "peak allocated GPU memory" if "cuda" in ours["device"] else "max RSS",
        "max_probability_difference": diff,
    }
    arguments = {k: v for k, v in vars(args).items() if k != "method"}
    path = write_result(
        "scoring_throughput",
        arguments,
        figures,
        "per-example model.generate(max_new_tokens=1)",
        smoke=args.smoke,
    )
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
