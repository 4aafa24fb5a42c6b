import json
from pathlib import Path

import polars as pl

from rationale_bench.teacher import merge_shards
from rationale_bench.workflow import start, write_json, write_parquet

log = start(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
tables = [pl.read_parquet(p) for p in smk.input.rationales]
reports = [json.loads(Path(p).read_text()) for p in smk.input.reports]
table, report = merge_shards(tables, reports)
log.info("merged %d shards: %s", len(tables), json.dumps(report))
write_parquet(table, smk.output.rationales)
write_json(report, smk.output.report)
