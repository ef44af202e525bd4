"""Write llama-benchy JSON results for hosts of known rates, with llama-benchy's own code.

The benchmark tests judge hosts at exactly the model card's rates and clearly below them. A real
run cannot hit exact rates, so this script builds the per-request timings a host at the given
rates produces and hands them to llama-benchy 0.4.0's ``BenchmarkResults.add`` and
``save_report(format="json")`` (``llama_benchy/results.py``): every figure in the files, and the
file's shape, is llama-benchy's own arithmetic and serialisation, as ``--save-result`` writes it.

The timings follow llama-benchy's request model (``client.py``, ``RequestResult``): the first
response chunk (vLLM's role delta) arrives ``latency`` + prompt / prefill rate after the start,
the first content token 0.4 ms later (as in ``llama-benchy-depth0.json``, recorded against the
vLLM stand-in), then one token every 1 / decode rate. Three runs per test at 0.99x, 1x and
1.01x the rate, so means are the rates and deviations are not zero. ``latency`` (45 ms) stands
for ``--latency-mode generation`` on a Spark: one short prefill and one decode step.

    .venv/bin/python tests/unit/data/llama_benchy_json.py    # rewrites the llama-benchy-*.json
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_benchy.client import RequestResult
from llama_benchy.results import BenchmarkMetadata, BenchmarkResults

DATA = Path(__file__).resolve().parent
MODEL = "saricles/MiniMax-M2.5-REAP-172B-A10B-NVFP4-GB10"
LATENCY_S = 0.045
FIRST_TOKEN_AFTER_S = 0.0004
JITTER = (0.99, 1.0, 1.01)  # one factor per run; their mean is 1
LONG_DEPTH = 23000


@dataclass(frozen=True)
class Host:
    """A host's rates in tok/s: prefill by prompt size (depth 0), decode, long-context run."""

    prefill: dict[int, float]
    decode: float
    long_prefill: float
    long_decode: float


CARD = Host(prefill={512: 920.0, 4096: 1916.0}, decode=28.0, long_prefill=1500.0, long_decode=21.0)
SLOW = Host(  # 0.75x the card: clearly below a 15 % tolerance
    prefill={512: 690.0, 4096: 1437.0}, decode=21.0, long_prefill=1125.0, long_decode=15.75
)
FILES = {
    "llama-benchy-card.json": (CARD, False),
    "llama-benchy-card-long.json": (CARD, True),
    "llama-benchy-slow.json": (SLOW, False),
    "llama-benchy-slow-long.json": (SLOW, True),
}


def request(start: float, prompt: int, prefill: float, decode: float, tokens: int) -> RequestResult:
    """One streamed request's timestamps (seconds) at the given rates."""
    first_response = start + LATENCY_S + prompt / prefill
    first_token = first_response + FIRST_TOKEN_AFTER_S
    stamps = [first_token + k / decode for k in range(tokens)]
    return RequestResult(
        start_ts=start,
        end_ts=stamps[-1] + 0.001,
        first_token_ts=first_token,
        first_response_ts=first_response,
        prompt_tokens=prompt,
        total_tokens=tokens,
        token_timestamps=stamps,
    )


def result(host: Host, long: bool, tokens: int = 128) -> dict[str, Any]:
    """llama-benchy's JSON for ``host``: depth 0 at its prompt sizes, or pp512 at LONG_DEPTH."""
    bench = BenchmarkResults()
    start = 1000.0
    tests = [(512, LONG_DEPTH, host.long_prefill, host.long_decode)] if long else [
        (size, 0, rate, host.decode) for size, rate in host.prefill.items()
    ]  # fmt: skip
    for pp, depth, prefill, decode in tests:
        runs = []
        for factor in JITTER:
            runs.append([request(start, pp + depth, prefill * factor, decode * factor, tokens)])
            start += 100.0
        bench.add(MODEL, pp, tokens, depth, 1, runs, LATENCY_S, pp + depth)
    bench.metadata = BenchmarkMetadata(
        version="0.4.0",
        timestamp="2026-12-01 09:00:00Z",
        latency_mode="generation",
        latency_ms=LATENCY_S * 1000,
        model=MODEL,
        prefix_caching_enabled=False,
        max_concurrency=1,
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bench.save_report(None, "json")
    text = out.getvalue()
    data: dict[str, Any] = json.loads(text[text.index("{") :])
    return data


def main() -> int:
    """Rewrite every file of FILES."""
    for name, (host, long) in FILES.items():
        (DATA / name).write_text(json.dumps(result(host, long), indent=2) + "\n")
        print(f"wrote {DATA / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
