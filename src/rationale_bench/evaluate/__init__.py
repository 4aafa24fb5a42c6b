"""Evaluation: scoring, metrics, diagnostics, few-shot prompts and baselines."""
