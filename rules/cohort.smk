# Cohort: MEDS events in (rules/ingest.smk), one row per subject out (index time, five-year
# label, split).


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
