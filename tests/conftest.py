"""The test suite's rules, for every test under tests/.

- Each test says whether it needs the lab: marker ``lab`` (a Docker engine answering and the lab
  prepared: ``make lab-prepare``) or ``nolab`` (none of that: no Docker, no /var/lib/sparklab,
  no lab network, no root). A test with neither, or both, stops the collection.
- A ``lab`` test on a machine without a ready lab fails at once and says what is missing; it
  never skips.
- With ``CI=true`` in the environment a skip is a failure, unless it is a deliberate one: raised
  by :func:`deliberate_skip` for a reason named in :data:`DELIBERATE_SKIPS`; an ``xfail`` marker
  stops the collection. molecule/conftest.py applies the skip rule to the scenarios' tests too.
- A test that leaves a server's ``serve_forever()`` thread running on a closed socket fails: that
  thread would poll the closed descriptor in a busy loop for the rest of the run.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import socketserver
import subprocess
import threading
from collections.abc import Generator, Iterator
from typing import NoReturn

import pytest

LAB_MARKERS = ("lab", "nolab")

DELIBERATE_SKIPS: dict[str, str] = {
    "no-mount-privilege": (
        "mounting a small filesystem needs root, or unprivileged user namespaces, and this "
        "machine allows neither"
    ),
    "no-rsync": (
        "rsync is not installed (the lab's preparation installs it; a quick run without the lab "
        "may lack it)"
    ),
}
"""The skips CI accepts, by name: what a test cannot do on some machines, and why."""

_DELIBERATE_PREFIX = "deliberate skip "


def deliberate_skip(name: str, detail: str = "") -> NoReturn:
    """Skip the running test for the reason named ``name`` in :data:`DELIBERATE_SKIPS`."""
    if name not in DELIBERATE_SKIPS:
        raise ValueError(f"{name!r} is not a deliberate skip named in tests/conftest.py")
    reason = f"{_DELIBERATE_PREFIX}[{name}]: {DELIBERATE_SKIPS[name]}"
    pytest.skip(f"{reason} ({detail})" if detail else reason)


def in_ci() -> bool:
    """Whether the environment says this is CI (``CI=true``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


# -- every test says whether it needs the lab ---------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unclear = []
    for item in items:
        found = {mark.name for mark in item.iter_markers() if mark.name in LAB_MARKERS}
        if len(found) != 1:
            unclear.append(f"  {item.nodeid}: {', '.join(sorted(found)) or 'neither'}")
    if in_ci():
        xfails = [f"  {item.nodeid}" for item in items if item.get_closest_marker("xfail")]
        if xfails:
            raise pytest.UsageError(
                "xfail is not allowed in CI (a test that is not run, or may fail, proves "
                "nothing): fix the test or make it a deliberate skip:\n" + "\n".join(xfails)
            )
    if unclear:
        raise pytest.UsageError(
            "every test must be marked either 'lab' or 'nolab' (pytestmark in its module):\n"
            + "\n".join(unclear)
        )


# -- lab tests fail without the lab -------------------------------------------------------------


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=60, check=False
    )


def _listens(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


@functools.cache
def lab_problem() -> str | None:
    """What keeps the lab from being used, or None when it is ready."""
    from tests.lab.config import LabConfig

    cfg = LabConfig()
    if shutil.which("docker") is None:
        return "there is no docker command"
    try:
        info = _docker("info", "--format", "{{json .ServerVersion}}")
    except subprocess.TimeoutExpired:
        return "no Docker engine answers ('docker info' did not return within 60 s)"
    if info.returncode != 0:
        return f"no Docker engine answers ('docker info': {info.stderr.strip()[:400]})"
    if not cfg.state_dir.is_dir():
        return f"the lab's state directory {cfg.state_dir} does not exist"
    if not (cfg.ssh_dir / "id_ed25519").is_file():
        return f"the lab's SSH key {cfg.ssh_dir / 'id_ed25519'} does not exist"
    if _docker("network", "inspect", cfg.network).returncode != 0:
        return f"the lab's Docker network {cfg.network} does not exist"
    if _docker("image", "inspect", f"{cfg.sim_image}:latest").returncode != 0:
        return f"the simulated hosts' image {cfg.sim_image}:latest does not exist"
    services = {
        "files": (cfg.gateway, cfg.files_port),
        "hub": (cfg.gateway, cfg.hub_port),
        "registry": ("127.0.0.1", cfg.registry_port),
    }
    for name, (host, port) in services.items():
        if not _listens(host, port):
            return f"the lab's {name} service does not listen on {host}:{port}"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("lab") is None:
        return
    problem = lab_problem()
    if problem is not None:
        pytest.fail(
            f"this test needs the lab, which is not ready: {problem}. Prepare it with "
            "'make lab-prepare' (python -m tests.lab prepare), or leave lab tests out with "
            "-m nolab ('make quick').",
            pytrace=False,
        )


# -- no unexplained skips in CI -----------------------------------------------------------------


def _skip_reason(longrepr: object) -> str:
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr
    return str(reason).removeprefix("Skipped: ")


def _deliberate(reason: str) -> bool:
    return reason.startswith(_DELIBERATE_PREFIX) and any(
        reason.startswith(f"{_DELIBERATE_PREFIX}[{name}]") for name in DELIBERATE_SKIPS
    )


def _ci_failure(reason: str) -> str:
    return (
        f"skipped in CI (CI={os.environ.get('CI')}), where only deliberate skips are allowed "
        f"(see DELIBERATE_SKIPS in tests/conftest.py): {reason}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report.longrepr)
        if not _deliberate(reason):
            report.outcome = "failed"
            report.longrepr = _ci_failure(reason)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if in_ci() and report.skipped:
        reason = _skip_reason(report.longrepr)
        if not _deliberate(reason):
            report.outcome = "failed"
            report.longrepr = _ci_failure(reason)
    return report


# -- no server left polling a closed socket ------------------------------------------------------


def closed_servers() -> list[socketserver.BaseServer]:
    """The servers whose ``serve_forever()`` still runs in a thread while their socket is closed
    (``server_close()`` without ``shutdown()`` first). Such a thread polls the closed descriptor,
    which every poll reports at once, so it spins until the process ends, taking CPU from every
    later test and from the stages running beside them."""
    found = []
    for thread in threading.enumerate():
        target = getattr(thread, "_target", None)  # Thread.run() deletes it once target returns
        server = getattr(target, "__self__", None)
        if getattr(target, "__name__", "") != "serve_forever":
            continue
        sock = getattr(server, "socket", None)  # TCPServer's and UnixStreamServer's listener
        if isinstance(server, socketserver.BaseServer) and sock is not None and sock.fileno() == -1:
            found.append(server)
    return found


@pytest.fixture(autouse=True)
def _no_server_left_spinning() -> Iterator[None]:
    yield  # torn down after the test's own fixtures
    spinning = closed_servers()
    for server in spinning:
        server.shutdown()  # serve_forever() checks for it at each turn of its loop
    if spinning:
        pytest.fail(
            f"{len(spinning)} server(s) closed while their serve_forever() thread ran "
            f"({', '.join(type(s).__name__ for s in spinning)}): call shutdown() before "
            "server_close()",
            pytrace=False,
        )
