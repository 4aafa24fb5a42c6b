import polars as pl

from rationale_bench.teacher.generate import eligible_subjects
from rationale_bench.workflow import start, write_parquet

log = start(snakemake)  # noqa: F821
tables = [pl.read_parquet(path) for path in snakemake.input]  # noqa: F821
eligible = eligible_subjects(tables)
for path, table in zip(snakemake.input, tables, strict=True):  # noqa: F821
    log.info("%s: %d subjects with a rationale", path, table["rationale"].is_not_null().sum())
log.info("%d subjects have a rationale in every style", eligible.height)
write_parquet(eligible, snakemake.output[0])  # noqa: F821
