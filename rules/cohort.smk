# Data and cohort: MEDS events in, one row per subject out (index time, five-year label, split).


DATA_SOURCE = config["data"]["source"]
INGEST_OUTPUTS = dict(
    events="results/data/events.parquet",
    codes="results/data/codes.parquet",
    quality="results/data/data_quality.csv",
    manifest="results/data/manifest.json",
)


# Only the configured source's settings reach the ingest job: editing another source's keys
# reruns nothing.
INGEST_SETTINGS = study.canonical(
    {
        key: config["data"][key]
        for key in (
            "source",
            "date_formats",
            "extra_vocabularies",
            "extraction_date",
            "timezone",
            "max_unparseable_fraction",
            "sex_values",
            DATA_SOURCE,
        )
    }
)

# Each file ingest reads is an input (editing one shard reruns ingest); foreign files in a
# MEDS data/ folder stop here, listed.
try:
    INGEST_INPUT = inputs.ingest_input_files(config["data"])
except inputs.InputError as error:
    raise WorkflowError(str(error)) from None


if DATA_SOURCE == "synthetic":

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

elif DATA_SOURCE == "meds":

    rule ingest_meds:
        """A user's MEDS dataset, checked and gathered into one events file, with the dataset's
        own code names."""
        input:
            INGEST_INPUT,
        output:
            **INGEST_OUTPUTS,
        log:
            "results/logs/ingest_meds.log",
        conda:
            "../envs/data.yaml"
        params:
            data=INGEST_SETTINGS,
        script:
            "../workflow_scripts/ingest_meds.py"

elif DATA_SOURCE == "omop":

    rule ingest_omop:
        """OMOP CDM v5.4 tables as MEDS events: ICD-10 / ICD-9 / ATC codes through source
        values or the vocabulary, other concepts as OMOP/<concept_id>, concept names kept.
        """
        input:
            INGEST_INPUT,
        output:
            **INGEST_OUTPUTS,
        log:
            "results/logs/ingest_omop.log",
        conda:
            "../envs/data.yaml"
        params:
            data=INGEST_SETTINGS,
        script:
            "../workflow_scripts/ingest_omop.py"

else:

    rule ingest_first_occurrence:
        """A wide first-occurrence table (one row per participant, one column per ICD-10 code)
        unpivoted into MEDS events; the baseline assessment becomes a visit."""
        input:
            INGEST_INPUT,
        output:
            **INGEST_OUTPUTS,
        log:
            "results/logs/ingest_first_occurrence.log",
        conda:
            "../envs/data.yaml"
        params:
            data=INGEST_SETTINGS,
        script:
            "../workflow_scripts/ingest_first_occurrence.py"


rule build_cohort:
    """Index per cohort.index.strategy (default: the first eligible visit); exclude prior ADRD
    or anti-dementia drugs; label the (index, index + horizon] window; drop non-cases without
    full follow-up; split patients by hash; export the task definition as an ACES task YAML.
    OMOP concept ids in the outcome also match their descendants (parent_codes of codes.parquet).
    """
    input:
        events="results/data/events.parquet",
        codes="results/data/codes.parquet",
        manifest="results/data/manifest.json",
    output:
        cohort="results/cohort/cohort.parquet",
        # Exact counts; table_one publishes attrition.csv with small cells suppressed.
        attrition="results/cohort/attrition_exact.csv",
        aces_task="results/cohort/aces_task.yaml",
        manifest="results/cohort/manifest.json",
    log:
        "results/logs/build_cohort.log",
    conda:
        "../envs/data.yaml"
    params:
        # Small-cell suppression is table_one's: changing it reruns no cohort.
        cohort=get_settings("cohort", operational=("small_cell_threshold",)),
    script:
        "../workflow_scripts/build_cohort.py"


rule table_one:
    """Table 1: demographics, follow-up and risk-factor prevalence by split and label; and the
    attrition table as published. Both with small cells suppressed (cohort.small_cell_threshold).
    """
    input:
        cohort="results/cohort/cohort.parquet",
        attrition="results/cohort/attrition_exact.csv",
        histories=REFERENCE_HISTORIES,
    output:
        table1="results/cohort/table1.csv",
        attrition="results/cohort/attrition.csv",
    log:
        "results/logs/table_one.log",
    conda:
        "../envs/data.yaml"
    params:
        small_cell_threshold=config["cohort"]["small_cell_threshold"],
        risk_factor_codes=config["cohort"]["risk_factor_codes"],
    script:
        "../workflow_scripts/table_one.py"
