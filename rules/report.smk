# Report: every configuration and baseline side by side, formats compared on the same held-out
# patients per matched configuration, the figures, and the headline computed from the numbers.


rule report:
    """Tables, paired statistics, figures and the headline for the whole grid."""
    input:
        predictions=get_run_outputs("predictions.parquet"),
        metrics=get_run_outputs("metrics.json"),
        runs=get_run_outputs("run.json", trained_only=True),
        baselines=get_baseline_outputs("metrics.json"),
        attrition="results/cohort/attrition.csv",
        table1="results/cohort/table1.csv",
        rationale_qc=get_rationale_files(".qc.parquet"),
        rationales=get_rationale_files(),
        prompts=get_prompt_files(),
        review=get_review_files(),
    output:
        readme="results/report/README.md",
        run_card=report(
            "results/report/run_card.md",
            caption="../report/run_card.rst",
            category="Run card",
        ),
        tables=expand("results/report/{table}.csv", table=REPORT_TABLES),
        figure=report(
            "results/report/figures/auroc_by_format.png",
            caption="../report/auroc_by_format.rst",
            category="Results",
        ),
        figures=report(
            expand("results/report/figures/{figure}.png", figure=REPORT_FIGURES),
            caption="../report/figures.rst",
            category="Results",
        ),
    log:
        "results/logs/report.log",
    conda:
        "../envs/report.yaml"
    params:
        entries=get_report_entries(),
        formats=config["grid"]["format"],
        baseline_formats=config["baselines"]["kinds"],
        bootstrap=get_bootstrap_settings(),
        validity=get_settings("validity"),
    # The run card documents the whole config, read by the script: as a param, any edit
    # (a cluster setting, a teacher timeout) would rerun the report.
    script:
        "../workflow_scripts/report.py"


rule report_partial:
    """Whatever configurations have finished so far, while a long grid runs. Rerun with
    `snakemake report_partial --forcerun report_partial`."""
    input:
        attrition="results/cohort/attrition.csv",
        table1="results/cohort/table1.csv",
    output:
        readme="results/report_partial/README.md",
    log:
        "results/logs/report_partial.log",
    conda:
        "../envs/report.yaml"
    params:
        entries=get_report_entries(),
        formats=config["grid"]["format"],
        baseline_formats=config["baselines"]["kinds"],
        bootstrap=get_bootstrap_settings(),
        validity=get_settings("validity"),
        partial=True,
    script:
        "../workflow_scripts/report.py"
