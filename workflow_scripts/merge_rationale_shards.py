import json
from pathlib import Path

import polars as pl

from rationale_bench.study import drops_subjects
from rationale_bench.teacher.generate import check_training_pool, merge_shards
from rationale_bench.teacher.qc import QCSettings
from rationale_bench.workflow import start, stop_on, write_json, write_parquet

log = start(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
tables = [pl.read_parquet(p) for p in smk.input.rationales]
reports = [json.loads(Path(p).read_text()) for p in smk.input.reports]
with stop_on(log, smk.rule):
    qc = QCSettings.from_config({"qc": smk.params.qc})
    table, report = merge_shards(tables, reports, qc)
    log.info("merged %d shards: %s", len(tables), json.dumps(report))
    if drops_subjects(smk.config["teacher"]):
        check_training_pool(table, report, max(smk.config["grid"]["n_train"]))
write_parquet(table, smk.output.rationales)
write_json(report, smk.output.report)
