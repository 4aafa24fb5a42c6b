"""Teacher generation: QC-driven regeneration, label-blind (STaR) mode, shards, usage and cost.

The fake OpenAI server plays the teacher through a `responder` that reads the prompt (is the
outcome given? which subject?) and the sampling settings (which attempt is this?), so every
count the generator reports can be predicted exactly.
"""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_openai_server import FakeOpenAIServer  # noqa: E402

from rationale_bench.teacher.generate import (  # noqa: E402
    TeacherError,
    generate_rationales,
    outcome_words,
    teacher_inputs,
)
from rationale_bench.teacher.qc import (  # noqa: E402
    QC_REASONS,
    QCSettings,
    qc_failures,
    split_answer,
    usage_cost,
)
from rationale_bench.teacher.shards import (  # noqa: E402
    ask_shard,
    cache_files,
    cache_path,
    shard_of,
    sum_shard_reports,
    usage_with_shards,
)

FILLER = (
    "The record lists several routine visits, laboratory tests and prescriptions over the "
    "years, and the pattern of care gives a picture of the patient's overall health."
)


AGE = 72  # the age good_rationale states when it is not given a prompt


def good_rationale(more_likely: bool, style: str = "free_form", prompt: str = "") -> str:
    """A usable rationale: it states the patient's age (from the prompt's header) and a word
    of its own per subject, so that no two subjects' rationales are near-duplicates."""
    direction = "more likely" if more_likely else "less likely"
    found = re.search(r"Age at prediction time: (\d+)", prompt)
    age = int(found.group(1)) if found else AGE
    own = re.search(r"SUBJECT (\d+)", prompt)
    word = "".join(chr(97 + int(d)) for d in own.group(1)) if own else "plain"
    if style == "step_by_step":
        return (
            f"1. Age and sex: a {age}-year-old patient ({word}).\n2. Modifiable risk factors: "
            f"{FILLER}\n3. Cognitive and prodromal signs: none stand out.\n4. Weighing the "
            f"evidence: mixed.\n5. Conclusion: a dementia diagnosis within five years is "
            f"{direction}."
        )
    return (
        f"This {age}-year-old patient ({word}). {FILLER} Overall, a dementia diagnosis within "
        f"five years is {direction}."
    )


def user_prompt(body: dict[str, Any]) -> str:
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


def outcome_in(prompt: str) -> bool | None:
    """The outcome a label-aware prompt states (None: a label-blind prompt)."""
    if outcome_words(False) in prompt:
        return False
    if outcome_words(True) in prompt:
        return True
    return None


def subject_of(prompt: str) -> int:
    return int(re.search(r"SUBJECT (\d+)", prompt).group(1))


CFG_BASE: dict[str, Any] = {
    "name": "fake",
    "backend": "openai",
    "prompts": {
        "system": "sys",
        "free_form": "{history}\n{question}\nThe actual outcome was: {outcome}.",
        "step_by_step": "{history}\n{question}\nOutcome: {outcome}. Steps.",
        "blind_free_form": "{history}\n{question}\nEnd with 'Answer: Yes/No'.",
        "blind_step_by_step": "{history}\n{question}\nSteps, then Answer.",
    },
    "question": "Will it happen?",
    "max_history_lines": 20,
    "allowed_hosts": [],
}


@pytest.fixture
def subjects(synthetic_histories) -> pl.DataFrame:
    return pick_subjects(synthetic_histories)


def pick_subjects(synthetic_histories: pl.DataFrame) -> pl.DataFrame:
    """20 teacher subjects, both labels present; the header carries the subject id so the
    fake teacher knows whom it is answering."""
    pool = teacher_inputs(synthetic_histories)
    picked = pl.concat(
        [pool.filter(pl.col("label")).head(6), pool.filter(~pl.col("label")).head(14)]
    )
    return picked.with_columns(
        header=pl.format("SUBJECT {} ", pl.col("subject_id")) + pl.col("header")
    )


