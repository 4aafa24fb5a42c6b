from datetime import date
from pathlib import Path

from rationale_bench.data.ingest import audit_synthetic
from rationale_bench.data.inputs import write_manifest
from rationale_bench.data.synthetic import write_events
from rationale_bench.workflow import start

log = start(snakemake)  # noqa: F821
cfg = snakemake.params.synthetic  # noqa: F821
n_events = write_events(
    Path(snakemake.output[0]),  # noqa: F821
    cfg["n_subjects"],
    cfg["seed"],
    chunk_size=snakemake.config["data"]["synthetic"]["chunk_size"],  # noqa: F821
    data_start=date.fromisoformat(cfg["data_start"]),
    data_end=date.fromisoformat(cfg["data_end"]),
)
log.info("wrote %d events for %d subjects", n_events, cfg["n_subjects"])
# The generator's output passes the same checks as real data; codes.parquet stays empty.
out = snakemake.output  # noqa: F821
audit_synthetic(out.events, out.codes, out.quality).log_summary(log)
write_manifest(out.manifest, {"events": out.events, "codes": out.codes})
