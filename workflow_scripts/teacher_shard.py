import json
import logging
from pathlib import Path

import polars as pl

from rationale_bench.teacher.generate import run_settings, teacher_view
from rationale_bench.teacher.shards import ask_shard
from rationale_bench.workflow import start, stop_on, write_json

log = start(snakemake)  # noqa: F821
# The HTTP library logs every request at INFO: tens of thousands of lines in this job's log. The
# progress lines and the usage summary say what matters; its warnings still get through.
for name in ("httpx2", "httpcore2"):
    logging.getLogger(name).setLevel(logging.WARNING)
smk = snakemake  # noqa: F821
# How requests are sent (endpoint, concurrency, timeouts, retries, hosts) and how the work is cut
# (the shard count, in the output path) change no answer: read from the config, not params.
cfg = run_settings(smk.params.teacher, smk.config)
n_shards = int(smk.config["teacher"]["shards"])
with stop_on(log, smk.rule):
    prompts = pl.read_parquet(smk.input.prompts) if smk.input.prompts else None
    subjects = teacher_view(pl.read_parquet(smk.input.histories), prompts)
    report = ask_shard(
        subjects,
        smk.wildcards.style,
        cfg,
        Path(smk.params.cache_dir),
        int(smk.wildcards.shard),
        n_shards,
    )
    log.info("shard report: %s", json.dumps(report))
write_json(report, smk.output[0])
