import json
from pathlib import Path

import polars as pl

from rationale_bench.evaluate.baselines import run_baseline
from rationale_bench.evaluate.metrics import to_jsonable
from rationale_bench.workflow import read_cohort, start, write_parquet

log = start(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
cfg = dict(smk.params.baselines)
cfg["bootstrap_resamples"] = smk.params.bootstrap["bootstrap_resamples"]
cfg["bootstrap_seed"] = smk.params.bootstrap["bootstrap_seed"]
predictions, metrics = run_baseline(
    smk.wildcards.kind,
    pl.read_parquet(smk.input.histories),
    read_cohort(smk, log),
    int(smk.wildcards.n_train),
    int(smk.wildcards.seed),
    cfg,
)
log.info("held-out AUROC %.3f, hyperparameters %s", metrics["auroc"], metrics["hyperparameters"])
write_parquet(predictions, smk.output.predictions)
Path(smk.output.metrics).write_text(json.dumps(to_jsonable(metrics), indent=2, allow_nan=False))
