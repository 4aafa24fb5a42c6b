"""Evaluate one fine-tuned configuration on the held-out split (and tuning, for calibration).

Writes predictions in the meds-evaluation schema (``subject_id, prediction_time,
boolean_value, predicted_boolean_value, predicted_boolean_probability``) plus the scoring mode
and the model's own rationale, and a metrics.json with AUROC and its confidence intervals.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rationale_bench.evaluate import diagnostics, metrics, scoring
from rationale_bench.text import formats
from rationale_bench.text.templates import template_for_model

# Columns of predictions.parquet; the report treats any other column of its long table as a factor.
PREDICTION_COLUMNS: tuple[str, ...] = (
    "subject_id",
    "prediction_time",
    "boolean_value",
    "predicted_boolean_value",
    "predicted_boolean_probability",
    "split",
    "scoring_mode",
    "forced_answer",
    "parsed_answer",
    "generated_text",
)


def age_band(age: pl.Expr) -> pl.Expr:
    return (
        pl.when(age < 70)
        .then(pl.lit("65-69"))
        .when(age < 75)
        .then(pl.lit("70-74"))
        .when(age < 80)
        .then(pl.lit("75-79"))
        .otherwise(pl.lit("80+"))
    )


def evaluate_configuration(
    model_path: str,
    adapter_dir: Path | None,
    run: Mapping[str, Any],
    prompts: pl.DataFrame,
    cohort: pl.DataFrame,
    cfg: Mapping[str, Any],
    prompt_settings: Mapping[str, Any] | None = None,
    teacher_rationales: Sequence[str] = (),
    processes: int = 1,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Score held-out (and tuning) subjects; return predictions and the metrics dictionary.

    ``run`` holds the configuration (``format``, ``n_train``, ``seed``) and, for fine-tuned
    formats, the training ``method``; without ``adapter_dir`` the base model is scored as is.
    ``teacher_rationales`` (the teacher's rationales of the format's style, for the training and
    tuning subjects) let the diagnostics count word-for-word copies among the model's own.
    ``processes`` > 1 splits the subjects over that many GPUs (one process each).
    """
    import torch

    torch.manual_seed(0)
    splits = ["held_out", "tuning"] if cfg["calibrate_on_tuning"] else ["held_out"]
    subjects = prompts.filter(pl.col("split").is_in(splits))
    scored, runtime = scoring.score_configuration(
        model_path,
        adapter_dir,
        run.get("method", "none"),
        subjects,
        run["format"],
        dict(cfg),
        prompt_settings or {},
        processes,
    )
    scored = scored.join(subjects.select("subject_id", "split"), on="subject_id").join(
        cohort.select("subject_id", pl.col("index_time").alias("prediction_time")), on="subject_id"
    )
    held = scored.filter(pl.col("split") == "held_out")
    tuning = scored.filter(pl.col("split") == "tuning")
    summary = held_out_summary(held, tuning, cfg)
    threshold = tuning_threshold(tuning)
    summary["parsed"] = parsed_summary(held["label"], held["parsed_answer"])
    summary["diagnostics"] = held_out_diagnostics(held, subjects, run["format"], teacher_rationales)
    summary.update(scoring_record(held, run, runtime, threshold))
    return hard_predictions(scored, threshold), summary


def held_out_summary(
    held: pl.DataFrame, tuning: pl.DataFrame, cfg: Mapping[str, Any]
) -> dict[str, Any]:
    """metrics.summarize of the held-out scores: tuning for calibration, sex and age subgroups."""
    y, p = held["label"].to_numpy(), held["predicted_boolean_probability"].to_numpy()
    return metrics.summarize(
        y,
        p,
        n_boot=cfg["bootstrap_resamples"],
        seed=cfg["bootstrap_seed"],
        tuning_true=tuning["label"].to_numpy() if tuning.height else None,
        tuning_score=tuning["predicted_boolean_probability"].to_numpy() if tuning.height else None,
        groups=subgroup_labels(held),
    )


def subgroup_labels(held: pl.DataFrame) -> dict[str, np.ndarray]:
    """Per-subject sex and age band, the subgroups metrics.json reports AUROC for."""
    return {
        "sex": held["sex"].to_numpy(),
        "age_band": held.select(age_band(pl.col("age")).alias("band"))["band"].to_numpy(),
    }


def tuning_threshold(tuning: pl.DataFrame) -> float:
    """A hard label for meds-evaluation: the Youden threshold chosen on tuning when available."""
    if not tuning.height:
        return 0.5
    return metrics.youden_threshold(
        tuning["label"].to_numpy(), tuning["predicted_boolean_probability"].to_numpy()
    )


