from rationale_bench.ingest import ingest
from rationale_bench.workflow import start

log = start(snakemake)  # noqa: F821
out = snakemake.output  # noqa: F821
report = ingest(snakemake.params.data, out.events, out.codes, out.quality)  # noqa: F821
report.log_summary(log)
