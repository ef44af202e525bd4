"""Results of a run: per host counts, the failing task and its message, and the roles' facts.

:class:`RunCollector` folds the typed events of one run (and the raw ``playbook_on_stats`` event)
into a :class:`RunResult`. The facts the roles publish with ``set_fact`` are kept per host; the
known ones have typed accessors on :class:`HostResult`:

=====================  ================================  =========================
accessor               fact                              set by
=====================  ================================  =========================
``preflight_report``   ``spark_preflight_report``        ``spark_preflight``
``model_manifest``     ``hf_model_manifest``             ``hf_model``
``health``             ``vllm_health_result``            ``vllm_health``
``benchmark``          ``llm_benchmark_result``         ``benchmark.yml``
=====================  ================================  =========================
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from sparkfleet.events import (
    STOP_ACKNOWLEDGED,
    AnsibleWarning,
    FleetEvent,
    HostTaskResult,
    HostTaskStarted,
    PlayStarted,
    RawEvent,
    StopRequested,
    TaskStatus,
    strip_ansi,
)

PREFLIGHT_FACT = "spark_preflight_report"
MANIFEST_FACT = "hf_model_manifest"
HEALTH_FACT = "vllm_health_result"
BENCHMARK_FACT = "llm_benchmark_result"


class ExitCode(IntEnum):
    """Exit codes of the ``sparkfleet`` command (and :attr:`RunResult.exit_code`)."""

    OK = 0
    """Every host ran its tasks without failure."""
    FAILED = 1
    """At least one host failed (its task and message are reported), or the run did not finish."""
    UNREACHABLE = 2
    """At least one host could not be reached (takes precedence over failed hosts)."""
    USAGE = 3
    """Bad usage or input, nothing ran: options, inventory, playbook errors, no host matched."""
    INTERRUPTED = 130
    """The run was stopped (Ctrl-C, SIGTERM or a cancel request) before it finished."""


@dataclass(frozen=True)
class HealthResult:
    """What the ``vllm_health`` role found on one host (fact ``vllm_health_result``)."""

    endpoint: str
    model: str
    healthy: bool
    chat_seconds: float | None
    completion_tokens: int | None
    answer: str

    @classmethod
    def from_fact(cls, fact: Mapping[str, Any]) -> HealthResult:
        """Build from the fact's dict (values may come as strings from templating)."""

        def _num(value: Any, kind: type[int] | type[float]) -> Any:
            try:
                return None if value in (None, "", "None") else kind(value)
            except (TypeError, ValueError):
                return None

        healthy = fact.get("healthy")
        return cls(
            endpoint=str(fact.get("endpoint", "")),
            model=str(fact.get("model", "")),
            healthy=healthy is True or str(healthy).lower() == "true",
            chat_seconds=_num(fact.get("chat_seconds"), float),
            completion_tokens=_num(fact.get("completion_tokens"), int),
            answer=str(fact.get("answer", "")),
        )


@dataclass
class HostResult:
    """One host's outcome in a run.

    Counts follow Ansible's recap: ``ok`` counts every successful result (``changed`` ones
    included), ``failed`` the failures not ignored, ``unreachable`` the unreachable results.
    """

    name: str
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0
    failed_task: str | None = None
    """The task that failed (``role : task``) or found the host unreachable."""
    message: str = ""
    """That task's message (assert ``fail_msg``, module error, stderr, unreachable reason)."""
    last_task: str | None = None
    """The last task that started on the host."""
    facts: dict[str, Any] = field(default_factory=dict)
    """Facts set with ``set_fact`` during the run, by name (the last value wins)."""

    @property
    def status(self) -> str:
        """``unreachable``, ``failed``, ``changed``, ``ok`` or ``not run``."""
        if self.unreachable:
            return "unreachable"
        if self.failed:
            return "failed"
        if self.changed:
            return "changed"
        if self.ok or self.skipped:
            return "ok"
        return "not run"

    @property
    def succeeded(self) -> bool:
        """Reached, and no failure that was not ignored or rescued."""
        return not self.unreachable and not self.failed

    @property
    def preflight_report(self) -> dict[str, Any] | None:
        """The ``spark_preflight`` report (arch, os, gpu, docker, disk, port), if it ran."""
        return self._fact_dict(PREFLIGHT_FACT)

    @property
    def model_manifest(self) -> dict[str, Any] | None:
        """The ``hf_model`` manifest (repo, commit, files, sizes), if it ran."""
        return self._fact_dict(MANIFEST_FACT)

    @property
    def health(self) -> HealthResult | None:
        """The ``vllm_health`` result (endpoint, model, latency, answer), if it ran."""
        fact = self._fact_dict(HEALTH_FACT)
        return HealthResult.from_fact(fact) if fact is not None else None

    @property
    def endpoint(self) -> str | None:
        """The OpenAI-compatible base URL the health check used, if it ran."""
        health = self.health
        return health.endpoint if health else None

    @property
    def benchmark(self) -> dict[str, Any] | None:
        """The benchmark numbers ``benchmark.yml`` publishes, if it ran."""
        return self._fact_dict(BENCHMARK_FACT)

    def _fact_dict(self, name: str) -> dict[str, Any] | None:
        value = self.facts.get(name)
        return dict(value) if isinstance(value, Mapping) else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "name": self.name,
            "status": self.status,
            "ok": self.ok,
            "changed": self.changed,
            "failed": self.failed,
            "unreachable": self.unreachable,
            "skipped": self.skipped,
            "rescued": self.rescued,
            "ignored": self.ignored,
            "failed_task": self.failed_task,
            "message": self.message,
            "last_task": self.last_task,
            "facts": self.facts,
        }


