"""The fleet API: run the project's playbooks through ansible-runner and return typed results.

Example::

    from sparkfleet import Fleet

    fleet = Fleet("inventory/spark", extravars={"vllm_api_key": key})
    result = fleet.deploy(limit="spark-01,spark-02", on_event=print)
    for host in result.hosts.values():
        print(host.name, host.status, host.health.endpoint if host.health else host.message)

Each operation runs one playbook of the project (table :data:`OPERATIONS`); nothing the
playbooks do is re-implemented here. A run happens in a private directory of its own (a new
temporary one, removed afterwards unless ``artifacts_dir`` keeps ansible-runner's artifacts), so
the project tree is never written to. Inline inventories and extra variables are written there
as 0600 files and passed with ``-i`` / ``-e @file``, never on the command line.

Stopping a run (``cancel=``, or SIGINT/SIGTERM with ``handle_signals=True``) is graceful first:
no new task starts, the task in flight finishes on every host and the handlers it notified run
(the ``sparkfleet_linear`` strategy, see :mod:`sparkfleet.ansible_plugins`), so a host is never
left between a changed configuration and its restart. After ``cancel_grace_s`` seconds, or on a
second request, ansible-runner kills the run (as its own cancel does).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, TypeAlias

import ansible_runner

from sparkfleet.errors import FleetError
from sparkfleet.events import (
    DEFAULT_PROGRESS_PARSERS,
    EventCallback,
    FleetEvent,
    ProgressParser,
    RawEvent,
    RunStatusChanged,
    StopRequested,
    parse_event,
)
from sparkfleet.inventory import InventorySource, normalize, write_inline
from sparkfleet.progress import ProgressPoller
from sparkfleet.project import Project
from sparkfleet.result import RunCollector, RunResult

STRATEGY_DIR = Path(__file__).resolve().parent / "ansible_plugins" / "strategy"
STRATEGY_NAME = "sparkfleet_linear"
KILLED_RC = 254
"""``rc`` of a run that was killed (as ansible-runner reports its own cancel)."""
PathArg: TypeAlias = str | os.PathLike[str]
Limit: TypeAlias = str | Sequence[str]


@dataclass(frozen=True)
class Operation:
    """One fleet operation: the playbook it runs, with which tags and extra variables."""

    name: str
    playbook: str
    tags: tuple[str, ...] = ()
    extravars: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation("deploy", "site.yml", (), description="every role, bare to serving"),
        Operation("preflight", "site.yml", ("preflight",), description="check, change nothing"),
        Operation("fetch_model", "site.yml", ("model",), description="fetch, verify the model"),
        Operation("health", "site.yml", ("health",), description="check the endpoints"),
        Operation("benchmark", "benchmark.yml", description="measure the endpoints"),
        Operation("restart", "rolling_restart.yml", description="restart vLLM, one host at a time"),
        Operation("uninstall", "uninstall.yml", description="remove the service (the model stays)"),
        Operation("status", "status.yml", description="report each host's state"),
    )
}  # fmt: skip
"""Operations by name. ``restart(rolling=False)`` passes ``vllm_rolling_batch: "100%"``."""


class CancelToken:
    """A thread-safe stop request for a run (pass it as ``cancel=``).

    :meth:`stop` lets the tasks in flight finish and starts no new one; :meth:`kill` ends the
    run now (ansible-runner's cancel: the ansible-playbook process group is killed).
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._kill = threading.Event()

    def stop(self) -> None:
        """Ask for a graceful stop."""
        self._stop.set()

    def kill(self) -> None:
        """Ask for an immediate stop."""
        self._stop.set()
        self._kill.set()

    @property
    def stop_requested(self) -> bool:
        """True once :meth:`stop` or :meth:`kill` was called."""
        return self._stop.is_set()

    @property
    def kill_requested(self) -> bool:
        """True once :meth:`kill` was called."""
        return self._kill.is_set()


Cancel: TypeAlias = CancelToken | threading.Event | Callable[[], bool]
"""A stop request: a :class:`CancelToken`, a :class:`threading.Event` (set = stop) or a callable
polled about twice a second (True = stop)."""


class _Control:
    """Polled by ansible-runner (``cancel_callback``, about twice a second): turns stop requests
    into the stop file, then into a kill.

    A kill first sends SIGTERM to ansible-playbook, whose handler passes it on to its workers
    (each runs in a session of its own, out of reach of a signal to the process group) and ends
    the run; if it still runs ``term_grace_s`` later, ansible-runner kills its process group.
    """

    def __init__(
        self,
        cancel: Cancel | None,
        token: CancelToken,
        stop_file: Path | None,
        grace_s: float | None,
        emit: Callable[[FleetEvent], None],
        term_grace_s: float = 10.0,
    ) -> None:
        self.cancel = cancel
        self.token = token
        self.stop_file = stop_file
        self.grace_s = grace_s
        self.emit = emit
        self.term_grace_s = term_grace_s
        self.pid: int | None = None
        self.stop_at: float | None = None
        self.term_at: float | None = None
        self.killed = False

    def _poll_external(self) -> None:
        cancel = self.cancel
        if cancel is None:
            return
        if isinstance(cancel, CancelToken):
            if cancel.kill_requested:
                self.token.kill()
            elif cancel.stop_requested:
                self.token.stop()
        elif isinstance(cancel, threading.Event):
            if cancel.is_set():
                self.token.stop()
        elif cancel():
            self.token.stop()

    def __call__(self) -> bool:
        if self.killed:
            return True
        self._poll_external()
        if not self.token.stop_requested:
            return False
        now = time.monotonic()
        if self.stop_at is None:
            self.stop_at = now
            if self.stop_file is not None and not self.token.kill_requested:
                self.stop_file.touch()
                self.emit(StopRequested(force=False))
        overdue = self.grace_s is not None and now - self.stop_at >= self.grace_s
        if self.term_at is None and (
            self.stop_file is None or self.token.kill_requested or overdue
        ):
            self.term_at = now
            self.emit(StopRequested(force=True))
            if self.pid is not None:
                try:
                    os.kill(self.pid, signal.SIGTERM)
                    return False
                except ProcessLookupError:
                    pass
            self.killed = True
        elif self.term_at is not None and now - self.term_at >= self.term_grace_s:
            self.killed = True
        return self.killed

    @property
    def forced(self) -> bool:
        """True once a kill was sent."""
        return self.term_at is not None


@contextmanager
def _signals_stop(token: CancelToken, enabled: bool) -> Iterator[None]:
    """While active, SIGINT/SIGTERM ask for a graceful stop, a second one for a kill."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if token.stop_requested:
            token.kill()
        else:
            token.stop()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)


def _write_private(path: Path, text: str) -> None:
    """Write a 0600 file (in a 0700 directory)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def _join_limit(limit: Limit | None) -> str | None:
    if limit is None:
        return None
    if isinstance(limit, str):
        return limit or None
    return ",".join(limit) or None


def _join_tags(tags: Sequence[str] | str | None) -> str | None:
    if tags is None:
        return None
    if isinstance(tags, str):
        return tags or None
    return ",".join(tags) or None


class Fleet:
    """A fleet of DGX Spark hosts and the operations the project's playbooks perform on it.

    Args:
        inventory: an inventory path, a host list or a dict (see :mod:`sparkfleet.inventory`).
        extravars: extra variables for every run (``-e``); a run's own ``extravars`` win.
        project_dir: the project (ansible.cfg, playbooks/, roles/); default: the installed one.
        forks: parallel hosts (default: ansible.cfg's ``forks``).
        vault_password_file: file (or executable script) giving the vault password.
        artifacts_dir: keep ansible-runner's artifacts (stdout, job events, command) under this
            directory, one subdirectory per run; by default nothing is kept.
        event_log: append every raw ansible-runner event to this JSON-lines file.
        on_event: default callback for the typed progress events of every run.
        cancel_grace_s: after a graceful stop request, kill the run if it has not ended after this
            many seconds (None: wait for the task in flight, however long).
        graceful_stop: use the ``sparkfleet_linear`` strategy so a stop lets tasks finish; when
            False (or a strategy is chosen by ANSIBLE_STRATEGY or ansible.cfg), a stop kills
            the run at once.
        progress_parsers: extra functions that read download progress from raw events.
        envvars: extra environment variables for ansible-playbook.
        verbosity: ansible-playbook's ``-v`` count (0-4).
    """

    def __init__(
        self,
        inventory: InventorySource,
        *,
        extravars: Mapping[str, Any] | None = None,
        project_dir: PathArg | None = None,
        forks: int | None = None,
        vault_password_file: PathArg | None = None,
        artifacts_dir: PathArg | None = None,
        event_log: PathArg | None = None,
        on_event: EventCallback | None = None,
        cancel_grace_s: float | None = 120.0,
        graceful_stop: bool = True,
        progress_parsers: Sequence[ProgressParser] = (),
        envvars: Mapping[str, str] | None = None,
        verbosity: int = 0,
    ) -> None:
        self.project = Project.find(project_dir)
        self.inventory = normalize(inventory)
        self.extravars: dict[str, Any] = dict(extravars or {})
        self.forks = forks
        self.vault_password_file = vault_password_file
        self.artifacts_dir = Path(artifacts_dir).resolve() if artifacts_dir else None
        self.event_log = Path(event_log) if event_log else None
        self.on_event = on_event
        self.cancel_grace_s = cancel_grace_s
        self.graceful_stop = graceful_stop
        self.progress_parsers: tuple[ProgressParser, ...] = (
            *DEFAULT_PROGRESS_PARSERS,
            *progress_parsers,
        )
        self.envvars = dict(envvars or {})
        self.verbosity = verbosity
        if forks is not None and forks < 1:
            raise FleetError(f"forks={forks}: must be at least 1")
        if vault_password_file is not None and not Path(vault_password_file).is_file():
            raise FleetError(f"vault password file {vault_password_file} does not exist")

    # -- operations -------------------------------------------------------------------------

    def deploy(
        self,
        *,
        limit: Limit | None = None,
        tags: Sequence[str] | None = None,
        skip_tags: Sequence[str] | None = None,
        extravars: Mapping[str, Any] | None = None,
        forks: int | None = None,
        vault_password_file: PathArg | None = None,
        check: bool = False,
        diff: bool = False,
        on_event: EventCallback | None = None,
        cancel: Cancel | None = None,
        handle_signals: bool = False,
    ) -> RunResult:
        """Take the hosts from bare to serving, health-checked (``site.yml``, every role).

        ``tags`` narrows it to some roles (preflight, toolkit, model, service, health). The other
        arguments are those of :meth:`run`.
        """
        return self._op("deploy", locals())

    def preflight(
        self,
        *,
        limit: Limit | None = None,
        tags: Sequence[str] | None = None,
        skip_tags: Sequence[str] | None = None,
        extravars: Mapping[str, Any] | None = None,
        forks: int | None = None,
        vault_password_file: PathArg | None = None,
        check: bool = False,
        diff: bool = False,
        on_event: EventCallback | None = None,
        cancel: Cancel | None = None,
        handle_signals: bool = False,
    ) -> RunResult:
        """Check each host and report it (``site.yml --tags preflight``); changes nothing.

        Each host's report is ``result.hosts[name].preflight_report``.
        """
        return self._op("preflight", locals())

    def fetch_model(
        self,
        *,
        limit: Limit | None = None,
        tags: Sequence[str] | None = None,
        skip_tags: Sequence[str] | None = None,
        extravars: Mapping[str, Any] | None = None,
        forks: int | None = None,
        vault_password_file: PathArg | None = None,
        check: bool = False,
        diff: bool = False,
        on_event: EventCallback | None = None,
        cancel: Cancel | None = None,
        handle_signals: bool = False,
    ) -> RunResult:
        """Fetch and verify the model (``site.yml --tags model``).

        Progress arrives as :class:`~sparkfleet.events.DownloadProgress` events; each host's
        manifest is ``result.hosts[name].model_manifest``.
        """
        return self._op("fetch_model", locals())

    def health(
        self,
        *,
        limit: Limit | None = None,
        tags: Sequence[str] | None = None,
        skip_tags: Sequence[str] | None = None,
        extravars: Mapping[str, Any] | None = None,
        forks: int | None = None,
        vault_password_file: PathArg | None = None,
        check: bool = False,
        diff: bool = False,
        on_event: EventCallback | None = None,
        cancel: Cancel | None = None,
        handle_signals: bool = False,
    ) -> RunResult:
        """Check each endpoint: /health, /v1/models, one chat completion (``--tags health``).

        Each host's result is ``result.hosts[name].health`` (:class:`~sparkfleet.HealthResult`).
        """
        return self._op("health", locals())

    def benchmark(
        self,
        *,
        limit: Limit | None = None,
        tags: Sequence[str] | None = None,
        skip_tags: Sequence[str] | None = None,
        extravars: Mapping[str, Any] | None = None,
        forks: int | None = None,
        vault_password_file: PathArg | None = None,
        check: bool = False,
        diff: bool = False,
        on_event: EventCallback | None = None,
        cancel: Cancel | None = None,
        handle_signals: bool = False,
    ) -> RunResult:
        """Measure each endpoint (``benchmark.yml``); numbers in ``hosts[name].benchmark``."""
        return self._op("benchmark", locals())

    def restart(
        self,
        *,
        rolling: bool = True,
        limit: Limit | None = None,
        tags: Sequence[str] | None = None,
        skip_tags: Sequence[str] | None = None,
        extravars: Mapping[str, Any] | None = None,
        forks: int | None = None,
        vault_password_file: PathArg | None = None,
        check: bool = False,
        diff: bool = False,
        on_event: EventCallback | None = None,
        cancel: Cancel | None = None,
        handle_signals: bool = False,
    ) -> RunResult:
        """Restart the service (``rolling_restart.yml``): one host at a time, each healthy again
        before the next, or with ``rolling=False`` all at once (``vllm_rolling_batch: 100%``).
        """
        args = dict(locals())
        args.pop("rolling")
        if not rolling:
            args["extravars"] = {"vllm_rolling_batch": "100%", **(extravars or {})}
        return self._op("restart", args)

    def uninstall(
        self,
        *,
        limit: Limit | None = None,
        tags: Sequence[str] | None = None,
        skip_tags: Sequence[str] | None = None,
        extravars: Mapping[str, Any] | None = None,
        forks: int | None = None,
        vault_password_file: PathArg | None = None,
        check: bool = False,
        diff: bool = False,
        on_event: EventCallback | None = None,
        cancel: Cancel | None = None,
        handle_signals: bool = False,
    ) -> RunResult:
        """Stop and remove the service from the hosts (``uninstall.yml``)."""
        return self._op("uninstall", locals())

    def status(
        self,
        *,
        limit: Limit | None = None,
        tags: Sequence[str] | None = None,
        skip_tags: Sequence[str] | None = None,
        extravars: Mapping[str, Any] | None = None,
        forks: int | None = None,
        vault_password_file: PathArg | None = None,
        check: bool = False,
        diff: bool = False,
        on_event: EventCallback | None = None,
        cancel: Cancel | None = None,
        handle_signals: bool = False,
    ) -> RunResult:
        """Report each host's state (``status.yml``); its facts are in ``hosts[name].facts``."""
        return self._op("status", locals())

    def _op(self, name: str, args: Mapping[str, Any]) -> RunResult:
        kwargs = {k: v for k, v in args.items() if k != "self"}
        op = OPERATIONS[name]
        if kwargs.get("tags") is None and op.tags:
            kwargs["tags"] = op.tags
        if op.extravars:
            kwargs["extravars"] = {**op.extravars, **(kwargs.get("extravars") or {})}
        playbook = self.project.playbook(op.playbook, needed_by=f"{name}()")
        return self.run(playbook, operation=name, **kwargs)

    # -- the run ----------------------------------------------------------------------------

    def run(
        self,
        playbook: PathArg,
        *,
        operation: str | None = None,
        limit: Limit | None = None,
        tags: Sequence[str] | str | None = None,
        skip_tags: Sequence[str] | str | None = None,
        extravars: Mapping[str, Any] | None = None,
        forks: int | None = None,
        vault_password_file: PathArg | None = None,
        check: bool = False,
        diff: bool = False,
        on_event: EventCallback | None = None,
        cancel: Cancel | None = None,
        handle_signals: bool = False,
    ) -> RunResult:
        """Run one playbook (a name in ``playbooks/`` or a path) and return its result.

        Args:
            playbook: ``"site.yml"`` or a path to any playbook.
            operation: name recorded in the result (default: the playbook's stem).
            limit: host pattern(s) to run on (``--limit``).
            tags / skip_tags: ``--tags`` / ``--skip-tags``.
            extravars: extra variables for this run (over the fleet's).
            forks / vault_password_file: override the fleet's.
            check / diff: ``--check`` / ``--diff``.
            on_event: callback for this run's typed events (instead of the fleet's).
            cancel: a stop request (:class:`CancelToken`, Event or callable).
            handle_signals: SIGINT/SIGTERM stop the run gracefully, a second one kills it
                (main thread only); the previous handlers are restored afterwards.

        Raises:
            PlaybookNotFoundError: the playbook does not exist.
            FleetError: bad arguments.
            Exception: whatever ``on_event`` raised (the run is killed first).
        """
        path = self.project.playbook(playbook)
        op_name = operation or path.stem
        forks = forks if forks is not None else self.forks
        if forks is not None and forks < 1:
            raise FleetError(f"forks={forks}: must be at least 1")
        vault = vault_password_file if vault_password_file is not None else self.vault_password_file
        if vault is not None and not Path(vault).is_file():
            raise FleetError(f"vault password file {vault} does not exist")
        callback = on_event if on_event is not None else self.on_event
        merged_vars = {**self.extravars, **(extravars or {})}

        token = CancelToken()
        collector = RunCollector()
        callback_error: list[BaseException] = []

        def emit(event: FleetEvent) -> None:
            collector.add(event)
            if callback is None or callback_error:
                return
            try:
                callback(event)
            except Exception as exc:  # the run must not go on unobserved
                callback_error.append(exc)
                token.kill()

        private = Path(tempfile.mkdtemp(prefix=f"sparkfleet-{op_name}-"))
        # hf_model mirrors each host's download progress here; polled while the run goes on
        (private / "progress").mkdir()
        merged_vars.setdefault("hf_model_progress_dir", str(private / "progress"))
        poller = ProgressPoller(Path(str(merged_vars["hf_model_progress_dir"])).expanduser(), emit)
        log: IO[str] | None = None
        try:
            inventory: str = (
                self.inventory
                if isinstance(self.inventory, str)
                else str(write_inline(self.inventory, private / "inventory"))
            )
            env = self._environment(private)
            graceful = "ANSIBLE_STRATEGY" in env and env["ANSIBLE_STRATEGY"] == STRATEGY_NAME
            control = _Control(
                cancel,
                token,
                Path(env["SPARKFLEET_STOP_FILE"]) if graceful else None,
                self.cancel_grace_s,
                emit,
            )
            cmdline: list[str] = []
            if vault is not None:
                cmdline += ["--vault-password-file", str(Path(vault).resolve())]
            if check:
                cmdline.append("--check")
            if diff:
                cmdline.append("--diff")
            if merged_vars:
                _write_private(private / "env" / "extravars", json.dumps(merged_vars, default=str))
            keep = self.artifacts_dir is not None
            if self.event_log is not None:
                self.event_log.parent.mkdir(parents=True, exist_ok=True)
                log = self.event_log.open("a", encoding="utf-8")

            def on_raw(raw: RawEvent) -> bool:
                if control.pid is None and isinstance(raw.get("pid"), int):
                    control.pid = raw["pid"]  # ansible-playbook's own process
                if log is not None:
                    log.write(json.dumps(raw, default=str) + "\n")
                collector.add_raw(raw)
                for event in parse_event(raw, self.progress_parsers):
                    emit(event)
                return keep

            def on_tick() -> bool:
                poller.poll()
                return bool(control())

            def on_status(data: Mapping[str, Any], runner_config: Any = None) -> None:
                emit(RunStatusChanged(status=str(data.get("status", ""))))

            ident = f"{time.strftime('%Y%m%dT%H%M%S')}-{op_name}-{os.getpid()}"
            started = time.monotonic()
            with _signals_stop(token, handle_signals):
                runner = ansible_runner.run(
                    private_data_dir=str(private),
                    project_dir=str(path.parent),
                    playbook=path.name,
                    inventory=inventory,
                    limit=_join_limit(limit),
                    tags=_join_tags(tags),
                    skip_tags=_join_tags(skip_tags),
                    forks=forks,
                    verbosity=self.verbosity or None,
                    cmdline=shlex.join(cmdline) if cmdline else None,
                    envvars=env,
                    settings={"pexpect_timeout": 0.5, "suppress_ansible_output": True},
                    quiet=True,
                    ident=ident,
                    artifact_dir=str(self.artifacts_dir) if keep else None,
                    event_handler=on_raw,
                    cancel_callback=on_tick,
                    status_handler=on_status,
                )
            elapsed = time.monotonic() - started
            poller.poll(force=True)
        finally:
            if log is not None:
                log.close()
            shutil.rmtree(private, ignore_errors=True)
        if callback_error:
            raise callback_error[0]
        rc = runner.rc
        if control.forced or rc is None:
            rc = KILLED_RC
        return collector.result(
            operation=op_name,
            playbook=str(path.relative_to(self.project.root))
            if path.is_relative_to(self.project.root)
            else str(path),
            status="canceled" if control.forced else str(runner.status),
            rc=int(rc),
            elapsed_s=elapsed,
            artifact_dir=str(self.artifacts_dir / ident) if self.artifacts_dir else None,
        )

    def _environment(self, private: Path) -> dict[str, str]:
        """ansible-playbook's extra environment for one run."""
        env = self.project.ansible_env()
        bindir = Path(sys.executable).parent
        if (bindir / "ansible-playbook").exists():
            env["PATH"] = os.pathsep.join([str(bindir), os.environ.get("PATH", os.defpath)])
        chosen = "ANSIBLE_STRATEGY" in os.environ or self.project.configured_strategy()
        if self.graceful_stop and not chosen:
            plugins = [str(STRATEGY_DIR)]
            if os.environ.get("ANSIBLE_STRATEGY_PLUGINS"):
                plugins.append(os.environ["ANSIBLE_STRATEGY_PLUGINS"])
            env["ANSIBLE_STRATEGY_PLUGINS"] = os.pathsep.join(plugins)
            env["ANSIBLE_STRATEGY"] = STRATEGY_NAME
            env["SPARKFLEET_STOP_FILE"] = str(private / "stop")
        env.update(self.envvars)
        return env
