"""Download progress read from the hf_model role's mirrored progress files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from sparkfleet import progress
from sparkfleet.events import DownloadProgress
from sparkfleet.progress import ProgressPoller

pytestmark = pytest.mark.nolab


class FakeClock:
    """A stand-in for time.monotonic() that only moves when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _write(path: Path, doc: dict[str, object], mtime_ns: int) -> None:
    path.write_text(json.dumps(doc))
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_each_new_version_of_a_file_becomes_one_event(tmp_path: Path) -> None:
    events: list[DownloadProgress] = []
    running = {"spark-01": "hf_model : Wait for the fetch, reporting its progress"}
    poller = ProgressPoller(tmp_path, events.append, interval_s=0, task_of=running.get)
    doc = {"schema": "sparkfleet/hf_model-progress/1", "host": "spark-01", "bytes_done": 10,
           "bytes_total": 100, "rate_bps": 5.0, "phase": "fetching"}  # fmt: skip
    _write(tmp_path / "spark-01.json", doc, 1_000_000_000)
    assert poller.poll() == 1
    assert poller.poll() == 0  # unchanged file: nothing new
    _write(tmp_path / "spark-01.json", {**doc, "bytes_done": 60}, 2_000_000_000)
    _write(tmp_path / "spark-02.json", {"bytes_done": 1, "bytes_total": 0}, 2_000_000_000)
    (tmp_path / "spark-03.json").write_text("{half written")
    assert poller.poll() == 2
    assert [(e.host, e.bytes_done, e.fraction) for e in events] == [
        ("spark-01", 10, 0.1),
        ("spark-01", 60, 0.6),
        ("spark-02", 1, None),
    ]
    assert events[0].rate_bps == 5.0
    # each event names the task its host runs, as the run reported it (none known: None)
    assert [e.task for e in events] == [running["spark-01"], running["spark-01"], None]


def test_polls_are_spaced_unless_forced(tmp_path: Path) -> None:
    events: list[DownloadProgress] = []
    poller = ProgressPoller(tmp_path, events.append, interval_s=3600)
    _write(tmp_path / "h.json", {"bytes_done": 1, "bytes_total": 2}, 1_000_000_000)
    assert poller.poll() == 1
    _write(tmp_path / "h.json", {"bytes_done": 2, "bytes_total": 2}, 2_000_000_000)
    assert poller.poll() == 0
    assert poller.poll(force=True) == 1


def test_a_missing_directory_is_no_error(tmp_path: Path) -> None:
    assert ProgressPoller(tmp_path / "absent", lambda e: None).poll(force=True) == 0


@pytest.mark.parametrize("since_boot", [0.0, 5.0, 3599.0])
def test_the_first_poll_reads_on_a_freshly_booted_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, since_boot: float
) -> None:
    """time.monotonic() counts from boot: minutes after it, the first poll still reads."""
    clock = FakeClock(since_boot)
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=clock))
    events: list[DownloadProgress] = []
    poller = ProgressPoller(tmp_path, events.append, interval_s=3600)
    _write(tmp_path / "h.json", {"bytes_done": 1, "bytes_total": 2}, 1_000_000_000)
    assert poller.poll() == 1
    _write(tmp_path / "h.json", {"bytes_done": 2, "bytes_total": 2}, 2_000_000_000)
    clock.now += 3599.0
    assert poller.poll() == 0  # less than an interval since the first poll
    clock.now += 1.0
    assert poller.poll() == 1  # a whole interval since the first poll
    assert [e.bytes_done for e in events] == [1, 2]
