import polars as pl

from rationale_bench.serialize import build_histories
from rationale_bench.workflow import start, write_parquet

log = start(snakemake)  # noqa: F821
events = pl.scan_parquet(snakemake.input.events)  # noqa: F821
cohort = pl.read_parquet(snakemake.input.cohort)  # noqa: F821
cfg = dict(snakemake.params.serialization, variant=snakemake.wildcards.serialization)  # noqa: F821
histories = build_histories(events, cohort, cfg)
log.info(
    "%d histories, median %d events, %d unknown codes",
    histories.height,
    histories["n_events"].median(),
    histories["n_unknown_codes"].sum(),
)
write_parquet(histories, snakemake.output[0])  # noqa: F821
