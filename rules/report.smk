# Report: every configuration side by side, and the formats compared per matched configuration.


rule report:
    """metrics.csv (one row per configuration) and the paired AUROC figure."""
    input:
        metrics=get_run_outputs("metrics.json"),
        runs=get_run_outputs("run.json"),
    output:
        table="results/report/metrics.csv",
        figure=report(
            "results/report/figures/auroc_by_format.png",
            caption="../report/auroc_by_format.rst",
            category="Results",
        ),
    log:
        "results/logs/report.log",
    conda:
        "../envs/report.yaml"
    params:
        configurations=[c.as_dict() for c in CONFIGURATIONS],
        formats=config["grid"]["format"],
    script:
        "../workflow_scripts/report.py"