@dataclass
class RunResult:
    """The outcome of one playbook run.

    ``status`` is ansible-runner's (``successful``, ``failed``, ``canceled``, ``timeout``),
    except that a run stopped gracefully reports ``canceled`` too; ``rc`` is ansible-playbook's
    exit status (254 when the process was killed). ``hosts`` maps each host to its
    :class:`HostResult`, in inventory order as first seen.
    """

    operation: str
    playbook: str
    status: str
    rc: int
    hosts: dict[str, HostResult]
    canceled: bool = False
    elapsed_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    """Errors Ansible printed that belong to no host (syntax, inventory, variables)."""
    no_hosts_matched: bool = False
    """True when the inventory and limit left no host to run on."""
    stats_data: dict[str, Any] = field(default_factory=dict)
    """Data the playbook published with ``set_stats`` (ansible-runner's ``artifact_data``)."""
    artifact_dir: str | None = None
    """Where ansible-runner's artifacts (stdout, events) were kept, if asked to keep them."""

    @property
    def ok(self) -> bool:
        """True when the run finished and every host succeeded."""
        return self.exit_code == ExitCode.OK

    @property
    def failed_hosts(self) -> list[str]:
        """Hosts with a failure that was not ignored or rescued."""
        return [h.name for h in self.hosts.values() if h.failed and not h.unreachable]

    @property
    def unreachable_hosts(self) -> list[str]:
        """Hosts that could not be reached."""
        return [h.name for h in self.hosts.values() if h.unreachable]

    @property
    def exit_code(self) -> ExitCode:
        """0 all ok, 1 failed hosts (or an unfinished run), 2 unreachable hosts, 3 bad input,
        130 stopped."""
        if self.unreachable_hosts:
            return ExitCode.UNREACHABLE
        if self.failed_hosts:
            return ExitCode.FAILED
        if self.canceled:
            return ExitCode.INTERRUPTED
        if self.no_hosts_matched or (not self.hosts and (self.errors or self.rc in (4, 5))):
            return ExitCode.USAGE  # nothing ran: Ansible refused the input
        if self.rc != 0 or self.status != "successful":
            return ExitCode.FAILED
        return ExitCode.OK

    def facts(self, name: str) -> dict[str, Any]:
        """One fact across the fleet: host name -> value, for the hosts that set it."""
        return {h.name: h.facts[name] for h in self.hosts.values() if name in h.facts}

    def summary(self) -> str:
        """One line: the outcome and the host counts."""
        counts = {
            "stopped" if self.canceled else "ok": sum(
                1 for h in self.hosts.values() if h.succeeded
            ),
            "failed": len(self.failed_hosts),
            "unreachable": len(self.unreachable_hosts),
        }
        state = "stopped" if self.canceled else self.status
        parts = ", ".join(f"{n} {k}" for k, n in counts.items() if n or k in ("ok", "stopped"))
        return f"{self.operation} ({self.playbook}): {state} in {self.elapsed_s:.1f} s; {parts}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``exit_code`` included)."""
        return {
            "operation": self.operation,
            "playbook": self.playbook,
            "status": self.status,
            "rc": self.rc,
            "exit_code": int(self.exit_code),
            "canceled": self.canceled,
            "elapsed_s": round(self.elapsed_s, 3),
            "errors": self.errors,
            "no_hosts_matched": self.no_hosts_matched,
            "stats_data": self.stats_data,
            "artifact_dir": self.artifact_dir,
            "hosts": {name: h.to_dict() for name, h in self.hosts.items()},
        }

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as JSON (values JSON cannot hold are written as strings)."""
        return json.dumps(self.to_dict(), indent=indent, default=str)


_STATS_FIELDS = {
    "ok": "ok",
    "changed": "changed",
    "failures": "failed",
    "dark": "unreachable",
    "skipped": "skipped",
    "rescued": "rescued",
    "ignored": "ignored",
}


class RunCollector:
    """Folds one run's events into per-host results.

    Feed it every typed event (:meth:`add`) and every raw runner event (:meth:`add_raw`, for the
    recap and the errors that belong to no host); :meth:`result` builds the :class:`RunResult`.
    Counts come from Ansible's recap when the run reached it, else from the results seen.
    """

    def __init__(self) -> None:
        self.hosts: dict[str, HostResult] = {}
        self.errors: list[str] = []
        self.stats_seen = False
        self.stats_data: dict[str, Any] = {}
        self.no_hosts_matched = False
        self.stop_requested = False
        self.stopped = False
        self.plays = 0

    def host(self, name: str) -> HostResult:
        """The host's result so far (created on first use)."""
        if name not in self.hosts:
            self.hosts[name] = HostResult(name=name)
        return self.hosts[name]

    def add(self, event: FleetEvent) -> None:
        """Account for one typed event."""
        if isinstance(event, HostTaskStarted):
            self.host(event.host).last_task = _task_label(event.role, event.task)
        elif isinstance(event, HostTaskResult):
            self._add_result(event)
        elif isinstance(event, StopRequested):
            self.stop_requested = True
        elif isinstance(event, AnsibleWarning) and event.message.startswith(STOP_ACKNOWLEDGED):
            self.stopped = True
        elif isinstance(event, PlayStarted):
            self.plays += 1

    def _add_result(self, ev: HostTaskResult) -> None:
        host = self.host(ev.host)
        if ev.facts:
            host.facts.update(ev.facts)
        if ev.item is not None:
            return  # the task's own result follows; count that one
        if self.stats_seen:
            return
        if ev.status is TaskStatus.UNREACHABLE:
            host.unreachable += 1
        elif ev.status is TaskStatus.FAILED:
            if ev.ignored:
                host.ignored += 1
            else:
                host.failed += 1
        elif ev.status is TaskStatus.SKIPPED:
            host.skipped += 1
        else:
            host.ok += 1
            if ev.status is TaskStatus.CHANGED:
                host.changed += 1
        if ev.is_failure and host.failed_task is None:
            host.failed_task = _task_label(ev.role, ev.task)
            host.message = ev.message

    def add_raw(self, raw: RawEvent) -> None:
        """Account for a raw runner event: the recap, ``set_stats`` data, host-less errors."""
        name = raw.get("event")
        data = raw.get("event_data") or {}
        if name == "playbook_on_stats":
            self.stats_seen = True
            for key, attr in _STATS_FIELDS.items():
                for host, count in (data.get(key) or {}).items():
                    setattr(self.host(host), attr, int(count))
            for host in data.get("processed") or {}:
                self.host(host)
            artifact = data.get("artifact_data")
            if isinstance(artifact, Mapping):
                self.stats_data = dict(artifact)
        elif name == "playbook_on_no_hosts_matched":
            self.no_hosts_matched = True
        elif name in ("error", "verbose"):
            text = strip_ansi(str(raw.get("stdout") or "")).strip()
            if text.startswith(("[ERROR]", "ERROR!")):
                error = text.removeprefix("[ERROR]:").removeprefix("ERROR!").strip()
                self.errors.append(error)
                if "leaves us with no hosts to target" in error:
                    self.no_hosts_matched = True

    def result(
        self,
        *,
        operation: str,
        playbook: str,
        status: str,
        rc: int,
        elapsed_s: float,
        artifact_dir: str | None = None,
    ) -> RunResult:
        """The run's :class:`RunResult`."""
        canceled = status == "canceled" or self.stopped
        return RunResult(
            operation=operation,
            playbook=playbook,
            status="canceled" if canceled else status,
            rc=rc,
            hosts=dict(self.hosts),
            canceled=canceled,
            elapsed_s=elapsed_s,
            errors=list(self.errors),
            no_hosts_matched=self.no_hosts_matched and not self.hosts,
            stats_data=self.stats_data,
            artifact_dir=artifact_dir,
        )


def _task_label(role: str | None, task: str) -> str:
    return f"{role} : {task}" if role else task
