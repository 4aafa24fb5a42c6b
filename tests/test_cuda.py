"""The CUDA paths, on a GPU: bf16 autocast, LoRA and full fine-tuning, gradient checkpointing,
SDPA attention, checkpoint and resume, and evaluation on the device. Every test skips without a
GPU; benchmarks/gpu_check.py runs this file on the device machine (docs/gpu.md).
"""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from test_finetune import TRAINING as CPU_TRAINING

from rationale_bench.text.serialize import build_prompts
from rationale_bench.train.finetune import Preempted, TrainingJob, load_model, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# The CPU tests' settings, in the automatic precision (bf16 where the GPU supports it).
TRAINING = {**CPU_TRAINING, "precision": "auto"}


@pytest.fixture(scope="module")
def prompts(synthetic_histories, tiny_tokenizer):
    question = {"question": "Will this patient be diagnosed with dementia within 5 years?"}
    return build_prompts(synthetic_histories, tiny_tokenizer, question, max_prompt_tokens=256)


def make_job(tmp_path, model_dir, name: str, **overrides) -> TrainingJob:
    run_dir = tmp_path / name
    return TrainingJob(
        model_path=str(model_dir),
        fmt="label_only",
        n_train=48,
        seed=1,
        training=dict(TRAINING, **overrides),
        max_seq_len=512,
        out_dir=run_dir / "adapter",
        log_path=run_dir / "train_log.jsonl",
        run_path=run_dir / "run.json",
        checkpoint_dir=run_dir / "checkpoint",
    )


def losses(job: TrainingJob) -> list[float]:
    return [json.loads(line)["loss"] for line in job.log_path.read_text().splitlines()]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_training_runs_in_bf16_on_the_gpu(
    tmp_path, tiny_model_dir, prompts, synthetic_cohort, method
):
    cohort, _ = synthetic_cohort
    job = make_job(tmp_path, tiny_model_dir, method, method=method)
    run = train(job, prompts, cohort, None)
    assert run["device"] == "cuda"
    assert run["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert all(np.isfinite(losses(job))) and run["optimizer_steps"] == 6
    saved = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    assert (job.out_dir / saved).exists()


def test_gradient_checkpointing_on_the_gpu_trains_the_same(
    tmp_path, tiny_model_dir, prompts, synthetic_cohort
):
    cohort, _ = synthetic_cohort
    plain = make_job(tmp_path, tiny_model_dir, "plain", precision="fp32")
    checkpointed = make_job(
        tmp_path, tiny_model_dir, "ckpt", precision="fp32", gradient_checkpointing=True
    )
    train(plain, prompts, cohort, None)
    train(checkpointed, prompts, cohort, None)
    np.testing.assert_allclose(losses(checkpointed), losses(plain), rtol=1e-4)


def test_sdpa_attention_on_the_gpu_matches_eager(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model, _ = load_model(str(tiny_model_dir), dict(TRAINING, method="full"))
    assert model.config._attn_implementation == "sdpa"
    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    ids = torch.tensor([tiny_tokenizer("a history of visits Answer:")["input_ids"]], device="cuda")
    with torch.no_grad():
        got = model.cuda().eval()(input_ids=ids).logits
        want = eager.cuda().eval()(input_ids=ids).logits
    assert (got - want).abs().max() < 1e-4


def test_checkpoint_and_resume_on_the_gpu(
    tmp_path, tiny_model_dir, prompts, synthetic_cohort, monkeypatch
):
    cohort, _ = synthetic_cohort
    whole = make_job(tmp_path, tiny_model_dir, "whole", precision="fp32")
    full = train(whole, prompts, cohort, None)
    job = make_job(tmp_path, tiny_model_dir, "interrupted", precision="fp32")
    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def step_then_sigterm(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_sigterm)
    with pytest.raises(Preempted):
        train(job, prompts, cohort, None)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    state = torch.load(job.checkpoint_dir / "state.pt", weights_only=False)
    assert state["cuda_rng"] is not None  # the GPU's random state is saved and restored
    job.log_path.unlink()
    resumed = train(job, prompts, cohort, None)
    assert resumed["resumed_from_step"] == 4 and resumed["device"] == "cuda"
    from safetensors.torch import load_file

    a = load_file(whole.out_dir / "adapter_model.safetensors")
    b = load_file(job.out_dir / "adapter_model.safetensors")
    for key in a:  # GPU kernels need not be bitwise deterministic; fp32 agrees closely
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    assert full["final_loss"] == pytest.approx(resumed["final_loss"], rel=1e-4)


def test_evaluation_runs_on_the_gpu_in_bf16(tiny_model_dir, prompts):
    from rationale_bench.evaluate.scoring import score_configuration

    held = prompts.head(12)
    cfg = {"max_new_tokens": 6, "batch_size": "auto", "precision": "auto"}
    scored, runtime = score_configuration(
        str(tiny_model_dir), None, "none", held, "free_form", cfg, {}
    )
    assert runtime["device"] == "cuda:0" and runtime["batch_size"] >= 1
    assert runtime["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    exact, _ = score_configuration(
        str(tiny_model_dir), None, "none", held, "label_only", dict(cfg, precision="fp32"), {}
    )
    low, _ = score_configuration(str(tiny_model_dir), None, "none", held, "label_only", cfg, {})
    diff = low["predicted_boolean_probability"] - exact["predicted_boolean_probability"]
    assert diff.abs().max() < 0.02  # bf16 reads nearly the fp32 probabilities
    assert scored["predicted_boolean_probability"].is_between(0, 1).all()


def test_fp32_scores_on_the_gpu_do_not_depend_on_the_batch_size(tiny_model_dir, prompts):
    from rationale_bench.evaluate.scoring import score_configuration

    held = prompts.head(10)
    runs = [
        score_configuration(
            str(tiny_model_dir),
            None,
            "none",
            held,
            "label_only",
            {"max_new_tokens": 4, "batch_size": b, "precision": "fp32"},
            {},
        )[0]["predicted_boolean_probability"]
        for b in (1, 4, 10)
    ]
    for other in runs[1:]:
        assert (other - runs[0]).abs().max() < 1e-5


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_score_like_one(tiny_model_dir, prompts):
    from rationale_bench.evaluate.scoring import score_configuration

    cfg = {"max_new_tokens": 6, "batch_size": 4, "precision": "fp32"}
    args = (str(tiny_model_dir), None, "none", prompts.head(12), "free_form", cfg, {})
    one, _ = score_configuration(*args, processes=1)
    two, runtime = score_configuration(*args, processes=2)
    assert runtime["device"] == "cuda:0,cuda:1"
    assert (
        two["predicted_boolean_probability"] - one["predicted_boolean_probability"]
    ).abs().max() < 1e-5
