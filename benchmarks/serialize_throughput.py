"""Serialization throughput: histories and token budgets, against a per-subject baseline.

Generates a synthetic cohort, writes every serialization variant (subjects/s), trains a BPE
tokenizer on it (no download), then fits the prompts to a token budget two ways on the same
subjects:
- ours: ``serialize.build_prompts`` (distinct lines tokenized once in one batch, kept prefix from
  a cumulative sum, every prompt checked exactly in batches);
- baseline: the usual first attempt, per subject: tokenize each line, keep the newest that fit,
  then re-tokenize the prompt one line shorter until it fits.
Prints subjects/s of each, their ratio, how often both keep the same lines, and peak RSS.
Run: python benchmarks/serialize_throughput.py [--subjects 20000] [--variant timeline_recent]
     python benchmarks/serialize_throughput.py --smoke   # 400 people: does it still run?
Writes benchmarks/results/serialize_throughput.json (see results_record.py).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import polars as pl

from rationale_bench.cohort.build import build_cohort, resolve_definition
from rationale_bench.data.synthetic import generate_events
from rationale_bench.text.serialize import (
    SERIALIZATIONS,
    build_histories,
    build_prompts,
    history_of,
    question_block,
)
from rationale_bench.train.tiny_model import train_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_record import write_result  # noqa: E402

COHORT = resolve_definition({})  # the default cohort definition
QUESTION = "Will this patient be diagnosed with dementia within 5 years? Answer Yes or No."


def per_subject_prompts(histories: pl.DataFrame, tokenizer, budget: int) -> list[int]:
    """The baseline: lines kept per subject, one tokenizer call per line and per prompt."""
    question = question_block(QUESTION)
    kept_counts = []
    for row in histories.iter_rows(named=True):
        fixed = len(tokenizer(row["header"] + question)["input_ids"])
        keep, used = 0, fixed
        for line in row["lines"]:
            n = len(tokenizer(line + "\n", add_special_tokens=False)["input_ids"])
            if used + n > budget:
                break
            used, keep = used + n, keep + 1
        while keep and len(tokenizer(history_of(row, keep) + question)["input_ids"]) > budget:
            keep -= 1
        kept_counts.append(keep)
    return kept_counts


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20_000)
    parser.add_argument("--variant", default="timeline_recent", choices=SERIALIZATIONS)
    parser.add_argument("--max-prompt-tokens", type=int, default=384)
    parser.add_argument("--smoke", action="store_true", help="400 people")
    args = parser.parse_args()
    if args.smoke:
        args.subjects = 400

    events = generate_events(args.subjects, seed=7)
    cohort, _ = build_cohort(events, COHORT)
    print(f"{args.subjects} people, {events.height:,} events, {cohort.height} in the cohort")
    histories, figures = {}, {}
    for variant in SERIALIZATIONS:
        start = time.perf_counter()
        histories[variant] = build_histories(events, cohort, {"variant": variant})
        seconds = time.perf_counter() - start
        figures[f"histories_{variant}_subjects_per_s"] = round(cohort.height / seconds)
        print(f"build_histories {variant:17s} {cohort.height / seconds:10,.0f} subjects/s")
    chosen = histories[args.variant]
    texts = [history_of(row) for row in chosen.head(3000).iter_rows(named=True)]
    tokenizer = train_tokenizer(texts, vocab_size=4000)

    start = time.perf_counter()
    ours = build_prompts(chosen, tokenizer, {"question": QUESTION}, args.max_prompt_tokens)
    ours_rate = chosen.height / (time.perf_counter() - start)
    start = time.perf_counter()
    baseline_kept = per_subject_prompts(chosen, tokenizer, args.max_prompt_tokens)
    baseline_rate = chosen.height / (time.perf_counter() - start)
    ours_kept = (chosen["lines"].list.len() - ours["n_lines_dropped"]).to_list()
    pairs = list(zip(ours_kept, baseline_kept, strict=True))
    same = sum(a == b for a, b in pairs) / chosen.height
    never_fewer = all(a >= b for a, b in pairs)
    print(
        f"build_prompts ({args.variant}, budget {args.max_prompt_tokens}): "
        f"ours {ours_rate:,.0f} subjects/s, per-subject baseline {baseline_rate:,.0f} subjects/s, "
        f"ratio {ours_rate / baseline_rate:.1f}x; same kept lines for {100 * same:.2f}% "
        f"(ours never keeps fewer: {never_fewer}); "
        f"{100 * ours['truncated'].mean():.1f}% truncated; peak RSS {peak_rss_mb():,.0f} MB"
    )
    figures |= {
        "cohort_subjects": cohort.height,
        "prompts_ours_subjects_per_s": round(ours_rate),
        "prompts_baseline_subjects_per_s": round(baseline_rate),
        "prompts_ours_vs_baseline": round(ours_rate / baseline_rate, 3),
        "same_kept_lines_share": round(same, 4),
        "ours_never_keeps_fewer": never_fewer,
        "truncated_share": round(float(ours["truncated"].mean()), 4),
        "peak_rss_mb": round(peak_rss_mb()),
    }
    baseline = "per-subject prompt fitting: one tokenizer call per line, re-tokenize until it fits"
    path = write_result(
        "serialize_throughput",
        vars(args),
        figures,
        baseline,
        smoke=args.smoke,
        packages=("polars", "tokenizers", "transformers"),
    )
    print(f"result: {path}")


if __name__ == "__main__":
    main()
