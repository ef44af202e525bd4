"""Typed progress events, parsed from ansible-runner's raw events.

ansible-runner reports every step of a playbook run as a dict (``event``, ``event_data``,
``stdout``...). :func:`parse_event` turns one such dict into zero or more typed events:

- :class:`PlayStarted`, :class:`TaskStarted`: the play and each task as they begin;
- :class:`HostTaskStarted`: a task begins on one host;
- :class:`HostTaskResult`: a task's outcome on one host (ok, changed, failed, unreachable,
  skipped), with the failure message when there is one;
- :class:`TaskRetry`: an ``until`` loop on one host tries again;
- :class:`DownloadProgress`: bytes done/total/rate of the model fetch on one host, made by
  :class:`sparkfleet.progress.ProgressPoller` from the hf_model role's progress files (no raw
  event carries it);
- :class:`AnsibleWarning`: a warning printed by Ansible;
- :class:`StopRequested`, :class:`RunStatusChanged`: emitted by :class:`sparkfleet.Fleet` itself.

Events are frozen dataclasses; ``time`` is the controller's clock (``time.time()``) when the
event was made, ``kind`` names the class for JSON consumers (:func:`event_to_dict`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, ClassVar, TypeAlias

RawEvent: TypeAlias = Mapping[str, Any]
"""One event as ansible-runner hands it to ``event_handler`` (or writes to job_events/)."""

STOP_ACKNOWLEDGED = "sparkfleet: stop requested"
"""Start of the warning the graceful-stop strategy prints when it stops a run."""
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Actions that run on the controller only and whose results are bookkeeping.
_FACT_ACTIONS = frozenset({"set_fact", "ansible.builtin.set_fact", "ansible.legacy.set_fact"})
_GATHER_ACTIONS = frozenset(
    {
        "gather_facts",
        "setup",
        "ansible.builtin.gather_facts",
        "ansible.builtin.setup",
        "ansible.legacy.setup",
    }
)


class TaskStatus(StrEnum):
    """Outcome of one task on one host."""

    OK = "ok"
    CHANGED = "changed"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Event:
    """Base of every event; ``time`` is when the controller saw it."""

    kind: ClassVar[str] = "event"
    time: float = field(default_factory=time.time, kw_only=True)


@dataclass(frozen=True)
class PlayStarted(Event):
    """A play begins. ``pattern`` is its ``hosts:`` pattern."""

    kind: ClassVar[str] = "play_started"
    play: str
    pattern: str


@dataclass(frozen=True)
class TaskStarted(Event):
    """A task begins (once, before it is queued for its hosts). Handlers count as tasks."""

    kind: ClassVar[str] = "task_started"
    play: str
    task: str
    role: str | None
    action: str
    is_handler: bool = False


@dataclass(frozen=True)
class HostTaskStarted(Event):
    """A task begins on one host."""

    kind: ClassVar[str] = "host_task_started"
    host: str
    task: str
    role: str | None
    action: str


@dataclass(frozen=True)
class HostTaskResult(Event):
    """A task's outcome on one host.

    ``message`` is the failure (or unreachable) message for failed and unreachable results, ``""``
    otherwise; ``ignored`` is true when the task has ``ignore_errors``. ``facts`` holds what a
    ``set_fact`` task set; ``result`` is the module's whole result (may be large).
    """

    kind: ClassVar[str] = "host_task_result"
    host: str
    task: str
    role: str | None
    action: str
    status: TaskStatus
    message: str = ""
    ignored: bool = False
    duration_s: float | None = None
    item: str | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)
    result: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_failure(self) -> bool:
        """True for a failed (not ignored) or unreachable result."""
        return self.status is TaskStatus.UNREACHABLE or (
            self.status is TaskStatus.FAILED and not self.ignored
        )


@dataclass(frozen=True)
class TaskRetry(Event):
    """An ``until`` loop on one host failed an attempt and tries again (``attempts`` made so far,
    at most ``max_attempts``: the first try plus ``retries``)."""

    kind: ClassVar[str] = "task_retry"
    host: str
    task: str
    role: str | None
    attempts: int
    max_attempts: int


@dataclass(frozen=True)
class DownloadProgress(Event):
    """Bytes fetched so far on one host. ``rate_bps`` is bytes per second, when known."""

    kind: ClassVar[str] = "download_progress"
    host: str
    bytes_done: int
    bytes_total: int
    rate_bps: float | None = None
    task: str | None = None

    @property
    def fraction(self) -> float | None:
        """Done/total in [0, 1], or None while the total is unknown."""
        if self.bytes_total <= 0:
            return None
        return min(1.0, max(0.0, self.bytes_done / self.bytes_total))


@dataclass(frozen=True)
class AnsibleWarning(Event):
    """A warning Ansible printed (``[WARNING]: ...``), without colours."""

    kind: ClassVar[str] = "warning"
    message: str


@dataclass(frozen=True)
class StopRequested(Event):
    """The run was asked to stop: ``force`` kills it now, otherwise the tasks in flight finish."""

    kind: ClassVar[str] = "stop_requested"
    force: bool


@dataclass(frozen=True)
class RunStatusChanged(Event):
    """ansible-runner's status of the run: starting, running, successful, failed, canceled..."""

    kind: ClassVar[str] = "run_status"
    status: str


