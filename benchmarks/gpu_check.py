"""The prepared device check: CUDA tests, fine-tuning MFU, scoring and generation throughput.

One command on one H100/H200-class GPU, no network, no weights (sized for 8 minutes; untimed):

    PYTHONPATH=src python benchmarks/gpu_check.py

It needs only torch, transformers, peft, numpy (and pytest for the CUDA tests); polars and
snakemake are not imported by the measurements. The CUDA tests of the training path
(tests/test_cuda.py) import the project's finetune module, which needs polars: carry a wheel
(docs/gpu.md, "Device check") or they are reported as not run.

Models are randomly initialised with the real architectures (LLAMA_32_1B, LLAMA_31_8B below,
from the models' published config.json): they cost the same FLOPs as trained ones.

Fine-tuning is measured the way the project trains (finetune.py): fp32 weights and optimizer
(AdamW), bf16 autocast, SDPA attention, micro-batches of ``--train-batch`` x ``--seq-len``
tokens. MFU = model FLOPs per second / the GPU's dense bf16 peak, with (per token, S the
sequence length, N the parameters of all linear layers including the output head, N_lora the
adapter parameters):

    full FT:  6 N          + 12 n_layers d_model S      (PaLM appendix B; attention fwd+bwd)
    LoRA:     4 N + 6 N_lora + 12 n_layers d_model S    (frozen weights: forward 2N and the
                                                        activation gradients 2N, no weight
                                                        gradients; the adapters train fully)

Recomputation under gradient checkpointing is not counted (that would be hardware, not model,
FLOPs utilisation).

Scoring is measured the way evaluation scores (scoring.py, weights cast to bf16): direct
scoring (``answer_probabilities``: length-sorted batches, last-position logits) and rationale
generation (``generate_rationales``: batched greedy generation with KV cache), each against
per-example ``model.generate`` (the naive path) on a subset of the same inputs, with peak GPU
memory. A random model never writes ``Answer:``, so every rationale runs to ``--new-tokens``
(the worst case). Targets: full FT 1B MFU >= 35%; scoring and generation >= 5x naive.

``--smoke``: tiny shapes on the CPU, one step, a few examples (seconds); run by the test suite
so that the check never rots. Its JSON is marked smoke and goes to $RATIONALE_BENCH_RESULTS_DIR.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

# Published config.json of meta-llama/Llama-3.2-1B(-Instruct) and Llama-3.1-8B(-Instruct).
LLAMA_32_1B = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    vocab_size=128256,
    tie_word_embeddings=True,
    rope_theta=500000.0,
    max_position_embeddings=131072,
)
LLAMA_31_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=128256,
    tie_word_embeddings=False,
    rope_theta=500000.0,
    max_position_embeddings=131072,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=512,
    tie_word_embeddings=True,
    max_position_embeddings=512,
)
SHAPES = {"llama32_1b": LLAMA_32_1B, "llama31_8b": LLAMA_31_8B, "tiny": TINY}
# Dense bf16 peak (no sparsity), from the vendors' data sheets (docs/references.md).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
# The project's LoRA defaults (schemas/config.schema.yaml, training.lora).
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}
TARGETS = {"full_ft_1b_mfu": 0.35, "scoring_speedup": 5.0, "generation_speedup": 5.0}


def build_model(shape: str, device: Any, dtype: Any) -> Any:
    """A randomly initialised Llama of a published shape, built directly on ``device``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.to(dtype)


def linear_parameters(model: Any) -> int:
    """Parameters of every linear layer, the output head included (tied or not): the weights
    each token multiplies through."""
    import torch

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def flops_per_token(model: Any, seq_len: int, lora_params: int | None) -> float:
    """Model FLOPs per trained token (module docstring): full FT when lora_params is None."""
    config = model.config
    n = linear_parameters(model) - (lora_params or 0)
    attention = 12 * config.num_hidden_layers * config.hidden_size * seq_len
    if lora_params is None:
        return 6 * n + attention
    return 4 * n + 6 * lora_params + attention


