import json
from pathlib import Path

from rationale_bench.teacher.generate import quiet_request_logs, read_teacher_view, run_settings
from rationale_bench.teacher.shards import ask_shard
from rationale_bench.workflow import start, stop_on, write_json

log = start(snakemake)  # noqa: F821
quiet_request_logs()
smk = snakemake  # noqa: F821
# How requests are sent (endpoint, concurrency, timeouts, retries, hosts) and how the work is cut
# (the shard count, in the output path) change no answer: read from the config, not params.
cfg = run_settings(smk.params.teacher, smk.config)
n_shards = int(smk.config["teacher"]["shards"])
with stop_on(log, smk.rule):
    report = ask_shard(
        read_teacher_view(smk.input.histories, smk.input.prompts),
        smk.wildcards.style,
        cfg,
        Path(smk.params.cache_dir),
        int(smk.wildcards.shard),
        n_shards,
    )
    log.info("shard report: %s", json.dumps(report))
write_json(report, smk.output[0])
