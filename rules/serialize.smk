# Serialization: each subject's history before index as text, then fitted to each model's budget.


rule build_histories:
    """Input events strictly before index, grouped by visit, newest first, with readable names."""
    input:
        events="results/data/events.parquet",
        cohort="results/cohort/cohort.parquet",
        code_names="results/data/codes.parquet",
        data_manifest="results/data/manifest.json",
        cohort_manifest="results/cohort/manifest.json",
    output:
        "results/histories/{serialization}.parquet",
    log:
        "results/logs/build_histories/{serialization}.log",
    conda:
        "../envs/data.yaml"
    params:
        serialization=get_serialization_settings(),
    script:
        "../workflow_scripts/build_histories.py"


rule build_prompts:
    """Drop the oldest history lines until header, history and question fit the model's
    prompt budget, measured with the model's own tokenizer."""
    input:
        histories="results/histories/{serialization}.parquet",
        model=MODEL_SOURCE,
    output:
        "results/prompts/{model}/{serialization}.parquet",
    log:
        "results/logs/build_prompts/{model}/{serialization}.log",
    conda:
        "../envs/train.yaml"
    params:
        model=get_model_settings,
        max_prompt_tokens=lambda wildcards: config["models"][wildcards.model][
            "max_prompt_tokens"
        ],
        question=config["serialization"]["question"],
    script:
        "../workflow_scripts/build_prompts.py"
