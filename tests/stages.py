"""Run the test suite's lab stages side by side: ``python -m tests.stages LABEL=COMMAND ...``.

The lab stages (the unit tests that need the lab, each molecule scenario) spend most of their time
waiting: for a stand-in server to load, for systemd, for Ansible's SSH round trips. They use
distinct lab hosts (each molecule scenario lists only the containers labelled with its name; each
unit test prefixes its own hosts), so they can run at the same time on one lab.

Each stage runs ``bash -c COMMAND`` with its output in ``LOG_DIR/LABEL.log`` (spaces in the label
become ``_``). Stages start in the order given (longest first keeps the wall time short), at most
``--jobs`` at a time. When a stage ends, its whole log is printed at once (never interleaved with
another's), then ``[time] LABEL: N s`` and, if it failed, ``FAILED (exit N)`` - the format of the
Makefile's ``timed``. While stages run, a line every ``--heartbeat`` seconds names them with their
elapsed time (for a CI log that would otherwise be silent for many minutes).

Exit status: 0 when every stage exits 0, else 1 after all have ended (a failing stage does not
stop the others); the stages that failed are named on the last line. Just before it, for each failed
stage, a recap of the lines of its log that say what failed (pytest's ``FAILED``/``ERROR`` summary
lines, Ansible's ``fatal:``, ``[time] ... FAILED``), at most ``RECAP_LINES`` per stage, each cut
at ``RECAP_WIDTH`` characters: a CI log kept only by its tail still names the failing tests.
(molecule wraps the lines it frames at the terminal's width, ``COLUMNS`` in a log: the Makefile
runs it with a wide one.)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

RECAP_LINES = 12
RECAP_WIDTH = 400
RECAP_FOLLOW = 3
# pytest's short summary ("FAILED tests/x.py::test_y - AssertionError: ..."), its errors, Ansible's
# failed tasks (not "FAILED - RETRYING:", an attempt of a task that retries), a nested stage's
# timing line
_FAILURE_LINE = re.compile(r"^(FAILED|ERROR) (?!- RETRYING)|fatal: \[|^\[time\] .* FAILED")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# molecule frames a step's output: "  │ " before each line
_FRAME = re.compile(r"^\s*\u2502 ?")


@dataclass
class Stage:
    """One stage: its label, its shell command, and while it runs its process and log."""

    label: str
    command: str
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    started: float = 0.0


def parse_stage(text: str) -> Stage:
    """``LABEL=COMMAND`` -> Stage. Raises ``argparse.ArgumentTypeError`` without a label."""
    label, sep, command = text.partition("=")
    if not sep or not label.strip() or not command.strip():
        raise argparse.ArgumentTypeError(f"a stage is LABEL=COMMAND, got {text!r}")
    return Stage(label.strip(), command)


def _report(stage: Stage, status: int, log_path: Path) -> None:
    """Print a finished stage's log, then its ``[time]`` line."""
    sys.stdout.flush()
    with log_path.open("rb") as log:
        while chunk := log.read(1 << 16):
            sys.stdout.buffer.write(chunk)
    elapsed = int(time.monotonic() - stage.started)
    failed = "" if status == 0 else f" FAILED (exit {status})"
    sys.stdout.buffer.write(f"[time] {stage.label}: {elapsed} s{failed}\n".encode())
    sys.stdout.flush()


def log_path_of(log_dir: Path, label: str) -> Path:
    """Where the stage ``label`` logs: ``LOG_DIR/LABEL.log``, spaces in the label as ``_``."""
    return log_dir / f"{label.replace(' ', '_')}.log"


def recap(log_path: Path) -> list[str]:
    """The lines of ``log_path`` that say what failed: at most ``RECAP_LINES`` (the last ones), ANSI
    colours and molecule's frame removed, each cut at ``RECAP_WIDTH`` characters; ``[]`` when
    none matches. An Ansible ``fatal: [HOST]: FAILED! =>`` whose result follows on its own lines
    (the YAML result format) is joined with the next ``RECAP_FOLLOW`` of them."""
    lines = log_path.read_text(errors="replace").splitlines()[1:]  # [0] is "+ COMMAND"
    plain = [_FRAME.sub("", _ANSI.sub("", line)) for line in lines]
    found = []
    for i, line in enumerate(plain):
        if _FAILURE_LINE.search(line):
            if line.rstrip().endswith("=>"):
                line = " ".join(
                    [line.rstrip(), *(s.strip() for s in plain[i + 1 : i + 1 + RECAP_FOLLOW])]
                )
            found.append(line[:RECAP_WIDTH])
    return found[-RECAP_LINES:]


def run(stages: list[Stage], jobs: int, log_dir: Path, heartbeat: float) -> list[str]:
    """Run ``stages`` at most ``jobs`` at a time; return the labels of those that failed."""
    log_dir.mkdir(parents=True, exist_ok=True)
    waiting = list(stages)
    running: list[Stage] = []
    failed: list[str] = []
    next_beat = time.monotonic() + heartbeat
    while waiting or running:
        while waiting and len(running) < jobs:
            stage = waiting.pop(0)
            log_path = log_path_of(log_dir, stage.label)
            stage.log = log_path.open("wb")
            stage.started = time.monotonic()
            stage.log.write(f"+ {stage.command}\n".encode())
            stage.log.flush()
            stage.process = subprocess.Popen(
                ["bash", "-c", stage.command],
                stdout=stage.log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            running.append(stage)
            print(f"[start] {stage.label} (log: {log_path})", flush=True)
        time.sleep(1)
        for stage in list(running):
            assert stage.process is not None and stage.log is not None
            status = stage.process.poll()
            if status is None:
                continue
            running.remove(stage)
            stage.log.close()
            _report(stage, status, Path(stage.log.name))
            if status != 0:
                failed.append(stage.label)
        now = time.monotonic()
        if running and now >= next_beat:
            names = ", ".join(f"{s.label} {int(now - s.started)} s" for s in running)
            print(f"[running] {names}", flush=True)
            next_beat = now + heartbeat
    return failed


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see the module's docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3, help="stages at a time (default 3)")
    parser.add_argument("--log-dir", type=Path, default=Path(".cache/stages"))
    parser.add_argument("--heartbeat", type=float, default=300.0, help="seconds between lines")
    parser.add_argument("stages", nargs="+", type=parse_stage, metavar="LABEL=COMMAND")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    failed = run(args.stages, args.jobs, args.log_dir, args.heartbeat)
    for label in failed:
        lines = recap(log_path_of(args.log_dir, label))
        print(
            f"[recap] {label}: " + ("no failure line in its log" if not lines else ""), flush=True
        )
        for line in lines:
            print(f"  {line}", flush=True)
    if failed:
        print(f"stages that failed: {', '.join(failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
