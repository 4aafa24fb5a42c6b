import json
from pathlib import Path

from rationale_bench.teacher.shards import sum_shard_reports
from rationale_bench.workflow import start, stop_on, write_json

log = start(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
with stop_on(log, smk.rule):
    summed = sum_shard_reports([json.loads(Path(p).read_text()) for p in smk.input])
    log.info("shards summed: %s", json.dumps(summed))
write_json(summed, smk.output[0])
