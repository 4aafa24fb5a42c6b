from rationale_bench.data.ingest import ingest
from rationale_bench.data.inputs import write_manifest
from rationale_bench.workflow import start

log = start(snakemake)  # noqa: F821
out = snakemake.output  # noqa: F821
# The adapter is chosen by data.source (meds, omop or first_occurrence).
report = ingest(snakemake.params.data, out.events, out.codes, out.quality)  # noqa: F821
report.log_summary(log)
# Rows and digest of what ingest wrote: the cohort job refuses files changed after this.
write_manifest(out.manifest, {"events": out.events, "codes": out.codes})
