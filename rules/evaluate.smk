# Evaluation: held-out P(Yes) at the answer slot (after the model's own rationale where it
# writes one), AUROC with confidence intervals; tuning split for calibration and thresholds.


rule evaluate:
    """Score held-out subjects without any teacher text; metrics with 95% CIs."""
    input:
        adapter=f"{RUN_DIR}/adapter",
        run=f"{RUN_DIR}/run.json",
        prompts=get_prompts,
        cohort="results/cohort/cohort.parquet",
        model=get_model_source,
    output:
        predictions=f"{RUN_DIR}/predictions.parquet",
        metrics=f"{RUN_DIR}/metrics.json",
    log:
        f"results/logs/evaluate/model={{model}}/format={{format}}/n_train={{n_train}}/seed={{seed}}.log",
    conda:
        "../envs/train.yaml"
    threads: get_job_threads
    resources:
        gpu=get_gpu_request("gpu"),
        gres=get_gpu_request("gres"),
        gpu_model=get_gpu_model,
        mem_mb=get_job_resource("mem_mb", scale_with_attempt=True),
        runtime=get_job_resource("runtime", scale_with_attempt=True),
    params:
        evaluation=get_settings("evaluation"),
        model=get_model_settings,
        model_path=lambda wildcards: get_model_path(wildcards.model),
    script:
        "../workflow_scripts/evaluate.py"