def scoring_record(
    held: pl.DataFrame, run: Mapping[str, Any], runtime: Mapping[str, Any], threshold: float
) -> dict[str, Any]:
    """The configuration, where and how it was scored, the threshold and forced answers."""
    forced = held["forced_answer"].to_numpy()
    return {
        "config": {k: run[k] for k in ("format", "n_train", "seed")},
        # Where and how it was scored (device, precision, batch size, OOM back-offs).
        "device": runtime["device"],
        "precision": runtime["precision"],
        "inference": runtime,
        "scoring_mode": held["scoring_mode"][0],
        "threshold": threshold,
        "n_forced_answer": int(np.sum(forced)),
        "forced_answer_rate": float(np.mean(forced)) if len(forced) else 0.0,
    }


def hard_predictions(scored: pl.DataFrame, threshold: float) -> pl.DataFrame:
    """predictions.parquet: the meds-evaluation columns, hard labels at ``threshold``."""
    return (
        scored.with_columns(
            pl.col("prediction_time").cast(pl.Datetime("us")),
            pl.col("label").alias("boolean_value"),
            (pl.col("predicted_boolean_probability") >= threshold).alias("predicted_boolean_value"),
        )
        .select(PREDICTION_COLUMNS)
        .sort("split", "subject_id")
    )


def held_out_diagnostics(
    held: pl.DataFrame, prompts: pl.DataFrame, fmt: str, teacher_rationales: Sequence[str]
) -> dict[str, Any]:
    """The mechanism diagnostics of the held-out scoring (see :mod:`diagnostics`).

    Faithfulness is checked against the codes of the prompt the model read (``visible_codes``);
    prompts without that column (few-shot arms) get no factor counts.
    """
    if "visible_codes" in prompts.columns:
        held = held.join(prompts.select("subject_id", "visible_codes"), on="subject_id")
    visible = held["visible_codes"].to_list() if "visible_codes" in held.columns else None
    return diagnostics.diagnose(
        rationale_first=formats.format_spec(fmt).rationale_first,
        forced=held["forced_answer"].to_list(),
        parsed=held["parsed_answer"].to_list(),
        probabilities=held["predicted_boolean_probability"].to_list(),
        texts=held["generated_text"].to_list(),
        ages=held["age"].to_list(),
        sexes=held["sex"].to_list(),
        visible_codes=visible,
        training_texts=teacher_rationales,
    )


def parsed_summary(labels: pl.Series, parsed: pl.Series) -> dict[str, Any]:
    """The hard answers the model states (greedy token at the answer slot); failures counted.

    A parse failure (the top token is neither answer) counts as wrong in the accuracy, so a
    model cannot look better by refusing to answer.
    """
    n = labels.len()
    ok = parsed.is_not_null()
    correct = (parsed == labels).fill_null(False)
    pos, neg = labels, ~labels
    stated_yes = parsed.fill_null(False)
    stated_no = (~parsed).fill_null(False)
    return {
        "n": n,
        "n_parse_failures": int((~ok).sum()),
        "accuracy": float(correct.sum() / n) if n else float("nan"),
        "sensitivity": float((stated_yes & pos).sum() / pos.sum()) if pos.sum() else float("nan"),
        "specificity": float((stated_no & neg).sum() / neg.sum()) if neg.sum() else float("nan"),
        "rate_stated_yes": float(stated_yes.sum() / n) if n else float("nan"),
    }


def few_shot_arm_prompts(
    prompts: pl.DataFrame,
    histories: pl.DataFrame,
    cohort: pl.DataFrame,
    rationales: pl.DataFrame | None,
    configuration: Mapping[str, Any],
    question: str,
    model_path: str,
    max_seq_len: int,
    cfg: Mapping[str, Any],
    prompt_settings: Mapping[str, Any] | None = None,
) -> pl.DataFrame:
    """The scored prompts of a few-shot arm: demonstrations from the configuration's training
    subset before every tuning and held-out prompt, within the model's context."""
    from transformers import AutoTokenizer

    from rationale_bench.evaluate import fewshot
    from rationale_bench.text import formats

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    template = template_for_model(tokenizer, prompt_settings or {})
    spec = formats.format_spec(configuration["format"])
    longest_answer = max(formats.answer_words(template.answer_words).values(), key=len)
    slot = len(
        tokenizer(formats.ANSWER_PREFIX + longest_answer, add_special_tokens=False)["input_ids"]
    )
    # The completion's end of turn follows the answer in the model's context too.
    slot += len(template.end_token_ids(tokenizer))
    reserve = slot + (cfg["max_new_tokens"] if spec.rationale_first else 0)
    demo_ids = fewshot.select_demonstrations(
        cohort, configuration["n_train"], configuration["seed"], cfg["few_shot_k"]
    )
    scored = prompts.filter(pl.col("split").is_in(["held_out", "tuning"]))
    return fewshot.few_shot_prompts(
        scored,
        histories,
        demo_ids,
        rationales,
        question,
        tokenizer,
        max_seq_len,
        reserve,
        template.answer_words,
    )


def write_metrics(summary: Mapping[str, Any], path: Path) -> None:
    path.write_text(json.dumps(metrics.to_jsonable(summary), indent=2, allow_nan=False))
