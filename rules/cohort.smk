# Data and cohort: MEDS events in, one row per subject out (index time, five-year label, split).


if config["data"]["source"] == "synthetic":

    rule synthesize_events:
        """A seeded synthetic population with risk-factor-driven ADRD incidence, as MEDS events."""
        output:
            "results/data/events.parquet",
        log:
            "results/logs/synthesize_events.log",
        conda:
            "../envs/data.yaml"
        params:
            synthetic=get_settings("data", "synthetic"),
        script:
            "../workflow_scripts/synthesize_events.py"

else:

    rule ingest_meds:
        """A user's MEDS dataset, checked and gathered into one events file."""
        input:
            config["data"]["meds"]["path"] or "MISSING: set data.meds.path",
        output:
            "results/data/events.parquet",
        log:
            "results/logs/ingest_meds.log",
        conda:
            "../envs/data.yaml"
        script:
            "../workflow_scripts/ingest_meds.py"


rule build_cohort:
    """Index per cohort.index.strategy (default: the first eligible visit); exclude prior ADRD
    or anti-dementia drugs; label the (index, index + horizon] window; drop non-cases without
    full follow-up; split patients by hash; export the task definition as an ACES task YAML.
    """
    input:
        events="results/data/events.parquet",
    output:
        cohort="results/cohort/cohort.parquet",
        attrition="results/cohort/attrition.csv",
        aces_task="results/cohort/aces_task.yaml",
    log:
        "results/logs/build_cohort.log",
    conda:
        "../envs/data.yaml"
    params:
        cohort=get_settings("cohort"),
    script:
        "../workflow_scripts/build_cohort.py"


rule table_one:
    """Table 1: demographics, follow-up and risk-factor prevalence by split and label."""
    input:
        cohort="results/cohort/cohort.parquet",
        histories=REFERENCE_HISTORIES,
    output:
        "results/cohort/table1.csv",
    log:
        "results/logs/table_one.log",
    conda:
        "../envs/data.yaml"
    params:
        small_cell_threshold=config["cohort"]["small_cell_threshold"],
    script:
        "../workflow_scripts/table_one.py"
