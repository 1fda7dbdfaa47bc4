"""Benchmark one fixed version of sagaq while others keep editing the working tree.

`--commit REV` (default HEAD) extracts `sagaq/` and `celeryconfig.py` of REV with `git archive`
into a temporary directory and re-runs the benchmark from that directory, with it first on
PYTHONPATH, so the client and every worker subprocess it starts import the same code. (The
editable install finds sagaq through a meta-path finder that comes after sys.path.)
`--commit worktree` uses the working tree as it is, uncommitted edits included."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from bench.config import REPO

ENV = "BENCH_SNAPSHOT"  # set in the re-executed process: "<dir>|<rev>|<commit>"


def source_dir() -> Path:
    """Where sagaq is imported from: the snapshot, or the repository. Processes are started
    there, since `python -m` and `celery -A` put the current directory first on sys.path."""
    if ENV in os.environ:
        return Path(os.environ[ENV].split("|")[0])
    return REPO


def current() -> dict[str, str]:
    """What sagaq this process runs."""
    import sagaq

    imported = str(Path(sagaq.__file__).parent)
    if ENV in os.environ:
        _, rev, commit = os.environ[ENV].split("|")
        return {"sagaq": f"snapshot of {rev} ({commit})", "commit": commit, "imported": imported}
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--", "sagaq", "celeryconfig.py"))
    state = "working tree" + (" with uncommitted changes" if dirty else "")
    return {
        "sagaq": f"{state} ({commit})",
        "commit": commit + ("+dirty" if dirty else ""),
        "imported": imported,
    }


def cleanup() -> None:
    """Remove this process's snapshot directory (call last: nothing imports from it after)."""
    if ENV in os.environ:
        shutil.rmtree(os.environ[ENV].split("|")[0], ignore_errors=True)


def reexec_on_snapshot(rev: str, module: str, argv: list[str]) -> None:
    """Unless already running on a snapshot (or rev is 'worktree'): extract `rev` and exec
    `python -m module argv` on it. Does not return when it re-executes."""
    if rev == "worktree" or ENV in os.environ:
        return
    commit = _git("rev-parse", "--short", rev)
    if not commit:
        raise SystemExit(f"unknown git revision {rev!r}")
    target = Path(tempfile.mkdtemp(prefix=f"sagaq-bench-src-{commit}-"))
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "sagaq", "celeryconfig.py"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    env = dict(os.environ)
    env[ENV] = f"{target}|{rev}|{commit}"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(target), str(REPO), os.environ.get("PYTHONPATH")) if p
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(target)
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""
