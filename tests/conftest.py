"""Shared fixtures: hand-built MEDS events, a cohort config, and a tiny model built once."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import yaml
from slurm_cluster_fixture import (  # noqa: F401  (slurm_cluster: a session-wide fixture)
    SLURM_OPT_IN,
    slurm_cluster,
    slurm_opted_in,
)

from rationale_bench.data.codes import ADRD_CODE_PREFIXES, ANTI_DEMENTIA_DRUG_PREFIXES

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption(
        "--run-slurm",
        action="store_true",
        help="also run the tests marked 'slurm': they start a local SLURM cluster (root, "
        "Debian; packages from tests/slurm/cluster.sh install). Same as RB_RUN_SLURM=1.",
    )


def pytest_collection_modifyitems(config, items):
    """Plain `pytest` never installs packages or starts daemons: SLURM tests are opt-in."""
    if slurm_opted_in(config):
        return
    skip = pytest.mark.skip(reason=SLURM_OPT_IN)
    for item in items:
        if "slurm" in item.keywords:
            item.add_marker(skip)


COHORT_CFG = {
    "min_age": 65,
    "min_prior_observation_days": 730,
    "horizon_days": 1826,
    "index": {"event_prefixes": ["VISIT/"]},
    "outcome": {"code_prefixes": list(ADRD_CODE_PREFIXES)},
    "exclusion": {"drug_prefixes": list(ANTI_DEMENTIA_DRUG_PREFIXES)},
    "split": {"seed": 1, "tuning_fraction": 0.1, "held_out_fraction": 0.3},
}


def cohort_cfg(**overrides) -> dict:
    """The test cohort with ``overrides``; a nested section (outcome={"tier": ...}) is merged
    into the test cohort's, not put in its place."""
    cfg = copy.deepcopy(COHORT_CFG)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **copy.deepcopy(value)}
        else:
            cfg[key] = copy.deepcopy(value)
    return cfg


class EventBuilder:
    """Builds MEDS events for hand-made subjects in a readable way."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, datetime, str, float | None]] = []

    def person(self, sid: int, born: str, sex: str = "F") -> EventBuilder:
        t = datetime.fromisoformat(born)
        self.rows += [(sid, t, "MEDS_BIRTH", None), (sid, t, f"SEX/{sex}", None)]
        return self

    def add(self, sid: int, when: str, *codes: str, value: float | None = None) -> EventBuilder:
        t = datetime.fromisoformat(when)
        for code in codes:
            self.rows.append((sid, t, code, value))
        return self

    def visits(self, sid: int, start: str, years: int, *codes: str) -> EventBuilder:
        """One visit a year from ``start``, each with the given codes."""
        t0 = datetime.fromisoformat(start)
        for k in range(years):
            t = (t0 + timedelta(days=365 * k)).isoformat()
            self.add(sid, t, "VISIT/OUTPATIENT", *codes)
        return self

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            self.rows,
            schema={
                "subject_id": pl.Int64,
                "time": pl.Datetime("us"),
                "code": pl.String,
                "numeric_value": pl.Float32,
            },
            orient="row",
        ).sort("subject_id", "time")


@pytest.fixture
def events_builder() -> EventBuilder:
    return EventBuilder()


@pytest.fixture(scope="session")
def default_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


@pytest.fixture(scope="session")
def synthetic_events() -> pl.DataFrame:
    from rationale_bench.data.synthetic import generate_events

    return generate_events(2500, seed=7)


@pytest.fixture(scope="session")
def synthetic_cohort(synthetic_events):
    from rationale_bench.cohort.build import build_cohort

    return build_cohort(synthetic_events, cohort_cfg())


@pytest.fixture(scope="session")
def synthetic_histories(synthetic_events, synthetic_cohort):
    from rationale_bench.text.serialize import build_histories

    return build_histories(
        synthetic_events, synthetic_cohort[0], {"variant": "timeline_recent", "lookback_days": None}
    )


TINY_BUILD = {
    "vocab_size": 800,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_layers": 1,
    "num_heads": 2,
    "pretrain_steps": 0,
    "pretrain_batch_size": 4,
    "pretrain_learning_rate": 0.002,
    "seed": 0,
    "max_seq_len": 512,
}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, synthetic_histories) -> Path:
    from rationale_bench.text.serialize import history_of
    from rationale_bench.train.tiny_model import build_tiny_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    train = synthetic_histories.filter(pl.col("split") == "train")
    texts = [history_of(row) for row in train.iter_rows(named=True)]
    build_tiny_model(texts, TINY_BUILD, out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)
