"""Fine-tuning throughput, peak memory and loss agreement against TRL's SFTTrainer (baseline).

Both train the same model on the same tokenised examples (free-form rationale format of a
synthetic cohort, prompt masked: completion-only loss) with the same batches in the same order,
the same optimizer (AdamW), learning rate, cosine schedule without warm-up, clipping, precision
and number of steps. Ours: `rationale_bench.train.finetune.train`. Baseline: `trl.SFTTrainer` on a
pre-tokenised dataset (`input_ids` + `completion_mask`, `completion_only_loss=True`), fed in our
batch order (`train_sampling_strategy="sequential"`). Each method runs in its own process, so
peak memory (max RSS; on a GPU, peak allocated) is its own; both times include loading the model
and saving the result (ours also tokenising the examples, which TRL is handed ready-made), and
neither scores the tuning subjects (ours does in a study, for run.json's tuning loss). The
batches are identical and, with the same seed, so are the starting weights (LoRA adapters
included, as measured), so the per-step losses should agree to float rounding; the verdict
compares the mean loss of the last quarter of the steps against the steps' noise.

Prints tokens/s of each, the ratio ours / TRL (target >= 1), the loss agreement and, on a GPU,
model FLOPs utilisation (6 x parameters x tokens/s, over the device's dense bf16 peak).

Run: python benchmarks/trl_comparison.py [--model tiny|smollm2-arch] [--method full|lora]
  tiny: the locally built tiny Llama of the default study (no download).
  smollm2-arch: SmolLM2-135M's architecture, randomly initialised (no download; same compute).
  --smoke: 600 subjects, 16 examples, one epoch of 2 steps: does it still run?
Needs the 'bench' extra (trl==1.16.0, datasets==5.2.0); without it the script says so and exits.
Writes benchmarks/results/trl_comparison_<model>_<method>.json (see results_record.py).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_record import peak_rss_mb, write_result  # noqa: E402

QUESTION_STYLE = "free_form"
# Dense bf16 tensor-core peaks (FLOP/s) for the MFU line; other devices print no MFU.
PEAK_BF16 = {
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
}


def prepare(workdir: Path, n_subjects: int, arch: str) -> dict:
    """Synthetic cohort, histories, tiny tokenizer (+ model), prompts and template rationales."""
    import polars as pl

    from rationale_bench.cli import load_config
    from rationale_bench.cohort.build import build_cohort
    from rationale_bench.data.synthetic import generate_events
    from rationale_bench.teacher.generate import generate_rationales, teacher_view
    from rationale_bench.text.serialize import build_histories, build_prompts, history_text
    from rationale_bench.train.tiny_model import build_tiny_model

    config = load_config(REPO / "config.yaml")
    model_cfg = config["models"]["tiny"]
    events = generate_events(n_subjects, seed=7)
    cohort, _ = build_cohort(events, config["cohort"])
    # The grid's first serialization, as the workflow writes it (build_histories needs a variant).
    variant = config["grid"]["serialization"][0]
    histories = build_histories(events, cohort, dict(config["serialization"], variant=variant))
    train = histories.filter(pl.col("split") == "train")
    texts = [history_text(h, lines) for h, lines in train.select("header", "lines").iter_rows()]
    model_dir = workdir / "model"
    build = dict(model_cfg["build"], pretrain_steps=20, max_seq_len=model_cfg["max_seq_len"])
    build_tiny_model(texts, build, model_dir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if arch == "smollm2-arch":
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        # SmolLM2-135M's shape; its 49,152-token embedding holds every tiny-tokenizer id.
        torch.manual_seed(0)
        LlamaForCausalLM(
            LlamaConfig(
                vocab_size=49_152,
                hidden_size=576,
                intermediate_size=1536,
                num_hidden_layers=30,
                num_attention_heads=9,
                num_key_value_heads=3,
                max_position_embeddings=2048,
                tie_word_embeddings=True,
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        ).save_pretrained(model_dir)
    prompts = build_prompts(
        histories, tokenizer, config["serialization"], model_cfg["max_prompt_tokens"]
    )
    # The teacher sees the training and tuning subjects as the students' prompts show them.
    rationales, _ = generate_rationales(
        teacher_view(histories, prompts),
        QUESTION_STYLE,
        {"name": "template", "backend": "template", "seed": 0},
        workdir / "teacher_cache.jsonl",
    )
    for name, frame in (("prompts", prompts), ("cohort", cohort), ("rationales", rationales)):
        frame.write_parquet(workdir / f"{name}.parquet")
    return {"model_dir": str(model_dir), "max_seq_len": model_cfg["max_seq_len"]}


def training_settings(args: argparse.Namespace) -> dict:
    return {
        "method": args.method,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "learning_rate": args.learning_rate,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "gradient_accumulation_steps": 1,
        "warmup_ratio": 0.0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "max_grad_norm_abort": 1e9,
        "label_loss_weight": 1.0,
        "checkpoint_every": 0,
        "precision": "auto",
        "gradient_checkpointing": False,
        "group_by_length": False,
        # Ours scores the tuning subjects once after training (run.json's tuning loss); TRL
        # does no such pass, so ours is given none to score: both only train and save.
        "tuning_eval_subjects": 0,
    }


def load_inputs(workdir: Path):
    import polars as pl

    return (
        pl.read_parquet(workdir / "prompts.parquet"),
        pl.read_parquet(workdir / "cohort.parquet"),
        pl.read_parquet(workdir / "rationales.parquet"),
    )


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mb()  # this process's own (VmHWM), not its launcher's


def run_ours(workdir: Path, prep: dict, args: argparse.Namespace) -> dict:
    from rationale_bench.train.finetune import TrainingJob, train

    prompts, cohort, rationales = load_inputs(workdir)
    out = workdir / "ours"
    job = TrainingJob(
        model_path=prep["model_dir"],
        fmt=QUESTION_STYLE,
        n_train=args.n_train,
        seed=args.seed,
        training=training_settings(args),
        max_seq_len=prep["max_seq_len"],
        out_dir=out / "adapter",
        log_path=out / "train_log.jsonl",
        run_path=out / "run.json",
        checkpoint_dir=out / "checkpoint",
    )
    start, cpu = time.perf_counter(), time.process_time()
    run = train(job, prompts, cohort, rationales)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    log = [json.loads(x) for x in job.log_path.read_text().splitlines()]
    return {
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "tokens": sum(r["tokens"] for r in log),
        "losses": [r["loss"] for r in log],
        "steps": run["optimizer_steps"],
        "peak_mb": peak_memory_mb(),
        "precision": run["precision"],
    }


def trl_dataset(workdir: Path, prep: dict, args: argparse.Namespace, tokenizer):
    """Our examples in our batch order, laid out for TRL's sequential sampler."""
    from datasets import Dataset

    from rationale_bench.text import formats
    from rationale_bench.train.finetune import batch_schedule, build_examples, encode_examples

    prompts, cohort, rationales = load_inputs(workdir)
    frame = build_examples(prompts, cohort, rationales, QUESTION_STYLE, args.n_train, args.seed)
    examples = encode_examples(frame, QUESTION_STYLE, tokenizer, prep["max_seq_len"])
    order = [
        i for b in batch_schedule(len(examples), args.batch_size, args.epochs, args.seed) for i in b
    ]
    rows = [examples[i][0] for i in order]
    dataset = Dataset.from_dict(
        {
            "input_ids": [e.input_ids for e in rows],
            "completion_mask": [[int(k != formats.PROMPT) for k in e.segments] for e in rows],
        }
    )
    return dataset, sum(len(e.input_ids) for e in rows)


