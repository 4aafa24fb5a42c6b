import polars as pl

from rationale_bench.data.inputs import check_manifest
from rationale_bench.text.serialize import build_histories, unknown_code_summary
from rationale_bench.workflow import start, write_parquet

log = start(snakemake)  # noqa: F821
inp = snakemake.input  # noqa: F821
# The files must be the ones their stages wrote (rows and digest in their manifests).
check_manifest(inp.data_manifest, "events", inp.events, "ingest")
check_manifest(inp.cohort_manifest, "cohort", inp.cohort, "cohort")
events = pl.scan_parquet(snakemake.input.events)  # noqa: F821
cohort = pl.read_parquet(snakemake.input.cohort)  # noqa: F821
cfg = dict(snakemake.params.serialization, variant=snakemake.wildcards.serialization)  # noqa: F821
code_names = pl.read_parquet(snakemake.input.code_names)  # noqa: F821
histories = build_histories(events, cohort, cfg, code_names)
n_unknown = int(histories["n_unknown_codes"].sum())
log.info(
    "%d histories (%s), median %d events and %d lines, %d input events with unknown codes",
    histories.height,
    cfg["variant"],
    histories["n_events"].median(),
    histories["lines"].list.len().median(),
    n_unknown,
)
if n_unknown:
    log.warning(
        "codes without a known name (kept as the bare code):\n%s",
        unknown_code_summary(events, code_names),
    )
write_parquet(histories, snakemake.output[0])  # noqa: F821
