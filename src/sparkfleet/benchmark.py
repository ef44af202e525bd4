"""Benchmark reports: llama-benchy results judged against the model card, rendered.

``python -m sparkfleet.benchmark host ...`` turns one host's llama-benchy JSON files into a summary
(``HOST.json``) and a Markdown table (``HOST.md``); ``python -m sparkfleet.benchmark fleet ...``
gathers the hosts' summaries into ``fleet.json``, ``fleet.md`` and a chart ``fleet.png``. The
role ``llm_benchmark`` runs both.

**What llama-benchy writes.** ``--format json --save-result FILE`` (llama-benchy 0.4.0,
``llama_benchy/results.py``, ``BenchmarkResults.save_report``, the wheel's lines 490-505; the
models ``BenchmarkMetadata`` and ``BenchmarkRun``, lines 14-59) is one object: the run's metadata
flattened to the top level (``version``, ``timestamp``, ``latency_mode``, ``latency_ms``, ``model``,
``prefix_caching_enabled``, ``max_concurrency``) and ``benchmarks``, one entry per test with
``concurrency``, ``context_size`` (the ``--depth``), ``prompt_size`` (the ``--pp``),
``response_size`` (the ``--tg``), ``is_context_prefill_phase`` and the metrics ``pp_throughput``,
``tg_throughput``, ``ttfr``, ``est_ppt``, ``e2e_ttft`` (and per-request and peak variants), each
``{"mean", "std", "values"}`` or ``null`` when no request of the test succeeded.

**How llama-benchy defines them** (``BenchmarkResults._process_batch``, lines 298-322, and the
README's "Table Columns" of github.com/eugr/llama-benchy), per request, ``latency`` being the
run's ``latency_ms`` (``--latency-mode generation``: the mean time to the first chunk of a
one-token "hello" request, ``LLMClient.measure_latency``, ``client.py`` lines 155-189):

- ``ttfr`` = first response chunk - start (ms);
- ``e2e_ttft`` = first content token - start (ms): what a client waits, latency included;
- ``est_ppt`` = ``ttfr`` - ``latency`` (ms): the time the server spent on the prompt;
- ``pp_throughput`` = prompt tokens / ``est_ppt`` (tok/s), the prefill rate;
- ``tg_throughput`` = tokens after the first / (last token - first token) (tok/s), the decode rate.

**What is judged.** Prefill (``pp_throughput`` at each prompt size the card publishes), decode
(``tg_throughput`` at depth 0, and at the long context) against the card, each failing below
``(1 - tolerance) x`` the card's figure. The card's TTFT is not judged: 490 ms at 512 tokens and
920 tok/s prefill at 512 tokens cannot come from one llama-benchy run, since a host at 920 tok/s
has ``est_ppt`` = 512 / 920 s = 556.5 ms and ``e2e_ttft`` >= 556.5 ms + latency. The report shows
the measured ``est_ppt`` next to the TTFT that the card's prefill implies (prompt / prefill rate),
and ``e2e_ttft``; a verdict on it would only repeat the prefill one, as both are the same
measurement by llama-benchy's definition.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DECODE = "decode_tps"
LONG_DECODE = "long_context_decode_tps"
PREFILL_RE = re.compile(r"^prefill_(\d+)_tps$")
TTFT_RE = re.compile(r"^ttft_(\d+)_ms$")


class BenchmarkDataError(ValueError):
    """llama-benchy output, or a reference, that cannot be judged; the message says what lacks."""


@dataclass(frozen=True)
class Finding:
    """A measured figure next to its reference.

    ``ratio`` is measured / reference for rates, reference / measured for times (so above 1.0 is
    better than the card either way). ``judged`` says whether the figure decides the verdict;
    ``ok`` is the verdict (``None`` when not judged or nothing was measured). ``basis`` says where
    measured and reference come from.
    """

    metric: str
    label: str
    unit: str
    measured: float | None
    reference: float | None
    ratio: float | None
    judged: bool
    ok: bool | None
    basis: str


@dataclass(frozen=True)
class Measured:
    """The figures of one host's llama-benchy runs (tok/s; times in ms)."""

    decode_tps: float
    prefill_tps: dict[int, float]  # prompt size -> pp_throughput mean, depth 0
    est_ppt_ms: dict[int, float]  # prompt size -> est_ppt mean, depth 0
    e2e_ttft_ms: dict[int, float]  # prompt size -> e2e_ttft mean, depth 0
    latency_ms: float | None
    latency_mode: str | None
    long_context_decode_tps: float | None
    long_context_tokens: int | None

    def summary(self) -> dict[str, float | None]:
        """Flat figures: decode_tps, prefill_N_tps, est_ppt_N_ms, e2e_ttft_N_ms, latency_ms, ..."""
        out: dict[str, float | None] = {DECODE: self.decode_tps}
        for size in sorted(self.prefill_tps):
            out[f"prefill_{size}_tps"] = self.prefill_tps[size]
            out[f"est_ppt_{size}_ms"] = self.est_ppt_ms[size]
            out[f"e2e_ttft_{size}_ms"] = self.e2e_ttft_ms[size]
        out[LONG_DECODE] = self.long_context_decode_tps
        out["latency_ms"] = self.latency_ms
        return out


