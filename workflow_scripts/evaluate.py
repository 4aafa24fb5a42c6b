import json
from pathlib import Path

import polars as pl

from rationale_bench.evaluate.evaluation import (
    evaluate_configuration,
    few_shot_arm_prompts,
    write_metrics,
)
from rationale_bench.train.joblock import hold_until_exit
from rationale_bench.workflow import job_model_path, read_cohort, start, write_parquet

log = start(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
# One writer per configuration: refuse while a live job of a lost controller still writes.
hold_until_exit(smk.wildcards, smk.rule, log)
trained = hasattr(smk.input, "run")
# The configuration is in the job's wildcards (a param function per job would cost a
# 504-configuration dry run time).
configuration = {
    "serialization": smk.wildcards.serialization,
    "format": smk.wildcards.format,
    "n_train": int(smk.wildcards.n_train),
    "seed": int(smk.wildcards.seed),
}
model_path = job_model_path(smk)
# The batch size is operational (scores do not depend on it), read here so it reruns nothing.
evaluation = {**smk.params.evaluation, "batch_size": smk.config["evaluation"]["batch_size"]}
prompts = pl.read_parquet(smk.input.prompts)
cohort = read_cohort(smk, log)
if hasattr(smk.input, "histories"):
    prompts = few_shot_arm_prompts(
        prompts,
        pl.read_parquet(smk.input.histories),
        cohort,
        pl.read_parquet(smk.input.rationales) if hasattr(smk.input, "rationales") else None,
        configuration,
        smk.params.question,
        model_path,
        smk.params.model["max_seq_len"],
        evaluation,
        smk.params.model,
    )
# The rationales a fine-tuned rationale format trained on: its own copies of them are counted.
teacher_rationales = (
    pl.read_parquet(smk.input.rationales, columns=["rationale"])["rationale"].to_list()
    if trained and hasattr(smk.input, "rationales")
    else []
)
predictions, summary = evaluate_configuration(
    model_path,
    Path(smk.input.adapter) if trained else None,
    json.loads(Path(smk.input.run).read_text()) if trained else configuration,
    prompts,
    cohort,
    evaluation,
    smk.params.model,
    teacher_rationales,
    # One scoring process per GPU; read from the config (not params) so that changing the GPU
    # count, which changes no score, reruns nothing.
    processes=int(smk.config["models"][smk.wildcards.model].get("resources", {}).get("gpu", 1)),
)
log.info("held-out AUROC %.3f (n=%d)", summary["auroc"], summary["n"])
write_parquet(predictions, smk.output.predictions)
write_metrics(summary, Path(smk.output.metrics))
