import polars as pl

from rationale_bench.teacher import quality_control
from rationale_bench.workflow import start, write_parquet

log = start(snakemake)  # noqa: F821
rationales = pl.read_parquet(snakemake.input.rationales)  # noqa: F821
histories = pl.read_parquet(snakemake.input.histories, columns=["subject_id", "codes"])  # noqa: F821
qc = quality_control(rationales, histories)
log.info("QC: %s", qc.select(pl.all().exclude("subject_id", "style")).mean().to_dicts())
write_parquet(qc, snakemake.output[0])  # noqa: F821