def peak_flops(device: Any, override: float | None) -> float | None:
    import torch

    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: Any) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def timed(fn: Callable[[], Any], device: Any) -> tuple[Any, float]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def train_step_fn(model: Any, batch: dict, optimizer: Any, device: Any, precision: str):
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else None

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure_training(
    shape: str, method: str, checkpointing: bool, args: argparse.Namespace, device: Any
) -> dict:
    """Tokens/s, MFU and peak memory of fine-tuning steps, the project's way (fp32 weights and
    AdamW, bf16 autocast on the GPU)."""
    import torch

    model = build_model(shape, device, torch.float32)
    lora_params = None
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
        lora_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = torch.randint(3, model.config.vocab_size, (args.train_batch, args.seq_len), device=device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    step = train_step_fn(model, batch, optimizer, device, args.precision)
    for _ in range(args.warmup_steps):
        step()
    reset_peak(device)
    _, seconds = timed(lambda: [step() for _ in range(args.steps)], device)
    tokens = args.steps * args.train_batch * args.seq_len
    base = model.get_base_model() if lora_params else model
    fpt = flops_per_token(base, args.seq_len, lora_params)
    peak = peak_flops(device, args.peak_tflops)
    attention = 12 * base.config.num_hidden_layers * base.config.hidden_size * args.seq_len
    result = {
        "shape": shape,
        "method": method,
        "gradient_checkpointing": checkpointing,
        "seq_len": args.seq_len,
        # Attention FLOPs over the rest: how `rationale-bench plan` scales to other lengths.
        "attention_share": attention / (fpt - attention),
        "attention": base.config._attn_implementation,
        "tokens_per_s": tokens / seconds,
        "model_flops_per_token": fpt,
        "linear_parameters": linear_parameters(base) - (lora_params or 0),
        "lora_parameters": lora_params,
        "mfu": (fpt * tokens / seconds / peak) if peak else None,
        "peak_memory_gib": peak_gib(device),
        "steps": args.steps,
    }
    del model, optimizer, batch
    return result


def random_sequences(n: int, low: int, high: int, vocab: int, seed: int) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randrange(low, high))] for _ in range(n)]


def naive_probability(model: Any, seq: list[int], yes: int, no: int, device: Any) -> float:
    """The usual first attempt: generate one token per example and read its scores."""
    import torch

    out = model.generate(
        torch.tensor([seq], device=device),
        max_new_tokens=1,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    logp = torch.log_softmax(out.scores[0][0].float(), -1)
    return float(torch.sigmoid(logp[yes] - logp[no]))


def measure_scoring(model: Any, args: argparse.Namespace, device: Any) -> dict:
    """Direct scoring: batched last-position logits against per-example generate."""
    import torch

    from rationale_bench.evaluate.scoring import answer_probabilities

    seqs = random_sequences(args.examples, args.min_len, args.max_len, model.config.vocab_size, 1)
    yes, no = 11, 12
    reset_peak(device)
    with torch.inference_mode():
        (probs, _), ours_s = timed(
            lambda: answer_probabilities(
                model, seqs, {True: [yes], False: [no]}, 0, args.score_batch
            ),
            device,
        )
    ours_peak = peak_gib(device)
    subset = seqs[: args.naive_examples]
    reset_peak(device)
    with torch.inference_mode():
        naive, naive_s = timed(
            lambda: [naive_probability(model, s, yes, no, device) for s in subset], device
        )
    ours_rate, naive_rate = len(seqs) / ours_s, len(subset) / naive_s
    mean_len = sum(len(s) for s in seqs) / len(seqs)
    config, n = model.config, linear_parameters(model)
    return {
        "linear_parameters": n,
        "prompt_tokens_per_s": ours_rate * mean_len,
        "mean_prompt_tokens": mean_len,
        # Forward attention (4 L d S) over forward linear FLOPs (2 N), for plan's length scaling.
        "attention_share": 2 * config.num_hidden_layers * config.hidden_size * mean_len / n,
        "examples": len(seqs),
        "naive_examples": len(subset),
        "prompt_tokens": [args.min_len, args.max_len],
        "batch_size": args.score_batch,
        "examples_per_s": ours_rate,
        "naive_examples_per_s": naive_rate,
        "speedup": ours_rate / naive_rate,
        "max_probability_difference": max(abs(a - b) for a, b in zip(probs, naive, strict=False)),
        "peak_memory_gib": ours_peak,
        "naive_peak_memory_gib": peak_gib(device),
    }


class RandomTokenizer:
    """What generate_rationales needs of a tokenizer, for a random model: ids, no text."""

    eos_token_id = 2
    pad_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [5, 6]}  # "Answer:": two ids a random model rarely writes


