"""What reruns when you change a config key: the expected table behind tests/test_reruns.py
and docs/reruns.md.

Each row covers a group of schema leaf keys (``*`` stands for any model name, a trailing
``.*`` for a whole subtree) whose edits have the same effect, and names one representative
edit that the test applies to a finished study (tests/configs/reruns.yaml: one model, the
markdown_recent students, the teacher reading timeline_recent, five formats, one n_train and
seed) and checks by dry run. ``reruns`` is the exact count of jobs per rule of that dry run.

Regenerate the doc after editing this table: ``python tests/rerun_matrix.py``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reruns.md"
STUDY = REPO / "tests" / "configs" / "reruns.yaml"

# Job counts of the matrix study's stages.
TEACHER = {"generate_rationales": 2, "rationale_qc": 2}
RATIONALE_RUNS = {"finetune": 2, "evaluate": 2}  # free_form and step_by_step
TRAINED = {"finetune": 3, "evaluate": 3}  # label_only and the two rationale formats
EVALUATED = {"evaluate": 5}  # every format, the zero- and few-shot arms included
REPORT = {"report": 1, "all": 1}
STUDENT_PROMPTS = {"build_prompts": 2}  # the students' (markdown) and the teacher's view
EVERYTHING_FROM_COHORT = {
    "build_cohort": 1,
    "build_histories": 2,
    "table_one": 1,
    "build_tiny_model": 1,
    **STUDENT_PROMPTS,
    **TEACHER,
    "finetune": 3,
    **EVALUATED,
    "baseline": 1,
    **REPORT,
}
FROM_THE_MODEL = {
    "build_tiny_model": 1,
    **STUDENT_PROMPTS,
    **TEACHER,
    "finetune": 3,
    **EVALUATED,
    **REPORT,
}


@dataclass(frozen=True)
class Row:
    keys: tuple[str, ...]  # leaf keys (patterns) this row covers
    edit: dict[str, Any]  # the representative edit: dotted key -> new value
    reruns: dict[str, int]  # rule -> jobs the dry run schedules
    why: str
    known_excess: str = ""  # set when the row reruns more than it must: what and why
    extra: dict[str, Any] = field(default_factory=dict)


NOTHING: dict[str, int] = {}

ROWS: tuple[Row, ...] = (
    # ----------------------------------------------------------------------------- data
    Row(
        (
            "data.synthetic.n_subjects",
            "data.synthetic.seed",
            "data.synthetic.data_start",
            "data.synthetic.data_end",
        ),
        {"data.synthetic.seed": 12},
        {"synthesize_events": 1, **EVERYTHING_FROM_COHORT},
        "Another population: every stage.",
    ),
    Row(
        ("data.synthetic.chunk_size",),
        {"data.synthetic.chunk_size": 2000},
        NOTHING,
        "Memory only: the events are the same (read by the script, not a param).",
    ),
    Row(
        (
            "data.source",
            "data.date_formats",
            "data.extra_vocabularies",
            "data.extraction_date",
            "data.timezone",
            "data.max_unparseable_fraction",
            "data.sex_values.*",
            "data.meds.*",
            "data.first_occurrence.*",
            "data.omop.*",
        ),
        {"data.omop.schema": "other"},
        NOTHING,
        "Settings of a source the study does not read. Switching data.source (or editing the "
        "source in use) reruns every stage from ingestion (not dry-run here: it needs the data).",
    ),
    # ----------------------------------------------------------------------------- cohort
    Row(
        ("cohort.*",),
        {"cohort.min_age": 66},
        EVERYTHING_FROM_COHORT,
        "The cohort definition: every stage after the events.",
    ),
    Row(
        ("cohort.small_cell_threshold",),
        {"cohort.small_cell_threshold": 11},
        {"table_one": 1, **REPORT},
        "table_one publishes Table 1 and the attrition table, both with small cells "
        "suppressed; the cohort job writes exact counts and does not read it.",
    ),
    # ----------------------------------------------------------------------------- serialization
    Row(
        ("serialization.time_encoding", "serialization.lookback_days"),
        {"serialization.lookback_days": 3650},
        {
            "build_histories": 2,
            "build_tiny_model": 1,
            **STUDENT_PROMPTS,
            **TEACHER,
            "finetune": 3,
            **EVALUATED,
            "baseline": 1,
            "table_one": 1,
            **REPORT,
        },
        "The histories change, so does everything that reads them.",
    ),
    Row(
        ("serialization.question",),
        {"serialization.question": "Will this patient develop dementia? Answer Yes or No."},
        {**STUDENT_PROMPTS, **TEACHER, "finetune": 3, **EVALUATED, **REPORT},
        "Every prompt; the teacher's view is a student prompt.",
    ),
    Row(
        ("serialization.system_prompt",),
        {"serialization.system_prompt": "Be brief."},
        {**STUDENT_PROMPTS, **TEACHER, "finetune": 3, **EVALUATED, **REPORT},
        "Part of every model's prompt.",
    ),
    Row(
        ("serialization.answer_words",),
        {"serialization.answer_words": ["yes", "no"]},
        FROM_THE_MODEL,
        "The tiny model's tokenizer must hold them; every prompt and target.",
    ),
    Row(
        ("serialization.reference_variant",),
        {"serialization.reference_variant": "chronological"},
        {
            "build_histories": 1,
            "build_tiny_model": 1,
            **STUDENT_PROMPTS,
            **TEACHER,
            "finetune": 3,
            **EVALUATED,
            "baseline": 1,
            "table_one": 1,
            **REPORT,
        },
        "The teacher's view, the tiny tokenizer's corpus, Table 1 and the baselines.",
    ),
    # ----------------------------------------------------------------------------- teacher
    Row(
        ("teacher.name",),
        {"teacher.name": "other"},
        {**TEACHER, **RATIONALE_RUNS, **REPORT},
        "New rationale files.",
    ),
    Row(
        (
            "teacher.view",
            "teacher.seed",
            "teacher.backend",
            "teacher.mode",
            "teacher.qc.min_words",
            "teacher.qc.max_words",
            "teacher.qc.min_grounded_fraction",
            "teacher.qc.regenerations",
            "teacher.qc.regenerate_temperature",
            "teacher.qc.max_duplicate_share",
            "teacher.qc.length_retry_factor",
            "teacher.max_history_lines",
            "teacher.prompts.*",
            "teacher.label_blind.*",
            "teacher.openai.model",
            "teacher.openai.temperature",
            "teacher.openai.top_p",
            "teacher.openai.max_tokens",
        ),
        {"teacher.seed": 5},
        {**TEACHER, **RATIONALE_RUNS, **REPORT},
        "What the teacher writes: both styles, the formats trained on them, the report. "
        "(The prompts, label_blind, max_history_lines and the openai sampling keys only for "
        "the backend, mode or view that reads them; one style's prompt reruns that style.)",
    ),
    Row(
        ("teacher.view_model",),
        {"teacher.view_model": "tiny"},
        NOTHING,
        "null already means the grid model with the smallest prompt budget, here tiny.",
    ),
    Row(
        ("teacher.qc.on_failure",),
        {"teacher.qc.on_failure": "drop"},
        {**TEACHER, "eligible_subjects": 1, "finetune": 3, **EVALUATED, "baseline": 1, **REPORT},
        "Dropping subjects makes a shared training pool that every fine-tune and baseline "
        "reads (the zero-shot arms too: their few-shot demonstrations come from it).",
    ),
    Row(
        ("teacher.shards",),
        {"teacher.shards": 2},
        NOTHING,
        "How the teacher's requests are cut into jobs. The template teacher sends none and has "
        "no shard jobs. An OpenAI-compatible teacher's new count runs only the new layout's "
        "shard jobs, which find every answer cached: no rationale file and nothing after it "
        "(tests/test_teacher_workflow.py runs it).",
    ),
    Row(
        ("teacher.price_per_million_tokens.*",),
        {"teacher.price_per_million_tokens.input": 0.5},
        {"rationale_qc": 2, **REPORT},
        "The cost lines of the QC reports.",
    ),
    Row(
        (
            "teacher.openai.base_url",
            "teacher.openai.api_key_env",
            "teacher.openai.concurrency",
            "teacher.openai.request_timeout_s",
            "teacher.openai.http_attempts",
            "teacher.openai.retry_rounds",
            "teacher.openai.round_backoff_s",
            "teacher.allowed_hosts",
        ),
        {
            "teacher.openai.concurrency": 64,
            "teacher.openai.base_url": "http://10.1.1.1:9/v1",
            "teacher.allowed_hosts": ["teacher.example.org"],
        },
        NOTHING,
        "How requests are sent: read by the teacher script, never an answer.",
    ),
    Row(
        ("teacher.review.*", "teacher.styles"),
        {"teacher.review.per_stratum": 3},
        NOTHING,
        "The review sheets are built on request (snakemake review_sheet); styles must cover "
        "the grid's formats, and an unused extra style is built only on request.",
    ),
    # ----------------------------------------------------------------------------- models
    Row(
        (
            "models.*.source",
            "models.*.revision",
            "models.*.gguf_dtype",
            "models.*.chat_template",
            "models.*.build.*",
        ),
        {"models.tiny.build.seed": 1},
        FROM_THE_MODEL,
        "Another model: its prompts (the teacher's view among them), teacher, fine-tunes "
        "and evaluations.",
    ),
    Row(
        ("models.*.max_prompt_tokens",),
        {"models.tiny.max_prompt_tokens": 250},
        {**STUDENT_PROMPTS, **TEACHER, "finetune": 3, **EVALUATED, **REPORT},
        "The prompt budget: the student's prompts and the teacher's view.",
    ),
    Row(
        ("models.*.max_seq_len",),
        {"models.tiny.max_seq_len": 700},
        FROM_THE_MODEL,
        "Part of the model's settings (the tiny model's position table).",
    ),
    Row(
        ("models.*.training.*", "training.*"),
        {"models.tiny.training.learning_rate": 0.002},
        {**TRAINED, **REPORT},
        "The fine-tunes of that model (or of every model) and their evaluations.",
    ),
    Row(
        (
            "models.*.training.report_to",
            "models.*.training.tracking_project",
            "models.*.training.tracking_offline",
            "models.*.training.launcher",
            "training.report_to",
            "training.tracking_project",
            "training.tracking_offline",
            "training.launcher",
        ),
        {"training.launcher": "accelerate", "training.tracking_project": "x"},
        NOTHING,
        "Tracking and launcher: read by the fine-tune script.",
    ),
    Row(
        (
            "models.*.resources.*",
            "models.*.parameters",
            "plan.*",
            "execution.*",
            "hub.token_env",
            "evaluation.batch_size",
        ),
        {
            "models.tiny.resources.mem_mb": 3000,
            "models.tiny.parameters": 1000000,
            "plan.prompt_tokens": 100,
            "execution.gpu_request": "gres",
            "hub.token_env": "T",
            "evaluation.batch_size": 16,
        },
        NOTHING,
        "Cluster requests, cost planning and the scoring batch size change no result.",
    ),
    Row(
        ("hub.cache_dir",),
        {"hub.cache_dir": "/tmp/models"},
        NOTHING,
        "Where hub weights are found, read by the scripts from the config. A built model "
        "never reads it; for a hub model (not in this study) only fetch_model runs again, into "
        "the new cache (tests/test_reruns.py runs it).",
    ),
    # ----------------------------------------------------------------------------- baselines
    Row(
        ("baselines.*",),
        {"baselines.min_count": 7},
        {"baseline": 1, **REPORT},
        "The baselines and the report.",
    ),
    # ----------------------------------------------------------------------------- evaluation
    Row(
        (
            "evaluation.max_new_tokens",
            "evaluation.few_shot_k",
            "evaluation.calibrate_on_tuning",
            "evaluation.precision",
        ),
        {"evaluation.few_shot_k": 3},
        {**EVALUATED, **REPORT},
        "Every evaluation (the evaluate jobs take the evaluation section but the batch size).",
    ),
    Row(
        ("evaluation.bootstrap_resamples", "evaluation.bootstrap_seed"),
        {"evaluation.bootstrap_seed": 1},
        {**EVALUATED, "baseline": 1, **REPORT},
        "The confidence intervals of every evaluation, baseline and of the report's paired "
        "statistics.",
    ),
    # ----------------------------------------------------------------------------- validity
    Row(
        ("validity.*",),
        {"validity.max_top_generation_share": 0.3},
        {**REPORT},
        "Only the report: the gates judge diagnostics the evaluations already measured.",
    ),
    # ----------------------------------------------------------------------------- grid
    Row(
        ("grid.seed", "grid.n_train"),
        {"grid.seed": [1, 2]},
        {"finetune": 3, **EVALUATED, "baseline": 1, **REPORT},
        "Only the new configurations, and the report.",
    ),
    Row(
        ("grid.format",),
        {"grid.format": ["label_only", "free_form", "step_by_step"]},
        {**REPORT},
        "Dropping formats only changes the report; adding one adds its jobs.",
    ),
    Row(
        ("grid.model",),
        {"grid.model": ["tiny", "tiny2"], "models.tiny2": "copy:tiny"},
        {"build_tiny_model": 1, "build_prompts": 1, "finetune": 3, **EVALUATED, **REPORT},
        "The new model's jobs; the teacher view stays on the first model with the smallest budget.",
    ),
    Row(
        ("grid.serialization",),
        {"grid.serialization": ["markdown_recent", "chronological"]},
        {"build_histories": 1, "build_prompts": 1, "finetune": 3, **EVALUATED, **REPORT},
        "The new variant's students; the teacher keeps reading the reference variant.",
    ),
)


def leaf_keys(schema_path: Path = REPO / "schemas" / "config.schema.yaml") -> list[str]:
    """Every leaf key of the schema (``*`` for a map's keys, e.g. a model name)."""
    schema = yaml.safe_load(schema_path.read_text())
    defs = schema.get("$defs", {})
    leaves: list[str] = []

    def walk(node: dict[str, Any], path: list[str]) -> None:
        if "$ref" in node:
            node = {**defs[node["$ref"].split("/")[-1]], **node}
            node.pop("$ref")
        props = node.get("properties")
        if props and node.get("type", "object") == "object":
            for key, child in props.items():
                walk(child, [*path, key])
            return
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and node.get("type") == "object":
            walk(extra, [*path, "*"])
            return
        leaves.append(".".join(path))

    walk(schema, [])
    return leaves


def row_of(key: str) -> Row | None:
    """The row covering a leaf key: an exact listing first, else the first matching pattern."""
    for row in ROWS:
        if key in row.keys:
            return row
    for row in ROWS:
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in row.keys):
            return row
    return None


