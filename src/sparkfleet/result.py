"""Results of a run: per host counts, the failing task and its message, and the roles' facts.

:class:`RunCollector` folds the typed events of one run and ansible-runner's ``Runner.stats`` (the
recap) into a :class:`RunResult`. The facts the roles publish with ``set_fact`` are kept per host,
as the task results carried them (ansible-runner's ``Runner.get_fact_cache`` cannot read
ansible-core 2.19's fact cache: ansible/ansible-runner#1441); the known ones have typed
accessors on :class:`HostResult`:

=====================  ================================  =========================
accessor               fact                              set by
=====================  ================================  =========================
``preflight_report``   ``spark_preflight_report``        ``spark_preflight``
``model_manifest``     ``hf_model_manifest``             ``hf_model``
``health``             ``vllm_health_result``            ``vllm_health``
``benchmark``          ``llm_benchmark_result``         ``benchmark.yml``
``status_report``      ``fleet_status_report``           ``fleet_status``
``gateway_status``     ``fleet_gateway_status``          ``fleet_gateway`` (status)
``gateway``            ``fleet_gateway_result``          ``fleet_gateway`` (check)
=====================  ================================  =========================
"""

from __future__ import annotations

import dataclasses
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
STATUS_FACT = "fleet_status_report"
GATEWAY_STATUS_FACT = "fleet_gateway_status"
GATEWAY_FACT = "fleet_gateway_result"


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
    NOT_SERVING = 4
    """``status`` only: every host was read, and at least one does not serve (its unit is not
    active, its container does not run, or ``/metrics`` did not answer; a gateway whose
    statistics page did not answer)."""
    INTERRUPTED = 130
    """The run was stopped (Ctrl-C, SIGTERM or a cancel request) before it finished."""


def _num(value: Any, kind: type[int] | type[float]) -> Any:
    """``value`` as an int or float (facts may hold numbers as strings), None if it is none."""
    try:
        return None if value in (None, "", "None") else kind(value)
    except (TypeError, ValueError):
        return None


def _str(value: Any) -> str | None:
    return None if value in (None, "", "None") else str(value)


@dataclass(frozen=True)
class HealthResult:
    """What the ``vllm_health`` role found on one host (fact ``vllm_health_result``).

    ``client_endpoint`` is the OpenAI-compatible base URL a client on the controller reaches
    (``http://ANSIBLE_HOST:PORT/v1``, role variable ``vllm_health_client_url``); ``endpoint`` is
    the one the check used on the host itself (its loopback). ``chat_seconds`` is the chat
    completion's latency in seconds.
    """

    endpoint: str
    client_endpoint: str | None
    model: str
    healthy: bool
    chat_seconds: float | None
    completion_tokens: int | None
    answer: str
    checked: bool = True
    served_by: str | None = None
    """A pair's worker (no API of its own): the head that serves the pair and where it is
    checked; None for a head or a single host."""

    @classmethod
    def from_fact(cls, fact: Mapping[str, Any]) -> HealthResult:
        """Build from the fact's dict (values may come as strings from templating). A fact with
        ``checked: false`` (a check-mode run, which sends no request) has ``checked`` False and
        ``healthy`` False: nothing was asked of the endpoint."""
        healthy = fact.get("healthy")
        checked = fact.get("checked", True)
        return cls(
            checked=not (checked is False or str(checked).lower() == "false"),
            endpoint=str(fact.get("endpoint", "")),
            client_endpoint=_str(fact.get("client_endpoint")),
            model=str(fact.get("model", "")),
            healthy=healthy is True or str(healthy).lower() == "true",
            chat_seconds=_num(fact.get("chat_seconds"), float),
            completion_tokens=_num(fact.get("completion_tokens"), int),
            answer=str(fact.get("answer", "")),
            served_by=_str(fact.get("served_by")),
        )


