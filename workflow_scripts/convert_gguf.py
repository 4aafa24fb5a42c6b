from pathlib import Path

from rationale_bench.train.models import convert_gguf
from rationale_bench.workflow import start

log = start(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
manifest = convert_gguf(Path(smk.input.gguf), Path(smk.output[0]), smk.params.dtype)
log.info("converted %s into %s: %s", smk.input.gguf, smk.output[0], manifest)