def trl_config(workdir: Path, args: argparse.Namespace, n_rows: int):
    """SFTConfig with our optimizer, schedule, clipping and precision; and our LoRA, if any."""
    import torch
    from trl import SFTConfig

    cuda = torch.cuda.is_available()
    config = SFTConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=1,
        max_steps=math.ceil(n_rows / args.batch_size),
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        train_sampling_strategy="sequential",
        completion_only_loss=True,
        max_length=None,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        use_cpu=not cuda,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    if args.method != "lora":
        return config, None
    from peft import LoraConfig

    lora = training_settings(args)["lora"]
    peft_config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        task_type="CAUSAL_LM",
    )
    return config, peft_config


def run_trl(workdir: Path, prep: dict, args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(prep["model_dir"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset, tokens = trl_dataset(workdir, prep, args, tokenizer)
    config, peft_config = trl_config(workdir, args, len(dataset))
    start, cpu = time.perf_counter(), time.process_time()
    trainer = SFTTrainer(
        model=prep["model_dir"],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.train()
    trainer.save_model(str(workdir / "trl" / "final"))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "tokens": tokens,
        "losses": [r["loss"] for r in trainer.state.log_history if "loss" in r],
        "steps": trainer.state.global_step,
        "peak_mb": peak_memory_mb(),
        "precision": "bf16" if config.bf16 else "fp32",
    }


def mfu_line(params: int, tokens_per_s: float) -> str | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    if peak is None:
        return f"MFU: no peak FLOP/s known for {name}"
    return f"MFU ({name}, bf16 peak {peak / 1e12:.0f} TFLOP/s): " + (
        f"{6 * params * tokens_per_s / peak:.1%}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "smollm2-arch"], default="tiny")
    parser.add_argument("--method", choices=["full", "lora"], default="full")
    parser.add_argument("--subjects", type=int, default=2500, help="synthetic cohort size")
    parser.add_argument("--n-train", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="600 subjects, 16 examples, 1 epoch")
    parser.add_argument("--which", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke and not args.which:
        args.subjects, args.n_train, args.epochs = 600, 16, 1
    if args.n_train % args.batch_size:
        parser.error("--n-train must be a multiple of --batch-size (full batches in both).")
    return args


def run_side(which: str, workdir: Path, args: argparse.Namespace) -> dict:
    """One side (ours or TRL) in its own process, so that each has its own peak memory."""
    cmd = [sys.executable, __file__, "--which", which, "--workdir", str(workdir)]
    for key in ("model", "method", "n_train", "batch_size", "epochs", "learning_rate", "seed"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{which} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT="))
    return json.loads(line[len("RESULT=") :])


def run_both(args: argparse.Namespace) -> tuple[dict, int]:
    """Both sides on the same prepared data; their results and the model's parameter count."""
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        prep = prepare(workdir, args.subjects, args.model)
        (workdir / "prep.json").write_text(json.dumps(prep))
        results = {which: run_side(which, workdir, args) for which in ("trl", "ours")}
        model = AutoModelForCausalLM.from_pretrained(prep["model_dir"])
        return results, sum(p.numel() for p in model.parameters())


def loss_agreement(ours: list[float], trl: list[float]) -> dict:
    """Per-step relative differences and the tail means (last quarter, at least 2 steps) with
    their standard errors; the tails agree within two combined standard errors."""
    per_step = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours, trl, strict=True)]
    k = max(2, len(ours) // 4)

    def tail(xs: list[float]) -> tuple[float, float]:
        last = xs[-k:]
        mean = sum(last) / k
        sd = math.sqrt(sum((x - mean) ** 2 for x in last) / (k - 1))
        return mean, sd / math.sqrt(k)

    (m_o, se_o), (m_b, se_b) = tail(ours), tail(trl)
    agree = abs(m_o - m_b) <= 2 * math.sqrt(se_o**2 + se_b**2) + 1e-4
    print(
        f"loss, mean of the last {k} steps: ours {m_o:.4f} +- {se_o:.4f}, TRL {m_b:.4f} +- "
        f"{se_b:.4f}: {'agree' if agree else 'DISAGREE'} within noise; largest per-step "
        f"relative difference {max(per_step):.2e} (same batches)"
    )
    return {
        "max_step_loss_relative_difference": float(f"{max(per_step):.3g}"),
        "tail_loss_ours": round(m_o, 5),
        "tail_loss_trl": round(m_b, 5),
        "tail_losses_agree": agree,
    }


def throughput(results: dict, args: argparse.Namespace, n_params: int) -> dict:
    """Tokens per second (wall and CPU) of both sides, printed and as figures."""
    ours, base = results["ours"], results["trl"]
    rate = {k: r["tokens"] / r["seconds"] for k, r in results.items()}
    cpu_rate = {k: r["tokens"] / r["cpu_seconds"] for k, r in results.items()}
    for name, key in (("TRL SFTTrainer", "trl"), ("rationale_bench", "ours")):
        r = results[key]
        print(
            f"{name:16s} {rate[key]:10.0f} tokens/s, {r['seconds']:.1f} s, "
            f"peak {r['peak_mb']:.0f} MB"
        )
    print(f"ratio ours / TRL: {rate['ours'] / rate['trl']:.2f}x tokens/s (target >= 1.0)")
    line = mfu_line(n_params, rate["ours"])
    if line:
        print(line.replace("MFU", "MFU ours"))
        print(mfu_line(n_params, rate["trl"]).replace("MFU", "MFU TRL"))
    print(f"ratio ours / TRL in CPU time: {cpu_rate['ours'] / cpu_rate['trl']:.2f}x tokens/CPU-s")
    return {
        "ours_tokens_per_s": round(rate["ours"], 1),
        "trl_tokens_per_s": round(rate["trl"], 1),
        "ratio_tokens_per_s": round(rate["ours"] / rate["trl"], 3),
        "ratio_tokens_per_cpu_s": round(cpu_rate["ours"] / cpu_rate["trl"], 3),
        "ours_peak_mb": round(ours["peak_mb"]),
        "trl_peak_mb": round(base["peak_mb"]),
    }


def main() -> None:
    args = parse_args()
    if args.which:
        prep = json.loads((args.workdir / "prep.json").read_text())
        run = run_ours if args.which == "ours" else run_trl
        print("RESULT=" + json.dumps(run(args.workdir, prep, args)))
        return
    try:
        import datasets  # noqa: F401
        import trl
    except ImportError as err:
        print(
            f"skipped: TRL is not installed ({err}). Install the 'bench' extra "
            "(pip install trl==1.16.0 datasets==5.2.0) to compare against SFTTrainer."
        )
        return
    results, n_params = run_both(args)
    ours, base = results["ours"], results["trl"]
    if ours["steps"] != base["steps"] or ours["tokens"] != base["tokens"]:
        sys.exit(f"not the same work: ours {ours}, trl {base}")
    print(
        f"{args.model} ({n_params:,} parameters), {args.method} fine-tuning, {args.n_train} "
        f"subjects x {args.epochs} epochs, batch {args.batch_size}, {ours['steps']} steps, "
        f"{ours['tokens']:,} tokens, precision {ours['precision']} / {base['precision']}, "
        f"trl {trl.__version__}"
    )
    figures = {"parameters": n_params, "steps": ours["steps"], "tokens": ours["tokens"]}
    figures |= {"precision": ours["precision"], **throughput(results, args, n_params)}
    figures |= loss_agreement(ours["losses"], base["losses"])
    path = write_result(
        f"trl_comparison_{args.model.replace('-', '_')}_{args.method}",
        {k: v for k, v in vars(args).items() if k not in ("workdir", "which")},
        figures,
        "TRL SFTTrainer (trl 1.16.0), same examples, batches, optimizer and schedule",
        smoke=args.smoke,
        packages=("torch", "transformers", "peft", "trl", "datasets", "accelerate"),
    )
    print(f"result: {path}")


if __name__ == "__main__":
    main()