@dataclass(frozen=True)
class StatusResult:
    """One host's serving state, as the ``fleet_status`` role read it (fact
    ``fleet_status_report``; module ``sparkfleet.spark.vllm_status``).

    Attributes:
        unit: systemd's ``ActiveState/SubState`` of the unit, e.g. ``active/running``.
        restarts: the unit's ``NRestarts``, None when unknown.
        container_running: whether the container runs.
        image: the container's image reference; ``digest`` its repo digest (``sha256:...``).
        model_commit: the model's commit (40 hex digits) from its manifest, None without one.
        uptime_s: seconds since the container started, None when it does not run.
        endpoint: the base URL a client on the controller reaches (``.../v1``), if reported.
        requests_running / requests_waiting: requests in vLLM now.
        kv_cache_usage: KV-cache use as a fraction in [0, 1].
        prompt_tokens / generation_tokens: tokens processed since the server started.
        ttft_mean_s: mean time to first token since the server started, in seconds.
        metrics_error: why ``/metrics`` could not be read (None when it was, and on a pair's
            worker, which has no API).
        pair_role: ``head`` or ``worker`` for a member of a pair of Sparks, None for a single
            host; ``pair_head`` the pair's head (inventory name).
        ray_members: a pair's members as its Ray cluster has them, ``[{name, role, address,
            node_id, alive, gpus}]`` (empty when the cluster could not be read: ``ray_error``);
            ``ray_problems`` what is wrong with it, a sentence each naming the host.
    """

    unit: str
    restarts: int | None
    container_running: bool
    image: str | None
    digest: str | None
    model_commit: str | None
    uptime_s: int | None
    endpoint: str | None
    requests_running: int | None
    requests_waiting: int | None
    kv_cache_usage: float | None
    prompt_tokens: int | None
    generation_tokens: int | None
    ttft_mean_s: float | None
    metrics_error: str | None
    pair_role: str | None = None
    pair_head: str | None = None
    ray_members: tuple[dict[str, Any], ...] = ()
    ray_problems: tuple[str, ...] = ()
    ray_error: str | None = None

    @property
    def serving(self) -> bool:
        """The unit is active, its container runs and ``/metrics`` answered; for a pair's
        member, its Ray cluster also has both members' nodes alive with a GPU each (a pair's
        worker has no API: its Ray node in the head's cluster stands for ``/metrics``)."""
        pair_ok = self.pair_role is None or (self.ray_error is None and not self.ray_problems)
        return (self.unit.startswith("active/") and self.container_running
                and self.metrics_error is None and pair_ok)  # fmt: skip

    @classmethod
    def from_fact(cls, fact: Mapping[str, Any]) -> StatusResult:
        """Build from the fact's dict."""
        unit = fact.get("unit") or {}
        container = fact.get("container") or {}
        model = fact.get("model") or {}
        metrics = fact.get("metrics") or {}
        digests = container.get("digests") or []
        digest = str(digests[0]).rpartition("@")[2] if digests else None
        pair = fact.get("pair") or {}
        return cls(
            unit=f"{unit.get('active', 'unknown')}/{unit.get('sub', 'unknown')}",
            restarts=_num(unit.get("restarts"), int),
            container_running=container.get("running") is True,
            image=_str(container.get("image")),
            digest=digest or None,
            model_commit=_str(model.get("commit")),
            uptime_s=_num(container.get("uptime_s"), int),
            endpoint=_str(fact.get("endpoint")),
            requests_running=_num(metrics.get("requests_running"), int),
            requests_waiting=_num(metrics.get("requests_waiting"), int),
            kv_cache_usage=_num(metrics.get("kv_cache_usage_perc"), float),
            prompt_tokens=_num(metrics.get("prompt_tokens"), int),
            generation_tokens=_num(metrics.get("generation_tokens"), int),
            ttft_mean_s=_num(metrics.get("ttft_mean_s"), float),
            metrics_error=_str(fact.get("metrics_error")),
            pair_role=_str(pair.get("role")),
            pair_head=_str(pair.get("head")),
            ray_members=tuple(dict(m) for m in pair.get("members") or () if isinstance(m, Mapping)),
            ray_problems=tuple(str(p) for p in pair.get("problems") or ()),
            ray_error=_str(pair.get("error")),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the fields, and ``serving``)."""
        return {**dataclasses.asdict(self), "serving": self.serving}


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
    def status_report(self) -> StatusResult | None:
        """The ``fleet_status`` report (unit, image, model, live figures), if it ran."""
        fact = self._fact_dict(STATUS_FACT)
        return StatusResult.from_fact(fact) if fact is not None else None

    @property
    def gateway_status(self) -> dict[str, Any] | None:
        """A gateway's view of the fleet (``status.yml`` on a host of group ``gateway``):
        ``endpoint``, ``error`` (why its statistics could not be read, else ""), ``backends``:
        ``[{host, state, in_flight, served}]`` with HAProxy's state (UP, DOWN, MAINT while a
        rolling restart drains the host, ...), requests in flight and served since its start."""
        return self._fact_dict(GATEWAY_STATUS_FACT)

    @property
    def gateway(self) -> dict[str, Any] | None:
        """A gateway's check (``site.yml``, also ``--tags health``): ``endpoint``, ``healthy``,
        ``models`` it serves and its ``backends``, if it ran."""
        return self._fact_dict(GATEWAY_FACT)

    @property
    def endpoint(self) -> str | None:
        """The OpenAI-compatible base URL a client on the controller reaches, as the health
        check, the status report or a gateway's check gave it (None when none ran)."""
        health = self.health
        if health is not None and health.client_endpoint:
            return health.client_endpoint
        status = self.status_report
        if status is not None:
            return status.endpoint
        gateway = self.gateway or self.gateway_status
        return str(gateway["endpoint"]) if gateway and gateway.get("endpoint") else None

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
            "endpoint": self.endpoint,
            "status_report": report.to_dict() if (report := self.status_report) else None,
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
        """True when :attr:`exit_code` is OK: the run finished, every host succeeded and, for
        ``status``, every host serves."""
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
    def not_serving_hosts(self) -> list[str]:
        """Hosts whose serving state was read (``status``) and that do not serve: a Spark whose
        report says so, a gateway whose statistics could not be read (its HAProxy stopped), or a
        Spark a gateway does not send requests to (in maintenance, e.g. left drained by a stopped
        roll, or down: a state other than HAProxy's ``UP``, ``UP 1/2`` included); each once."""
        found = [h.name for h in self.hosts.values()
                 if ((report := h.status_report) is not None and not report.serving)
                 or ((view := h.gateway_status) is not None and view.get("error"))]  # fmt: skip
        for host in self.hosts.values():
            for backend in (host.gateway_status or {}).get("backends") or []:
                name = str(backend.get("host", ""))
                if not str(backend.get("state", "")).startswith("UP") and name not in found:
                    found.append(name)
        return found

    @property
    def exit_code(self) -> ExitCode:
        """0 all ok, 1 failed hosts (or an unfinished run), 2 unreachable hosts, 3 bad input,
        4 a host read by ``status`` does not serve, 130 stopped."""
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
        if self.not_serving_hosts:
            return ExitCode.NOT_SERVING
        return ExitCode.OK

    def host_state(self, host: HostResult) -> str:
        """``host``'s status in this run: ``stopped`` for a host the run's stop left without a
        failure (its play did not finish), else :attr:`HostResult.status`."""
        return "stopped" if self.canceled and host.succeeded else host.status

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
            "not serving": len(self.not_serving_hosts),
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
            "not_serving_hosts": self.not_serving_hosts,
            "stats_data": self.stats_data,
            "artifact_dir": self.artifact_dir,
            "hosts": {
                name: host.to_dict() | {"status": self.host_state(host)}
                for name, host in self.hosts.items()
            },
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

    Feed it every typed event (:meth:`add`), every raw runner event (:meth:`add_raw`, for the
    ``set_stats`` data and the errors that belong to no host) and at the end ansible-runner's
    ``Runner.stats`` (:meth:`set_stats`); :meth:`result` builds the :class:`RunResult`. While the
    run goes on the counts are those of the results seen (what a live view shows); the recap
    replaces them when the run reached it.
    """

    def __init__(self) -> None:
        self.hosts: dict[str, HostResult] = {}
        self.errors: list[str] = []
        self._error_open = False  # the last error may go on in the next verbose events
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

    def set_stats(self, stats: Mapping[str, Any] | None) -> None:
        """Take the counts from ``Runner.stats`` (None when the run never reached its recap)."""
        if stats is None:
            return
        self.stats_seen = True
        for host in stats.get("processed") or {}:
            counts = self.host(host)
            for key, attr in _STATS_FIELDS.items():
                setattr(counts, attr, int((stats.get(key) or {}).get(host, 0)))

    def add_raw(self, raw: RawEvent) -> None:
        """Account for a raw runner event: ``set_stats`` data, host-less errors."""
        name = raw.get("event")
        data = raw.get("event_data") or {}
        if name == "playbook_on_stats":
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
                self._error_open = True
                if "leaves us with no hosts to target" in error:
                    self.no_hosts_matched = True
            elif self._error_open and text and not text.startswith("["):
                # ansible-core 2.19 prints an error's further lines (the file it could not
                # read, the YAML position) as events of their own, up to a blank line
                self.errors[-1] += " " + text
            else:
                self._error_open = False

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
