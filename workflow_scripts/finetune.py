from pathlib import Path

import polars as pl

from rationale_bench.finetune import TrainingJob, remove_stale_evaluation, train
from rationale_bench.models import resolve_model
from rationale_bench.workflow import read_cohort, start

log = start(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
job = TrainingJob(
    model_path=resolve_model(smk.params.model),
    fmt=smk.wildcards.format,
    n_train=int(smk.wildcards.n_train),
    seed=int(smk.wildcards.seed),
    training=smk.params.training,
    max_seq_len=smk.params.model["max_seq_len"],
    out_dir=Path(smk.output.adapter),
    log_path=Path(smk.output.train_log),
    run_path=Path(smk.output.run),
    checkpoint_dir=Path(smk.params.checkpoint_dir),
    prompt_settings=smk.params.model,
)
remove_stale_evaluation(smk.params.stale)
rationales = pl.read_parquet(smk.input.rationales) if smk.input.rationales else None
run = train(job, pl.read_parquet(smk.input.prompts), read_cohort(smk, log), rationales)
log.info("trained %d steps, final loss %.4f", run["optimizer_steps"], run["final_loss"])
