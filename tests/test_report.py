"""The report's prompt-truncation table and its line in the report's front page."""

from __future__ import annotations

import polars as pl

from rationale_bench.report.write import _truncation_lines, truncation_table


def write_prompts(path, truncated, dropped, tokens):
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {
            "n_tokens": tokens,
            "truncated": truncated,
            "n_lines_dropped": dropped,
            "n_events_dropped": [3 * d for d in dropped],
        },
        schema={
            "n_tokens": pl.Int32,
            "truncated": pl.Boolean,
            "n_lines_dropped": pl.Int32,
            "n_events_dropped": pl.Int32,
        },
    ).write_parquet(path)


def test_truncation_rate_per_model_and_serialization(tmp_path):
    a = tmp_path / "prompts" / "tiny" / "timeline_recent.parquet"
    b = tmp_path / "prompts" / "big" / "markdown_recent.parquet"
    write_prompts(a, [True, False, False, True], [3, 0, 0, 5], [100, 80, 60, 100])
    write_prompts(b, [False, False], [0, 0], [50, 70])
    table = truncation_table([str(a), str(b)])
    assert table.select("model", "serialization").rows() == [
        ("tiny", "timeline_recent"),
        ("big", "markdown_recent"),
    ]
    assert table["truncation_rate"].to_list() == [0.5, 0.0]
    assert table["mean_lines_dropped"].to_list() == [2.0, 0.0]
    assert table["mean_events_dropped"].to_list() == [6.0, 0.0]
    assert table["max_tokens"].to_list() == [100, 70]
    out = tmp_path / "truncation.csv"
    table.write_csv(out)
    lines = _truncation_lines(out)
    assert "- tiny / timeline_recent: 50.0% of 4 histories cut" in lines[3]
    assert "2.0 oldest lines, 6.0 events dropped" in lines[3]
    assert lines[4].startswith("- big / markdown_recent: 0.0% of 2 histories")


def test_no_prompts_gives_an_empty_table_and_no_section(tmp_path):
    table = truncation_table([])
    assert table.height == 0 and "truncation_rate" in table.columns
    table.write_csv(tmp_path / "t.csv")
    assert _truncation_lines(tmp_path / "t.csv") == []


def test_human_review_on_the_front_page(tmp_path):
    from rationale_bench.report.write import _review_lines

    scores = tmp_path / "review_scores.csv"
    agreement = tmp_path / "review_agreement.csv"
    pl.DataFrame(
        {
            "teacher": ["template", "template"],
            "style": ["free_form", "free_form"],
            "criterion": ["faithful_grounding", "medical_accuracy"],
            "n_ratings": [8, 8],
            "n_items": [4, 4],
            "mean": [4.25, 3.5],
            "sd": [0.5, None],
        }
    ).write_csv(scores)
    assert _review_lines(scores, agreement)[-2] == "- One reviewer so far: no agreement statistic."
    pl.DataFrame(
        {
            "criterion": ["medical_accuracy"],
            "reviewers": ["ann vs bob"],
            "n_items": [4],
            "statistic": ["cohen_kappa"],
            "kappa": [0.6],
            "kappa_quadratic": [0.7],
        }
    ).write_csv(agreement)
    lines = _review_lines(scores, agreement)
    assert "- template / free_form, faithful grounding: mean 4.25 (SD 0.50), 4 items" in lines[3]
    assert "(SD n/a)" in lines[4]
    assert "ann vs bob, 4 items): Cohen's kappa 0.60." in lines[5]
    assert _review_lines(tmp_path / "absent.csv", agreement) == []
