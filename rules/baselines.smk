# Classical baselines: logistic regression / gradient boosting on bag-of-codes + age + sex,
# trained on the same training subsets as the LM configurations, tuned on the tuning split.


rule baseline:
    """One baseline for one (n_train, seed): the LM configurations' training subjects."""
    input:
        histories=REFERENCE_HISTORIES,
        cohort="results/cohort/cohort.parquet",
        eligible=get_eligible_subjects(),
    output:
        predictions=f"{BASELINE_DIR}/predictions.parquet",
        metrics=f"{BASELINE_DIR}/metrics.json",
    log:
        "results/logs/baseline/{kind}/n_train={n_train}/seed={seed}.log",
    conda:
        "../envs/report.yaml"
    params:
        baselines=get_settings("baselines"),
        # Only evaluation's bootstrap: the rest is the language models' scoring.
        bootstrap=get_bootstrap_settings(),
    script:
        "../workflow_scripts/baseline.py"
