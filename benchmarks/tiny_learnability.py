"""Can the embedded default's tiny model learn a label from as few cases as the study gives it?

The default study asks its tiny, locally built model to come within 0.05 AUROC of logistic
regression (issue #13). This benchmark measures why it does not, on the default study's own
synthetic population, subjects and settings. It fine-tunes the tiny model label-only with the
library functions the study's `finetune` and `evaluate` rules call, on a ladder of labels:

  age_common  age >= the training split's 80th age percentile: deterministic, about 20% cases
  age_rare    age >= the quantile that gives the real label's prevalence: deterministic, rare
  age_noisy   drawn from P(real label | age), a logistic fit of the real label on age alone:
              the real label's age component, as rare and as noisy (a model that reads age
              perfectly reaches the printed `oracle_auroc`, not 1)
  real        the study's label: ADRD within five years
(The age thresholds are deterministic in the exact age; the prompt states whole years, so the
patients in the threshold's own year of age are ambiguous to a model that reads the prompt.)

Baseline (named, measured in the same run, on the same training subjects and held-out
patients): the study's logistic regression on bag-of-codes + age + sex, its regularisation
chosen on the tuning split. Printed per label: the tiny model's held-out AUROC, the baseline's,
the gap (the study's target is <= 0.05 on `real`) and the share of the baseline's discrimination
above chance that the tiny model reaches, (AUROC - 0.5) / (baseline AUROC - 0.5).

Run: python benchmarks/tiny_learnability.py [--preset default|best] [--threads 2]
  default: config.yaml's tiny model and fine-tuning, unchanged (recipe `config`).
  best:    the best build measured for issue #13 (4 layers, 128 wide, 1000 pretraining steps;
           its build is the slow part), fine-tuned by two recipes: `lr3e-4_prompt384`, the best
           measured on the real label, and `lr1e-3_prompt192`, which learns a deterministic age
           threshold.
  --smoke: 1,500 subjects, a 5-step pretraining, one epoch of 100 subjects per label: does it
           still run?
The headline figures (`real_auroc`, `real_gap_vs_baseline`) are the recipe closest to the
baseline on the real label.
Writes benchmarks/results/tiny_learnability_<preset>.json (see results_record.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_record import write_result  # noqa: E402

LABELS = ("age_common", "age_rare", "age_noisy", "real")
# Per preset: overrides of config.yaml's tiny-model build, and the fine-tuning recipes run on that
# one build (training overrides and the prompt budget).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"build": {}, "recipes": {"config": {"training": {}}}},
    "best": {
        "build": {
            "num_layers": 4,
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_heads": 4,
            "pretrain_steps": 1000,
        },
        "recipes": {
            # The best measured on the real label.
            "lr3e-4_prompt384": {"training": {"learning_rate": 3e-4}, "max_prompt_tokens": 384},
            # Learns a deterministic age threshold.
            "lr1e-3_prompt192": {"training": {"learning_rate": 1e-3}, "max_prompt_tokens": 192},
        },
    },
}
SMOKE_BUILD = {"pretrain_steps": 5}
SMOKE_TRAINING = {"epochs": 1, "batch_size": 4}


def study_config(args: argparse.Namespace) -> dict[str, Any]:
    """config.yaml with defaults filled and the preset's build (smoke sizes applied)."""
    from rationale_bench.cli import load_config
    from rationale_bench.config_check import fill_horizon

    config = load_config(REPO / "config.yaml")
    config["serialization"]["question"] = fill_horizon(
        config["serialization"]["question"], config["cohort"]["horizon_days"]
    )
    build = config["models"]["tiny"]["build"]
    build.update(PRESETS[args.preset]["build"], **(SMOKE_BUILD if args.smoke else {}))
    return config


def recipe_config(config: dict[str, Any], recipe: dict[str, Any], smoke: bool) -> dict[str, Any]:
    """``config`` with a recipe's training overrides and prompt budget for the tiny model."""
    config = copy.deepcopy(config)
    tiny = config["models"]["tiny"]
    tiny.setdefault("training", {}).update(recipe["training"], **(SMOKE_TRAINING if smoke else {}))
    tiny["max_prompt_tokens"] = recipe.get("max_prompt_tokens", tiny["max_prompt_tokens"])
    return config


