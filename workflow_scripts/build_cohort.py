import polars as pl

from rationale_bench.cohort import build_cohort
from rationale_bench.workflow import start, write_parquet

log = start(snakemake)  # noqa: F821
events = pl.scan_parquet(snakemake.input.events)  # noqa: F821
cohort, attrition = build_cohort(events, snakemake.params.cohort)  # noqa: F821
log.info("attrition:\n%s", attrition)
attrition.write_csv(snakemake.output.attrition)  # noqa: F821
write_parquet(cohort, snakemake.output.cohort)  # noqa: F821
