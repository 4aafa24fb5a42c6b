# rationale-bench: does SFT on LLM-written rationales help or hurt ADRD prediction?
# The methods section, stage by stage, is in rules/*.smk; the logic is in src/rationale_bench.

import sys

from snakemake.utils import min_version

min_version("9.0")

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from rationale_bench.config_check import ConfigError, check_yaml_file  # noqa: E402
from rationale_bench.snakemake_patches import speed_up_dry_runs  # noqa: E402

# Per-job costs inside Snakemake that a 1,000-job grid pays on every start (docs/benchmarks.md).
speed_up_dry_runs()

# Snakemake's message for a YAML error names neither the file nor the line.
try:
    check_yaml_file("config.yaml")
except ConfigError as error:
    raise WorkflowError(str(error)) from None


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/ingest.smk"
include: "rules/cohort.smk"
include: "rules/serialize.smk"
include: "rules/rationales.smk"
include: "rules/finetune.smk"
include: "rules/evaluate.smk"
include: "rules/baselines.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),
