# rationale_bench
