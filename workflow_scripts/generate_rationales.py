import json
from pathlib import Path

from rationale_bench.study import drops_subjects
from rationale_bench.teacher.generate import (
    check_training_pool,
    generate_rationales,
    quiet_request_logs,
    read_teacher_view,
    run_settings,
)
from rationale_bench.teacher.shards import cache_files, cache_path, usage_with_shards
from rationale_bench.workflow import start, stop_on, write_json, write_parquet

log = start(snakemake)  # noqa: F821
quiet_request_logs()
smk = snakemake  # noqa: F821
cache_dir = Path(smk.params.cache_dir)
style = smk.wildcards.style
# How requests are sent (endpoint, concurrency, timeouts, retries, hosts) is read from the
# config, not params: it changes no answer, so editing it must rerun nothing.
cfg = run_settings(smk.params.teacher, smk.config)
with stop_on(log, smk.rule):
    # An OpenAI-compatible teacher's answers are in the shards' caches: normally none is sent.
    table, report = generate_rationales(
        read_teacher_view(smk.input.histories, smk.input.prompts),
        style,
        cfg,
        cache_path(cache_dir, style),
        cache_read_also=cache_files(cache_dir, style),
    )
    if smk.input.shards:
        shards = json.loads(Path(smk.input.shards).read_text())
        report["usage"] = usage_with_shards(report["usage"], shards.get("usage", {}))
        report["shards"] = shards.get("shards")
    log.info("generation report: %s", json.dumps(report))
    if drops_subjects(cfg):
        check_training_pool(table, report, max(smk.config["grid"]["n_train"]))
write_parquet(table, smk.output.rationales)
write_json(report, smk.output.report)
