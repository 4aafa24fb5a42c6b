from pathlib import Path

from rationale_bench.train.models import fetch, write_manifest
from rationale_bench.workflow import start

log = start(snakemake, offline=False)  # noqa: F821
model = snakemake.params.model  # noqa: F821
manifest = fetch(model["source"], model["revision"], model["cache_dir"], snakemake.params.token_env)  # noqa: F821
write_manifest(manifest, Path(snakemake.output[0]))  # noqa: F821
log.info("fetched %s into %s", model["source"], manifest["snapshot"])