def config(base_url: str, **extra: Any) -> dict[str, Any]:
    cfg = json.loads(json.dumps(CFG_BASE))
    cfg["openai"] = {
        "base_url": base_url,
        "model": "m",
        "api_key_env": None,
        "temperature": 0.0,
        "top_p": 1.0,
        "max_tokens": 200,
        "seed": 7,
        "concurrency": 4,
        "request_timeout_s": 10,
        "max_attempts": 2,
    }
    cfg.update(extra)
    return cfg


# ---------------------------------------------------------------------------- QC checks


@pytest.mark.parametrize(
    "text, style, label, reason",
    [
        ("", "free_form", True, "empty"),
        (
            "I'm sorry, I cannot provide medical predictions. " + FILLER,
            "free_form",
            True,
            "refusal",
        ),
        (
            "As an AI language model I will try. " + good_rationale(True),
            "free_form",
            True,
            "refusal",
        ),
        (
            "The actual outcome was a diagnosis. " + good_rationale(True),
            "free_form",
            True,
            "label_leak",
        ),
        ("Yes. " + good_rationale(True), "free_form", True, "label_leak"),
        (
            "The patient was later diagnosed with dementia. " + FILLER,
            "free_form",
            True,
            "label_leak",
        ),
        ("Short and more likely.", "free_form", True, "too_short"),
        (" ".join(["word"] * 500), "free_form", True, "too_long"),
        (good_rationale(True), "step_by_step", True, "no_conclusion"),
        ("The record shows hypertension. " + good_rationale(True), "free_form", True, "ungrounded"),
        (good_rationale(False), "free_form", True, "label_inconsistent"),
    ],
)
def test_each_qc_check_fires(text: str, style: str, label: bool, reason: str) -> None:
    failures = qc_failures(text, style, label, ["ICD10/E11.9"], QCSettings(), AGE)
    assert reason in failures and reason in QC_REASONS


def test_good_rationales_pass_qc() -> None:
    for style in ("free_form", "step_by_step"):
        for label in (True, False):
            text = good_rationale(label, style)
            assert qc_failures(text, style, label, [], QCSettings(), AGE) == []
    grounded = "The record shows hypertension. " + good_rationale(True)
    assert qc_failures(grounded, "free_form", True, ["ICD10/I10"], QCSettings(), AGE) == []


def test_split_answer() -> None:
    assert split_answer("Reasoning here.\n\nAnswer: Yes\n") == ("Reasoning here.", True)
    assert split_answer("Reasoning.\n**Final answer:** no") == ("Reasoning.", False)
    assert split_answer("Reasoning without an answer.") == ("Reasoning without an answer.", None)


def test_qc_settings_are_checked() -> None:
    with pytest.raises(TeacherError, match="on_failure"):
        QCSettings.from_config({"qc": {"on_failure": "maybe"}})
    with pytest.raises(TeacherError, match="unknown keys"):
        QCSettings.from_config({"qc": {"min_word": 3}})


# ---------------------------------------------------------------------------- regeneration


