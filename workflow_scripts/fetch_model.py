from pathlib import Path

from rationale_bench.train.models import fetch, write_manifest
from rationale_bench.workflow import start

log = start(snakemake, offline=False)  # noqa: F821
params = snakemake.params  # noqa: F821
model = params.model
manifest = fetch(model["source"], model["revision"], params.cache_dir, params.token_env)
write_manifest(manifest, Path(snakemake.output[0]))  # noqa: F821
log.info("fetched %s into %s", model["source"], manifest["snapshot"])
