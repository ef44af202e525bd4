"""The benchmark report: llama-benchy results summarised and compared with the model card."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sparkfleet.benchmark import compare, host_report, summarize

pytestmark = pytest.mark.nolab

DATA = Path(__file__).parent / "data"
# Recorded from llama-benchy 0.4.0 against the stand-in server set to 2000 prefill / 100 decode.
RECORDED = DATA / "llama-benchy-depth0.json"
REFERENCE: dict[str, float] = {
    "decode_tps": 28,
    "prefill_512_tps": 920,
    "prefill_4096_tps": 1916,
    "ttft_512_ms": 490,
    "long_context_decode_tps": 21,
}


def _recorded() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(RECORDED.read_text())
    return data


def test_summary_reads_the_card_figures_from_a_real_result() -> None:
    summary = summarize(_recorded())
    assert summary["decode_tps"] is not None and 90 < summary["decode_tps"] < 110
    assert summary["prefill_4096_tps"] is not None and 1800 < summary["prefill_4096_tps"] < 2200
    assert summary["prefill_512_tps"] is not None
    assert summary["ttft_512_ms"] is not None and summary["ttft_512_ms"] > 0
    assert summary["long_context_decode_tps"] is None


def test_long_context_rows_feed_only_the_long_figure() -> None:
    long = _recorded()
    for row in long["benchmarks"]:
        row["context_size"] = 23000
        row["tg_throughput"]["mean"] = 20.0
    long["benchmarks"].append({**long["benchmarks"][0], "is_context_prefill_phase": True})
    summary = summarize(_recorded(), long)
    assert summary["long_context_decode_tps"] == 20.0
    assert summary["decode_tps"] == summarize(_recorded())["decode_tps"]


def test_compare_flags_shortfalls_beyond_the_tolerance() -> None:
    summary = {
        "decode_tps": 24.0,  # 0.857 of 28: short at 10 %, fine at 15 %
        "prefill_512_tps": 1000.0,
        "prefill_4096_tps": 1916.0,
        "ttft_512_ms": 600.0,  # slower than 490: ratio 0.817
        "long_context_decode_tps": None,
    }
    at10 = {f.metric: f.ok for f in compare(summary, REFERENCE, 0.10)}
    at15 = {f.metric: f.ok for f in compare(summary, REFERENCE, 0.15)}
    assert at10 == {
        "decode_tps": False,
        "prefill_512_tps": True,
        "prefill_4096_tps": True,
        "ttft_512_ms": False,
        "long_context_decode_tps": None,
    }
    assert at15["decode_tps"] is True and at15["ttft_512_ms"] is False


def test_host_report_lists_what_falls_short() -> None:
    report = host_report("spark-01", _recorded(), None, {**REFERENCE, "decode_tps": 200}, 0.1)
    assert report["short_of_reference"] == ["decode_tps"]
    assert report["ok"] is False


def test_cli_writes_host_and_fleet_reports_and_a_png(tmp_path: Path) -> None:
    ref = json.dumps(REFERENCE)
    for name in ("a", "b"):
        subprocess.run(
            [sys.executable, "-m", "sparkfleet.benchmark", "host", "--name", name,
             "--short", str(RECORDED), "--reference", ref, "--tolerance", "0.1",
             "--out-dir", str(tmp_path)],
            check=True,
            capture_output=True,
        )  # fmt: skip
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sparkfleet.benchmark",
            "fleet",
            "--out-dir",
            str(tmp_path),
            "a",
            "b",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert json.loads(out)["short_hosts"] == []
    fleet = (tmp_path / "fleet.md").read_text()
    assert "| a |" in fleet and "| b |" in fleet and "model card" in fleet
    assert (tmp_path / "fleet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "### a" in (tmp_path / "a.md").read_text()
