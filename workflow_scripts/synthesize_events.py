from pathlib import Path

from rationale_bench.synthetic import write_events
from rationale_bench.workflow import start

log = start(snakemake)  # noqa: F821
cfg = snakemake.params.synthetic  # noqa: F821
n_events = write_events(Path(snakemake.output[0]), cfg["n_subjects"], cfg["seed"])  # noqa: F821
log.info("wrote %d events for %d subjects", n_events, cfg["n_subjects"])