def generated_tokens(rows: list[list[int]], stops: set[int]) -> int:
    total = 0
    for row in rows:
        for token in row:
            if token in stops:
                break
            total += 1
    return total


def measure_generation(model: Any, args: argparse.Namespace, device: Any) -> dict:
    """Rationale generation: batched greedy KV-cache generation against per-example generate."""
    import torch

    from rationale_bench.evaluate.scoring import generate_rationales

    tok = RandomTokenizer()
    prompts = random_sequences(
        args.gen_examples, args.min_len, args.max_len, model.config.vocab_size, 2
    )
    reset_peak(device)
    with torch.inference_mode():
        rows, ours_s = timed(
            lambda: generate_rationales(model, tok, prompts, args.new_tokens, args.gen_batch, {2}),
            device,
        )
    ours_peak = peak_gib(device)
    subset = prompts[: args.naive_gen_examples]

    def naive() -> list[list[int]]:
        out = []
        for p in subset:
            ids = torch.tensor([p], device=device)
            row = model.generate(
                ids, max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0
            )
            out.append(row[0, len(p) :].tolist())
        return out

    reset_peak(device)
    with torch.inference_mode():
        naive_rows, naive_s = timed(naive, device)
    ours_rate = generated_tokens(rows, {0, 2}) / ours_s
    naive_rate = generated_tokens(naive_rows, {0, 2}) / naive_s
    return {
        "linear_parameters": linear_parameters(model),
        "prompts": len(prompts),
        "naive_prompts": len(subset),
        "max_new_tokens": args.new_tokens,
        "batch_size": args.gen_batch,
        "tokens_per_s": ours_rate,
        "naive_tokens_per_s": naive_rate,
        "speedup": ours_rate / naive_rate,
        "peak_memory_gib": ours_peak,
        "naive_peak_memory_gib": peak_gib(device),
    }


def install_wheels(folder: Path) -> list[str]:
    """Offline install of the wheels carried to the device (polars, pytest: docs/gpu.md)."""
    wheels = sorted(str(w) for w in Path(folder).glob("*.whl"))
    if wheels:
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet"]
        subprocess.run([*cmd, *wheels], check=True)
    return [Path(w).name for w in wheels]


def run_cuda_tests(args: argparse.Namespace) -> dict:
    """tests/test_cuda.py in a subprocess (they skip without a GPU)."""
    if args.smoke or args.skip_tests:
        return {"run": False, "reason": "smoke run" if args.smoke else "--skip-tests"}
    missing = [m for m in ("pytest", "polars") if importlib.util.find_spec(m) is None]
    if missing:
        return {"run": False, "reason": f"not installed: {', '.join(missing)} (carry wheels)"}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "tests/test_cuda.py",
        "-q",
        "-rA",
        "-p",
        "no:cacheprovider",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=args.tests_timeout
    )
    tail = done.stdout.strip().splitlines()[-25:]
    print("\n".join(tail), flush=True)
    return {"run": True, "returncode": done.returncode, "summary": tail[-1] if tail else ""}


def check_targets(figures: dict) -> dict:
    """Each target with its measured figure and whether it is met (None: not measured)."""
    full = next((t for t in figures["training"] if t["method"] == "full"), {})
    measured = {
        "full_ft_1b_mfu": full.get("mfu") if full.get("shape") == "llama32_1b" else None,
        "scoring_speedup": figures["scoring"].get("llama32_1b", {}).get("speedup"),
        "generation_speedup": figures["generation"].get("llama32_1b", {}).get("speedup"),
    }
    return {
        k: {"target": TARGETS[k], "measured": v, "met": None if v is None else v >= TARGETS[k]}
        for k, v in measured.items()
    }


