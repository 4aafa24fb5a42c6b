# Rationales: a label-aware teacher explains each training and tuning subject's outcome.
# Held-out subjects never reach the teacher.

if config["execution"]["teacher_on_login_node"]:

    localrules:
        generate_rationales,


rule generate_rationales:
    """One rationale per training/tuning subject in the given style."""
    input:
        histories=REFERENCE_HISTORIES,
    output:
        "results/rationales/{teacher}/{style}.parquet",
    log:
        "results/logs/generate_rationales/{teacher}/{style}.log",
    conda:
        "../envs/teacher.yaml"
    resources:
        teacher_jobs=1,
    params:
        teacher=get_teacher_settings,
        cache="results/rationales/{teacher}/cache/{style}.jsonl",
    script:
        "../workflow_scripts/generate_rationales.py"


rule rationale_qc:
    """Quality of each rationale: length, grounding in the subject's own record, and whether
    its conclusion agrees with the label it explains."""
    input:
        rationales="results/rationales/{teacher}/{style}.parquet",
        histories=REFERENCE_HISTORIES,
    output:
        "results/rationales/{teacher}/{style}.qc.parquet",
    log:
        "results/logs/rationale_qc/{teacher}/{style}.log",
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/rationale_qc.py"
