from pathlib import Path

import polars as pl

from rationale_bench.teacher import generate_rationales
from rationale_bench.workflow import start, write_parquet

log = start(snakemake)  # noqa: F821
histories = pl.read_parquet(snakemake.input.histories)  # noqa: F821
table, usage = generate_rationales(
    histories,
    snakemake.wildcards.style,  # noqa: F821
    snakemake.params.teacher,  # noqa: F821
    Path(snakemake.params.cache),  # noqa: F821
)
log.info("usage: %s", usage)
write_parquet(table, snakemake.output[0])  # noqa: F821
