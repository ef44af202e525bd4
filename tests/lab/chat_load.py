"""A bounded load of OpenAI chat requests (streaming and not) and the gateway's per-host counters.

Used by the gateway's lab test and ``bench/gateway_throughput.py``. Requests go only to the
addresses given (the lab's own hosts); a load stops by itself after ``total`` requests, after
``deadline_s`` seconds, or when :meth:`ChatLoad.stop` is called, whichever comes first.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Outcome:
    """One request: its index, whether it streamed, the HTTP status (0: no answer), whether it
    succeeded (200 and a complete answer), seconds from send to the last byte, and why it failed."""

    index: int
    stream: bool
    status: int
    ok: bool
    latency_s: float
    error: str = ""


def chat_once(
    base_url: str,
    key: str,
    index: int,
    *,
    stream: bool,
    model: str,
    max_tokens: int = 16,
    ignore_eos: bool = False,
    headers: Mapping[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    timeout_s: float = 300.0,
) -> Outcome:
    """POST one chat completion to ``base_url`` (``http[s]://HOST:PORT``) on a new connection.

    A streamed answer counts as complete when it ends with ``data: [DONE]`` after at least one
    chunk with choices; a plain one when its JSON has a choice with a message. ``ignore_eos``
    (vLLM's sampling parameter) makes the answer exactly ``max_tokens`` long.
    """
    parts = urlsplit(base_url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout_s, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": f"Say hello, request {index}."}],
            "max_tokens": max_tokens,
            "stream": stream,
            **({"ignore_eos": True} if ignore_eos else {}),
        }
    )
    sent = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    sent.update(headers or {})
    start = time.monotonic()
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers=sent)
        resp = conn.getresponse()
        data = resp.read()
        latency = time.monotonic() - start
        if resp.status != 200:
            return Outcome(index, stream, resp.status, False, latency, data[:200].decode("replace"))
        if stream:
            events = [line[6:] for line in data.decode().splitlines() if line.startswith("data: ")]
            chunks = [json.loads(e) for e in events if e != "[DONE]"]
            complete = bool(events) and events[-1] == "[DONE]" and any(c["choices"] for c in chunks)
            error = "" if complete else f"incomplete stream: {data[-200:]!r}"
            return Outcome(index, stream, 200, complete, latency, error)
        answer = json.loads(data)
        complete = bool(answer.get("choices")) and "message" in answer["choices"][0]
        return Outcome(
            index, stream, 200, complete, latency, "" if complete else data[:200].decode()
        )
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return Outcome(index, stream, 0, False, time.monotonic() - start, repr(exc))
    finally:
        conn.close()


@dataclass
class ChatLoad:
    """``concurrency`` workers sending ``total`` requests in all (every other one streamed; with
    ``long_every``, some with long answers).

    Run it with :meth:`start` and :meth:`join`, or :meth:`run`; ``outcomes`` holds every answer.
    """

    base_url: str
    key: str
    model: str
    total: int
    concurrency: int = 6
    deadline_s: float = 600.0
    max_tokens: int = 16
    # every long_every-th request (0: none) asks for long_max_tokens: a long answer in flight
    long_every: int = 0
    long_max_tokens: int = 400
    headers: Callable[[int], Mapping[str, str]] | None = None
    context: ssl.SSLContext | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _take(self, deadline: float) -> int | None:
        with self._lock:
            if self._stop.is_set() or self._next >= self.total or time.monotonic() > deadline:
                return None
            self._next += 1
            return self._next - 1

    def _work(self, deadline: float) -> None:
        while (index := self._take(deadline)) is not None:
            long = bool(self.long_every) and index % self.long_every == 1
            outcome = chat_once(
                self.base_url,
                self.key,
                index,
                stream=index % 2 == 0,
                model=self.model,
                max_tokens=self.long_max_tokens if long else self.max_tokens,
                ignore_eos=long,
                headers=self.headers(index) if self.headers else None,
                context=self.context,
            )
            with self._lock:
                self.outcomes.append(outcome)

    def start(self) -> None:
        """Start the workers."""
        deadline = time.monotonic() + self.deadline_s
        self._threads = [
            threading.Thread(target=self._work, args=(deadline,), daemon=True)
            for _ in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Send no more requests (those in flight finish)."""
        self._stop.set()

    def join(self) -> list[Outcome]:
        """Wait for the workers; every outcome."""
        for thread in self._threads:
            thread.join()
        return self.outcomes

    def run(self) -> list[Outcome]:
        """Send the whole load and wait for it."""
        self.start()
        return self.join()

    @property
    def sent(self) -> int:
        with self._lock:
            return len(self.outcomes)


@dataclass(frozen=True)
class BackendStat:
    """The gateway's view of one host: HAProxy status (UP, DOWN, MAINT, DRAIN, ...), requests in
    flight (scur) and requests served in all (stot)."""

    status: str
    in_flight: int
    served: int


def gateway_backends(stats_url: str, backend: str = "fleet") -> dict[str, BackendStat]:
    """Each server of ``backend`` from HAProxy's CSV statistics (``http://GW:PORT/stats``)."""
    with urllib.request.urlopen(f"{stats_url};csv;norefresh", timeout=30) as resp:
        text = resp.read().decode().lstrip("# ")
    return {
        row["svname"]: BackendStat(row["status"], int(row["scur"] or 0), int(row["stot"] or 0))
        for row in csv.DictReader(io.StringIO(text))
        if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")
    }


def percentile(values: list[float], fraction: float) -> float:
    """The value at ``fraction`` (0-1) of the sorted values (nearest rank)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]
