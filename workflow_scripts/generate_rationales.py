import json
import logging
from pathlib import Path

import polars as pl

from rationale_bench.teacher import cache_files, cache_path, generate_rationales
from rationale_bench.workflow import start, write_json, write_parquet

log = start(snakemake)  # noqa: F821
# The HTTP library logs every request at INFO: tens of thousands of lines in this job's log. The
# progress lines and the usage summary say what matters; its warnings still get through.
for name in ("httpx2", "httpcore2"):
    logging.getLogger(name).setLevel(logging.WARNING)
smk = snakemake  # noqa: F821
shard, n_shards = int(smk.params.shard), int(smk.params.n_shards)
cache_dir = Path(smk.params.cache_dir)
histories = pl.read_parquet(smk.input.histories)
table, report = generate_rationales(
    histories,
    smk.wildcards.style,
    smk.params.teacher,
    cache_path(cache_dir, smk.wildcards.style, shard, n_shards),
    shard=shard,
    n_shards=n_shards,
    cache_read_also=cache_files(cache_dir, smk.wildcards.style),
)
log.info("generation report (shard %d of %d): %s", shard, n_shards, json.dumps(report))
write_parquet(table, smk.output.rationales)
write_json(report, smk.output.report)
