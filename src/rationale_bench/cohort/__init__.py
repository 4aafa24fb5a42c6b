"""Cohort: index times, outcome windows, exclusions, splits, attrition and Table 1."""
