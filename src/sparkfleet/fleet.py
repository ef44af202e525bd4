"""The fleet API: run the project's playbooks through ansible-runner and return typed results.

Example::

    from sparkfleet import Credentials, Fleet, VaultId

    fleet = Fleet("inventory/spark", credentials=Credentials(vault_ids=(VaultId(source="vpw"),)))
    result = fleet.deploy(limit="spark-01,spark-02", extra_vars_args=["@vault.yml"], on_event=print)
    for host in result.hosts.values():
        print(host.name, host.status, host.endpoint or host.message)

Each operation runs one playbook of the project (table :data:`OPERATIONS`) with the same
options (:class:`~sparkfleet.options.RunOptions`); nothing the playbooks do is re-implemented
here. A run happens in a private directory of its own (a new temporary one, removed afterwards;
``artifacts_dir`` keeps ansible-runner's artifacts elsewhere), so the project tree is never
written to. The inventory, extra variables and prompted passwords are handed to
ansible-runner, which writes them there as 0600 files (``inventory/hosts.json``,
``env/extravars``, ``env/passwords``); the recap comes from ``Runner.stats``.

Stopping a run (``cancel=``, or SIGINT/SIGTERM with ``handle_signals=True``) is ansible-runner's
cancel by default: the run is killed, and since every role converges, running the operation again
finishes the job. ``graceful_stop=True`` lets the tasks in flight finish first, with the handlers
they notified (the ``sparkfleet_linear`` strategy, see :mod:`sparkfleet.ansible_plugins`); it
relies on ansible-core internals, so it is offered only on the releases it is tested on
(:data:`GRACEFUL_STOP_CORE`). After ``cancel_grace_s`` seconds, or on a second request, the run is
killed.
"""

from __future__ import annotations

import importlib.metadata
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
from typing import IO, Any, Unpack

import ansible_runner

from sparkfleet.errors import FleetError
from sparkfleet.events import (
    EventCallback,
    FleetEvent,
    RawEvent,
    RunStatusChanged,
    StopRequested,
    parse_event,
    strip_ansi,
)
from sparkfleet.gateway import endpoint_from, read_inventory
from sparkfleet.inventory import InventorySource, normalize
from sparkfleet.options import (
    Cancel,
    CancelToken,
    Credentials,
    ExecutionEnvironment,
    PathArg,
    RunOptions,
    VaultId,
)
from sparkfleet.progress import ProgressPoller
from sparkfleet.project import Project
from sparkfleet.result import RunCollector, RunResult

STRATEGY_DIR = Path(__file__).resolve().parent / "ansible_plugins" / "strategy"
STRATEGY_NAME = "sparkfleet_linear"
KILLED_RC = 254
"""``rc`` of a run that was killed (as ansible-runner reports its own cancel)."""
GRACEFUL_STOP_CORE = ("2.19",)
"""ansible-core releases (major.minor) the graceful-stop strategy is tested on; it overrides
ansible-core internals, so ``graceful_stop=True`` is refused on any other release."""


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


def _join(value: Sequence[str] | str | None) -> str | None:
    """A ``--limit`` / ``--tags`` value: a comma-separated string, or None when empty."""
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    return ",".join(value) or None


def ansible_core_release() -> str:
    """The installed ansible-core's ``major.minor``."""
    return ".".join(importlib.metadata.version("ansible-core").split(".")[:2])


