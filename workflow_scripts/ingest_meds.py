from rationale_bench.ingest import ingest_meds
from rationale_bench.workflow import start

log = start(snakemake)  # noqa: F821
n_events = ingest_meds(snakemake.input[0], snakemake.output[0])  # noqa: F821
log.info("gathered %d MEDS events", n_events)
