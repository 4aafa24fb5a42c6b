import polars as pl

from rationale_bench.teacher.review import summarize_review
from rationale_bench.workflow import start

log = start(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
key = pl.read_csv(smk.input.key)
scores, agreement = summarize_review(list(smk.input.sheets), key, smk.params.scale_max)
log.info("review scores:\n%s\nagreement:\n%s", scores, agreement)
scores.write_csv(smk.output.scores)
agreement.write_csv(smk.output.agreement)
