import polars as pl
from transformers import AutoTokenizer

from rationale_bench.text.serialize import build_prompts
from rationale_bench.text.templates import template_for_model
from rationale_bench.workflow import job_model_path, start, write_parquet

log = start(snakemake)  # noqa: F821
params = snakemake.params  # noqa: F821
tokenizer = AutoTokenizer.from_pretrained(job_model_path(snakemake))  # noqa: F821
histories = pl.read_parquet(snakemake.input.histories)  # noqa: F821
template = template_for_model(tokenizer, params.model)
log.info("prompt template: %s", template)
prompts = build_prompts(
    histories, tokenizer, {"question": params.question}, params.max_prompt_tokens, template
)
log.info(
    "%d prompts, median %d tokens, %.1f%% truncated",
    prompts.height,
    prompts["n_tokens"].median(),
    100 * prompts["truncated"].mean(),
)
write_parquet(prompts, snakemake.output[0])  # noqa: F821
