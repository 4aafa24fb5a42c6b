"""Style gates that CI runs with the tests: ruff (lint and format) and snakefmt stay clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHECKS = {
    "ruff check": [str(BIN / "ruff"), "check", "."],
    "ruff format": [str(BIN / "ruff"), "format", "--check", "."],
    "snakefmt": [str(BIN / "snakefmt"), "--check", "Snakefile", "rules"],
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_style_is_clean(name):
    command = CHECKS[name]
    assert Path(command[0]).exists(), f"{command[0]} is missing: install the 'dev' extra"
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{name}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