def test_failing_rationales_are_regenerated_with_a_new_draw(subjects, tmp_path) -> None:
    """First draw (seed 7) of every third subject is too short; the regeneration (seed 8,
    temperature raised) is fine. Every count is predictable; a rerun sends nothing."""
    sids = subjects["subject_id"].to_list()
    bad = set(sids[::3])

    def responder(body: dict[str, Any]) -> str:
        prompt = user_prompt(body)
        if subject_of(prompt) in bad and body["seed"] == 7:
            return "Too short."
        return good_rationale(outcome_in(prompt), prompt=prompt)

    cache = tmp_path / "cache.jsonl"
    with FakeOpenAIServer(responder=responder) as server:
        cfg = config(server.base_url, qc={"max_attempts": 3, "regenerate_temperature": 0.9})
        table, report = generate_rationales(subjects, "free_form", cfg, cache)
        assert server.requests_received == len(sids) + len(bad)
        retried = [b for b in server.request_bodies if b["seed"] == 8]
        assert len(retried) == len(bad) and all(b["temperature"] == 0.9 for b in retried)
        server.reset_counters()
        again, report2 = generate_rationales(subjects, "free_form", cfg, cache)
        assert server.requests_received == 0 and report2["usage"]["requests_sent"] == 0
    assert table["qc_pass"].all() and table.height == len(sids)
    # "Too short." also names no fact of the record
    assert report["first_attempt_failures"] == {"too_short": len(bad), "ungrounded": len(bad)}
    assert report["regenerated"] == report["recovered_by_regeneration"] == len(bad)
    assert report["dropped"] == 0 and report["final_failures"] == {}
    redone = table.filter(pl.col("subject_id").is_in(list(bad)))
    assert (redone["attempts"] == 2).all()
    assert all(json.loads(s)["seed"] == 8 for s in redone["sampling"])
    assert again["rationale"].to_list() == table["rationale"].to_list()
    usage = report["usage"]
    assert usage["requests_sent"] == len(sids) + len(bad) and usage["completion_tokens"] > 0


@pytest.mark.parametrize("on_failure", ["keep", "drop"])
def test_rationales_failing_every_attempt_are_kept_flagged_or_dropped(
    subjects, tmp_path, on_failure
) -> None:
    sids = subjects["subject_id"].to_list()
    hopeless = set(sids[:2])

    def responder(body: dict[str, Any]) -> str:
        prompt = user_prompt(body)
        if subject_of(prompt) in hopeless:
            return "I'm sorry, but I cannot provide a prediction about a real patient. " + FILLER
        return good_rationale(outcome_in(prompt), prompt=prompt)

    with FakeOpenAIServer(responder=responder) as server:
        cfg = config(server.base_url, qc={"max_attempts": 3, "on_failure": on_failure})
        table, report = generate_rationales(subjects, "free_form", cfg, tmp_path / "c.jsonl")
        per_subject = {}
        for body in server.request_bodies:
            sid = subject_of(user_prompt(body))
            per_subject[sid] = per_subject.get(sid, 0) + 1
    assert all(per_subject[s] == 3 for s in hopeless)  # max_attempts draws, then given up
    assert report["first_attempt_failures"] == {"refusal": 2, "ungrounded": 2}
    failing = table.filter(~pl.col("qc_pass"))
    if on_failure == "keep":
        # the two kept refusals are the same text: 10% of the style, above the 5% allowed
        assert report["final_failures"] == {"refusal": 2, "ungrounded": 2, "near_duplicate": 2}
        assert table.height == len(sids) and report["kept_failing_qc"] == 2
        assert set(failing["subject_id"]) == hopeless
        assert set(failing["qc_failures"]) == {"refusal,ungrounded,near_duplicate"}
    else:
        assert report["final_failures"] == {"refusal": 2, "ungrounded": 2}
        assert failing.height == 0 and set(table["subject_id"]) == set(sids) - hopeless
        assert report["dropped"] == 2 and report["dropped_by_reason"] == {"refusal": 2}


# ---------------------------------------------------------------------------- label-blind


def blind_teacher(body: dict[str, Any]) -> str:
    """Predicts 'Yes' for everyone when blind; explains the given outcome when told it."""
    prompt = user_prompt(body)
    outcome = outcome_in(prompt)
    if outcome is None:
        return good_rationale(True, prompt=prompt) + "\nAnswer: Yes"
    return good_rationale(outcome, prompt=prompt)


