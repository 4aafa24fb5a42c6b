from pathlib import Path

import polars as pl

from rationale_bench.report.write import write_report
from rationale_bench.workflow import start

log = start(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
paths = write_report(
    entries=smk.params.entries,
    formats=smk.params.formats,
    baseline_formats=smk.params.baseline_formats,
    out_dir=Path(smk.output.readme).parent,
    n_boot=smk.params.bootstrap["bootstrap_resamples"],
    seed=smk.params.bootstrap["bootstrap_seed"],
    attrition=pl.read_csv(smk.input.attrition),
    table1=pl.read_csv(smk.input.table1),
    qc_paths=list(getattr(smk.input, "rationale_qc", [])),
    partial=bool(getattr(smk.params, "partial", False)),
    config=smk.config,  # the run card's; not a param, so no edit reruns the report
    rationale_paths=list(getattr(smk.input, "rationales", [])),
    workflow_dir=Path(smk.scriptdir).parent,
    prompt_paths=list(getattr(smk.input, "prompts", [])),
    review_paths=list(getattr(smk.input, "review", [])),
    gates=smk.params.validity,
)
log.info("report written: %s", sorted(paths))
