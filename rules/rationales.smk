# Rationales: a teacher explains each training and tuning subject's outcome (label-aware), or
# predicts it first and explains its own answer (label-blind, STaR-style). It reads what the
# student reads (teacher.view): the reference variant's prompt under the view model's budget.
# Rationales failing quality control are regenerated, then kept flagged or dropped. Held-out
# subjects never reach the teacher. How requests are sent (endpoint, concurrency, timeouts,
# retries, allowed hosts, shard count) is read by the scripts from the config: it is no param,
# and editing it reruns nothing downstream.

import glob

from rationale_bench.study import drops_subjects, rationale_settings  # noqa: E402

SHARDS = config["teacher"]["shards"]
RATIONALES = "results/rationales/{teacher}"
# An OpenAI-compatible teacher is asked by shard jobs that fill the cache; each style's one
# generate_rationales job then reads its rationales from that cache. It waits for the shards
# through one summary whose path is the same for any shard count, marked ancient: a new count
# runs the new shard jobs (every answer cached) and nothing after them.
ASKS_ENDPOINT = config["teacher"]["backend"] == "openai"
SHARD_REPORT = f"{RATIONALES}/shards/{{style}}/{{shard}}-of-{SHARDS}.json"
SHARDS_DONE = f"{RATIONALES}/shards/{{style}}.json"


if config["execution"]["teacher_on_login_node"]:

    localrules:
        generate_rationales,


if ASKS_ENDPOINT:  # the template teacher sends nothing: no shard jobs

    localrules:
        teacher_shards_done,

    if config["execution"]["teacher_on_login_node"]:

        localrules:
            teacher_shard,

    rule teacher_shard:
        """Asks the teacher for one shard of a style (every n-th subject), QC regenerations
        included, into the shard's own cache file. Shards run as separate jobs, at most
        `teacher_jobs` at once."""
        input:
            histories=REFERENCE_HISTORIES,
            prompts=TEACHER_PROMPTS,
        output:
            SHARD_REPORT,
        log:
            f"results/logs/teacher_shard/{{teacher}}/{{style}}/{{shard}}-of-{SHARDS}.log",
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
        script:
            "../workflow_scripts/teacher_shard.py"

    rule teacher_shards_done:
        """The shards of a style summed (requests, retries, tokens): what the teacher was asked."""
        input:
            expand(SHARD_REPORT, shard=range(SHARDS), allow_missing=True),
        output:
            SHARDS_DONE,
        log:
            "results/logs/teacher_shards_done/{teacher}/{style}.log",
        conda:
            "../envs/data.yaml"
        script:
            "../workflow_scripts/teacher_shards_done.py"


rule generate_rationales:
    """One rationale per training/tuning subject in the given style, near-duplicates flagged
    over the whole style. An OpenAI-compatible teacher's answers come from the shards' cache.
    """
    input:
        histories=REFERENCE_HISTORIES,
        prompts=TEACHER_PROMPTS,
        shards=ancient(SHARDS_DONE) if ASKS_ENDPOINT else [],
    output:
        rationales=f"{RATIONALES}/{{style}}.parquet",
        report=f"{RATIONALES}/{{style}}.generation.json",
    log:
        "results/logs/generate_rationales/{teacher}/{style}.log",
    conda:
        "../envs/teacher.yaml"
    resources:
        teacher_jobs=1,
    params:
        teacher=lambda wildcards: rationale_settings(config, wildcards.style),
        cache_dir=f"{RATIONALES}/cache",
    script:
        "../workflow_scripts/generate_rationales.py"


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