@pytest.mark.parametrize("on_disagreement", ["rationalize", "drop"])
def test_label_blind_keeps_agreeing_and_rationalizes_or_drops_the_rest(
    subjects, tmp_path, on_disagreement
) -> None:
    n_pos = int(subjects["label"].sum())
    n_neg = subjects.height - n_pos
    with FakeOpenAIServer(responder=blind_teacher) as server:
        cfg = config(
            server.base_url,
            mode="label_blind",
            label_blind={"on_disagreement": on_disagreement},
        )
        table, report = generate_rationales(subjects, "free_form", cfg, tmp_path / "c.jsonl")
        bodies = list(server.request_bodies)
    blind = [b for b in bodies if outcome_in(user_prompt(b)) is None]
    assert len(blind) == subjects.height  # every subject predicted once, without its label
    hinted = [b for b in bodies if outcome_in(user_prompt(b)) is not None]
    stats = report["label_blind"]
    assert stats["agreed"] == n_pos and stats["disagreed"] == n_neg and stats["no_answer"] == 0
    assert (table.filter(pl.col("source") == "agreed")["label"]).all()
    assert "Answer:" not in "".join(table["rationale"])  # the answer line is not training text
    assert table["teacher_answer"].all()  # the blind prediction is recorded
    if on_disagreement == "rationalize":
        assert len(hinted) == n_neg and stats["rationalized"] == n_neg
        assert all(outcome_in(user_prompt(b)) is False for b in hinted)
        assert table.height == subjects.height and table["qc_pass"].all()
        assert set(table.filter(~pl.col("label"))["source"]) == {"rationalized"}
    else:
        assert hinted == [] and stats["rationalized"] == 0
        assert table.height == n_pos and report["dropped_by_reason"] == {
            "disagrees_with_label": n_neg
        }


def test_label_blind_retries_a_missing_answer(subjects, tmp_path) -> None:
    def responder(body: dict[str, Any]) -> str:
        if body["seed"] == 7:  # the first draw forgets the answer line
            return good_rationale(True, prompt=user_prompt(body))
        return blind_teacher(body)

    with FakeOpenAIServer(responder=responder) as server:
        cfg = config(server.base_url, mode="label_blind", qc={"max_attempts": 2})
        table, report = generate_rationales(subjects, "free_form", cfg, tmp_path / "c.jsonl")
    assert report["first_attempt_failures"]["missing_answer"] == subjects.height
    assert report["label_blind"]["agreed"] == int(subjects["label"].sum())
    assert table.height == subjects.height


def test_label_blind_needs_a_predicting_teacher_and_a_blind_prompt(subjects, tmp_path) -> None:
    with pytest.raises(TeacherError, match="template"):
        generate_rationales(
            subjects,
            "free_form",
            {"name": "t", "backend": "template", "seed": 0, "mode": "label_blind"},
            tmp_path / "c",
        )
    cfg = config("http://127.0.0.1:9/v1", mode="label_blind")
    cfg["prompts"]["blind_free_form"] = "{history} {outcome}"
    with pytest.raises(TeacherError, match="must not show"):
        generate_rationales(subjects, "free_form", cfg, tmp_path / "c")


# ---------------------------------------------------------------------------- shards