FleetEvent: TypeAlias = (
    PlayStarted
    | TaskStarted
    | HostTaskStarted
    | HostTaskResult
    | TaskRetry
    | DownloadProgress
    | AnsibleWarning
    | StopRequested
    | RunStatusChanged
)
"""Every event a :class:`sparkfleet.Fleet` run can send to its ``on_event`` callback."""

EventCallback: TypeAlias = Callable[[FleetEvent], None]
"""Signature of ``on_event`` callbacks."""


def strip_ansi(text: str) -> str:
    """Text without ANSI colour codes."""
    return _ANSI.sub("", text)


def failure_message(res: Mapping[str, Any]) -> str:
    """The most useful one-paragraph message in a failed or unreachable task result.

    ``msg`` first (assert's ``fail_msg``, module errors, unreachable reasons); for a command,
    its stderr (else stdout) when ``msg`` is only "non-zero return code"; for a loop, the first
    failed item's message; for a module crash, its stderr.
    """
    msg = res.get("msg")
    text = strip_ansi(msg).strip() if isinstance(msg, str) else ""
    if not text and isinstance(msg, list):
        text = "; ".join(str(m) for m in msg)
    if "rc" in res and (not text or text == "non-zero return code"):
        for key in ("stderr", "stdout"):
            out = res.get(key)
            if isinstance(out, str) and out.strip():
                lines = out.strip().splitlines()
                detail = "\n".join(lines[-5:])
                text = f"rc={res['rc']}: {detail}" if text else detail
                break
    if not text and isinstance(res.get("results"), list):
        for item in res["results"]:
            if isinstance(item, Mapping) and (item.get("failed") or item.get("unreachable")):
                text = failure_message(item)
                break
    if not text:
        for key in ("module_stderr", "stderr", "module_stdout", "exception"):
            out = res.get(key)
            if isinstance(out, str) and out.strip() and out != "(traceback unavailable)":
                text = "\n".join(out.strip().splitlines()[-5:])
                break
    return text


def progress_from_mapping(data: Mapping[str, Any], prog: Any) -> DownloadProgress | None:
    """A DownloadProgress from a ``{bytes_done, bytes_total, rate_bps}`` mapping, if valid."""
    if not isinstance(prog, Mapping) or "bytes_done" not in prog:
        return None
    try:
        done = int(prog["bytes_done"])
        total = int(prog.get("bytes_total") or 0)
        rate = prog.get("rate_bps")
        rate_f = float(rate) if rate is not None else None
    except (TypeError, ValueError):
        return None
    return DownloadProgress(
        host=str(data.get("host", "")),
        bytes_done=done,
        bytes_total=total,
        rate_bps=rate_f,
        task=data.get("task"),
    )


_RESULT_STATUS = {
    "runner_on_ok": TaskStatus.OK,
    "runner_on_failed": TaskStatus.FAILED,
    "runner_on_unreachable": TaskStatus.UNREACHABLE,
    "runner_on_skipped": TaskStatus.SKIPPED,
    "runner_item_on_ok": TaskStatus.OK,
    "runner_item_on_failed": TaskStatus.FAILED,
    "runner_item_on_skipped": TaskStatus.SKIPPED,
}


