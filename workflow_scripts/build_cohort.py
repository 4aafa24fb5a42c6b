import polars as pl

from rationale_bench.cohort.aces import write_aces_task
from rationale_bench.cohort.build import resolve_definition, run_cohort_stage
from rationale_bench.data.inputs import write_manifest
from rationale_bench.workflow import start, write_parquet

log = start(snakemake)  # noqa: F821
settings = resolve_definition(snakemake.params.cohort)  # noqa: F821
# Small cells are suppressed by table_one, which publishes attrition.csv; here only in the
# attrition table of a failed cohort, which no rule reads: read from the config, no param.
settings["small_cell_threshold"] = snakemake.config["cohort"]["small_cell_threshold"]  # noqa: F821
inp, out = snakemake.input, snakemake.output  # noqa: F821
# grid.n_train is read from the config, not a param: changing the grid must not rerun the
# cohort (the Snakefile checks a changed grid against an existing cohort at parse time).
cohort, attrition, read = run_cohort_stage(
    inp.events,
    inp.codes,
    inp.manifest,
    settings,
    snakemake.config["grid"]["n_train"],  # noqa: F821
    out.attrition,
    "results/cohort/attrition_failed.csv",
)
log.info("attrition:\n%s", attrition)
write_aces_task(settings, out.aces_task, pl.read_parquet(inp.codes))
write_parquet(cohort, out.cohort)
write_manifest(out.manifest, {"cohort": out.cohort}, read={"events": read["events"]})
