"""Scoring held-out subjects: P(Yes) / (P(Yes) + P(No)) at the answer slot.

Label-only models are read right after the prompt (``Answer:`` appended). Rationale models
first write their own greedy rationale (left-padded batches, KV cache); the probability is read
where they write ``Answer:``. A model that never reaches the answer slot within
``max_new_tokens`` is forced to it, and that is counted. No teacher text is ever used here.

On the GPU: the model runs on CUDA when one is present (else the CPU), in the precision
``evaluation.precision`` resolves to by the same rules as training (``auto``: bf16 on a GPU
that has it, fp32 on the CPU); LoRA adapters are merged into the base weights; sequences are
sorted by length and batched (``evaluation.batch_size``, or ``auto`` from free GPU memory); a
batch that runs out of memory is halved and retried, and the log says so. With several GPUs
(``resources.gpu > 1``) one process per GPU scores an interleaved share of the subjects and the
shares are merged back in the original order, so the result is that of one process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rationale_bench.text import formats
from rationale_bench.text.templates import PLAIN, PromptTemplate, template_for_model

if TYPE_CHECKING:  # polars is imported where frames are built: the batched scoring paths
    # run without it (benchmarks/gpu_check.py on a bare GPU image).
    import polars as pl

log = logging.getLogger(__name__)

# Auto batch size: the share of free GPU memory the batch may plan to use, and its bounds.
AUTO_MEMORY_SHARE = 0.6
AUTO_MAX_BATCH = 256
CPU_AUTO_BATCH = 8


class ScoringError(ValueError):
    """Scoring cannot run as configured."""


@dataclass
class InferenceRuntime:
    """Where and how a model is scored; recorded in metrics.json.

    ``oom_halvings`` lists every out-of-memory back-off as (stage, from size, to size).
    """

    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int | None = None
    batch_size_setting: int | str = 8
    processes: int = 1
    oom_halvings: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def inference_device(local_rank: int = 0) -> torch.device:
    """CUDA (this process's GPU) when present, else the CPU."""
    return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")


def inference_precision(setting: str, device: torch.device) -> str:
    """``evaluation.precision`` resolved by the training rules (finetune.resolve_precision)."""
    from rationale_bench.train.finetune import TrainingError, resolve_precision

    try:
        return resolve_precision(setting, device)
    except TrainingError as error:
        message = str(error).replace("training.precision", "evaluation.precision")
        raise ScoringError(message) from error


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_finetuned(
    model_path: str,
    adapter_dir: Path | None,
    method: str,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> tuple[Any, Any]:
    """The model for inference, on ``device`` in ``precision``: base + LoRA adapter merged into
    the weights, the saved full weights, or (without an adapter folder) the base model itself.

    A LoRA adapter is merged in fp32 (exact) before the cast, so inference runs one plain model
    (no adapter matmuls per layer) whatever the precision.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = DTYPES[precision]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter_dir is None:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    elif method == "lora":
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(adapter_dir, dtype=dtype)
    model.to(device=device, dtype=dtype)
    model.eval()
    return model, tokenizer


def auto_batch_size(model: Any, max_len: int, device: torch.device) -> int:
    """A batch size planned from free GPU memory: the KV cache and the widest activations of
    one sequence of ``max_len`` tokens, within AUTO_MEMORY_SHARE of what is free. On the CPU
    (no reliable free-memory figure) CPU_AUTO_BATCH. The OOM back-off covers a wrong plan."""
    if device.type != "cuda":
        return CPU_AUTO_BATCH
    config = model.config
    free, _ = torch.cuda.mem_get_info(device)
    elem = next(model.parameters()).element_size()
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    kv = 2 * config.num_hidden_layers * kv_heads * head_dim * max_len * elem
    intermediate = getattr(config, "intermediate_size", 4 * config.hidden_size)
    activations = max_len * (4 * config.hidden_size + 2 * intermediate) * elem
    return int(max(1, min(AUTO_MAX_BATCH, AUTO_MEMORY_SHARE * free // (kv + activations))))


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def run_in_batches(
    order: Sequence[int],
    batch_size: int,
    score_batch: Callable[[list[int]], None],
    runtime: InferenceRuntime | None = None,
    stage: str = "scoring",
) -> int:
    """Call ``score_batch`` on consecutive chunks of ``order``; a chunk that runs out of memory
    is halved and retried (and the smaller size kept for the rest). Returns the final size."""
    start = 0
    while start < len(order):
        chunk = list(order[start : start + batch_size])
        try:
            score_batch(chunk)
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not _is_out_of_memory(error) or batch_size == 1:
                raise
            smaller = max(1, batch_size // 2)
            log.warning(
                "%s: out of memory at batch size %d; halving to %d and retrying",
                stage,
                batch_size,
                smaller,
            )
            if runtime is not None:
                runtime.oom_halvings.append((stage, batch_size, smaller))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            batch_size = smaller
            continue
        start += len(chunk)
    return batch_size


def _left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = [[pad_id] * (width - len(s)) + list(s) for s in sequences]
    mask = [[0] * (width - len(s)) + [1] * len(s) for s in sequences]
    return {
        "input_ids": torch.tensor(ids, device=device),
        "attention_mask": torch.tensor(mask, device=device),
    }


def _autocast(runtime: InferenceRuntime | None) -> Any:
    if runtime is None:
        return contextlib.nullcontext()
    from rationale_bench.train.finetune import autocast

    return autocast(runtime.precision, runtime.torch_device)


def _device_of(model: Any, runtime: InferenceRuntime | None) -> torch.device:
    if runtime is not None:
        return runtime.torch_device
    return next(model.parameters()).device


@torch.inference_mode()
def answer_probabilities(
    model: Any,
    sequences: Sequence[Sequence[int]],
    answer_ids: dict[bool, list[int]],
    pad_id: int,
    batch_size: int,
    runtime: InferenceRuntime | None = None,
) -> tuple[list[float], list[bool | None]]:
    """At the next token after each sequence (ending in ``Answer:``): P(Yes) / (P(Yes) + P(No)),
    and the greedy answer (True/False, or None when the top token is neither, a parse failure).

    Sequences are sorted by length so batches waste little padding, and only the last
    position's logits are computed (``logits_to_keep=1``): with a large vocabulary the full
    logits of a long history would dominate memory. Positions count from each sequence's first
    real token, so left padding (and so the batch a sequence lands in) changes nothing.
    """
    device = _device_of(model, runtime)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    probs = [0.0] * len(sequences)
    parsed: list[bool | None] = [None] * len(sequences)
    yes, no = answer_ids[True], answer_ids[False]

    def score_batch(chunk: list[int]) -> None:
        batch = _left_pad([sequences[i] for i in chunk], pad_id, device)
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        with _autocast(runtime):
            out = model(**batch, position_ids=positions, logits_to_keep=1, use_cache=False)
        logits = out.logits[:, -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        log_yes = torch.logsumexp(logp[:, yes], dim=-1)
        log_no = torch.logsumexp(logp[:, no], dim=-1)
        p = torch.sigmoid(log_yes - log_no)
        top = logits.argmax(dim=-1).tolist()
        for i, value, token in zip(chunk, p.tolist(), top, strict=True):
            probs[i] = value
            parsed[i] = True if token in yes else False if token in no else None

    final = run_in_batches(order, batch_size, score_batch, runtime, "answer scoring")
    if runtime is not None:
        runtime.batch_size = min(runtime.batch_size, final)
    return probs, parsed


def _find(haystack: Sequence[int], needle: Sequence[int]) -> int:
    n = len(needle)
    for i in range(len(haystack) - n + 1):
        if list(haystack[i : i + n]) == list(needle):
            return i
    return -1


@torch.inference_mode()
def generate_rationales(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int,
    stop_ids: set[int] | None = None,
    runtime: InferenceRuntime | None = None,
) -> list[list[int]]:
    """Greedy continuations of each prompt (KV cache), stopped once every sequence wrote
    ``Answer:`` (or ended its turn: EOS, or a chat template's end-of-turn token, in
    ``stop_ids``)."""
    eos = sorted((stop_ids or {tokenizer.eos_token_id}) - {None, tokenizer.pad_token_id})
    from transformers import StoppingCriteria, StoppingCriteriaList

    device = _device_of(model, runtime)
    slot = torch.tensor(
        tokenizer(formats.ANSWER_PREFIX, add_special_tokens=False)["input_ids"], device=device
    )

    class AnswerSlotReached(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            return (input_ids[:, -len(slot) :] == slot).all(dim=-1)

    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    outputs: list[list[int]] = [[] for _ in prompt_ids]

    def generate_batch(chunk: list[int]) -> None:
        batch = _left_pad([prompt_ids[i] for i in chunk], tokenizer.pad_token_id, device)
        with _autocast(runtime):
            generated = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                # A model saved after gradient-checkpointed training has use_cache off.
                use_cache=True,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos or tokenizer.eos_token_id,
                stopping_criteria=StoppingCriteriaList([AnswerSlotReached()]),
            )
        width = batch["input_ids"].shape[1]
        for i, row in zip(chunk, generated[:, width:].tolist(), strict=True):
            outputs[i] = row

    final = run_in_batches(order, batch_size, generate_batch, runtime, "rationale generation")
    if runtime is not None:
        runtime.batch_size = min(runtime.batch_size, final)
    return outputs


def answer_slot_sequence(
    prompt: Sequence[int], generated: Sequence[int], slot: Sequence[int], stop_ids: set[int]
) -> tuple[list[int], bool]:
    """Prompt + own rationale up to and including ``Answer:``; forced if never reached."""
    at = _find(generated, slot)
    if at >= 0:
        return list(prompt) + list(generated[:at]) + list(slot), False
    kept = []
    for token in generated:
        if token in stop_ids:
            break
        kept.append(token)
    return list(prompt) + kept + list(slot), True


def score_subjects(
    model: Any,
    tokenizer: Any,
    prompts: pl.DataFrame,
    fmt: str,
    cfg: Mapping[str, Any],
    template: PromptTemplate = PLAIN,
    runtime: InferenceRuntime | None = None,
) -> pl.DataFrame:
    """Score every row of ``prompts``; returns probability, forced flag and generated text.

    ``template`` wraps each prompt as in training (the model's chat template, or plain text);
    ``runtime`` (device, precision, batch size) defaults to the model's device in fp32.
    """
    import polars as pl

    answer_ids = formats.answer_token_ids(tokenizer, template.answer_words)
    slot = tokenizer(formats.ANSWER_PREFIX, add_special_tokens=False)["input_ids"]
    prompt_ids = [
        formats.prompt_ids(tokenizer, formats.scoring_prompt(fmt, p), template)
        for p in prompts["prompt"].to_list()
    ]
    rationale_first = formats.format_spec(fmt).rationale_first
    longest = max((len(p) for p in prompt_ids), default=1) + len(slot) + 1
    runtime = _runtime_for(
        model, cfg, runtime, longest + (cfg["max_new_tokens"] if rationale_first else 0)
    )
    if rationale_first:
        stop_ids = {tokenizer.pad_token_id, *template.stop_token_ids(tokenizer)}
        generated = generate_rationales(
            model,
            tokenizer,
            prompt_ids,
            cfg["max_new_tokens"],
            runtime.batch_size,
            stop_ids,
            runtime,
        )
        built = [
            answer_slot_sequence(p, g, slot, stop_ids)
            for p, g in zip(prompt_ids, generated, strict=True)
        ]
        sequences = [b[0] for b in built]
        forced = [b[1] for b in built]
        texts = tokenizer.batch_decode(
            [s[len(p) :] for s, p in zip(sequences, prompt_ids, strict=True)],
            skip_special_tokens=True,
        )
        mode = "after_rationale"
    else:
        sequences = [p + slot for p in prompt_ids]
        forced = [False] * len(sequences)
        texts = [None] * len(sequences)
        mode = "direct"
    probs, parsed = answer_probabilities(
        model,
        sequences,
        answer_ids,
        tokenizer.pad_token_id,
        runtime.batch_size,
        runtime,
    )
    return prompts.select("subject_id", "label", "age", "sex").with_columns(
        predicted_boolean_probability=pl.Series(probs, dtype=pl.Float64),
        forced_answer=pl.Series(forced, dtype=pl.Boolean),
        parsed_answer=pl.Series(parsed, dtype=pl.Boolean),
        generated_text=pl.Series(texts, dtype=pl.String),
        scoring_mode=pl.lit(mode),
    )


def _precision_of(model: Any) -> str:
    dtype = next(model.parameters()).dtype
    return {v: k for k, v in DTYPES.items()}.get(dtype, "fp32")


def _runtime_for(
    model: Any, cfg: Mapping[str, Any], runtime: InferenceRuntime | None, longest: int
) -> InferenceRuntime:
    """The runtime to score with: the given one (its batch size resolved if not yet), or the
    model's own device and dtype with the configured batch size."""
    if runtime is None:
        device = next(model.parameters()).device
        runtime = InferenceRuntime(
            device=str(device), precision=_precision_of(model), batch_size_setting=cfg["batch_size"]
        )
    if runtime.batch_size is None:
        setting = runtime.batch_size_setting
        runtime.batch_size = (
            auto_batch_size(model, longest, runtime.torch_device)
            if setting == "auto"
            else int(setting)
        )
        if setting == "auto":
            log.info(
                "batch size auto: %d (longest sequence %d tokens)", runtime.batch_size, longest
            )
    return runtime


def score_shard(
    model_path: str,
    adapter_dir: Path | None,
    method: str,
    subjects: pl.DataFrame,
    fmt: str,
    cfg: Mapping[str, Any],
    prompt_settings: Mapping[str, Any],
    local_rank: int = 0,
) -> tuple[pl.DataFrame, InferenceRuntime]:
    """Load the model on this process's device and score ``subjects`` (one process's share)."""
    device = inference_device(local_rank)
    precision = inference_precision(cfg.get("precision", "auto"), device)
    model, tokenizer = load_finetuned(model_path, adapter_dir, method, device, precision)
    template = template_for_model(tokenizer, prompt_settings)
    runtime = InferenceRuntime(
        device=str(device),
        precision=precision,
        batch_size=None,
        batch_size_setting=cfg["batch_size"],
    )
    log.info("scoring %d subjects on %s in %s", subjects.height, device, precision)
    scored = score_subjects(model, tokenizer, subjects, fmt, cfg, template, runtime)
    return scored, runtime


def shard_positions(lengths: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Row positions of one process's share: every world_size-th row in length order, so each
    process gets as many long prompts as the others."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return sorted(order[rank::world_size])


def score_configuration(
    model_path: str,
    adapter_dir: Path | None,
    method: str,
    subjects: pl.DataFrame,
    fmt: str,
    cfg: Mapping[str, Any],
    prompt_settings: Mapping[str, Any],
    processes: int = 1,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Scores of ``subjects`` (in their order) and the runtime record for metrics.json.

    With ``processes > 1`` one process per GPU (torchrun) scores its share; the shares are
    merged back into the original row order, so the frame equals that of one process.
    """
    if processes <= 1:
        scored, runtime = score_shard(
            model_path, adapter_dir, method, subjects, fmt, cfg, prompt_settings
        )
        return scored, runtime.as_dict()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rationale-bench-scoring-") as tmp:
        work = Path(tmp)
        subjects.write_parquet(work / "subjects.parquet")
        spec = {
            "model_path": model_path,
            "adapter_dir": str(adapter_dir) if adapter_dir else None,
            "method": method,
            "fmt": fmt,
            "cfg": dict(cfg),
            "prompt_settings": dict(prompt_settings),
            "subjects": str(work / "subjects.parquet"),
            "out_dir": str(work),
        }
        (work / "job.json").write_text(json.dumps(spec, default=str))
        run_scoring_processes(work / "job.json", processes)
        return merge_shards(work, processes)


def run_scoring_processes(spec: Path, processes: int) -> None:
    """Start one scoring process per GPU (torchrun, through this interpreter)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "rationale_bench.evaluate.scoring",
        "--job",
        str(spec),
    ]
    log.info("launching: %s", " ".join(cmd))
    threads = str(max(1, (os.cpu_count() or 1) // processes))
    env = {"OMP_NUM_THREADS": threads, **os.environ}
    subprocess.run(cmd, check=True, stdout=sys.stderr, stderr=sys.stderr, env=env)


def merge_shards(work: Path, processes: int) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The processes' scores in the original row order, and one runtime record."""
    import polars as pl

    parts = [pl.read_parquet(work / f"part-{rank}.parquet") for rank in range(processes)]
    scored = pl.concat(parts).sort("__row").drop("__row")
    runtimes = [json.loads((work / f"runtime-{r}.json").read_text()) for r in range(processes)]
    merged = dict(runtimes[0])
    merged["device"] = ",".join(r["device"] for r in runtimes)
    merged["batch_size"] = min(r["batch_size"] for r in runtimes)
    merged["processes"] = processes
    merged["oom_halvings"] = [h for r in runtimes for h in r["oom_halvings"]]
    return scored, merged


def score_from_spec(spec_path: Path) -> None:
    """One process's share of a multi-GPU scoring job (started by run_scoring_processes)."""
    import polars as pl

    from rationale_bench.train.finetune import data_parallel_from_env

    spec = json.loads(Path(spec_path).read_text())
    dp = data_parallel_from_env()
    try:
        subjects = pl.read_parquet(spec["subjects"]).with_row_index("__row")
        lengths = subjects["prompt"].str.len_chars().to_list()
        mine = subjects[shard_positions(lengths, dp.rank, dp.world_size)]
        adapter = Path(spec["adapter_dir"]) if spec["adapter_dir"] else None
        scored, runtime = score_shard(
            spec["model_path"],
            adapter,
            spec["method"],
            mine,
            spec["fmt"],
            spec["cfg"],
            spec["prompt_settings"],
            dp.local_rank,
        )
        runtime.processes = dp.world_size
        out = Path(spec["out_dir"])
        scored.with_columns(mine["__row"]).write_parquet(out / f"part-{dp.rank}.parquet")
        (out / f"runtime-{dp.rank}.json").write_text(json.dumps(runtime.as_dict()))
        dp.barrier()
    finally:
        dp.close()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m rationale_bench.evaluate.scoring --job spec.json``, one per GPU (torchrun)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--job", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format=f"[rank {os.environ.get('RANK', '0')}] %(message)s"
    )
    score_from_spec(args.job)


if __name__ == "__main__":
    main()
