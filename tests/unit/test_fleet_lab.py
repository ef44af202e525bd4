"""The fleet API and CLI against the lab: one simulated DGX Spark, deployed through the API.

The host is a spark-sim container of our own, ``api-sim-1``, labelled ``sparklab.api`` so the
lab's inventory (label ``sparklab.host``) never sees it; it is reached as ``make lab`` reaches its
hosts (SSH as ``sparkadmin``, whose sudo asks for the password kept in ansible-vault: the API is
given the vault password file) and gets the lab's group variables through an inline inventory. A
second inventory name for the same host (``api-sim-bad``) carries a variable the host does not
meet (the model the health check expects, the driver preflight requires), so it fails; a third
(``api-sim-gone``) is an address on the lab network that no host has, so it is unreachable.

The module deploys once: a first ``deploy()`` is stopped gracefully while the toolkit role runs,
then a second one converges from there (which shows the stop left the host consistent).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sparkfleet import (
    CancelToken,
    ExitCode,
    Fleet,
    FleetEvent,
    HostTaskResult,
    HostTaskStarted,
    RunResult,
    StopRequested,
    TaskStarted,
    TaskStatus,
)
from tests.lab import access, hosts
from tests.lab.config import REPO_ROOT, LabConfig

pytestmark = pytest.mark.lab

CFG = LabConfig(host_prefix="api-sim", host_label="sparklab.api")
HOST = "api-sim-1"
VAULT = access.vault_password_file(CFG)
NO_HOST_ADDRESS = "172.29.78.254"  # on the lab network (LabConfig.subnet), held by no container
# The first deploy is asked to stop when the task after the one that changed Docker's
# daemon.json starts: the Docker restart that change notified is then pending.
NOTIFYING_TASK = "daemon.json"
# How long to wait for something that must happen (a process to appear) before calling it
# broken: a liveness limit for loaded machines, not a bound on how fast things are.
LIVENESS_S = 120
IGNORED_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


def lab_inventory(**extra_hosts: dict[str, Any]) -> dict[str, Any]:
    """Inline inventory: group ``spark`` with the lab's group vars, HOST plus ``extra_hosts``."""
    group_vars = yaml.safe_load((REPO_ROOT / "inventory/lab/group_vars/spark.yml").read_text())
    ssh = access.ansible_host_vars(CFG, hosts.host_address(CFG, HOST), sudo_password=True)
    members = {HOST: dict(ssh), **{n: {**ssh, **v} for n, v in extra_hosts.items()}}
    return {"all": {"children": {"spark": {"vars": group_vars, "hosts": members}}}}


def project_files() -> set[str]:
    """Every path in the project tree (caches and the virtualenv left out)."""
    found: set[str] = set()
    for root, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if d not in IGNORED_DIRS and not d.endswith(".egg-info")]
        found.update(os.path.relpath(os.path.join(root, f), REPO_ROOT) for f in files)
        found.update(os.path.relpath(os.path.join(root, d), REPO_ROOT) + "/" for d in dirs)
    return found


PENDING = "/var/lib/sparkfleet/docker-restart-pending.json"
LAB_MIRROR = "http://172.29.78.1:35000/"


def docker_mirrors() -> list[str]:
    """The registry mirrors the host's dockerd runs with (its running configuration)."""
    info = json.loads(in_host("docker", "info", "--format", "{{json .RegistryConfig}}"))
    return [str(m) for m in info.get("Mirrors") or []]


def in_host(*cmd: str) -> str:
    """Run a command in the simulated host; its stdout."""
    return subprocess.run(
        ["docker", "exec", HOST, *cmd], capture_output=True, text=True, check=True
    ).stdout


@dataclass
class Deployed:
    """The module's two deploys and the events of each."""

    stopped: RunResult
    stopped_events: list[FleetEvent]
    deployed: RunResult
    deployed_events: list[FleetEvent]
    files_before: set[str]
    files_after: set[str]
    pending_after_stop: str  # the toolkit's record of what Docker still has to apply
    mirrors_after_stop: list[str]


@pytest.fixture(scope="module")
def api_host() -> Iterator[str]:
    """A fresh simulated host of our own, removed afterwards."""
    with hosts.own_hosts(CFG) as started:
        yield started[0]


