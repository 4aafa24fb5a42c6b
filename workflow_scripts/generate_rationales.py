import json
import logging
from pathlib import Path

import polars as pl

from rationale_bench.study import drops_subjects
from rationale_bench.teacher.generate import (
    cache_files,
    cache_path,
    check_training_pool,
    generate_rationales,
    run_settings,
    teacher_view,
)
from rationale_bench.workflow import start, stop_on, write_json, write_parquet

log = start(snakemake)  # noqa: F821
# The HTTP library logs every request at INFO: tens of thousands of lines in this job's log. The
# progress lines and the usage summary say what matters; its warnings still get through.
for name in ("httpx2", "httpcore2"):
    logging.getLogger(name).setLevel(logging.WARNING)
smk = snakemake  # noqa: F821
shard, n_shards = int(smk.params.shard), int(smk.params.n_shards)
cache_dir = Path(smk.params.cache_dir)
# How requests are sent (endpoint, concurrency, timeouts, retries, hosts) is read from the
# config, not params: it changes no answer, so editing it must rerun nothing.
cfg = run_settings(smk.params.teacher, smk.config)
with stop_on(log, smk.rule):
    prompts = pl.read_parquet(smk.input.prompts) if smk.input.prompts else None
    subjects = teacher_view(pl.read_parquet(smk.input.histories), prompts)
    table, report = generate_rationales(
        subjects,
        smk.wildcards.style,
        cfg,
        cache_path(cache_dir, smk.wildcards.style, shard, n_shards),
        shard=shard,
        n_shards=n_shards,
        cache_read_also=cache_files(cache_dir, smk.wildcards.style),
    )
    log.info("generation report (shard %d of %d): %s", shard, n_shards, json.dumps(report))
    if n_shards == 1 and drops_subjects(cfg):  # sharded: checked on the merged file
        check_training_pool(table, report, max(smk.config["grid"]["n_train"]))
write_parquet(table, smk.output.rationales)
write_json(report, smk.output.report)
