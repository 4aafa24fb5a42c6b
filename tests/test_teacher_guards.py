"""The teacher's guards (issue 16, issue 13 item 5): no proxy bypass of the PHI guard,
retry rounds that heal a job without answering any prompt twice, QC that fails rationales
naming no fact of the record, near-duplicates and cut-off answers, a drop mode that cannot
quietly empty the training pool, and a teacher that sees only what the student sees."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path
from typing import Any

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_openai_server import FakeOpenAIServer  # noqa: E402
from test_teacher_generation import (  # noqa: E402
    AGE,
    config,
    good_rationale,
    outcome_in,
    pick_subjects,
    user_prompt,
)

from rationale_bench.teacher import client as teacher_client  # noqa: E402
from rationale_bench.teacher.generate import (  # noqa: E402
    TeacherError,
    build_messages,
    check_training_pool,
    generate_rationales,
    teacher_inputs,
    teacher_view,
    visible_codes,
)
from rationale_bench.teacher.qc import QCSettings, flag_near_duplicates, qc_failures  # noqa: E402


@pytest.fixture
def subjects(synthetic_histories) -> pl.DataFrame:
    return pick_subjects(synthetic_histories)


class _Listener:
    """A TCP listener on loopback that counts the connections it gets (and answers none)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_proxy_variables_cannot_reroute_patient_data(subjects, tmp_path, monkeypatch) -> None:
    """With every proxy variable pointing at a listener, the requests still go straight to
    base_url (which passed the PHI guard): the proxy receives nothing."""
    proxy = _Listener()
    try:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
            monkeypatch.setenv(name, proxy.url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        answer = lambda b: good_rationale(outcome_in(user_prompt(b)), prompt=user_prompt(b))  # noqa: E731
        with FakeOpenAIServer(responder=answer) as server:
            cfg = config(server.base_url)
            table, _ = generate_rationales(subjects, "free_form", cfg, tmp_path / "c.jsonl")
            assert server.requests_received == subjects.height
    finally:
        proxy.close()
    assert proxy.connections == 0 and table.height == subjects.height


# Faults that answer at once (no stall, no Retry-After: 1), half of all requests in all.
FAST_FAULTS = (
    "rate_limit_0",
    "server_error_500",
    "server_error_503",
    "malformed_json",
    "drop_connection",
    "empty_content",
    "missing_choices",
)


def test_failed_requests_get_further_rounds_and_no_prompt_is_answered_twice(
    synthetic_histories, tmp_path, monkeypatch
) -> None:
    """Half of all requests fail, with the default attempts (6): some prompts fail all six,
    and the job's further rounds finish them, from the cache for everything answered."""
    monkeypatch.setattr(teacher_client, "_backoff_delay", lambda *args: 0.0)
    chosen = teacher_inputs(synthetic_histories).head(300)
    faults = {kind: 0.5 / len(FAST_FAULTS) for kind in FAST_FAULTS}
    with FakeOpenAIServer(faults=faults, seed=3) as server:
        cfg = config(server.base_url, qc={"max_attempts": 1, "min_grounded_fraction": 0.0})
        cfg["openai"].update(max_attempts=6, concurrency=16, round_backoff_s=0.01)
        table, report = generate_rationales(chosen, "free_form", cfg, tmp_path / "c.jsonl")
        answered = dict(server.answered)
        requests = dict(server.content_counts)
    assert table.height == chosen.height  # completed in one job
    assert max(requests.values()) > 6  # a prompt failed a whole round and was sent again
    assert len(answered) == chosen.height and set(answered.values()) == {1}
    assert report["usage"]["requests_sent"] == sum(requests.values())


def test_a_fatal_error_ends_the_rounds_at_once(subjects, tmp_path) -> None:
    with FakeOpenAIServer(force_status=401) as server:
        cfg = config(server.base_url)
        cfg["openai"].update(round_backoff_s=60)  # a second round would hang the test
        with pytest.raises(teacher_client.TeacherError, match="every request"):
            generate_rationales(subjects, "free_form", cfg, tmp_path / "c.jsonl")


def test_a_rationale_naming_no_fact_of_the_record_fails_grounding() -> None:
    generic = (
        "Age and the accumulation of chronic conditions raise the risk of cognitive decline, "
        "and the overall pattern of care in this record makes a dementia diagnosis within "
        "five years less likely than for a typical person."
    )
    assert "ungrounded" in qc_failures(generic, "free_form", False, ["ICD10/I10"], QCSettings(), 80)
    wrong_age = "This 65-year-old woman. " + generic
    assert "ungrounded" in qc_failures(wrong_age, "free_form", False, [], QCSettings(), 80.4)
    right_age = "This 80-year-old woman. " + generic
    assert qc_failures(right_age, "free_form", False, [], QCSettings(), 80.4) == []


def _table(texts: list[str]) -> pl.DataFrame:
    n = len(texts)
    return pl.DataFrame(
        {
            "subject_id": list(range(n)),
            "split": ["train"] * n,
            "qc_pass": [True] * n,
            "qc_failures": [None] * n,
            "source": ["label_aware"] * n,
            "rationale": texts,
        },
        schema_overrides={"qc_failures": pl.String},
    )


def _report(n: int) -> dict[str, Any]:
    return {
        "qc_pass": n,
        "kept_failing_qc": 0,
        "kept": n,
        "dropped": 0,
        "final_failures": {},
        "dropped_by_reason": {},
    }


@pytest.mark.parametrize("on_failure", ["keep", "drop"])
def test_near_duplicates_above_the_share_are_flagged(on_failure) -> None:
    """Six of ten texts say the same thing but for the age: above a 0.5 share, flagged; the
    four distinct ones pass. At a 0.7 share nothing is flagged."""
    same = [f"This {70 + i}-year-old has hypertension; risk is more likely." for i in range(6)]
    texts = same + [f"Distinct text {chr(97 + i)}." for i in range(4)]
    qc = QCSettings(max_duplicate_share=0.5, on_failure=on_failure)
    table, report = flag_near_duplicates(_table(texts), _report(10), qc)
    assert report["near_duplicates"] == 6 and report["final_failures"] == {"near_duplicate": 6}
    if on_failure == "keep":
        assert table["qc_pass"].to_list() == [False] * 6 + [True] * 4
        assert set(table.filter(~pl.col("qc_pass"))["qc_failures"]) == {"near_duplicate"}
        assert report["qc_pass"] == 4 and report["kept_failing_qc"] == 6
    else:
        assert table.height == 4 and report["dropped_by_reason"] == {"near_duplicate": 6}
    loose = QCSettings(max_duplicate_share=0.7)
    untouched, report = flag_near_duplicates(_table(texts), _report(10), loose)
    assert report["near_duplicates"] == 0 and untouched["qc_pass"].all()


def test_a_cut_off_answer_is_recorded_and_regenerated_with_a_larger_budget(
    subjects, tmp_path
) -> None:
    """The first draw of every subject stops at max_tokens ('length'): it fails QC as
    truncated and is drawn again with twice the budget, which finishes."""

    def responder(body: dict[str, Any]) -> tuple[str, str]:
        prompt = user_prompt(body)
        text = good_rationale(outcome_in(prompt), prompt=prompt)
        return (text, "length") if body["max_tokens"] == 200 else (text, "stop")

    with FakeOpenAIServer(responder=responder) as server:
        cfg = config(server.base_url, qc={"max_attempts": 2, "length_retry_factor": 2.0})
        table, report = generate_rationales(subjects, "free_form", cfg, tmp_path / "c.jsonl")
        budgets = sorted({b["max_tokens"] for b in server.request_bodies})
    assert budgets == [200, 400]
    assert report["first_attempt_failures"] == {"truncated": subjects.height}
    assert report["truncated"] == 0 and table["qc_pass"].all()
    assert set(table["finish_reason"]) == {"stop"}
    # with one attempt only, the cut-off texts are kept flagged and counted
    with FakeOpenAIServer(responder=responder) as server:
        cfg = config(server.base_url, qc={"max_attempts": 1})
        table, report = generate_rationales(subjects, "free_form", cfg, tmp_path / "d.jsonl")
    assert report["truncated"] == subjects.height and not table["qc_pass"].any()
    assert set(table["finish_reason"]) == {"length"}


def test_drop_mode_that_empties_the_pool_fails_naming_the_reasons(subjects, tmp_path) -> None:
    def responder(body: dict[str, Any]) -> str:
        return "I'm sorry, I cannot help with that."

    with FakeOpenAIServer(responder=responder) as server:
        cfg = config(server.base_url, qc={"max_attempts": 1, "on_failure": "drop"})
        table, report = generate_rationales(subjects, "free_form", cfg, tmp_path / "c.jsonl")
    assert table.height == 0
    with pytest.raises(TeacherError, match=r"only 0 training subjects.*refusal: 20.*n_train"):
        check_training_pool(table, report, 64)


def test_the_teacher_sees_the_students_truncated_prompt(synthetic_histories) -> None:
    """Under view student_prompt the teacher's message holds the prompt's (cut) history, not
    the full record, and the codes it may cite are those that history shows."""
    pool = teacher_inputs(synthetic_histories)
    row = pool.filter(pl.col("lines").list.len() > 3).row(0, named=True)
    shown = row["header"] + row["lines"][0] + "\n"  # a prompt that kept the newest line only
    prompts = pl.DataFrame({"subject_id": [row["subject_id"]], "history_text": [shown]})
    one = pool.filter(pl.col("subject_id") == row["subject_id"])
    view = teacher_view(one, prompts).row(0, named=True)
    assert view["shown_history"] == shown
    assert set(view["codes"]) == set(visible_codes(row["codes"], shown)) < set(row["codes"])
    cfg = {
        "prompts": {"system": "s", "free_form": "{history}|{question}|{outcome}"},
        "question": "q",
        "max_history_lines": 200,
    }
    user = build_messages(view, "free_form", cfg)[1]["content"]
    assert user.startswith(shown + "|") and row["lines"][-1] not in user
    with pytest.raises(TeacherError, match="no student prompt"):
        teacher_view(pool.head(2), prompts.head(0))


def test_the_teacher_view_uses_the_serializers_visible_codes(
    synthetic_histories, tiny_tokenizer
) -> None:
    """Prompts built by build_prompts carry the codes of the kept lines; the teacher's view
    (and so its rationale and the QC grounding) uses exactly those."""
    from rationale_bench.text.serialize import build_prompts

    pool = teacher_inputs(synthetic_histories).head(60)
    question = {"question": "Will this patient develop dementia? Answer Yes or No."}
    prompts = build_prompts(pool, tiny_tokenizer, question, max_prompt_tokens=120)
    assert prompts["truncated"].any()
    view = teacher_view(pool, prompts)
    expected = dict(prompts.select("subject_id", "visible_codes").iter_rows())
    assert all(
        view_codes == expected[sid]
        for sid, view_codes in view.select("subject_id", "codes").iter_rows()
    )
    cut = view.join(pool.select("subject_id", full="codes"), on="subject_id")
    assert (cut["codes"].list.len() < cut["full"].list.len()).any()


def test_visible_codes_match_short_and_bare_codes() -> None:
    shown = "Hypertension (I10)\nICD10CM/X99\nLDL 3.1 mmol/L\n"
    codes = ["ICD10CM/I10", "ICD10CM/X99", "ICD10CM/E11.9", "ICD10CM/I1"]
    assert visible_codes(codes, shown) == ["ICD10CM/I10", "ICD10CM/X99"]


def test_ages_count_as_facts_only_when_given() -> None:
    text = "This 72-year-old patient has no recorded risk factors; risk is less likely."
    assert qc_failures(text, "free_form", False, [], QCSettings(min_words=3), AGE) == []
    assert "ungrounded" in qc_failures(text, "free_form", False, [], QCSettings(min_words=3))