class Fleet:
    """A fleet of DGX Spark hosts and the operations the project's playbooks perform on it.

    Args:
        inventory: an inventory path, a host list or a dict (see :mod:`sparkfleet.inventory`).
        extravars: extra variables for every run; a run's own ``extravars`` win.
        extra_vars_args: ``-e`` values for every run, as ``ansible-playbook -e`` takes them
            (see :class:`~sparkfleet.options.RunOptions`); a run's own come after them.
        credentials: vault ids and become password for every run (:class:`Credentials`).
        vault_password_file: shorthand for one vault id read from this file (or script).
        project_dir: the project (ansible.cfg, playbooks/, roles/); default: the installed one.
        forks: parallel hosts (default: ansible.cfg's ``forks``).
        timeout_s: default limit, in seconds, on a run's duration (None: none).
        artifacts_dir: keep ansible-runner's artifacts (stdout, job events, command) under this
            directory, one subdirectory per run; by default nothing is kept.
        event_log: append every raw ansible-runner event to this JSON-lines file.
        on_event: default callback for the typed progress events of every run.
        graceful_stop: a stop request lets the tasks in flight and their handlers finish (the
            ``sparkfleet_linear`` strategy; only on :data:`GRACEFUL_STOP_CORE`, not in an
            execution environment, and not when ANSIBLE_STRATEGY or ansible.cfg chooses a
            strategy). Default: a stop kills the run (ansible-runner's cancel).
        cancel_grace_s: with ``graceful_stop``, kill the run if it has not ended this many
            seconds after the stop request (None: wait for the task in flight, however long).
        execution_environment: run ansible-playbook in this container image
            (:class:`ExecutionEnvironment`); the playbooks then run by their FQCN.
        envvars: extra environment variables for ansible-playbook (no secrets: ansible-runner
            records the environment in its ``command`` artifact).
        verbosity: ansible-playbook's ``-v`` count (0-4).

    Raises:
        FleetError: a bad argument (forks < 1, a missing vault password file, a graceful stop
            this ansible-core or this execution mode cannot offer).
        ProjectNotFoundError / InventoryError: no project, or a bad inventory.
    """

    def __init__(
        self,
        inventory: InventorySource,
        *,
        extravars: Mapping[str, Any] | None = None,
        extra_vars_args: Sequence[str] = (),
        credentials: Credentials | None = None,
        vault_password_file: PathArg | None = None,
        project_dir: PathArg | None = None,
        forks: int | None = None,
        timeout_s: int | None = None,
        artifacts_dir: PathArg | None = None,
        event_log: PathArg | None = None,
        on_event: EventCallback | None = None,
        graceful_stop: bool = False,
        cancel_grace_s: float | None = 120.0,
        execution_environment: ExecutionEnvironment | None = None,
        envvars: Mapping[str, str] | None = None,
        verbosity: int = 0,
    ) -> None:
        # In an execution environment the image holds the collection: no project is needed here.
        self.project: Project | None = (
            None
            if execution_environment is not None and project_dir is None
            else Project.find(project_dir)
        )
        self.inventory = normalize(inventory)
        self.extravars: dict[str, Any] = dict(extravars or {})
        self.extra_vars_args: tuple[str, ...] = tuple(extra_vars_args)
        creds = credentials or Credentials()
        if vault_password_file is not None:
            creds = creds + Credentials(vault_ids=(VaultId(source=vault_password_file),))
        self.credentials = creds
        self.forks = forks
        self.timeout_s = timeout_s
        self.artifacts_dir = Path(artifacts_dir).resolve() if artifacts_dir else None
        self.event_log = Path(event_log) if event_log else None
        self.on_event = on_event
        self.graceful_stop = graceful_stop
        self.cancel_grace_s = cancel_grace_s
        self.execution_environment = execution_environment
        self.envvars = dict(envvars or {})
        self.verbosity = verbosity
        _check_forks(forks)
        if graceful_stop:
            if execution_environment is not None:
                raise FleetError("graceful_stop needs ansible-playbook on this machine, not in "
                                 "an execution environment")  # fmt: skip
            release = ansible_core_release()
            if release not in GRACEFUL_STOP_CORE:
                raise FleetError(
                    f"graceful_stop is tested on ansible-core {', '.join(GRACEFUL_STOP_CORE)} "
                    f"only, and ansible-core {release} is installed; stop without it (the "
                    "roles converge when the operation runs again)"
                )

    # -- operations -------------------------------------------------------------------------

    def deploy(self, **options: Unpack[RunOptions]) -> RunResult:
        """Take the hosts from bare to serving, health-checked (``site.yml``, every role);
        ``tags`` narrows it to some roles (preflight, toolkit, model, service, health).

        Takes the options of :class:`~sparkfleet.options.RunOptions`.
        """
        return self.operation("deploy", **options)

    def preflight(self, **options: Unpack[RunOptions]) -> RunResult:
        """Check each host and report it (``site.yml --tags preflight``); changes nothing.
        Each host's report is ``result.hosts[name].preflight_report``.

        Takes the options of :class:`~sparkfleet.options.RunOptions`.
        """
        return self.operation("preflight", **options)

    def fetch_model(self, **options: Unpack[RunOptions]) -> RunResult:
        """Fetch and verify the model (``site.yml --tags model``); progress arrives as
        :class:`~sparkfleet.events.DownloadProgress` events, each host's manifest is
        ``result.hosts[name].model_manifest``.

        Takes the options of :class:`~sparkfleet.options.RunOptions`.
        """
        return self.operation("fetch_model", **options)

    def health(self, **options: Unpack[RunOptions]) -> RunResult:
        """Check each endpoint: /health, /v1/models, a chat completion (``--tags health``).
        Each host's result is ``result.hosts[name].health`` (:class:`HealthResult`).

        Takes the options of :class:`~sparkfleet.options.RunOptions`.
        """
        return self.operation("health", **options)

    def benchmark(self, **options: Unpack[RunOptions]) -> RunResult:
        """Measure each endpoint (``benchmark.yml``); numbers in ``hosts[name].benchmark``.

        Takes the options of :class:`~sparkfleet.options.RunOptions`.
        """
        return self.operation("benchmark", **options)

    def uninstall(self, **options: Unpack[RunOptions]) -> RunResult:
        """Stop and remove the service from the hosts (``uninstall.yml``).

        Takes the options of :class:`~sparkfleet.options.RunOptions`.
        """
        return self.operation("uninstall", **options)

    def status(self, **options: Unpack[RunOptions]) -> RunResult:
        """Report each host's serving state (``status.yml``): ``hosts[name].status_report``
        (:class:`StatusResult`).

        Takes the options of :class:`~sparkfleet.options.RunOptions`.
        """
        return self.operation("status", **options)

    def restart(self, *, rolling: bool = True, **options: Unpack[RunOptions]) -> RunResult:
        """Restart the service (``rolling_restart.yml``): one host at a time, each healthy again
        before the next, or with ``rolling=False`` all at once (``vllm_rolling_batch: 100%``).

        Takes the options of :class:`~sparkfleet.options.RunOptions`.
        """
        if not rolling:
            options["extravars"] = {
                "vllm_rolling_batch": "100%",
                **(options.get("extravars") or {}),
            }
        return self.operation("restart", **options)

    def endpoint(self) -> str | None:
        """The fleet's one OpenAI-compatible base URL: the gateway's (first host of group
        ``gateway``, role ``fleet_gateway``), e.g. ``https://gw.lan:8080/v1``; None when the
        inventory has no gateway. ``health()`` checks it (its /health, a keyless request refused,
        /v1/models with the key). Reads the inventory with ``ansible-inventory`` (vault files
        opened with the vault ids given as files; see :mod:`sparkfleet.gateway`).

        Raises:
            GatewayError: the inventory cannot be read, or gives a variable as a template.
        """
        vault_args: list[str] = []
        for vid in self.credentials.vault_ids:
            file_arg = vid.file_arg()
            if file_arg is not None:
                vault_args += ["--vault-id", file_arg]
        # with an execution environment there is no local project: the operator's own settings
        env = self.project.ansible_env() if self.project is not None else dict(os.environ)
        listing = read_inventory(self.inventory, env, vault_args)
        return endpoint_from(listing)

    def operation(self, name: str, **options: Unpack[RunOptions]) -> RunResult:
        """Run the operation ``name`` of :data:`OPERATIONS` (its playbook, tags and variables).

        Raises:
            KeyError: no such operation.
            FleetError: ``tags`` outside the operation's own (``preflight`` with ``model`` would
                fetch the model).
            PlaybookNotFoundError: its playbook is not in the project.
        """
        op = OPERATIONS[name]
        given = _join(options.get("tags"))
        if op.tags and given is None:
            options["tags"] = op.tags
        elif op.tags and given is not None:
            outside = [t for t in given.split(",") if t.strip() not in op.tags]
            if outside:
                raise FleetError(
                    f"{name} runs only the tags {','.join(op.tags)}; tags {','.join(outside)} "
                    "would run more than it (deploy takes any tags)"
                )
        if op.extravars:
            options["extravars"] = {**op.extravars, **(options.get("extravars") or {})}
        if self.execution_environment is not None:
            return self.run(f"sparkfleet.spark.{Path(op.playbook).stem}", operation=name,
                            **options)  # fmt: skip
        playbook = self._project().playbook(op.playbook, needed_by=f"{name}()")
        return self.run(playbook, operation=name, **options)

    def _project(self) -> Project:
        if self.project is None:  # only with an execution environment, where runs take FQCNs
            raise FleetError("no project: with an execution environment, run playbooks by FQCN")
        return self.project

    # -- the run ----------------------------------------------------------------------------

    def run(
        self, playbook: PathArg, *, operation: str | None = None, **options: Unpack[RunOptions]
    ) -> RunResult:
        """Run one playbook (a name in ``playbooks/``, a path, or in an execution environment a
        collection playbook's FQCN) and return its result.

        Args:
            playbook: ``"site.yml"``, a path to any playbook, or ``"sparkfleet.spark.site"``.
            operation: name recorded in the result (default: the playbook's stem).
            **options: :class:`~sparkfleet.options.RunOptions`.

        Raises:
            PlaybookNotFoundError: the playbook does not exist.
            FleetError: bad options.
            Exception: whatever ``on_event`` raised (the run is killed first).
        """
        in_ee = self.execution_environment is not None
        project_dir: str | None = None
        if in_ee:
            target = shown = os.fspath(playbook)
            op_name = operation or target.rsplit(".", 1)[-1]
        else:
            path = self._project().playbook(playbook)
            target, project_dir = self._project().runner_target(path)
            op_name = operation or path.stem
            shown = self._project().shown(path)
        forks = options.get("forks")
        forks = forks if forks is not None else self.forks
        _check_forks(forks)
        creds = self.credentials + (options.get("credentials") or Credentials())
        secret_args, passwords = creds.ansible_args()
        callback = options.get("on_event") or self.on_event
        merged_vars = {**self.extravars, **(options.get("extravars") or {})}
        timeout = options.get("timeout_s", self.timeout_s)

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
        progress_dir = private / "progress"
        progress_dir.mkdir()
        if not in_ee:
            merged_vars.setdefault("hf_model_progress_dir", str(progress_dir))
        poller = ProgressPoller(
            Path(str(merged_vars.get("hf_model_progress_dir", progress_dir))).expanduser(),
            emit,
            task_of=lambda host: collector.host(host).last_task,
        )
        log: IO[str] | None = None
        try:
            env = self._environment(private)
            graceful = env.get("ANSIBLE_STRATEGY") == STRATEGY_NAME
            control = _Control(
                options.get("cancel"),
                token,
                Path(env["SPARKFLEET_STOP_FILE"]) if graceful else None,
                self.cancel_grace_s,
                emit,
            )
            cmdline: list[str] = [*secret_args]
            for value in (*self.extra_vars_args, *options.get("extra_vars_args", ())):
                cmdline += ["-e", _absolute_at_file(value)]
            if options.get("check"):
                cmdline.append("--check")
            if options.get("diff"):
                cmdline.append("--diff")
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
                for event in parse_event(raw):
                    emit(event)
                return True  # kept in job_events/, where Runner.stats reads the recap

            def on_tick() -> bool:
                poller.poll()
                return bool(control())

            def on_status(data: Mapping[str, Any], runner_config: Any = None) -> None:
                emit(RunStatusChanged(status=str(data.get("status", ""))))

            ident = f"{time.strftime('%Y%m%dT%H%M%S')}-{op_name}-{os.getpid()}"
            where: dict[str, Any] = (
                self.execution_environment.runner_kwargs()
                if self.execution_environment is not None
                else {"project_dir": project_dir}
                if project_dir
                else {}
            )
            started = time.monotonic()
            with _signals_stop(token, bool(options.get("handle_signals"))):
                runner = ansible_runner.run(
                    private_data_dir=str(private),
                    playbook=target,
                    inventory=self.inventory,
                    extravars=merged_vars or None,
                    passwords=passwords or None,
                    cmdline=shlex.join(cmdline) if cmdline else None,
                    limit=_join(options.get("limit")),
                    tags=_join(options.get("tags")),
                    skip_tags=_join(options.get("skip_tags")),
                    forks=forks,
                    verbosity=self.verbosity or None,
                    envvars=env,
                    settings={"pexpect_timeout": 0.5, "suppress_ansible_output": True},
                    timeout=timeout,
                    quiet=True,
                    ident=ident,
                    artifact_dir=str(self.artifacts_dir) if keep else None,
                    event_handler=on_raw,
                    cancel_callback=on_tick,
                    status_handler=on_status,
                    **where,
                )
            elapsed = time.monotonic() - started
            poller.poll(force=True)
            collector.set_stats(runner.stats)
            if runner.rc not in (0, None) and not collector.hosts and not collector.errors:
                collector.errors.append(_silent_failure(runner))
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
            playbook=shown,
            status="canceled" if control.forced else str(runner.status),
            rc=int(rc),
            elapsed_s=elapsed,
            artifact_dir=str(self.artifacts_dir / ident) if self.artifacts_dir else None,
        )

    def _environment(self, private: Path) -> dict[str, str]:
        """ansible-playbook's extra environment for one run."""
        if self.execution_environment is not None:
            return dict(self.envvars)  # the image's own Ansible configuration and collection
        project = self._project()
        env = project.ansible_env()
        bindir = Path(sys.executable).parent
        if (bindir / "ansible-playbook").exists():
            env["PATH"] = os.pathsep.join([str(bindir), os.environ.get("PATH", os.defpath)])
        chosen = "ANSIBLE_STRATEGY" in os.environ or project.configured_strategy()
        if self.graceful_stop and not chosen:
            plugins = [str(STRATEGY_DIR)]
            if os.environ.get("ANSIBLE_STRATEGY_PLUGINS"):
                plugins.append(os.environ["ANSIBLE_STRATEGY_PLUGINS"])
            env["ANSIBLE_STRATEGY_PLUGINS"] = os.pathsep.join(plugins)
            env["ANSIBLE_STRATEGY"] = STRATEGY_NAME
            env["SPARKFLEET_STOP_FILE"] = str(private / "stop")
        env.update(self.envvars)
        return env


def _silent_failure(runner: Any) -> str:
    """Why a run that produced no event failed: the last lines of its output (an execution
    environment without ansible-playbook exits 127, a broken Python ends with a traceback)."""
    try:
        with runner.stdout as out:
            lines = [line.strip() for line in strip_ansi(out.read()).splitlines() if line.strip()]
    except (OSError, AttributeError):
        lines = []
    tail = " / ".join(lines[-3:]) or "no output"
    return f"ansible-playbook exited {runner.rc} before its first event: {tail}"


def _check_forks(forks: int | None) -> None:
    if forks is not None and forks < 1:
        raise FleetError(f"forks={forks}: must be at least 1")


def _absolute_at_file(value: str) -> str:
    """``-e @FILE`` with FILE made absolute against the caller's working directory.

    ansible-runner runs ansible-playbook from the project's playbook directory, where a relative
    ``@vault.yml`` (as a user types it for ``ansible-playbook -e``) would not be found; every
    other ``-e`` value is passed unchanged.
    """
    if value.startswith("@") and len(value) > 1:
        path = Path(value[1:]).expanduser()
        if not path.is_absolute():
            return "@" + str(Path.cwd() / path)
    return value
