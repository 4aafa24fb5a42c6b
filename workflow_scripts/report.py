from pathlib import Path

from rationale_bench.report import metrics_table, plot_paired
from rationale_bench.workflow import start

log = start(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
entries = list(zip(smk.params.configurations, smk.input.metrics, smk.input.runs, strict=True))
table = metrics_table(entries)
table.write_csv(smk.output.table)
plot_paired(table, smk.params.formats, Path(smk.output.figure))
log.info("report of %d configurations", table.height)
