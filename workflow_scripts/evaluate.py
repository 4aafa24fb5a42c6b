import json
from pathlib import Path

import polars as pl

from rationale_bench.evaluate import evaluate_configuration, write_metrics
from rationale_bench.models import resolve_model
from rationale_bench.workflow import start, write_parquet

log = start(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
trained = hasattr(smk.input, "run")
predictions, summary = evaluate_configuration(
    resolve_model(smk.params.model),
    Path(smk.input.adapter) if trained else None,
    json.loads(Path(smk.input.run).read_text()) if trained else smk.params.configuration,
    pl.read_parquet(smk.input.prompts),
    pl.read_parquet(smk.input.cohort),
    smk.params.evaluation,
)
log.info("held-out AUROC %.3f (n=%d)", summary["auroc"], summary["n"])
write_parquet(predictions, smk.output.predictions)
write_metrics(summary, Path(smk.output.metrics))
