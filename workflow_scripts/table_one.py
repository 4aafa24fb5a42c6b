import polars as pl

from rationale_bench.cohort.build import publish_attrition, suppress_table_one, table_one
from rationale_bench.workflow import start

log = start(snakemake)  # noqa: F821
cohort = pl.read_parquet(snakemake.input.cohort)  # noqa: F821
codes = pl.read_parquet(snakemake.input.histories, columns=["subject_id", "codes"])  # noqa: F821
history_codes = codes.explode("codes").rename({"codes": "code"}).drop_nulls()
table = table_one(cohort, history_codes, snakemake.params.risk_factor_codes)  # noqa: F821
threshold = snakemake.params.small_cell_threshold  # noqa: F821
suppress_table_one(table, threshold).write_csv(snakemake.output.table1)  # noqa: F821
publish_attrition(snakemake.input.attrition, threshold, snakemake.output.attrition)  # noqa: F821
