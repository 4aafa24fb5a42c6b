from datetime import date
from pathlib import Path

from rationale_bench.synthetic import write_events
from rationale_bench.workflow import start

log = start(snakemake)  # noqa: F821
cfg = snakemake.params.synthetic  # noqa: F821
n_events = write_events(
    Path(snakemake.output[0]),  # noqa: F821
    cfg["n_subjects"],
    cfg["seed"],
    chunk_size=cfg["chunk_size"],
    data_start=date.fromisoformat(cfg["data_start"]),
    data_end=date.fromisoformat(cfg["data_end"]),
)
log.info("wrote %d events for %d subjects", n_events, cfg["n_subjects"])