@pytest.fixture(scope="module")
def deployed(api_host: str) -> Deployed:
    """Deploy stopped gracefully during the toolkit role, then deployed to the end."""
    files_before = project_files()
    fleet = Fleet(lab_inventory(), vault_password_file=VAULT, graceful_stop=True)
    token = CancelToken()
    stopped_events: list[FleetEvent] = []

    def stop_in_toolkit(event: FleetEvent) -> None:
        stopped_events.append(event)
        changed = [
            e
            for e in stopped_events
            if isinstance(e, HostTaskResult)
            and e.role == "nvidia_container_toolkit"
            and NOTIFYING_TASK in e.task
            and e.status is TaskStatus.CHANGED
        ]
        if changed and isinstance(event, HostTaskStarted) and not token.stop_requested:
            token.stop()

    stopped = fleet.deploy(on_event=stop_in_toolkit, cancel=token)
    pending = in_host("sh", "-c", f"cat {PENDING} 2>/dev/null || true")
    mirrors = docker_mirrors()
    deployed_events: list[FleetEvent] = []
    deployed = fleet.deploy(on_event=deployed_events.append)
    return Deployed(
        stopped,
        stopped_events,
        deployed,
        deployed_events,
        files_before,
        project_files(),
        pending,
        mirrors,
    )


def test_graceful_stop_finishes_the_task_in_flight_and_the_next_run_the_rest(
    deployed: Deployed,
) -> None:
    res, events = deployed.stopped, deployed.stopped_events
    assert res.canceled and res.status == "canceled"
    assert res.exit_code == ExitCode.INTERRUPTED
    assert [e.force for e in events if isinstance(e, StopRequested)] == [False]
    stop_at = next(i for i, e in enumerate(events) if isinstance(e, StopRequested))
    # the task whose start asked for the stop (stop_in_toolkit): StopRequested itself comes when
    # the runner next polls the token, which on a busy machine can be after that task's result
    changed_at = next(
        i for i, e in enumerate(events)
        if isinstance(e, HostTaskResult) and e.role == "nvidia_container_toolkit"
        and NOTIFYING_TASK in e.task and e.status is TaskStatus.CHANGED
    )  # fmt: skip
    start = next(
        i for i in range(changed_at, len(events)) if isinstance(events[i], HostTaskStarted)
    )
    in_flight = events[start]
    assert isinstance(in_flight, HostTaskStarted) and start < stop_at
    after = events[stop_at:]
    # the task in flight finished on the host...
    assert any(
        isinstance(e, HostTaskResult) and e.task == in_flight.task and not e.is_failure
        for e in events[start:]
    ), f"the task in flight ({in_flight.task}) did not finish"
    # ...and nothing else started: Docker's reload of the merged daemon.json did not happen,
    started = [e.task for e in after if isinstance(e, TaskStarted) and not e.is_handler]
    assert started == [], f"tasks started after the stop: {started}"
    host = res.hosts[HOST]
    assert host.failed == 0 and host.unreachable == 0
    # ...but it is on record on the host (a state, not a notification), and the next deploy
    # applied it (test_deploy_converges...: the mirror is in Docker's running configuration)
    assert json.loads(deployed.pending_after_stop) == ["registry-mirrors"]
    assert LAB_MIRROR not in deployed.mirrors_after_stop
    assert LAB_MIRROR in docker_mirrors()
    assert in_host("sh", "-c", f"test -e {PENDING}; echo $?").strip() == "1"


def test_deploy_converges_and_reports_the_roles_facts(deployed: Deployed) -> None:
    res = deployed.deployed
    assert res.status == "successful" and res.rc == 0, res.to_json()
    assert res.exit_code == ExitCode.OK and res.ok
    host = res.hosts[HOST]
    assert (host.failed, host.unreachable) == (0, 0)
    assert host.changed > 0 and host.ok >= host.changed
    report = host.preflight_report
    assert report is not None and report["arch"] == "x86_64"
    assert report["gpu"]["name"] == "NVIDIA GB10"
    manifest = host.model_manifest
    assert manifest is not None and len(manifest["commit"]) == 40
    assert "config.json" in manifest["files"]
    health = host.health
    assert health is not None and health.healthy
    assert health.endpoint == "http://127.0.0.1:8000/v1"  # where the check ran: on the host
    # where a client on the controller reaches it: the host's address
    assert host.endpoint == f"http://{hosts.host_address(CFG, HOST)}:8000/v1"
    assert health.completion_tokens and health.completion_tokens > 0
    assert health.answer
    # the per-host counts from the recap agree with the results the events reported
    results = [
        e for e in deployed.deployed_events if isinstance(e, HostTaskResult) and e.item is None
    ]
    assert sum(e.status in (TaskStatus.OK, TaskStatus.CHANGED) for e in results) == host.ok
    assert sum(e.status is TaskStatus.CHANGED for e in results) == host.changed


def test_runs_write_nothing_into_the_project(deployed: Deployed) -> None:
    assert deployed.files_after == deployed.files_before


