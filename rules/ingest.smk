# Ingest: the configured data source (data.source) as one checked MEDS events file, a code
# table, the data-quality counts and a manifest of what was written (docs/data.md).


INGEST_OUTPUTS = dict(
    events="results/data/events.parquet",
    codes="results/data/codes.parquet",
    quality="results/data/data_quality.csv",
    manifest="results/data/manifest.json",
)

# Each file ingest reads is an input (editing one shard reruns ingest); foreign files in a
# MEDS data/ folder stop here, listed.
try:
    INGEST_INPUT = inputs.ingest_input_files(config["data"])
except inputs.InputError as error:
    raise WorkflowError(str(error)) from None


# The generator differs from the adapters in what it reads (no files, only the data.synthetic
# settings, of which chunk_size reruns nothing) and in what it does (simulate, then audit its
# own output), so it keeps its own rule and script.
if config["data"]["source"] == "synthetic":

    rule synthesize_events:
        """A seeded synthetic population with risk-factor-driven ADRD incidence, as MEDS events,
        audited by the same data-quality checks as real data."""
        output:
            **INGEST_OUTPUTS,
        log:
            "results/logs/synthesize_events.log",
        conda:
            "../envs/data.yaml"
        params:
            # chunk_size (memory only, same events) is read by the script: it reruns nothing.
            synthetic=get_settings("data", "synthetic", operational=("chunk_size",)),
        script:
            "../workflow_scripts/synthesize_events.py"

else:

    # One rule for every real-data adapter: rationale_bench.data.ingest picks the adapter by
    # data.source. The job keeps the source in its name (ingest_meds, ingest_omop,
    # ingest_first_occurrence), so logs and --until targets read as before.
    rule:
        """A user's data as MEDS events, by data.source: a MEDS dataset (its own code names);
        OMOP CDM v5.4 tables (ICD-10 / ICD-9 / ATC codes through source values or the
        vocabulary, other concepts as OMOP/<concept_id>, concept names kept); or a wide
        first-occurrence table (one row per participant, one column per ICD-10 code, the
        baseline assessment as a visit). The shared data-quality checks run on every source.
        """
        name:
            f"ingest_{config['data']['source']}"
        input:
            INGEST_INPUT,
        output:
            **INGEST_OUTPUTS,
        log:
            f"results/logs/ingest_{config['data']['source']}.log",
        conda:
            "../envs/data.yaml"
        params:
            data=study.ingest_settings(config),
        script:
            "../workflow_scripts/ingest.py"