def test_shards_cut_the_subjects_into_balanced_disjoint_parts(synthetic_histories) -> None:
    subjects = teacher_inputs(synthetic_histories)
    parts = [shard_of(subjects, i, 3) for i in range(3)]
    sizes = [p.height for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == subjects.height
    together = pl.concat([p.select("subject_id") for p in parts])
    assert together["subject_id"].n_unique() == subjects.height
    with pytest.raises(TeacherError, match="does not exist"):
        shard_of(subjects, 3, 3)


def test_shard_jobs_fill_the_cache_the_style_job_reads(subjects, tmp_path) -> None:
    """Two shard jobs ask every request; the style's own job then sends nothing, and its
    rationales and counts equal those of one unsharded job. A three-shard layout afterwards
    reads the two-shard caches: nothing is paid twice."""
    with FakeOpenAIServer(
        responder=lambda b: good_rationale(outcome_in(user_prompt(b)), prompt=user_prompt(b))
    ) as srv:
        cfg = config(srv.base_url)
        reports = [ask_shard(subjects, "free_form", cfg, tmp_path, i, 2) for i in range(2)]
        assert srv.requests_received == subjects.height
        srv.reset_counters()
        table, report = generate_rationales(
            subjects,
            "free_form",
            cfg,
            cache_path(tmp_path, "free_form"),
            cache_read_also=cache_files(tmp_path, "free_form"),
        )
        assert srv.requests_received == 0
        resharded = [ask_shard(subjects, "free_form", cfg, tmp_path, i, 3) for i in range(3)]
        assert srv.requests_received == 0
        alone, alone_report = generate_rationales(
            subjects, "free_form", cfg, tmp_path / "elsewhere" / "alone.jsonl"
        )
    assert table.equals(alone)
    summed = sum_shard_reports(reports)
    assert summed["subjects"] == subjects.height and summed["shards"] == 2
    assert summed["usage"]["requests_sent"] == subjects.height
    usage = usage_with_shards(report["usage"], summed["usage"])
    assert usage["requests_sent"] == subjects.height and usage["sent_by_style_job"] == 0
    assert usage["cache_hits"] == 0  # the style job's own cache hits are not counted again
    assert usage["total_completion_tokens"] == alone_report["usage"]["total_completion_tokens"]
    assert sum_shard_reports(resharded)["usage"]["cache_hits"] == subjects.height


def test_a_mixed_or_incomplete_shard_layout_is_refused() -> None:
    shard = {"style": "free_form", "shards": 3, "subjects": 10}
    with pytest.raises(TeacherError, match="shards 0..1"):
        sum_shard_reports([{**shard, "shard": 0}, {**shard, "shard": 2}])
    with pytest.raises(TeacherError, match="rerun the teacher's shard jobs"):
        sum_shard_reports([{**shard, "shard": 0}, {**shard, "shard": 1, "shards": 2}])


# ---------------------------------------------------------------------------- usage


def test_usage_cost_per_million_tokens() -> None:
    usage = {
        "prompt_tokens": 2_000_000,
        "completion_tokens": 500_000,
        "total_prompt_tokens": 4_000_000,
        "total_completion_tokens": 1_000_000,
    }
    cost = usage_cost(usage, {"input": 0.5, "output": 2.0})
    assert cost == {"cost_this_run": 2.0, "cost_total": 4.0}
    assert usage_cost(usage, None) == {"cost_this_run": None, "cost_total": None}


def test_progress_goes_to_the_log_as_lines(subjects, tmp_path, monkeypatch) -> None:
    log = io.StringIO()  # not a terminal, like a Snakemake job's log file
    monkeypatch.setattr(sys, "stderr", log)
    with FakeOpenAIServer(
        responder=lambda b: good_rationale(outcome_in(user_prompt(b)), prompt=user_prompt(b))
    ) as srv:
        generate_rationales(subjects, "free_form", config(srv.base_url), tmp_path / "c.jsonl")
    text = log.getvalue()
    assert "\r" not in text
    last = [line for line in text.splitlines() if "free_form label_aware attempt 1" in line][-1]
    assert f"{subjects.height}/{subjects.height}" in last and "req" in last


# ---------------------------------------------------------------------------- QC report


def test_qc_table_and_report_carry_the_generation_verdict(synthetic_histories, tmp_path) -> None:
    from rationale_bench.teacher.qc import qc_report, quality_control

    cfg = {"name": "template", "backend": "template", "seed": 0}
    table, generation = generate_rationales(
        teacher_inputs(synthetic_histories), "free_form", cfg, tmp_path
    )
    flagged = table.with_columns(
        qc_pass=pl.int_range(pl.len()) % 2 == 0,
        qc_failures=pl.when(pl.int_range(pl.len()) % 2 == 0).then(None).otherwise(pl.lit("x")),
    )
    qc = quality_control(flagged, synthetic_histories)
    assert qc.height == table.height
    assert qc["qc_pass"].to_list() == flagged["qc_pass"].to_list()
    assert set(qc["source"]) == {"label_aware"} and (qc["attempts"] == 1).all()
    report = qc_report(qc, generation, {"input": 1.0, "output": None})
    assert report["kept"] == table.height and report["usage"]["cost_total"] == 0.0
    dist = report["distribution"]
    assert dist["rationales"] == table.height and dist["label_consistent_share"] == 1.0
    assert dist["words_p05"] <= dist["words_median"] <= dist["words_p95"]
    # a table from before this change (no verdict columns) still gets a QC table
    old = quality_control(
        table.drop("qc_pass", "qc_failures", "source", "attempts"), synthetic_histories
    )
    assert old["qc_pass"].null_count() == old.height


def test_rationale_job_settings_hold_only_what_changes_that_style() -> None:
    from rationale_bench.study import rationale_settings

    prompts = {k: f"{k} {{history}}" for k in CFG_BASE["prompts"]}
    config = {
        "serialization": {"question": "q?"},
        "cohort": {"horizon_days": 1826},
        "teacher": {
            "name": "t",
            "backend": "openai",
            "mode": "label_aware",
            "qc": {"regenerations": 2},
            "seed": 0,
            "openai": {"model": "m", "base_url": "http://127.0.0.1:1/v1", "concurrency": 4},
            "view": "full_history",
            "allowed_hosts": [],
            "max_history_lines": 10,
            "prompts": prompts,
            "label_blind": {"on_disagreement": "drop"},
            "shards": 2,
            "price_per_million_tokens": {"input": 1.0, "output": 2.0},
            "review": {"per_stratum": 5},
        },
    }
    before = rationale_settings(config, "free_form")
    assert set(before["prompts"]) == {"system", "free_form"} and "label_blind" not in before
    config["teacher"]["prompts"] = {**prompts, "step_by_step": "edited", "blind_free_form": "x"}
    config["teacher"].update(shards=5, price_per_million_tokens={}, review={})
    # how requests are sent changes no answer: none of it is a param
    config["teacher"]["openai"].update(
        base_url="http://10.0.0.2/v1",
        concurrency=64,
        request_timeout_s=5,
        http_attempts=9,
        api_key_env="KEY",
        retry_rounds=1,
        round_backoff_s=1,
    )
    config["teacher"]["allowed_hosts"] = ["example.org"]
    assert rationale_settings(config, "free_form") == before
    config["teacher"]["qc"] = {"regenerations": 3}
    assert rationale_settings(config, "free_form") != before
    config["teacher"]["mode"] = "label_blind"
    blind = rationale_settings(config, "free_form")
    assert blind["prompts"]["blind_free_form"] == "x" and blind["label_blind"]["on_disagreement"]


@pytest.mark.parametrize(
    "text, codes, expected",
    [
        # common wordings of risk factors count, as do drugs from the code dictionary
        ("She has high blood pressure and takes amlodipine.", ["ICD10/I10", "ATC/C08CA01"], 1.0),
        ("He is diabetic, on metformin.", ["ICD10/E11.9"], 0.5),  # metformin not in the record
        ("A statin was prescribed for high cholesterol.", ["ATC/C10AA05", "ICD10/E78.5"], 1.0),
        ("Atrial fibrillation is treated with warfarin.", ["ICD10/I48.91"], 0.5),
        # negated mentions claim nothing, and a text claiming nothing is grounded in nothing
        ("There is no history of stroke, diabetes or depression.", [], 0.0),
        ("Hypertension is documented; no diabetes.", ["ICD10/I10"], 1.0),
        ("Hypertension is documented, and diabetes.", ["ICD10/I10"], 0.5),
        ("Nothing of note.", [], 0.0),
    ],
)
def test_grounding_sees_wordings_drugs_and_negation(text, codes, expected) -> None:
    from rationale_bench.teacher.qc import grounded_fraction

    assert grounded_fraction(text, codes) == pytest.approx(expected)
