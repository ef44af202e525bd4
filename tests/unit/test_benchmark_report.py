"""The benchmark report: llama-benchy JSON judged against the model card, as the role runs it.

The role ``llm_benchmark`` runs ``python -m sparkfleet.benchmark host ...`` then ``... fleet``;
these tests run the same commands on llama-benchy JSON files: ``llama-benchy-depth0.json``
recorded from llama-benchy 0.4.0 against the vLLM stand-in (2000 prefill / 100 decode tok/s),
and ``llama-benchy-{card,slow}[-long].json`` written by llama-benchy's own result code for hosts
at exactly the card's rates and at 0.75 of them (``data/llama_benchy_json.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sparkfleet.benchmark import (
    BenchmarkDataError,
    Measured,
    host_report,
    judge,
    measure,
    verdict,
)
from sparkfleet.display import host_detail
from sparkfleet.result import HostResult
from tests import model_profile
from tests.unit.data import llama_benchy_json

pytestmark = pytest.mark.nolab

DATA = Path(__file__).parent / "data"
RECORDED = DATA / "llama-benchy-depth0.json"
CARD, CARD_LONG = DATA / "llama-benchy-card.json", DATA / "llama-benchy-card-long.json"
SLOW, SLOW_LONG = DATA / "llama-benchy-slow.json", DATA / "llama-benchy-slow-long.json"
REFERENCE = model_profile.load().performance  # the card's figures, as the role's default takes them
TOLERANCE = 0.15  # the role's default


def _json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def host_cmd(
    out: Path, name: str, short: Path, long: Path | None = None, *, tolerance: float = TOLERANCE,
    reference: dict[str, float] = REFERENCE, sizes: tuple[int, ...] = (512, 4096),
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``python -m sparkfleet.benchmark host``, with the arguments the role's task passes."""
    cmd = [sys.executable, "-m", "sparkfleet.benchmark", "host", "--name", name,
           "--short", str(short), "--prefill-tokens", *map(str, sizes),
           "--reference", json.dumps(reference), "--tolerance", str(tolerance),
           "--out-dir", str(out)]  # fmt: skip
    if long is not None:
        cmd += ["--long", str(long), "--long-depth", str(llama_benchy_json.LONG_DEPTH)]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def test_the_written_files_are_what_llama_benchy_makes_of_those_rates() -> None:
    for name, (host, long) in llama_benchy_json.FILES.items():
        assert _json(DATA / name) == llama_benchy_json.result(host, long), name


def test_a_host_at_exactly_the_card_rates_passes(tmp_path: Path) -> None:
    run = host_cmd(tmp_path, "spark-card", CARD, CARD_LONG)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["ok"] is True and report["short_of_reference"] == []
    findings = {f["metric"]: f for f in report["findings"]}
    for key in ("decode_tps", "prefill_512_tps", "prefill_4096_tps", "long_context_decode_tps"):
        assert findings[key]["judged"] is True and findings[key]["ok"] is True
        assert findings[key]["ratio"] == pytest.approx(1.0), key
    # By llama-benchy's definitions this host waits e2e_ttft = 45 ms latency + 556.5 ms + 0.4 ms
    # for its first token: more than the card's 490 ms allows at any tolerance up to 15 %.
    assert report["summary"]["e2e_ttft_512_ms"] > REFERENCE["ttft_512_ms"] / (1 - TOLERANCE)
    ttft = findings["ttft_512_ms"]
    assert ttft["judged"] is False and ttft["ok"] is None
    # est_ppt: the mean of the runs' times, a little above the time at the mean rate
    assert ttft["measured"] == pytest.approx(512 / 920 * 1000, rel=1e-3)
    assert ttft["reference"] == pytest.approx(512 / 920 * 1000)  # derived from the card's prefill
    assert report == _json(tmp_path / "spark-card.json")


def test_a_host_clearly_below_the_tolerance_fails(tmp_path: Path) -> None:
    run = host_cmd(tmp_path, "spark-slow", SLOW, SLOW_LONG)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["ok"] is False
    assert report["short_of_reference"] == [
        "decode_tps", "prefill_512_tps", "prefill_4096_tps", "long_context_decode_tps",
    ]  # fmt: skip
    ratios = {f["metric"]: f["ratio"] for f in report["findings"] if f["judged"]}
    assert all(r == pytest.approx(0.75) for r in ratios.values()), ratios
    # A looser tolerance lets the same host through: the verdict follows the variable.
    assert json.loads(host_cmd(tmp_path, "s", SLOW, SLOW_LONG, tolerance=0.3).stdout)["ok"]


def test_the_limit_is_one_minus_the_tolerance() -> None:
    card = measure(_json(CARD), [512, 4096])
    at = {k: v * 0.8501 for k, v in card.prefill_tps.items()}
    below = {k: v * 0.8499 for k, v in card.prefill_tps.items()}
    for prefill, ok in ((at, True), (below, False)):
        host = Measured(**{**card.__dict__, "prefill_tps": prefill})
        verdict = {f.metric: f.ok for f in judge(host, REFERENCE, 0.15)}
        assert verdict["prefill_512_tps"] is ok and verdict["prefill_4096_tps"] is ok
        assert verdict["decode_tps"] is True and verdict["long_context_decode_tps"] is None


