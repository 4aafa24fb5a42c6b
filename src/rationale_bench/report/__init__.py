"""Report: statistics across configurations, figures and the written report."""
