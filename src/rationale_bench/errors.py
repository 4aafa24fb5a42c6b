"""Errors every stage raises for bad input; the bottom layer, importing nothing of ours."""

from __future__ import annotations

import polars as pl


class CohortError(ValueError):
    """The data or the cohort definition cannot give a valid cohort.

    ``attrition`` is the attrition table up to the failing step, when there is one, so the
    cohort job can write it even though the cohort fails.
    """

    def __init__(self, message: str, attrition: pl.DataFrame | None = None) -> None:
        super().__init__(message)
        self.attrition = attrition
