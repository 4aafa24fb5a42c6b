import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl

from rationale_bench.train.finetune import (
    TrainingJob,
    remove_stale_evaluation,
    train,
    write_job_spec,
)
from rationale_bench.train.joblock import hold_until_exit
from rationale_bench.train.launch import job_runtime
from rationale_bench.workflow import job_model_path, read_cohort, start, write_parquet

log = start(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
reporting, launch = job_runtime(smk.config, smk.wildcards.model)
job = TrainingJob(
    model_path=job_model_path(smk),
    fmt=smk.wildcards.format,
    n_train=int(smk.wildcards.n_train),
    seed=int(smk.wildcards.seed),
    training={**smk.params.training, **reporting},
    max_seq_len=smk.params.model["max_seq_len"],
    out_dir=Path(smk.output.adapter),
    log_path=Path(smk.output.train_log),
    run_path=Path(smk.output.run),
    checkpoint_dir=Path(smk.params.checkpoint_dir),
    prompt_settings=smk.params.model,
)
# One writer per configuration: refuse while a live job of a lost controller still writes.
hold_until_exit(smk.wildcards, smk.rule, log)
remove_stale_evaluation(smk.params.stale)
cohort = read_cohort(smk, log)
if launch["command"]:
    # One process per GPU; they read the same spec and only rank 0 writes the outputs. The
    # cohort travels as a file (restricted to the eligible subjects when the teacher dropped any).
    spec = job.checkpoint_dir / "job.json"
    cohort_path = job.checkpoint_dir / "cohort.parquet"
    write_parquet(cohort, cohort_path)
    write_job_spec(spec, job, smk.input.prompts, cohort_path, smk.input.rationales or None)
    cmd = [*launch["command"], "-m", "rationale_bench.train.finetune", "--job", str(spec)]
    log.info("launching: %s", " ".join(cmd))
    threads = str(max(1, smk.threads // launch["processes"]))
    env = dict(os.environ, OMP_NUM_THREADS=threads)
    subprocess.run(cmd, check=True, stdout=sys.stderr, stderr=sys.stderr, env=env)
    run = json.loads(job.run_path.read_text())
else:
    rationales = pl.read_parquet(smk.input.rationales) if smk.input.rationales else None
    run = train(job, pl.read_parquet(smk.input.prompts), cohort, rationales)
log.info("trained %d steps, final loss %.4f", run["optimizer_steps"], run["final_loss"])
