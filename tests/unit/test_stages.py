"""tests/stages.py: stages side by side, each log whole, a failure named, the others not stopped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.nolab

ROOT = Path(__file__).resolve().parents[2]


def _stages(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.stages", "--log-dir", str(tmp_path), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_side_by_side_logs_whole_and_a_failure_fails_the_run(tmp_path: Path) -> None:
    # "slow" prints, waits for "fast" to have started and ended, then prints again: run one
    # after the other this would deadlock (the timeout); side by side its lines stay together.
    flag = tmp_path / "fast-done"
    result = _stages(
        tmp_path,
        "--jobs",
        "2",
        f"slow=echo slow-1; until test -e {flag}; do sleep 0.1; done; echo slow-2",
        f"fast=echo fast-1; touch {flag}; exit 3",
        "after=echo after-1",
    )
    out = result.stdout
    assert result.returncode == 1, out
    assert "[time] fast: " in out and "FAILED (exit 3)" in out
    assert out.index("slow-1") + 1 < out.index("slow-2")
    between = out[out.index("slow-1") : out.index("slow-2")]
    assert "fast-1" not in between and "after-1" not in between
    assert "stages that failed: fast" in out.splitlines()[-1]
    assert (tmp_path / "slow.log").read_text().splitlines()[1:] == ["slow-1", "slow-2"]


def test_the_failure_lines_are_recapped_at_the_end(tmp_path: Path) -> None:
    # a long log whose failure lines a CI tail would have lost (one framed as molecule frames
    # its steps' output); a passing stage gets no recap
    noise = "; ".join(["seq 1 500"] * 2)
    result = _stages(
        tmp_path,
        "--jobs",
        "2",
        "bad=printf '  \\033[2m\\342\\224\\202\\033[0m %s\\n' "
        f"'FAILED tests/t.py::test_x - AssertionError: 1 != 2'; {noise}; "
        "echo 'FAILED - RETRYING: [localhost]: Wait for instance(s) creation (300 retries left).'; "
        'echo \'fatal: [h1]: FAILED! => {"msg": "boom"}\'; seq 1 300; '
        "printf 'fatal: [h2]: FAILED! =>\\n    msg: |-\\n        h2 failed\\n    rc: 1\\nnext\\n'; "
        "exit 1",
        "good=echo 'FAILED looks like a failure but the stage passed'",
    )
    tail = result.stdout.splitlines()[-5:]
    assert result.returncode == 1, result.stdout
    assert tail == [
        "[recap] bad: ",
        "  FAILED tests/t.py::test_x - AssertionError: 1 != 2",
        '  fatal: [h1]: FAILED! => {"msg": "boom"}',
        "  fatal: [h2]: FAILED! => msg: |- h2 failed rc: 1",
        "stages that failed: bad",
    ]


def test_all_passing_exit_0_and_jobs_limit(tmp_path: Path) -> None:
    # With one job "second" cannot start before "first" ends.
    result = _stages(tmp_path, "--jobs", "1", "first=echo a", "second=echo b")
    assert result.returncode == 0, result.stdout
    assert result.stdout.index("[time] first") < result.stdout.index("[start] second")


def test_a_stage_without_label_is_refused(tmp_path: Path) -> None:
    result = _stages(tmp_path, "echo no label")
    assert result.returncode == 2
    assert "LABEL=COMMAND" in result.stderr
