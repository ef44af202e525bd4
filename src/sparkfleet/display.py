"""How the CLI shows a run: a live per-host table in a terminal, plain lines otherwise, a summary.

:class:`HostBoard` folds events into one row per host (state, task, download, elapsed, counts);
:class:`LiveView` draws it with rich while the run goes on; :class:`PlainView` prints one line per
host result (and throttled progress lines) for logs and pipes; :func:`print_summary` ends both.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sparkfleet.events import (
    DownloadProgress,
    FleetEvent,
    HostTaskResult,
    HostTaskStarted,
    PlayStarted,
    StopRequested,
    TaskRetry,
    TaskStatus,
)
from sparkfleet.result import HostResult, RunCollector, RunResult, StatusResult

_STYLE = {
    "waiting": "dim",
    "running": "cyan",
    "retrying": "yellow",
    "ok": "green",
    "changed": "yellow",
    "failed": "bold red",
    "unreachable": "bold magenta",
    "stopped": "yellow",
    "not run": "dim",
}


def format_bytes(n: float) -> str:
    """Bytes in the largest unit that keeps one digit before the point (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover - loop always returns


def format_duration(seconds: float) -> str:
    """``M:SS`` or ``H:MM:SS``."""
    s = int(max(0, seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _label(role: str | None, task: str) -> str:
    if task.startswith("Validating arguments against arg spec"):
        task = "validate the arguments"
    return f"{role} : {task}" if role else task


@dataclass
class HostRow:
    """What the table shows for one host."""

    name: str
    state: str = "waiting"
    task: str = ""
    task_started: float | None = None
    first_started: float | None = None
    last_result: float | None = None
    retry: str = ""
    download: DownloadProgress | None = None
    counts: HostResult | None = None
    """The host's counts: the run's so far (:class:`RunCollector`), then its result's."""
    message: str = ""
    finished: bool = False

    def elapsed(self, now: float) -> float:
        """The current task's time while running, else the host's whole time."""
        if not self.finished and self.task_started is not None:
            return now - self.task_started
        if self.first_started is not None and self.last_result is not None:
            return self.last_result - self.first_started
        return 0.0


@dataclass
class HostBoard:
    """Per-host rows built from a run's events; the counts are a :class:`RunCollector`'s."""

    title: str
    rows: dict[str, HostRow] = field(default_factory=dict)
    collector: RunCollector = field(default_factory=RunCollector)
    started: float = field(default_factory=time.time)
    play: str = ""
    stopping: str = ""

    def row(self, host: str) -> HostRow:
        """The host's row (created on first use)."""
        if host not in self.rows:
            self.rows[host] = HostRow(host, counts=self.collector.host(host))
        return self.rows[host]

    def update(self, event: FleetEvent) -> None:
        """Account for one event."""
        self.collector.add(event)
        if isinstance(event, PlayStarted):
            self.play = event.play
        elif isinstance(event, HostTaskStarted):
            row = self.row(event.host)
            if row.state in ("failed", "unreachable"):
                return
            row.state, row.task, row.retry = "running", _label(event.role, event.task), ""
            row.task_started = event.time
            if row.first_started is None:
                row.first_started = event.time
        elif isinstance(event, HostTaskResult):
            self._result(event)
        elif isinstance(event, TaskRetry):
            row = self.row(event.host)
            row.state = "retrying"
            row.retry = f"{event.attempts}/{event.max_attempts}"
        elif isinstance(event, DownloadProgress):
            row = self.row(event.host)
            prev = row.download
            if event.rate_bps is None and prev is not None and event.time > prev.time:
                rate = (event.bytes_done - prev.bytes_done) / (event.time - prev.time)
                event = dataclasses.replace(event, rate_bps=max(rate, 0.0))
            row.download = event
        elif isinstance(event, StopRequested):
            self.stopping = (
                "killing the run" if event.force else "stopping: the tasks in flight finish"
            )

    def _result(self, ev: HostTaskResult) -> None:
        row = self.row(ev.host)
        row.last_result = ev.time
        if row.first_started is None:
            row.first_started = ev.time
        if ev.item is not None:
            return
        if ev.status is TaskStatus.UNREACHABLE:
            row.state, row.message = "unreachable", ev.message
        elif ev.status is TaskStatus.FAILED and not ev.ignored:
            row.state, row.message = "failed", ev.message
        elif ev.status in (TaskStatus.OK, TaskStatus.CHANGED) and row.state not in (
            "failed",
            "unreachable",
        ):
            row.state = "running"

    def finish(self, result: RunResult) -> None:
        """Set each row's final state from the run's result."""
        for host in result.hosts.values():
            row = self.row(host.name)
            row.finished = True
            row.state = host.status
            if result.canceled and host.succeeded:
                row.state = "stopped"
            row.counts = host
            if host.failed_task:
                row.task, row.message = host.failed_task, host.message

    def render(self, now: float | None = None) -> RenderableType:
        """The table (and a stop notice, when a stop was requested)."""
        now = time.time() if now is None else now
        table = Table(
            title=f"{self.title}  {format_duration(now - self.started)}",
            title_justify="left",
            expand=False,
        )
        table.add_column("host", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("task", overflow="ellipsis", no_wrap=True, max_width=60)
        table.add_column("download", no_wrap=True, justify="right")
        table.add_column("elapsed", no_wrap=True, justify="right")
        table.add_column("ok", justify="right")
        table.add_column("changed", justify="right")
        table.add_column("failed", justify="right")
        for row in self.rows.values():
            state = row.state + (f" {row.retry}" if row.state == "retrying" else "")
            task = row.task
            if row.message and row.state in ("failed", "unreachable"):
                task = f"{row.task}: {row.message.splitlines()[0]}"
            counts = row.counts or HostResult(row.name)
            failed = counts.failed + counts.unreachable
            table.add_row(
                row.name,
                Text(state, style=_STYLE.get(row.state, "")),
                task,
                _download_text(row.download),
                format_duration(row.elapsed(now)),
                str(counts.ok),
                str(counts.changed),
                Text(str(failed), style="red" if failed else ""),
            )
        if self.stopping:
            return Group(table, Text(self.stopping, style="yellow"))
        return table


def _download_text(prog: DownloadProgress | None) -> str:
    if prog is None:
        return ""
    frac = prog.fraction
    text = f"{frac * 100:.0f}%" if frac is not None else format_bytes(prog.bytes_done)
    if prog.rate_bps:
        text += f" {format_bytes(prog.rate_bps)}/s"
    return text


class LiveView:
    """A live table on a terminal, refreshed a few times a second."""

    def __init__(self, board: HostBoard, console: Console) -> None:
        self.board = board
        self.console = console
        self.live = Live(
            get_renderable=self.board.render,
            console=console,
            refresh_per_second=4,
            transient=False,
        )

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def on_event(self, event: FleetEvent) -> None:
        """The run's event callback."""
        self.board.update(event)


class PlainView:
    """One line per host result (skipped ones left out), for logs and pipes.

    Retries and download progress are printed at most every ``throttle_s`` per host.
    """

    def __init__(self, out: TextIO, throttle_s: float = 15.0) -> None:
        self.out = out
        self.throttle_s = throttle_s
        self._last: dict[tuple[str, str], float] = {}
        self._width = 12

    def _line(self, ev_time: float, host: str, state: str, text: str) -> None:
        self._width = max(self._width, len(host))
        stamp = time.strftime("%H:%M:%S", time.localtime(ev_time))
        print(f"{stamp} {host:<{self._width}} {state:<11} {text}", file=self.out, flush=True)

    def _throttled(self, key: tuple[str, str], now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.throttle_s:
            return True
        self._last[key] = now
        return False

    def on_event(self, event: FleetEvent) -> None:
        """The run's event callback."""
        if isinstance(event, PlayStarted):
            print(f"play: {event.play}", file=self.out, flush=True)
        elif isinstance(event, HostTaskResult) and event.item is None:
            if event.status is TaskStatus.SKIPPED:
                return
            label = _label(event.role, event.task)
            state = event.status.value
            if event.status is TaskStatus.FAILED and event.ignored:
                state = "ignored"
            text = label
            if event.message:
                text += ": " + " | ".join(event.message.splitlines())
            elif event.duration_s is not None and event.duration_s >= 1:
                text += f" ({event.duration_s:.1f} s)"
            self._line(event.time, event.host, state, text)
        elif isinstance(event, TaskRetry):
            if not self._throttled((event.host, "retry"), event.time):
                tries = f"attempt {event.attempts}/{event.max_attempts}"
                text = f"{_label(event.role, event.task)} ({tries})"
                self._line(event.time, event.host, "retrying", text)
        elif isinstance(event, DownloadProgress):
            if not self._throttled((event.host, "download"), event.time):
                total = format_bytes(event.bytes_total) if event.bytes_total else "?"
                text = f"{format_bytes(event.bytes_done)} of {total} {_download_text(event)}"
                self._line(event.time, event.host, "download", text)
        elif isinstance(event, StopRequested):
            what = "killing the run" if event.force else "stopping: the tasks in flight finish"
            print(what, file=self.out, flush=True)


def host_detail(host: HostResult) -> str:
    """One line of what the roles reported about a host (health, model, preflight)."""
    parts: list[str] = []
    health = host.health
    if health is not None:
        # the endpoint a client on the controller reaches, never the host's own loopback
        where = f"endpoint {host.endpoint} " if host.endpoint else ""
        if health.served_by is not None:
            state = (
                "not checked"
                if not health.checked
                else ("Ray node alive" if health.healthy else "Ray node NOT alive")
            )
            text = f"worker of {health.served_by}: {state} (the pair is served and checked there)"
        elif not health.checked:
            text = f"{where}not checked (check mode sends no request)"
        elif not health.healthy:
            text = f"{where}does not serve {health.model}"
        else:
            text = f"{where}serves {health.model}"
        if health.chat_seconds is not None:
            text += f", chat {health.chat_seconds:.2f} s"
        if health.completion_tokens is not None:
            text += f" / {health.completion_tokens} tokens"
        parts.append(text)
    manifest = host.model_manifest
    if manifest:
        files = manifest.get("files")
        count = len(files) if isinstance(files, list | dict) else "?"
        size = _manifest_bytes(manifest)
        commit = str(manifest.get("commit", ""))[:12]
        parts.append(
            f"model {manifest.get('repo_id', '?')}@{commit}: {count} files"
            + (f", {format_bytes(size)}" if size else "")
        )
    report = host.preflight_report
    if report and not parts:
        gpu: dict[str, Any] = report.get("gpu") or {}
        disk: dict[str, Any] = report.get("disk") or {}
        docker: dict[str, Any] = report.get("docker") or {}
        parts.append(
            f"{report.get('arch', '?')}, {_os_text(report.get('os'))}, "
            f"GPU {gpu.get('name') or 'none'} "
            f"(driver {gpu.get('driver_version') or '?'}), Docker "
            f"{docker.get('server_version') or 'not running'}, "
            f"{format_bytes(float(disk.get('free_bytes') or 0))} free on {disk.get('path', '?')}"
        )
    if host.benchmark:
        parts.append(_benchmark_text(host.benchmark))
    status = host.status_report
    if status is not None and not parts:
        parts.append(_serving_text(status))
    return "; ".join(parts)


def _serving_text(report: StatusResult) -> str:
    """``status``'s verdict in a line: serving (and where) or what is missing; for a pair's
    member, its Ray cluster (a worker serves at its head)."""
    if report.serving:
        if report.pair_role == "worker":
            return f"worker of {report.pair_head}, {_ray_text(report)}"
        where = f"serving at {report.endpoint}" if report.endpoint else "serving"
        return where + (f", {_ray_text(report)}" if report.pair_role else "")
    missing = [f"unit {report.unit}"] if not report.unit.startswith("active/") else []
    missing += [] if report.container_running else ["container not running"]
    missing += [f"metrics: {report.metrics_error}"] if report.metrics_error else []
    missing += [f"Ray: {report.ray_error}"] if report.ray_error else list(report.ray_problems)
    role = f" (worker of {report.pair_head})" if report.pair_role == "worker" else ""
    return f"NOT serving{role}: " + ", ".join(missing)


def _ray_text(report: StatusResult) -> str:
    """A pair's Ray cluster: ``Ray: spark-01 192.168.100.10 1 GPU, spark-02 ... 1 GPU``."""
    if report.ray_error:
        return f"Ray: {report.ray_error}"
    members = []
    for m in report.ray_members:
        alive = m.get("alive") and m.get("gpus") is not None
        members.append(f"{m.get('name')} {m.get('address')} "
                       + (f"{float(m['gpus']):g} GPU" if alive else "no node"))  # fmt: skip
    return "Ray: " + ", ".join(members)


def _benchmark_text(report: dict[str, Any]) -> str:
    """``llm_benchmark_result`` in a line: the verdict, then each judged figure and its ratio."""
    said = "ok" if report.get("ok") else "SHORT of " + ", ".join(report["short_of_reference"])
    missing = report.get("not_measured") or []
    verdict = said + (f" (not measured: {', '.join(missing)})" if missing else "")
    figures = [
        f"{f['label']} {f['measured']:,.1f} {f['unit']} ({f['ratio']:.2f}x card)"
        for f in report.get("findings", [])
        if f.get("judged") and f.get("measured") is not None and f.get("ratio") is not None
    ]
    return f"benchmark {verdict}: " + ", ".join(figures)


def _os_text(found: object) -> str:
    """The report's OS: ``pretty_name`` from its ``/etc/os-release`` mapping (older: text)."""
    if isinstance(found, dict):
        return str(
            found.get("pretty_name") or f"{found.get('id', '?')} {found.get('version_id', '')}"
        )
    return str(found) if found else "?"


def _manifest_bytes(manifest: dict[str, Any]) -> int:
    total = manifest.get("bytes_total")
    if isinstance(total, int):
        return total
    files = manifest.get("files")
    if isinstance(files, list):
        return sum(int(f.get("size", 0)) for f in files if isinstance(f, dict))
    if isinstance(files, dict):
        return sum(int(v.get("size", 0)) for v in files.values() if isinstance(v, dict))
    return 0


def print_summary(console: Console, result: RunResult) -> None:
    """The outcome, then one line per host (what failed and why, or what the roles reported)."""
    style = "green" if result.ok else ("yellow" if result.canceled else "red")
    console.print(Text(result.summary(), style=style))
    for error in result.errors:
        console.print(Text(f"  error: {error}", style="red"))
    if result.no_hosts_matched:
        console.print(Text("  no host matched the inventory and limit", style="red"))
    width = max((len(n) for n in result.hosts), default=0)
    for host in result.hosts.values():
        state = result.host_state(host)
        head = Text(f"  {host.name:<{width}}  ")
        head.append(f"{state:<11}", style=_STYLE.get(state, ""))
        if host.failed_task:
            head.append(f" {host.failed_task}")
            console.print(head)
            for line in host.message.splitlines() or [""]:
                console.print(Text(f"  {'':<{width}}  {'':<11} {line}", style="red"))
        else:
            notes = [f"at {host.last_task}"] if state == "stopped" and host.last_task else []
            notes += [host_detail(host)] if host_detail(host) else []
            head.append(" " + "; ".join(notes))
            console.print(head)


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


_STATUS_COLUMNS = ("host", "unit", "up", "image", "model", "endpoint", "run/wait", "KV",
                   "tokens in", "tokens out", "TTFT", "note")  # fmt: skip


def status_table(result: RunResult) -> Table:
    """``sparkfleet status`` as a table: one row per host that reported its state.

    Columns: the unit's state, the container's uptime, the image (tag and the digest's first 12
    hex digits), the model commit (12), the endpoint a client on the controller reaches,
    requests running/waiting, KV-cache use in %, prompt and generation tokens since the server
    started, mean TTFT in ms; a last column says why ``/metrics`` could not be read.
    """
    table = Table(title=f"{result.operation}: {len(result.hosts)} host(s)", title_justify="left")
    for name in _STATUS_COLUMNS:
        right = name in ("up", "run/wait", "KV", "tokens in", "tokens out", "TTFT")
        table.add_column(name, justify="right" if right else "left", no_wrap=name != "note")
    for host in result.hosts.values():
        report = host.status_report
        if report is None and host.gateway_status is not None:
            continue  # a gateway only: its own table shows it
        if report is None:
            note = host.message.splitlines()[0] if host.message else ""
            state = Text(host.status, style=_STYLE.get(host.status, ""))
            table.add_row(host.name, state, *[""] * (len(_STATUS_COLUMNS) - 3), note)
            continue
        table.add_row(*_status_cells(host.name, report))
    return table


def gateway_table(result: RunResult) -> Table | None:
    """Each gateway's view of the fleet as a table (host, gateway, state, in flight, served);
    None when no gateway reported one."""
    views = {h.name: v for h in result.hosts.values() if (v := h.gateway_status) is not None}
    if not views:
        return None
    table = Table(title="gateway view", title_justify="left")
    for name in ("gateway", "endpoint", "host", "state", "in flight", "served"):
        table.add_column(name, justify="right" if name in ("in flight", "served") else "left")
    for gateway, view in views.items():
        if view.get("error"):
            table.add_row(
                gateway,
                str(view.get("endpoint", "")),
                "",
                Text(str(view["error"]), style="red"),
                "",
                "",
            )
        for b in view.get("backends") or []:
            state = str(b.get("state", "?"))
            style = (
                "green"
                if state == "UP"
                else "yellow"
                if state.startswith(("MAINT", "DRAIN"))
                else "red"
            )
            cells = [str(b.get(k, "")) for k in ("host", "in_flight", "served")]
            where = str(view.get("endpoint", ""))
            table.add_row(gateway, where, cells[0], Text(state, style=style), cells[1], cells[2])
    return table


def _status_cells(name: str, report: StatusResult) -> list[RenderableType]:
    digest = (report.digest or "").removeprefix("sha256:")[:12]
    image = (report.image or "-") + (f" @{digest}" if digest else "")
    kv = "-" if report.kv_cache_usage is None else f"{report.kv_cache_usage * 100:.1f} %"
    ttft = "-" if report.ttft_mean_s is None else f"{report.ttft_mean_s * 1000:.1f} ms"
    up = "-" if report.uptime_s is None else format_duration(report.uptime_s)
    waiting = f"{_or_dash(report.requests_running)}/{_or_dash(report.requests_waiting)}"
    return [
        name,
        Text(report.unit, style="green" if report.serving else "red"),
        up,
        image,
        (report.model_commit or "-")[:12],
        report.endpoint or "-",
        waiting,
        kv,
        _or_dash(report.prompt_tokens),
        _or_dash(report.generation_tokens),
        ttft,
        _status_note(report),
    ]


def _status_note(report: StatusResult) -> RenderableType:
    """The note column: why ``/metrics`` could not be read; a pair's Ray cluster (what is wrong
    with it, in red); a pair's worker, whose head serves."""
    if report.metrics_error:
        return Text(f"metrics: {report.metrics_error}", style="red")
    if report.pair_role is None:
        return ""
    if report.ray_error or report.ray_problems:
        return Text(_serving_text(report).removeprefix("NOT serving"), style="red")
    worker = f"worker of {report.pair_head}, " if report.pair_role == "worker" else ""
    return worker + _ray_text(report)
