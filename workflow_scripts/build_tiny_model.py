from pathlib import Path

import polars as pl

from rationale_bench.text.serialize import history_of
from rationale_bench.train.tiny_model import build_tiny_model
from rationale_bench.workflow import start

log = start(snakemake)  # noqa: F821
histories = pl.read_parquet(snakemake.input.histories).filter(pl.col("split") == "train")  # noqa: F821
texts = [history_of(row) for row in histories.iter_rows(named=True)]
info = build_tiny_model(texts, snakemake.params.build, Path(snakemake.output[0]))  # noqa: F821
log.info("built tiny model: %s", info)
