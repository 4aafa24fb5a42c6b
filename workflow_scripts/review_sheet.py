from pathlib import Path

import polars as pl

from rationale_bench.teacher.review import review_sample, write_review_sheet
from rationale_bench.workflow import start

log = start(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
cfg = smk.params.review
rationales = pl.concat([pl.read_parquet(p) for p in smk.input.rationales], how="diagonal_relaxed")
histories = pl.read_parquet(smk.input.histories, columns=["subject_id", "header", "lines"])
sheet, key = review_sample(
    rationales, histories, cfg["per_stratum"], cfg["seed"], cfg["history_lines"]
)
paths = write_review_sheet(sheet, key, Path(smk.output.sheet).parent, cfg["scale_max"])
log.info("review sheet of %d items: %s", sheet.height, {k: str(v) for k, v in paths.items()})