def test_health_through_the_api_with_a_failing_host(deployed: Deployed) -> None:
    """health() on the deployed host, and on a second name for it that expects another model."""
    other = {"vllm_health_model": "another-model"}
    res = Fleet(lab_inventory(**{"api-sim-bad": other}), vault_password_file=VAULT).health()
    assert res.exit_code == ExitCode.FAILED and res.failed_hosts == ["api-sim-bad"]
    host = res.hosts[HOST]
    assert host.succeeded and host.changed == 0
    health = host.health
    assert health is not None and health.healthy
    # what the role reports is what the endpoint it names serves, seen from the controller
    assert host.endpoint == f"http://{hosts.host_address(CFG, HOST)}:8000/v1"
    with urllib.request.urlopen(f"{host.endpoint}/models", timeout=30) as resp:
        served = [m["id"] for m in json.load(resp)["data"]]
    assert served == [health.model]
    # the failing host: its task, and a message naming the variable and the value
    bad = res.hosts["api-sim-bad"]
    assert bad.failed_task is not None and bad.failed_task.startswith("vllm_health : ")
    assert "another-model" in bad.message and "vllm_health_model" in bad.message
    assert bad.health is None or not bad.health.healthy


def test_unreachable_host_cli_exit_2(api_host: str, tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yml"
    gone_host = {"ansible_host": NO_HOST_ADDRESS}
    inventory.write_text(yaml.safe_dump(lab_inventory(**{"api-sim-gone": gone_host})))
    proc = subprocess.run(
        [sys.executable, "-m", "sparkfleet.cli", "preflight", "-i", str(inventory), "--json",
         "--vault-password-file", str(VAULT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert proc.returncode == ExitCode.UNREACHABLE, proc.stderr
    out = json.loads(proc.stdout)
    assert out["exit_code"] == 2
    assert out["hosts"][HOST]["status"] == "ok"
    assert out["hosts"][HOST]["facts"]["spark_preflight_report"]["arch"] == "x86_64"
    gone = out["hosts"]["api-sim-gone"]
    assert gone["status"] == "unreachable" and gone["unreachable"] == 1
    assert NO_HOST_ADDRESS in gone["message"] and "ssh" in gone["message"]


def test_failing_host_plain_lines(api_host: str, tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yml"
    bad = {"spark_preflight_min_driver_version": "999.0"}
    inventory.write_text(yaml.safe_dump(lab_inventory(**{"api-sim-bad": bad})))
    proc = subprocess.run(
        [sys.executable, "-m", "sparkfleet.cli", "preflight", "-i", str(inventory),
         "-l", "api-sim-bad", "--vault-password-file", str(VAULT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert proc.returncode == ExitCode.FAILED, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    failed = [ln for ln in lines if " failed " in ln and "api-sim-bad" in ln]
    assert failed and " spark_preflight : " in failed[0]
    assert "spark_preflight_min_driver_version=999.0" in failed[0]
    assert not any(HOST + " " in ln for ln in lines), "the limit was not applied"


def processes_with_env(marker: str) -> list[int]:
    """Pids of the processes whose environment holds ``marker``.

    SSH connection masters are left out: ``ssh -o ControlPersist`` (Ansible's default ssh_args)
    detaches a master (``ssh: <control path> [mux]``) that outlives the run by design and exits
    once idle for ControlPersist's time.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() not in (entry / "environ").read_bytes():
                continue
            if (entry / "cmdline").read_bytes().rstrip(b"\0").endswith(b"[mux]"):
                continue
        except OSError:
            continue
        found.append(int(entry.name))
    return found


def test_kill_ends_the_run_and_its_workers(api_host: str) -> None:
    marker = f"SPARKFLEET_TEST_RUN=kill-{os.getpid()}"
    token = CancelToken()
    busy: list[int] = []

    def kill_while_busy(event: FleetEvent) -> None:
        if isinstance(event, HostTaskStarted) and event.task == "Gather the host report":
            # The worker forks next: look until it is there, or until no process of the run is
            # left (then it never will be). The limit only keeps a broken run from hanging the
            # test; it is no claim about how fast a fork is.
            deadline = time.monotonic() + LIVENESS_S
            busy[:] = processes_with_env(marker)
            while 0 < len(busy) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
                busy[:] = processes_with_env(marker)
            token.kill()

    key, value = marker.split("=")
    fleet = Fleet(lab_inventory(), vault_password_file=VAULT, envvars={key: value})
    res = fleet.run("site.yml", tags=["preflight"], on_event=kill_while_busy, cancel=token)
    assert len(busy) >= 2, "ansible-playbook and a worker should have been running"
    assert res.canceled and res.status == "canceled" and res.rc == 254
    assert res.exit_code == ExitCode.INTERRUPTED
    assert res.hosts[HOST].failed == 0
    assert processes_with_env(marker) == [], "processes of the killed run remain"
