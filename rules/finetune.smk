# Fine-tuning: one job per configuration, same subjects, steps and schedule for every format.


rule build_tiny_model:
    """The default study's base model: a BPE tokenizer and a small Llama, both trained on the
    training split's histories (input text only), saved like any Hugging Face model."""
    input:
        cohort="results/cohort/cohort.parquet",
        histories=f"results/histories/{config['serialization']['variant']}.parquet",
    output:
        directory("results/models/{model}"),
    log:
        "results/logs/build_tiny_model/{model}.log",
    conda:
        "../envs/train.yaml"
    params:
        build=get_build_settings,
    script:
        "../workflow_scripts/build_tiny_model.py"


rule finetune:
    """Completion-only SFT of one configuration; checkpoints and resumes after SIGTERM."""
    input:
        prompts=get_prompts,
        cohort="results/cohort/cohort.parquet",
        rationales=get_rationales,
        model=get_model_source,
    output:
        adapter=directory(f"{RUN_DIR}/adapter"),
        train_log=f"{RUN_DIR}/train_log.jsonl",
        run=f"{RUN_DIR}/run.json",
    log:
        f"results/logs/finetune/model={{model}}/format={{format}}/n_train={{n_train}}/seed={{seed}}.log",
    conda:
        "../envs/train.yaml"
    params:
        training=get_training_settings,
        model=get_model_settings,
        model_path=lambda wildcards: get_model_path(wildcards.model),
        checkpoint_dir=f"results/checkpoints/model={{model}}/format={{format}}/n_train={{n_train}}/seed={{seed}}",
    script:
        "../workflow_scripts/finetune.py"