def _test_name(row: Mapping[str, Any]) -> str:
    depth = row.get("context_size") or 0
    return f"pp{row.get('prompt_size')}/tg{row.get('response_size')}" + (
        f" @ d{depth}" if depth else ""
    )


def _benchmarks(result: Any, source: str) -> list[dict[str, Any]]:
    if not isinstance(result, dict) or not isinstance(result.get("benchmarks"), list):
        raise BenchmarkDataError(
            f"{source}: not llama-benchy JSON output (an object with a 'benchmarks' list, as "
            "'llama-benchy --format json --save-result FILE' writes)"
        )
    rows: list[dict[str, Any]] = []
    for index, row in enumerate(result["benchmarks"]):
        if not isinstance(row, dict):
            raise BenchmarkDataError(f"{source}: benchmarks[{index}] is not an object")
        for key in ("concurrency", "context_size", "prompt_size"):
            if not isinstance(row.get(key), int):
                raise BenchmarkDataError(
                    f"{source}: benchmarks[{index}] has no integer '{key}' (got {row.get(key)!r})"
                )
        if row["concurrency"] == 1 and not row.get("is_context_prefill_phase"):
            rows.append(row)
    return rows


def _mean(row: Mapping[str, Any], key: str, source: str) -> float:
    metric = row.get(key)
    value = metric.get("mean") if isinstance(metric, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BenchmarkDataError(
            f"{source}: test {_test_name(row)} has no '{key}.mean' (got {metric!r}); llama-benchy "
            "leaves a metric null when no request of the test succeeded"
        )
    return float(value)


def _row(
    rows: list[dict[str, Any]], prompt: int | None, depth: int, source: str
) -> list[dict[str, Any]]:
    found = [
        r
        for r in rows
        if r["context_size"] == depth and (prompt is None or r["prompt_size"] == prompt)
    ]
    if not found:
        have = ", ".join(_test_name(r) for r in rows) or "none"
        want = f"pp{prompt}" if prompt is not None else "any prompt size"
        raise BenchmarkDataError(
            f"{source}: no test of {want} at depth {depth}, concurrency 1 (tests present: {have})"
        )
    return found


def measure(
    short: Any,
    prompt_sizes: Sequence[int],
    long: Any = None,
    long_depth: int | None = None,
    sources: tuple[str, str] = ("depth-0 result", "long-context result"),
) -> Measured:
    """The figures of llama-benchy's JSON: the depth-0 run, and the long-context run if any.

    ``prompt_sizes``: the ``--pp`` sizes the depth-0 run was asked for; each must be there with
    ``pp_throughput``, ``tg_throughput``, ``est_ppt`` and ``e2e_ttft`` (concurrency 1).
    ``long_depth``: the long run's ``--depth`` (``None``: any depth above 0). Raises
    ``BenchmarkDataError`` naming the source, the test and the missing field.
    """
    if not prompt_sizes:
        raise BenchmarkDataError("no prompt sizes given: the run measured no prefill")
    rows = _benchmarks(short, sources[0])
    prefill: dict[int, float] = {}
    est_ppt: dict[int, float] = {}
    e2e: dict[int, float] = {}
    decode: list[float] = []
    for size in prompt_sizes:
        row = _row(rows, size, 0, sources[0])[0]
        prefill[size] = _mean(row, "pp_throughput", sources[0])
        est_ppt[size] = _mean(row, "est_ppt", sources[0])
        e2e[size] = _mean(row, "e2e_ttft", sources[0])
        decode.append(_mean(row, "tg_throughput", sources[0]))
    latency = short.get("latency_ms")
    long_decode: float | None = None
    long_tokens: int | None = None
    if long is not None:
        long_rows = _benchmarks(long, sources[1])
        if long_depth is None:
            deep = [r for r in long_rows if r["context_size"] > 0]
            if not deep:
                raise BenchmarkDataError(f"{sources[1]}: no test at a depth above 0")
        else:
            deep = _row(long_rows, None, long_depth, sources[1])
        long_decode = statistics.fmean(_mean(r, "tg_throughput", sources[1]) for r in deep)
        long_tokens = deep[0]["context_size"]
    return Measured(
        decode_tps=statistics.fmean(decode),
        prefill_tps=prefill,
        est_ppt_ms=est_ppt,
        e2e_ttft_ms=e2e,
        latency_ms=float(latency) if isinstance(latency, int | float) else None,
        latency_mode=str(short.get("latency_mode")) if short.get("latency_mode") else None,
        long_context_decode_tps=long_decode,
        long_context_tokens=long_tokens,
    )


def check_reference(reference: Any) -> dict[str, float]:
    """The reference figures, checked: known keys, positive numbers.

    Keys: ``decode_tps``, ``long_context_decode_tps``, ``prefill_N_tps`` and ``ttft_N_ms`` (N a
    prompt size in tokens). Raises ``BenchmarkDataError`` naming ``llm_benchmark_reference``.
    """
    if not isinstance(reference, dict):
        raise BenchmarkDataError(f"llm_benchmark_reference must be a mapping, got {reference!r}")
    out: dict[str, float] = {}
    for key, value in reference.items():
        if key not in (DECODE, LONG_DECODE) and not (PREFILL_RE.match(key) or TTFT_RE.match(key)):
            raise BenchmarkDataError(
                f"llm_benchmark_reference has an unknown figure {key!r}; known: {DECODE}, "
                f"{LONG_DECODE}, prefill_N_tps, ttft_N_ms (N = prompt tokens)"
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise BenchmarkDataError(
                f"llm_benchmark_reference.{key}={value!r} must be a positive number"
            )
        out[key] = float(value)
    return out


def _rate(key: str, label: str, measured: float | None, ref: float | None, tol: float,
          basis: str) -> Finding:  # fmt: skip
    if measured is None or ref is None:
        return Finding(key, label, "tok/s", measured, ref, None, True, None, basis)
    ratio = measured / ref
    return Finding(key, label, "tok/s", measured, ref, ratio, True, ratio >= 1.0 - tol, basis)


def tolerance_ok(tolerance: float) -> float:
    """``tolerance`` checked to lie in [0, 1) (``llm_benchmark_tolerance``)."""
    if not 0 <= tolerance < 1:
        raise BenchmarkDataError(f"llm_benchmark_tolerance={tolerance} must be in [0, 1)")
    return tolerance


def judge(measured: Measured, reference: Mapping[str, float], tolerance: float) -> list[Finding]:
    """Each card figure against the host's: rates judged, TTFT shown beside its derived value.

    A rate falls short below ``(1 - tolerance) x`` the reference. For ``ttft_N_ms`` the measured
    figure is ``est_ppt`` at N tokens and the reference N / ``prefill_N_tps`` (the time the
    card's prefill rate implies); it is not judged (see the module's docstring).
    """
    tolerance_ok(tolerance)
    findings = [
        _rate(DECODE, "decode", measured.decode_tps, reference.get(DECODE), tolerance,
              "tg_throughput at depth 0, mean over the prompt sizes"),
    ]  # fmt: skip
    sizes = sorted(
        set(measured.prefill_tps)
        | {int(m.group(1)) for k in reference if (m := PREFILL_RE.match(k))}
    )
    for size in sizes:
        key = f"prefill_{size}_tps"
        findings.append(
            _rate(key, f"prefill, {size} tokens", measured.prefill_tps.get(size),
                  reference.get(key), tolerance,
                  f"pp_throughput of pp{size}" if size in measured.prefill_tps
                  else f"pp{size} not measured (llm_benchmark_prefill_tokens)")
        )  # fmt: skip
    for key in sorted(k for k in reference if TTFT_RE.match(k)):
        size = int(TTFT_RE.match(key).group(1))  # type: ignore[union-attr]
        card_prefill = reference.get(f"prefill_{size}_tps")
        derived = 1000.0 * size / card_prefill if card_prefill else None
        got = measured.est_ppt_ms.get(size)
        ratio = derived / got if derived is not None and got else None
        e2e = measured.e2e_ttft_ms.get(size)
        basis = (
            f"est_ppt of pp{size} (e2e_ttft {_fmt(e2e)} ms, latency {_fmt(measured.latency_ms)} "
            f"ms); card: {size} tokens / {_fmt(card_prefill)} tok/s (its published "
            f"{_fmt(reference[key])} ms is not comparable)"
        )
        findings.append(
            Finding(key, f"TTFT, {size} tokens", "ms", got, derived, ratio, False, None, basis)
        )
    findings.append(
        _rate(LONG_DECODE, "decode with a long system prompt", measured.long_context_decode_tps,
              reference.get(LONG_DECODE), tolerance,
              f"tg_throughput at depth {measured.long_context_tokens}"
              if measured.long_context_tokens else "long context not measured")
    )  # fmt: skip
    return findings


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _verdict(f: Mapping[str, Any]) -> str:
    if not f["judged"]:
        return "not judged"
    return "-" if f["ok"] is None else ("yes" if f["ok"] else "**NO**")


def notes(reference: Mapping[str, float], tolerance: float) -> list[str]:
    """What the report compares, and why TTFT is shown but not judged (with the card's figures)."""
    out = [
        f"Judged: prefill and decode rates (llama-benchy's pp and tg throughput), each against "
        f"the model card's figure; a host falls short below {1 - tolerance:.0%} of it "
        f"(llm_benchmark_tolerance={tolerance})."
    ]
    for key in sorted(k for k in reference if TTFT_RE.match(k)):
        size = int(TTFT_RE.match(key).group(1))  # type: ignore[union-attr]
        prefill = reference.get(f"prefill_{size}_tps")
        implied = f"{1000 * size / prefill:.1f} ms" if prefill else "unknown"
        out.append(
            f"TTFT at {size} tokens is shown, not judged: llama-benchy's prefill rate is prompt "
            f"tokens / est_ppt (ttfr - latency), so a host at the card's {_fmt(prefill)} tok/s "
            f"has est_ppt = {implied} and e2e_ttft above that by the latency; the card's "
            f"{_fmt(reference[key])} ms cannot come from the same run. The measured est_ppt "
            "stands beside that implied time; e2e_ttft is what a client waits."
        )
    return out


def host_markdown(report: Mapping[str, Any]) -> str:
    """A host's figures as a Markdown table, with the notes on what is judged."""
    tolerance = report["tolerance"]
    lines = [
        f"### {report['host']}",
        "",
        f"| figure | measured | model card | ratio | within {tolerance:.0%} | from |",
        "|---|---:|---:|---:|:---:|---|",
    ]
    for f in report["findings"]:
        lines.append(
            f"| {f['label']} ({f['unit']}) | {_fmt(f['measured'])} | {_fmt(f['reference'])} "
            f"| {_fmt(f['ratio'], 2)} | {_verdict(f)} | {f['basis']} |"
        )
    lines += ["", *(f"- {n}" for n in report["notes"])]
    return "\n".join(lines) + "\n"


def host_report(
    host: str,
    measured: Measured,
    reference: Mapping[str, Any],
    tolerance: float,
) -> dict[str, Any]:
    """Summary, findings, notes and verdict of one host (JSON-ready)."""
    checked = check_reference(reference)
    findings = judge(measured, checked, tolerance)
    short_of = [f.metric for f in findings if f.ok is False]
    # judged figures of the card the run did not measure (e.g. llm_benchmark_long_context_tokens
    # 0): no verdict on them, and the host's "ok" says so rather than covering them
    not_measured = [f.metric for f in findings if f.judged and f.measured is None]
    return {
        "host": host,
        "summary": measured.summary(),
        "findings": [asdict(f) for f in findings],
        "tolerance": tolerance,
        "notes": notes(checked, tolerance),
        "short_of_reference": short_of,
        "not_measured": not_measured,
        "ok": not short_of,
    }


def verdict(report: Mapping[str, Any]) -> str:
    """A host report's verdict in words: ``ok``, ``SHORT: <metrics>``, with ``(not measured:
    <metrics>)`` appended when judged figures of the card were not measured."""
    said = "ok" if report["ok"] else "SHORT: " + ", ".join(report["short_of_reference"])
    missing = report.get("not_measured") or []
    return said + (f" (not measured: {', '.join(missing)})" if missing else "")


def fleet_markdown(reports: list[dict[str, Any]]) -> str:
    """The fleet's figures, one row per host, shortfalls flagged, then the notes."""
    if not reports:
        return "## Fleet benchmark\n\nNo host reported.\n"
    head = [f"{f['label']} ({f['unit']})" for f in reports[0]["findings"]]
    lines = [
        "## Fleet benchmark",
        "",
        "| host | " + " | ".join(head) + " | verdict |",
        "|---|" + "---:|" * len(head) + ":---:|",
    ]
    for rep in reports:
        cells = [_fmt(f["measured"]) + (" ⚠" if f["ok"] is False else "") for f in rep["findings"]]
        lines.append(f"| {rep['host']} | " + " | ".join(cells) + f" | {verdict(rep)} |")
    ref = [
        _fmt(f["reference"]) + ("" if f["judged"] else " (derived)") for f in reports[0]["findings"]
    ]
    lines.append("| model card | " + " | ".join(ref) + " | |")
    lines += ["", *(f"- {n}" for n in reports[0]["notes"])]
    return "\n".join(lines) + "\n"


def fleet_chart(reports: list[dict[str, Any]], path: Path) -> None:
    """A bar chart of each host's judged figures relative to the card (1.0 = as published)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged = [f["label"] for f in reports[0]["findings"] if f["judged"]] if reports else []
    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    width = 0.8 / max(1, len(reports))
    for i, rep in enumerate(reports):
        ratios = [f["ratio"] or 0.0 for f in rep["findings"] if f["judged"]]
        xs = [j + i * width for j in range(len(ratios))]
        ax.bar(xs, ratios, width=width, label=rep["host"])
    tolerance = reports[0]["tolerance"] if reports else 0.0
    ax.axhline(1.0, color="black", linewidth=1)
    ax.axhline(1.0 - tolerance, color="red", linestyle="--", linewidth=1, label="shortfall line")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(judged))])
    ax.set_xticklabels(judged, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("measured / model card (higher is better)")
    ax.set_title("vLLM benchmark per host vs the model card's figures")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _load(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise BenchmarkDataError(f"{path}: cannot read llama-benchy JSON: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    """Command line: ``host`` and ``fleet`` reports; exit 2 with a message on bad input."""
    parser = argparse.ArgumentParser(prog="python -m sparkfleet.benchmark")
    sub = parser.add_subparsers(dest="cmd", required=True)
    host = sub.add_parser("host", help="judge one host's llama-benchy results")
    host.add_argument("--name", required=True)
    host.add_argument("--short", required=True, help="llama-benchy JSON of the depth-0 run")
    host.add_argument(
        "--prefill-tokens", type=int, nargs="+", required=True, help="the run's --pp sizes"
    )
    host.add_argument("--long", help="llama-benchy JSON of the long-context run")
    host.add_argument("--long-depth", type=int, help="the long run's --depth")
    host.add_argument("--reference", required=True, help="JSON object of reference figures")
    host.add_argument("--tolerance", type=float, required=True)
    host.add_argument("--out-dir", required=True)
    fleet = sub.add_parser("fleet", help="gather host summaries into the fleet report")
    fleet.add_argument("--out-dir", required=True)
    fleet.add_argument("hosts", nargs="+", help="host names whose HOST.json to gather")
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.cmd == "host":
        try:
            measured = measure(
                _load(args.short),
                args.prefill_tokens,
                _load(args.long) if args.long else None,
                args.long_depth,
                sources=(args.short, args.long or ""),
            )
            report = host_report(args.name, measured, json.loads(args.reference), args.tolerance)
        except (BenchmarkDataError, json.JSONDecodeError) as exc:
            parser.exit(2, f"{parser.prog} host: error: {args.name}: {exc}\n")
        (out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / f"{args.name}.md").write_text(host_markdown(report))
        print(json.dumps(report))
        return 0
    reports = [json.loads((out / f"{h}.json").read_text()) for h in args.hosts]
    fleet_doc = {"hosts": reports, "short_hosts": [r["host"] for r in reports if not r["ok"]]}
    (out / "fleet.json").write_text(json.dumps(fleet_doc, indent=2) + "\n")
    (out / "fleet.md").write_text(fleet_markdown(reports))
    fleet_chart(reports, out / "fleet.png")
    print(json.dumps({"short_hosts": fleet_doc["short_hosts"], "dir": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
