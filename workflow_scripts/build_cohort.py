import polars as pl

from rationale_bench.aces import write_aces_task
from rationale_bench.cohort import (
    ATTRITION_COUNTS,
    build_cohort,
    resolve_definition,
    suppress_small_cells,
)
from rationale_bench.workflow import start, write_parquet

log = start(snakemake)  # noqa: F821
settings = resolve_definition(snakemake.params.cohort)  # noqa: F821
events = pl.scan_parquet(snakemake.input.events)  # noqa: F821
# parent_codes of the ingest's code table extend outcome.concept_ids to their descendants.
codes = pl.read_parquet(snakemake.input.codes)  # noqa: F821
cohort, attrition = build_cohort(events, settings, codes=codes)
log.info("attrition:\n%s", attrition)
published = suppress_small_cells(attrition, ATTRITION_COUNTS, settings["small_cell_threshold"])
published.write_csv(snakemake.output.attrition)  # noqa: F821
write_aces_task(settings, snakemake.output.aces_task, codes)  # noqa: F821
write_parquet(cohort, snakemake.output.cohort)  # noqa: F821