GPU_DEFAULTS = dict(
    seq_len=2048,
    train_batch=4,
    steps=5,
    warmup_steps=2,
    examples=256,
    naive_examples=16,
    min_len=1536,
    max_len=2048,
    score_batch=32,
    gen_examples=64,
    naive_gen_examples=2,
    new_tokens=320,
    gen_batch=64,
)
SMOKE_DEFAULTS = dict(
    seq_len=32,
    train_batch=2,
    steps=1,
    warmup_steps=0,
    examples=6,
    naive_examples=2,
    min_len=8,
    max_len=16,
    score_batch=4,
    gen_examples=3,
    naive_gen_examples=1,
    new_tokens=4,
    gen_batch=2,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, seconds")
    parser.add_argument("--skip-tests", action="store_true", help="do not run tests/test_cuda.py")
    parser.add_argument("--tests-timeout", type=int, default=240)
    parser.add_argument(
        "--wheels", type=Path, default=None, help="install these carried wheels first (offline)"
    )
    parser.add_argument("--precision", default=None, help="bf16 (GPU default) or fp32 (CPU)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the GPU peak")
    parser.add_argument(
        "--training", default=None, help="shape:method[:gc],... to fine-tune (gc: checkpointing)"
    )
    parser.add_argument("--inference", default=None, help="shapes to score and generate with")
    for key in GPU_DEFAULTS:
        parser.add_argument("--" + key.replace("_", "-"), type=int, default=None)
    args = parser.parse_args(argv)
    defaults = SMOKE_DEFAULTS if args.smoke else GPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.training is None:
        args.training = (
            "tiny:full,tiny:lora:gc"
            if args.smoke
            # The 8B shape's activations at 4 x 2048 tokens need recomputation to fit.
            else "llama32_1b:full,llama32_1b:lora,llama31_8b:lora:gc"
        )
    if args.inference is None:
        args.inference = "tiny" if args.smoke else "llama32_1b,llama31_8b"
    return args


def guarded(label: str, fn: Callable[[], dict]) -> dict:
    """A measurement, or the error that stopped it (an OOM on one shape spoils no other)."""
    import torch

    print(f"== {label}", flush=True)
    try:
        result = fn()
    except (torch.OutOfMemoryError, RuntimeError) as error:
        result = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
    gc.collect()  # the last shape's model and optimizer, before the next one is built
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print({k: v for k, v in result.items() if not isinstance(v, list)}, flush=True)
    return result


def measure_inference(shape: str, args: argparse.Namespace, device: Any) -> tuple[dict, dict]:
    import torch

    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model = build_model(shape, device, dtype).eval()
    scoring = guarded(f"direct scoring {shape}", partial(measure_scoring, model, args, device))
    generation = guarded(f"generation {shape}", partial(measure_generation, model, args, device))
    del model
    return scoring, generation


def main(argv: list[str] | None = None) -> Path:
    import torch
    from results_record import write_result

    args = parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke for the CPU check")
    device = torch.device("cpu" if args.smoke else "cuda:0")
    args.precision = args.precision or ("fp32" if device.type == "cpu" else "bf16")
    installed = install_wheels(args.wheels) if args.wheels else []
    figures: dict[str, Any] = {"device": str(device), "installed_wheels": installed}
    figures["cuda_tests"] = run_cuda_tests(args)
    figures["training"] = []
    for item in args.training.split(","):
        shape, method, *flags = item.split(":")
        checkpointing = args.gradient_checkpointing or "gc" in flags
        label = f"fine-tuning {shape} {method}{' (checkpointing)' if checkpointing else ''}"
        measure = partial(measure_training, shape, method, checkpointing, args, device)
        result = guarded(label, measure)
        figures["training"].append({"shape": shape, "method": method, **result})
    figures["scoring"], figures["generation"] = {}, {}
    for shape in args.inference.split(","):
        scoring, generation = measure_inference(shape, args, device)
        figures["scoring"][shape], figures["generation"][shape] = scoring, generation
    figures["targets"] = check_targets(figures)
    figures["lora_flops_formula"] = "4*N_linear_frozen + 6*N_lora + 12*n_layers*d_model*seq_len"
    figures["full_flops_formula"] = "6*N_linear + 12*n_layers*d_model*seq_len"
    path = write_result(
        "gpu_check",
        vars(args),
        figures,
        baseline="per-example model.generate (scoring, generation); dense bf16 peak (MFU)",
        smoke=args.smoke,
        packages=("torch", "transformers", "peft", "accelerate", "numpy", "polars"),
    )
    print(f"wrote {path}", flush=True)
    return path


if __name__ == "__main__":
    main()
