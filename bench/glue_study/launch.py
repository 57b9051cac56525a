"""The study's launcher: each run through the real CLI (`python -m gradsurg run ... --resume`),
at the lowest priority on one CPU thread, `jobs` at a time; a resumed run keeps its commit."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from glue_study.plan import ROOT


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()


def launch(run: Any, runs: Path) -> subprocess.Popen[bytes]:
    """Start one run (anything with `folder(runs)` and `command(runs)`) at the lowest priority
    on one CPU thread, recording its commit and command in its folder."""
    from gradsurg.outputs import atomic_write_text

    folder = run.folder(runs)
    folder.mkdir(parents=True, exist_ok=True)
    command = run.command(runs)
    head = commit()
    recorded = folder / "commit.txt"
    if recorded.is_file() and recorded.read_text().strip() != head:
        # a resumed run keeps the commit that started it; mixing code versions is refused
        sys.exit(f"error: {folder} was started at commit {recorded.read_text().strip()}, this "
                 f"checkout is {head}; finish it there or delete the folder")
    atomic_write_text(recorded, head + "\n")  # a temporary name, then a rename
    atomic_write_text(folder / "command.txt", shlex.join(command) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = (folder / "stdout.log").open("ab")
    return subprocess.Popen(["nice", "-n", "19", *command], stdout=log,
                            stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def run_all(todo: list[Any], runs: Path, jobs: int) -> None:
    """Launch `todo` (anything with `folder(runs)` and `command(runs)`), `jobs` at a time,
    until all have ended; exit with an error line if any failed."""
    todo = list(todo)
    active: list[tuple[Any, subprocess.Popen[bytes]]] = []
    failed: list[Any] = []
    while todo or active:
        while todo and len(active) < jobs:
            run = todo.pop(0)
            print(f"{time.strftime('%H:%M:%S')} start {run.folder(runs)}", flush=True)
            active.append((run, launch(run, runs)))
        time.sleep(10)
        for item in list(active):
            run, process = item
            if process.poll() is not None:
                active.remove(item)
                state = "done" if process.returncode == 0 else f"FAILED ({process.returncode})"
                if process.returncode != 0:
                    failed.append(run)
                print(f"{time.strftime('%H:%M:%S')} {state} {run.folder(runs)}", flush=True)
    if failed:
        sys.exit(f"error: {len(failed)} run(s) failed; see their stdout.log")
