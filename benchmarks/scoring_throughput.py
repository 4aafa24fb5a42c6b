"""Direct scoring throughput and peak memory against a naive per-example `generate` baseline.

Both score the same held-out-like sequences with the same model (a Llama with a 49,152-token
vocabulary, as SmolLM2's, randomly initialised: no download), reading P(Yes)/(P(Yes)+P(No)) at
the next token. Ours: `scoring.answer_probabilities` (length-sorted batches, logits of the last
position only). Baseline: `model.generate(max_new_tokens=1, output_scores=True)` one example at a
time, the usual first attempt. Each method runs in its own process so peak memory (max RSS) is
its own. Prints examples/s, the ratio (target >= 5) and the largest probability difference.
Run: python benchmarks/scoring_throughput.py [--examples 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

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


def sequences(n: int, seed: int = 1) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    return [[rng.randrange(3, VOCAB) for _ in range(rng.randrange(200, 600))] for _ in range(n)]


def run(method: str, n: int, batch_size: int) -> dict:
    import torch

    from rationale_bench.scoring import answer_probabilities

    torch.set_num_threads(1)
    model = build()
    seqs = sequences(n)
    yes, no = 11, 12
    start = time.perf_counter()
    if method == "ours":
        probs, _ = answer_probabilities(model, seqs, {True: [yes], False: [no]}, 0, batch_size)
    else:
        probs = []
        with torch.inference_mode():
            for seq in seqs:
                out = model.generate(
                    torch.tensor([seq]),
                    max_new_tokens=1,
                    do_sample=False,
                    output_scores=True,
                    return_dict_in_generate=True,
                    pad_token_id=0,
                )
                logp = torch.log_softmax(out.scores[0][0].float(), -1)
                probs.append(float(torch.sigmoid(logp[yes] - logp[no])))
    elapsed = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "examples_per_s": n / elapsed, "peak_mb": peak_mb, "probs": probs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--method", choices=["ours", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        print(json.dumps(run(args.method, args.examples, args.batch_size)))
        return
    results = {}
    for method in ("naive", "ours"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--method",
                method,
                "--examples",
                str(args.examples),
                "--batch-size",
                str(args.batch_size),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
    ours, naive = results["ours"], results["naive"]
    diff = max(abs(a - b) for a, b in zip(ours["probs"], naive["probs"], strict=True))
    print(f"{args.examples} examples of 200-600 tokens, vocabulary {VOCAB:,}, 1 thread")
    print(
        f"naive per-example generate: {naive['examples_per_s']:.2f} examples/s, "
        f"peak {naive['peak_mb']:.0f} MB"
    )
    print(
        f"batched direct scoring:     {ours['examples_per_s']:.2f} examples/s, "
        f"peak {ours['peak_mb']:.0f} MB"
    )
    print(
        f"ratio ours / naive: {ours['examples_per_s'] / naive['examples_per_s']:.1f}x "
        f"(target >= 5); largest probability difference {diff:.2e}"
    )


if __name__ == "__main__":
    main()