def apply_edit(study: dict[str, Any], edit: dict[str, Any]) -> dict[str, Any]:
    """The study with a row's edit applied (dotted keys; 'copy:<model>' copies a model)."""
    for dotted, value in edit.items():
        *parents, last = dotted.split(".")
        node = study
        for part in parents:
            node = node.setdefault(part, {})
        if isinstance(value, str) and value.startswith("copy:"):
            value = yaml.safe_load(yaml.safe_dump(study["models"][value[5:]]))
        node[last] = value
    return study


def _reruns_text(reruns: dict[str, int]) -> str:
    if not reruns:
        return "nothing"
    return ", ".join(f"{rule} x{n}" for rule, n in reruns.items() if rule != "all")


def render() -> str:
    """docs/reruns.md from the table."""
    lines = [
        "# What reruns when you change a config key",
        "",
        "<!-- Generated by `python tests/rerun_matrix.py` from tests/rerun_matrix.py; "
        "tests/test_reruns.py fails when this file is stale. Do not edit by hand. -->",
        "",
        "Snakemake 9 reruns a job when its output is missing or older than an input (`mtime`),",
        "when its set of input files changed (`input`), its `params` changed, its rule's code",
        "changed (`code`), or its software environment changed (`software-env`). Every job's",
        "params hold only the settings that shape its outputs; settings that only say how a",
        "job runs (teacher endpoint, concurrency, timeouts, retries, allowed hosts, cluster",
        "resources, tracking, the launcher) are read by the scripts from the config and rerun",
        "nothing. The run card in the report documents the whole config but reads it in the",
        "script, so it is rewritten with the next report, not by every edit.",
        "",
        "See what an edit would rerun before running it: `snakemake -n` (the jobs, each with",
        "its reason), `snakemake --list-changes params` (outputs whose params changed; also",
        "`input`, `code`), `snakemake --summary` (every output with its state). To rerun only",
        "on changed timestamps: `--rerun-triggers mtime`.",
        "",
        "How this table is proven: tests/test_reruns.py runs the study in",
        "tests/configs/reruns.yaml once (one tiny model, students reading markdown_recent, the",
        "teacher reading timeline_recent, formats label_only, free_form, step_by_step,",
        "zero_shot and few_shot_labels, one n_train and seed), then, for each row, applies the",
        "**representative edit** and checks the exact jobs per rule of a dry run. Keys grouped",
        "in one row share the representative's effect by construction (the same params slice);",
        "only the representative is dry-run, to keep the test within a few minutes. Every",
        "leaf key of schemas/config.schema.yaml must belong to a row, or the test fails. Job",
        "counts are those of that study: scale them to your grid.",
        "",
        "| Keys | Representative edit | Reruns | Why |",
        "|---|---|---|---|",
    ]
    for row in ROWS:
        keys = "<br>".join(f"`{k}`" for k in row.keys)
        edit = "<br>".join(f"`{k}: {v}`" for k, v in row.edit.items())
        why = row.why + (
            f" **Reruns more than it must:** {row.known_excess}" if row.known_excess else ""
        )
        lines.append(f"| {keys} | {edit} | {_reruns_text(row.reruns)} | {why} |")
    lines += [
        "",
        "Every row that reruns anything also reruns `report` (and the `all` target).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    DOC.write_text(render())
    print(f"wrote {DOC}")
