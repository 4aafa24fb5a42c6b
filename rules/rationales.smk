# Rationales: a teacher explains each training and tuning subject's outcome (label-aware), or
# predicts it first and explains its own answer (label-blind, STaR-style). It reads what the
# student reads (teacher.view): the reference variant's prompt under the view model's budget.
# Rationales failing quality control are regenerated, then kept flagged or dropped. Held-out
# subjects never reach the teacher. With teacher.shards > 1 each style is written by several
# jobs, merged after. How requests are sent (endpoint, concurrency, timeouts, retries, allowed
# hosts) is read by the script from the config: it is no param, and editing it reruns nothing.

import glob

from rationale_bench.study import drops_subjects, rationale_settings  # noqa: E402

SHARDS = config["teacher"]["shards"]
RATIONALES = "results/rationales/{teacher}"
# What one generate_rationales job writes: with one shard, the style's own files; with several,
# one shard's files, which merge_rationale_shards then merges into the style's.
SHARD = f"{{style}}/{{shard}}-of-{SHARDS}"
GENERATED = f"{RATIONALES}/{{style}}" if SHARDS == 1 else f"{RATIONALES}/shards/{SHARD}"
GENERATION_LOG = "{style}" if SHARDS == 1 else SHARD


if config["execution"]["teacher_on_login_node"]:

    localrules:
        generate_rationales,


rule generate_rationales:
    """One rationale per training/tuning subject in the given style; with teacher.shards > 1,
    those of one shard (every n-th subject): shards run as separate jobs, at most
    `teacher_jobs` at once, each with its own cache file."""
    input:
        histories=REFERENCE_HISTORIES,
        prompts=TEACHER_PROMPTS,
    output:
        rationales=f"{GENERATED}.parquet",
        report=f"{GENERATED}.generation.json",
    log:
        f"results/logs/generate_rationales/{{teacher}}/{GENERATION_LOG}.log",
    wildcard_constraints:
        shard=r"\d+",
    conda:
        "../envs/teacher.yaml"
    resources:
        # Global cap (profiles/default): teacher jobs running at once share one endpoint.
        teacher_jobs=1,
    params:
        teacher=lambda wildcards: rationale_settings(config, wildcards.style),
        cache_dir=f"{RATIONALES}/cache",
        shard=lambda wildcards: int(wildcards.get("shard", 0)),
        n_shards=SHARDS,
    script:
        "../workflow_scripts/generate_rationales.py"


if SHARDS > 1:

    rule merge_rationale_shards:
        """A style's shards in one file and one generation report; refuses overlaps."""
        input:
            rationales=expand(
                f"{GENERATED}.parquet", shard=range(SHARDS), allow_missing=True
            ),
            reports=expand(
                f"{GENERATED}.generation.json", shard=range(SHARDS), allow_missing=True
            ),
        output:
            rationales=f"{RATIONALES}/{{style}}.parquet",
            report=f"{RATIONALES}/{{style}}.generation.json",
        log:
            "results/logs/merge_rationale_shards/{teacher}/{style}.log",
        conda:
            "../envs/data.yaml"
        params:
            # Near-duplicates are flagged on the merged style.
            qc=study.qc_settings(config),
        script:
            "../workflow_scripts/merge_rationale_shards.py"


rule rationale_qc:
    """Quality of each rationale: length, grounding in the subject's own record, whether its
    conclusion agrees with the label it explains; the report adds the generation's counts
    (regenerated, kept, dropped per reason), usage and cost."""
    input:
        rationales=f"{RATIONALES}/{{style}}.parquet",
        report=f"{RATIONALES}/{{style}}.generation.json",
        histories=REFERENCE_HISTORIES,
        prompts=TEACHER_PROMPTS,
    output:
        table=f"{RATIONALES}/{{style}}.qc.parquet",
        report=f"{RATIONALES}/{{style}}.qc.json",
    log:
        "results/logs/rationale_qc/{teacher}/{style}.log",
    conda:
        "../envs/data.yaml"
    params:
        price=config["teacher"]["price_per_million_tokens"],
    script:
        "../workflow_scripts/rationale_qc.py"


rule review_sheet:
    """A blinded, stratified (teacher x style x label), seeded sample of rationales for
    clinician review: sheet.csv to fill, sheet.md to read, instructions, and the key."""
    input:
        rationales=expand(
            "results/rationales/{teacher}/{style}.parquet",
            teacher=config["teacher"]["name"],
            style=config["teacher"]["styles"],
        ),
        histories=REFERENCE_HISTORIES,
    output:
        sheet="results/review/sheet.csv",
        markdown="results/review/sheet.md",
        key="results/review/key.csv",
        instructions="results/review/instructions.md",
    log:
        "results/logs/review_sheet.log",
    conda:
        "../envs/data.yaml"
    params:
        review=config["teacher"]["review"],
    script:
        "../workflow_scripts/review_sheet.py"


rule review_summary:
    """Scores per teacher and style, and agreement between reviewers (Cohen's kappa per pair,
    Fleiss' kappa for three or more), from the filled sheets in teacher.review.filled_dir.
    """
    input:
        sheets=sorted(glob.glob(f"{config['teacher']['review']['filled_dir']}/*.csv")),
        key="results/review/key.csv",
    output:
        scores="results/review/scores.csv",
        agreement="results/review/agreement.csv",
    log:
        "results/logs/review_summary.log",
    conda:
        "../envs/data.yaml"
    params:
        scale_max=config["teacher"]["review"]["scale_max"],
    script:
        "../workflow_scripts/review_summary.py"


if drops_subjects(config["teacher"]):

    rule eligible_subjects:
        """Subjects with a usable rationale in every style the grid trains on: the training
        pool of every format and baseline, so matched configurations keep the same subjects.
        """
        input:
            get_rationale_files(),
        output:
            ELIGIBLE_SUBJECTS,
        log:
            "results/logs/eligible_subjects.log",
        conda:
            "../envs/data.yaml"
        script:
            "../workflow_scripts/eligible_subjects.py"
