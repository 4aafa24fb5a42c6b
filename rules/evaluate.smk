# Evaluation: held-out P(Yes) at the answer slot (after the model's own rationale where it
# writes one), AUROC with confidence intervals; tuning split for calibration and thresholds.


rule evaluate:
    """Score held-out subjects; no teacher text about a held-out subject is ever used (the
    few-shot arms show training subjects' rationales only). Metrics with 95% CIs."""
    input:
        unpack(get_trained_model),
        prompts=PROMPTS,
        cohort="results/cohort/cohort.parquet",
        model=MODEL_SOURCE,
        eligible=get_eligible_subjects(),
    output:
        predictions=f"{RUN_DIR}/predictions.parquet",
        metrics=f"{RUN_DIR}/metrics.json",
    log:
        f"results/logs/evaluate/model={{model}}/serialization={{serialization}}/format={{format}}/n_train={{n_train}}/seed={{seed}}.log",
    conda:
        "../envs/train.yaml"
    threads: get_job_threads
    resources:
        **get_gpu_resources(),
        mem_mb=get_job_resource("mem_mb", scale_with_attempt=True),
        runtime=get_job_resource("runtime", scale_with_attempt=True),
        attempt=lambda wildcards, attempt: attempt,  # each attempt keeps its log
    params:
        # What shapes the scores; the batch size is read by the script (scores do not depend
        # on it), so changing it reruns nothing.
        evaluation=get_settings("evaluation", operational=("batch_size",)),
        question=config["serialization"]["question"],
        model=get_model_settings,
    script:
        "../workflow_scripts/evaluate.py"