def prepare(config: dict[str, Any], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The default study's population, cohort, histories and tiny model."""
    import polars as pl

    from rationale_bench import study
    from rationale_bench.cohort.build import build_cohort
    from rationale_bench.data.synthetic import generate_events
    from rationale_bench.text.serialize import build_histories, history_of
    from rationale_bench.train.tiny_model import build_tiny_model

    synthetic = config["data"]["synthetic"]
    events = generate_events(
        args.subjects,
        synthetic["seed"],
        date.fromisoformat(synthetic["data_start"]),
        date.fromisoformat(synthetic["data_end"]),
    )
    cohort, _ = build_cohort(events, config["cohort"])
    variant = config["grid"]["serialization"][0]
    histories = build_histories(events, cohort, dict(config["serialization"], variant=variant))
    train = histories.filter(pl.col("split") == "train")
    start = time.perf_counter()
    build_tiny_model(
        [history_of(row) for row in train.iter_rows(named=True)],
        study.build_settings(config, "tiny"),
        workdir / "model",
    )
    build_s = time.perf_counter() - start
    return {"cohort": cohort, "histories": histories, "build_s": build_s}


def recipe_prompts(config: dict[str, Any], histories, workdir: Path):
    """The tiny model's prompts under the recipe's prompt budget."""
    from transformers import AutoTokenizer

    from rationale_bench import study
    from rationale_bench.text.serialize import build_prompts
    from rationale_bench.text.templates import template_for_model

    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    settings = study.model_settings(config, "tiny")
    return build_prompts(
        histories,
        tokenizer,
        {"question": config["serialization"]["question"]},
        settings["max_prompt_tokens"],
        template_for_model(tokenizer, settings),
    )


def age_risk(cohort) -> Any:
    """P(real label | age) for every subject: a logistic fit on the training split's ages."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    train = cohort["split"].to_numpy() == "train"
    age = cohort["age"].to_numpy().reshape(-1, 1)
    labels = cohort["label"].to_numpy().astype(int)
    fit = LogisticRegression().fit(age[train], labels[train])
    return np.asarray(fit.predict_proba(age)[:, 1])


def relabelled(cohort, label: str, seed: int):
    """The cohort with ``label`` as its label, and the oracle score where one is known."""
    import numpy as np
    import polars as pl

    if label == "real":
        return cohort, None
    age = cohort["age"]
    train_age = cohort.filter(pl.col("split") == "train")["age"]
    if label == "age_common":
        return cohort.with_columns(label=age >= train_age.quantile(0.8)), age.to_numpy()
    prevalence = cohort.filter(pl.col("split") == "train")["label"].mean()
    if label == "age_rare":
        threshold = train_age.quantile(1 - prevalence)
        return cohort.with_columns(label=age >= threshold), age.to_numpy()
    risk = age_risk(cohort)
    draws = np.random.default_rng(seed).random(len(risk)) < risk
    return cohort.with_columns(label=pl.Series(draws)), risk


def held_out_auroc(cohort, scores) -> float | None:
    """AUROC of ``scores`` (one per cohort row) on the held-out split; None with one class."""
    from sklearn.metrics import roc_auc_score

    held = cohort["split"].to_numpy() == "held_out"
    labels = cohort["label"].to_numpy()[held]
    if scores is None or labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, scores[held]))


def tiny_model_run(config, data, cohort, args, workdir: Path, label: str) -> dict[str, Any]:
    """Fine-tune the tiny model label-only on ``cohort``'s labels; score the held-out split."""
    from rationale_bench import study
    from rationale_bench.evaluate.evaluation import evaluate_configuration
    from rationale_bench.train.finetune import TrainingJob, train

    prompts = (
        data["prompts"].drop("label").join(cohort.select("subject_id", "label"), on="subject_id")
    )
    run_dir = workdir / data["recipe"] / label
    job = TrainingJob(
        model_path=str(workdir / "model"),
        fmt="label_only",
        n_train=args.n_train,
        seed=args.seed,
        training=study.training_settings(config, "tiny"),
        max_seq_len=config["models"]["tiny"]["max_seq_len"],
        out_dir=run_dir / "adapter",
        log_path=run_dir / "train_log.jsonl",
        run_path=run_dir / "run.json",
        checkpoint_dir=run_dir / "checkpoint",
        prompt_settings=study.model_settings(config, "tiny"),
    )
    start = time.perf_counter()
    run = train(job, prompts, cohort, None)
    _, summary = evaluate_configuration(
        str(workdir / "model"),
        run_dir / "adapter",
        run,
        prompts,
        cohort,
        dict(config["evaluation"], calibrate_on_tuning=False),
        study.model_settings(config, "tiny"),
    )
    return {
        "auroc": summary["auroc"],
        "probability_sd": summary["diagnostics"]["probability_sd"],
        "optimizer_steps": run["optimizer_steps"],
        "final_loss": run["final_loss"],
        "seconds": time.perf_counter() - start,
    }


def baseline_auroc(config, data, cohort, args) -> float:
    """The study's logistic regression on the same training subjects, scored held-out."""
    from rationale_bench.evaluate.baselines import baseline_rows, fit_and_score

    train, tuning, held = baseline_rows(data["histories"], cohort, args.n_train, args.seed)
    fit = fit_and_score("logistic_regression", train, tuning, held, args.seed, config["baselines"])
    return held_out_auroc(held, fit.p_held)  # held: the held-out rows alone, each scored


def label_ladder(config, data, args) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Each label's cohort and the figures that do not depend on the fine-tuning recipe: its
    cases, the oracle's and the baseline's held-out AUROC (computed once, for every recipe)."""
    import polars as pl

    ladder = {}
    for label in args.labels.split(","):
        cohort, oracle = relabelled(data["cohort"], label, args.seed)
        train_cases = cohort.filter(pl.col("split") == "train")["label"]
        held_cases = cohort.filter(pl.col("split") == "held_out")["label"]
        ladder[label] = (
            cohort,
            {
                "prevalence": float(train_cases.mean()),
                "training_split_cases": int(train_cases.sum()),
                "held_out_cases": int(held_cases.sum()),
                "oracle_auroc": held_out_auroc(cohort, oracle),
                "baseline_auroc": baseline_auroc(config, data, cohort, args),
            },
        )
    return ladder


def measure_label(config, data, args, workdir: Path, label: str, rung) -> dict[str, Any]:
    """One label under one recipe: the ladder's figures and the tiny model's held-out AUROC."""
    cohort, figures = rung
    row = {**figures, **tiny_model_run(config, data, cohort, args, workdir, label)}
    if row["auroc"] is not None and row["baseline_auroc"] is not None:
        row["gap_vs_baseline"] = row["baseline_auroc"] - row["auroc"]
        row["share_of_baseline_above_chance"] = (row["auroc"] - 0.5) / (row["baseline_auroc"] - 0.5)
    return row


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--subjects", type=int, help="synthetic population (config's by default)")
    parser.add_argument("--n-train", type=int, default=1200, help="training subjects per label")
    parser.add_argument("--seed", type=int, default=1, help="training subset and noise seed")
    parser.add_argument("--labels", default=",".join(LABELS), help="comma-separated subset")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: does it still run?")
    args = parser.parse_args()
    if args.smoke:
        args.subjects, args.n_train = 1500, 100
    return args


def measure_recipe(config, data, args, workdir: Path, recipe: str, ladder) -> dict[str, Any]:
    """Every label of the ladder under one fine-tuning recipe, and its settings."""
    config = recipe_config(config, PRESETS[args.preset]["recipes"][recipe], args.smoke)
    data = dict(data, recipe=recipe, prompts=recipe_prompts(config, data["histories"], workdir))
    tiny = config["models"]["tiny"]
    result: dict[str, Any] = {
        "training": tiny.get("training", {}),
        "max_prompt_tokens": tiny["max_prompt_tokens"],
        "labels": {},
    }
    for label, rung in ladder.items():
        row = measure_label(config, data, args, workdir, label, rung)
        result["labels"][label] = row
        print(recipe, label, json.dumps({k: _rounded(v) for k, v in row.items()}), flush=True)
    return result


def headline(recipes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The real label under the recipe that comes closest to the baseline."""
    reals = {name: r["labels"]["real"] for name, r in recipes.items() if "real" in r["labels"]}
    if not reals:
        return {}
    best = max(reals, key=lambda name: reals[name]["auroc"] or 0.0)
    return {
        "real_best_recipe": best,
        "real_auroc": reals[best]["auroc"],
        "real_baseline_auroc": reals[best]["baseline_auroc"],
        "real_gap_vs_baseline": reals[best].get("gap_vs_baseline"),
    }


def main() -> None:
    import torch

    args = parse_args()
    torch.set_num_threads(args.threads)
    config = study_config(args)
    args.subjects = args.subjects or config["data"]["synthetic"]["n_subjects"]
    figures: dict[str, Any] = {"recipes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data = prepare(config, args, workdir)
        figures["build_s"] = data["build_s"]
        ladder = label_ladder(config, data, args)
        for recipe in PRESETS[args.preset]["recipes"]:
            figures["recipes"][recipe] = measure_recipe(config, data, args, workdir, recipe, ladder)
    figures.update(headline(figures["recipes"]))
    arguments = dict(vars(args), build=config["models"]["tiny"]["build"])
    path = write_result(
        f"tiny_learnability_{args.preset}",
        arguments,
        figures,
        baseline="logistic regression (bag-of-codes + age + sex) on the same subjects",
        smoke=args.smoke,
    )
    print("wrote", path)


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


if __name__ == "__main__":
    main()
