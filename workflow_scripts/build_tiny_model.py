from pathlib import Path

import polars as pl

from rationale_bench.serialize import history_text
from rationale_bench.tinymodel import build_tiny_model
from rationale_bench.workflow import start

log = start(snakemake)  # noqa: F821
histories = pl.read_parquet(snakemake.input.histories).filter(pl.col("split") == "train")  # noqa: F821
texts = [history_text(h, lines) for h, lines in histories.select("header", "lines").iter_rows()]
info = build_tiny_model(texts, snakemake.params.build, Path(snakemake.output[0]))  # noqa: F821
log.info("built tiny model: %s", info)