def test_the_recorded_run_of_a_faster_stand_in_passes_and_keeps_its_timings() -> None:
    recorded = _json(RECORDED)
    figures = measure(recorded, [512, 4096])
    report = host_report("spark-sim", figures, REFERENCE, TOLERANCE)
    assert report["ok"] is True
    row = next(r for r in recorded["benchmarks"] if r["prompt_size"] == 512)
    assert figures.est_ppt_ms[512] == row["est_ppt"]["mean"]
    assert figures.e2e_ttft_ms[512] == row["e2e_ttft"]["mean"]
    assert figures.prefill_tps[512] == row["pp_throughput"]["mean"]
    assert figures.latency_ms == recorded["latency_ms"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["benchmarks"][0].pop("pp_throughput"),
         "test pp512/tg128 has no 'pp_throughput.mean' (got None)"),
        (lambda d: d["benchmarks"][1].__setitem__("tg_throughput", None),
         "test pp4096/tg128 has no 'tg_throughput.mean' (got None)"),
        (lambda d: d["benchmarks"][0]["est_ppt"].pop("mean"),
         "test pp512/tg128 has no 'est_ppt.mean'"),
        (lambda d: d["benchmarks"].pop(1),
         "no test of pp4096 at depth 0, concurrency 1 (tests present: pp512/tg128)"),
        (lambda d: d.pop("benchmarks"), "not llama-benchy JSON output"),
    ],
)  # fmt: skip
def test_a_missing_field_is_a_clear_error(tmp_path: Path, edit: Any, message: str) -> None:
    edited = tmp_path / "in.json"
    data = _json(CARD)
    edit(data)
    edited.write_text(json.dumps(data))
    run = host_cmd(tmp_path / "out", "spark-x", edited, CARD_LONG)
    assert run.returncode == 2 and run.stdout == ""
    assert f"error: spark-x: {edited}: " in run.stderr and message in run.stderr, run.stderr
    assert not (tmp_path / "out" / "spark-x.json").exists()


def test_a_long_run_without_its_depth_is_a_clear_error(tmp_path: Path) -> None:
    run = host_cmd(tmp_path, "spark-x", CARD, CARD)  # the depth-0 file given as the long run
    assert run.returncode == 2
    assert "no test of any prompt size at depth 23000" in run.stderr, run.stderr


def test_an_unknown_reference_figure_is_refused() -> None:
    with pytest.raises(
        BenchmarkDataError, match=r"llm_benchmark_reference has an unknown figure 'ttft_ms'"
    ):
        host_report("h", measure(_json(CARD), [512]), {"ttft_ms": 490}, TOLERANCE)
    with pytest.raises(BenchmarkDataError, match=r"llm_benchmark_reference.decode_tps=0 must be"):
        host_report("h", measure(_json(CARD), [512]), {"decode_tps": 0}, TOLERANCE)


def test_fleet_report_flags_the_slow_host_and_explains_ttft(tmp_path: Path) -> None:
    assert host_cmd(tmp_path, "spark-01", CARD, CARD_LONG).returncode == 0
    assert host_cmd(tmp_path, "spark-02", SLOW, SLOW_LONG).returncode == 0
    out = subprocess.run(
        [sys.executable, "-m", "sparkfleet.benchmark", "fleet", "--out-dir", str(tmp_path),
         "spark-01", "spark-02"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert json.loads(out)["short_hosts"] == ["spark-02"]
    fleet = (tmp_path / "fleet.md").read_text()
    assert "| spark-01 | 28.0 | 920.0 | 1,916.0 | 556.6 | 21.0 | ok |" in fleet, fleet
    assert "| spark-02 | 21.0 ⚠ | 690.0 ⚠ | 1,437.0 ⚠ |" in fleet, fleet
    assert "| model card | 28.0 | 920.0 | 1,916.0 | 556.5 (derived) | 21.0 | |" in fleet, fleet
    assert "the card's 490.0 ms cannot come from the same run" in fleet
    assert (tmp_path / "fleet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    host_md = (tmp_path / "spark-02.md").read_text()
    assert "| decode (tok/s) | 21.0 | 28.0 | 0.75 | **NO** |" in host_md, host_md
    assert "| TTFT, 512 tokens (ms) | 742.1 | 556.5 | 0.75 | not judged |" in host_md, host_md


def test_the_cli_summary_line_gives_the_verdict_and_the_judged_figures() -> None:
    report = host_report("spark-02", measure(_json(SLOW), [512, 4096]), REFERENCE, TOLERANCE)
    host = HostResult("spark-02", ok=12, facts={"llm_benchmark_result": report})
    assert host_detail(host) == (
        "benchmark SHORT of decode_tps, prefill_512_tps, prefill_4096_tps "
        "(not measured: long_context_decode_tps): "
        "decode 21.0 tok/s (0.75x card), prefill, 512 tokens 690.0 tok/s (0.75x card), "
        "prefill, 4096 tokens 1,437.0 tok/s (0.75x card)"
    )


def test_a_run_without_the_long_context_says_what_it_did_not_measure(tmp_path: Path) -> None:
    # llm_benchmark_long_context_tokens: 0 leaves the card's long-context decode unmeasured
    report = host_report("spark-01", measure(_json(CARD), [512, 4096]), REFERENCE, TOLERANCE)
    assert report["ok"] is True
    assert report["not_measured"] == ["long_context_decode_tps"]
    assert verdict(report) == "ok (not measured: long_context_decode_tps)"
    line = host_detail(HostResult("spark-01", ok=12, facts={"llm_benchmark_result": report}))
    assert line.startswith("benchmark ok (not measured: long_context_decode_tps): decode 28.0"), (
        line
    )
    # measured in full: nothing said
    full = json.loads(host_cmd(tmp_path, "spark-01", CARD, CARD_LONG).stdout)
    assert full["not_measured"] == [] and verdict(full) == "ok"
