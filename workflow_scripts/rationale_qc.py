import json
from pathlib import Path

import polars as pl

from rationale_bench.teacher.generate import read_teacher_view
from rationale_bench.teacher.qc import qc_report, quality_control
from rationale_bench.workflow import start, write_json, write_parquet

log = start(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
rationales = pl.read_parquet(smk.input.rationales)
# Grounding is checked against what the teacher was shown (its view), not the full record.
qc = quality_control(rationales, read_teacher_view(smk.input.histories, smk.input.prompts))
generation = json.loads(Path(smk.input.report).read_text())
report = qc_report(qc, generation, smk.params.price)
log.info("QC report: %s", json.dumps(report))
write_parquet(qc, smk.output.table)
write_json(report, smk.output.report)
