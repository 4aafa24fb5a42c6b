"""Ingest: synthetic events, the MEDS, OMOP and first-occurrence adapters, code lists and the
data-quality rules."""