def _role(data: Mapping[str, Any]) -> str | None:
    role = data.get("role")
    return str(role) if role else None


def _result_event(raw: RawEvent, data: Mapping[str, Any]) -> HostTaskResult:
    name = str(raw.get("event"))
    status = _RESULT_STATUS[name]
    res = data.get("res")
    res = res if isinstance(res, Mapping) else {}
    if status is TaskStatus.OK and res.get("changed"):
        status = TaskStatus.CHANGED
    action = str(data.get("task_action") or data.get("resolved_action") or "")
    message = failure_message(res) if status in (TaskStatus.FAILED, TaskStatus.UNREACHABLE) else ""
    facts: Mapping[str, Any] = {}
    if action in _FACT_ACTIONS and status is not TaskStatus.FAILED:
        got = res.get("ansible_facts")
        facts = dict(got) if isinstance(got, Mapping) else {}
    duration = data.get("duration")
    item = res.get("item") if name.startswith("runner_item_") else None
    return HostTaskResult(
        host=str(data.get("host", "")),
        task=str(data.get("task", "")),
        role=_role(data),
        action=action,
        status=status,
        message=message,
        ignored=bool(data.get("ignore_errors")),
        duration_s=float(duration) if isinstance(duration, int | float) else None,
        item=None if item is None else str(item),
        facts=facts,
        result=res,
    )


def parse_event(raw: RawEvent) -> list[FleetEvent]:
    """Typed events for one raw ansible-runner event (often one, sometimes none or two).

    Loop items produce a :class:`HostTaskResult` with ``item`` set; the task's final result
    follows as its own event without ``item``.
    """
    name = raw.get("event")
    data: Mapping[str, Any] = raw.get("event_data") or {}
    out: list[FleetEvent] = []
    if name == "playbook_on_play_start":
        out.append(
            PlayStarted(play=str(data.get("play") or data.get("name") or ""),
                        pattern=str(data.get("play_pattern") or data.get("pattern") or ""))
        )  # fmt: skip
    elif name == "playbook_on_task_start":
        out.append(
            TaskStarted(
                play=str(data.get("play", "")),
                task=str(data.get("task") or data.get("name") or ""),
                role=_role(data),
                action=str(data.get("task_action") or ""),
                # ansible-runner reports handlers as task starts with is_conditional set
                is_handler=bool(data.get("is_conditional")),
            )
        )
    elif name == "runner_on_start":
        out.append(
            HostTaskStarted(
                host=str(data.get("host", "")),
                task=str(data.get("task", "")),
                role=_role(data),
                action=str(data.get("task_action") or ""),
            )
        )
    elif name in _RESULT_STATUS:
        action = str(data.get("task_action") or "")
        if action in _GATHER_ACTIONS and name == "runner_on_ok":
            # gathered facts are large and not the roles' results: keep counts, drop the payload
            data = {**data, "res": {"changed": False}}
        out.append(_result_event(raw, data))
    elif name == "runner_retry":
        res = data.get("res")
        res = res if isinstance(res, Mapping) else {}
        out.append(
            TaskRetry(
                host=str(data.get("host", "")),
                task=str(data.get("task", "")),
                role=_role(data),
                attempts=int(res.get("attempts", 0) or 0),
                max_attempts=int(res.get("retries", 0) or 0),
            )
        )
    elif name == "warning":
        text = strip_ansi(str(raw.get("stdout") or "")).strip()
        text = text.removeprefix("[WARNING]:").strip()
        if text:
            out.append(AnsibleWarning(message=text))
    return out


def event_to_dict(event: FleetEvent) -> dict[str, Any]:
    """A JSON-ready dict of an event (``kind`` first; enum values as strings; no raw result)."""
    out: dict[str, Any] = {"kind": event.kind}
    for f in dataclasses.fields(event):
        if f.name == "result":
            continue
        value = getattr(event, f.name)
        out[f.name] = value.value if isinstance(value, Enum) else value
    return out
