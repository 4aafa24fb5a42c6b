"""The SLURM profile: where it goes, which status command survives scancel, and a live check.

snakemake-executor-plugin-slurm 2.8 polls job states with ``sacct`` or ``squeue`` and fails a
job only when the state is exactly one of its failure states. A job stopped with ``scancel``
shows in sacct as ``CANCELLED by <uid>``, which matches none, so with sacct the controller waits
for it forever. squeue reports plain ``CANCELLED``, but only for ``MinJobAge`` seconds after a
job ends; the plugin waits up to 180 s between checks (its cap while no job finishes), so a job
that ends unseen for longer would also be waited for forever. Hence: squeue where MinJobAge is
at least ``SQUEUE_MIN_JOB_AGE``, otherwise sacct (the smaller risk: only a scancel hangs it).
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The plugin's longest wait between status checks (180 s, hard-coded in 2.8) plus a margin;
# also SLURM's own default MinJobAge.
SQUEUE_MIN_JOB_AGE = 300


@dataclass
class Finding:
    ok: bool
    what: str

    def __str__(self) -> str:
        return f"[{'ok' if self.ok else 'PROBLEM'}] {self.what}"


def default_profile_dir() -> Path:
    """Where Snakemake looks for ``--profile slurm``: $XDG_CONFIG_HOME/snakemake/slurm."""
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "snakemake" / "slurm"


def _run(*cmd: str) -> subprocess.CompletedProcess | None:
    """A SLURM client command, or None when it is not installed or does not answer."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None


def slurm_config() -> dict[str, str] | None:
    """``scontrol show config`` as a dict, or None without a reachable controller."""
    result = _run("scontrol", "show", "config")
    if result is None or result.returncode != 0:
        return None
    pairs = (line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def min_job_age(config: Mapping[str, str]) -> int | None:
    """MinJobAge in seconds ('300 sec', '1h' or a bare number)."""
    match = re.match(r"(\d+)\s*([a-zA-Z]*)", config.get("MinJobAge", ""))
    if not match:
        return None
    value, unit = int(match.group(1)), match.group(2).lower()
    return value * 3600 if unit in ("h", "hour", "hours") else value


def choose_status_command(config: Mapping[str, str] | None) -> tuple[str, Finding]:
    """The status command for this cluster, and what the choice rests on."""
    if config is None:
        return "squeue", Finding(
            False,
            "no SLURM controller answered `scontrol show config`, so MinJobAge is unchecked; "
            "kept `slurm-status-command: squeue`. Run `rationale-bench install-profile --check` "
            "on the login node.",
        )
    age = min_job_age(config)
    if age is not None and age >= SQUEUE_MIN_JOB_AGE:
        return "squeue", Finding(
            True,
            f"MinJobAge={age} s >= {SQUEUE_MIN_JOB_AGE} s: `squeue` status checks see every "
            "ended job, and a scancel'd job fails promptly (retried once).",
        )
    return "sacct", Finding(
        False,
        f"MinJobAge={age} s < {SQUEUE_MIN_JOB_AGE} s: squeue forgets ended jobs before the "
        "plugin looks again, so the profile uses `sacct`. Then a job stopped with scancel is "
        "never seen as failed (sacct says 'CANCELLED by <uid>'): stop the controller with "
        "Ctrl-C and rerun. Ask the admins for MinJobAge >= 300 to get squeue.",
    )


def check_profile(profile: Mapping[str, Any], user: str | None = None) -> list[Finding]:
    """Account, partitions, status command and GPU request style against the live cluster."""
    config = slurm_config()
    if config is None:
        return [Finding(False, "no SLURM controller answered `scontrol show config`")]
    resources = profile.get("default-resources", {})
    execution = _execution_settings(profile)
    return [
        _check_account(str(resources.get("slurm_account", "")), user or getpass.getuser()),
        *_check_partitions([resources.get("slurm_partition"), execution.get("gpu_partition")]),
        *_check_status_command(profile, config),
        _check_gpu_request(execution, config),
    ]


def _execution_settings(profile: Mapping[str, Any]) -> dict[str, Any]:
    """The ``execution={...}`` entry install-profile writes under ``config:``."""
    import ast

    for entry in profile.get("config", []) or []:
        if str(entry).startswith("execution="):
            return ast.literal_eval(str(entry).split("=", 1)[1])
    return {}


def _check_account(account: str, user: str) -> Finding:
    result = _run("sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=account")
    if result is None or result.returncode != 0:
        return Finding(False, f"could not list {user}'s accounts with sacctmgr")
    accounts = sorted({line.strip() for line in result.stdout.splitlines() if line.strip()})
    return Finding(
        account in accounts,
        f"account {account!r}: {user} may use {', '.join(accounts) or 'none'}",
    )


def _check_partitions(partitions: list[Any]) -> list[Finding]:
    result = _run("sinfo", "-h", "-o", "%P")
    if result is None or result.returncode != 0:
        return [Finding(False, "could not list partitions with sinfo")]
    known = {p.strip().rstrip("*") for p in result.stdout.split()}
    return [
        Finding(p in known, f"partition {p!r}: the cluster has {', '.join(sorted(known))}")
        for p in partitions
        if p
    ]


def _check_status_command(profile: Mapping[str, Any], config: Mapping[str, str]) -> list[Finding]:
    chosen = profile.get("slurm-status-command", "sacct")
    recommended, why = choose_status_command(config)
    findings = [
        Finding(
            chosen == recommended,
            f"slurm-status-command: {chosen} (recommended here: {recommended}). {why.what}",
        )
    ]
    tool = _run(chosen, "--help") if chosen in ("sacct", "squeue") else None
    findings.append(Finding(tool is not None, f"`{chosen}` is installed: {tool is not None}"))
    if chosen == "sacct":
        probe = _run("sacct", "-n", "-X", "-S", "now-1hours")
        works = probe is not None and probe.returncode == 0
        findings.append(Finding(works, f"sacct answers (needs slurmdbd): {works}"))
    return findings


def _check_gpu_request(execution: Mapping[str, Any], config: Mapping[str, str]) -> Finding:
    style = execution.get("gpu_request", "gpus")
    select = config.get("SelectType", "?")
    gres = config.get("GresTypes", "")
    ok = "gpu" in gres and (style == "gres" or select == "select/cons_tres")
    what = f"GPU request style {style!r}: SelectType={select}, GresTypes={gres}"
    if not ok:
        what += " (--gpus needs select/cons_tres and GresTypes=gpu; else --gpu-request gres)"
    model = execution.get("gpu_model")
    if model:
        listed = _run("sinfo", "-h", "-o", "%G")
        offered = listed.stdout if listed is not None else ""
        ok = ok and f"gpu:{model}:" in offered
        what += f"; GPU model {model!r} in sinfo's gres ({' '.join(set(offered.split()))})"
    return Finding(ok, what)
