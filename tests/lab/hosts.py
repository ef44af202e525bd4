"""Simulated DGX Spark hosts: spark-sim containers booting systemd, each with its own dockerd."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator

from tests.lab.config import LabConfig, log

# Flags that boot systemd as PID 1 and give the host's own dockerd an overlay-capable store.
SYSTEMD_RUN_FLAGS = [
    "--privileged",
    "--cgroupns=host",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs", "/run",
    "--tmpfs", "/run/lock",
    "--tmpfs", "/tmp",
    "--tmpfs", "/var/lib/docker:exec",
    "--stop-signal", "SIGRTMIN+3",
]  # fmt: skip


def sh(
    host: str, script: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with ``sh -c`` as root in the simulated host ``host`` (its container name),
    through ``docker exec``; with ``check``, fail the calling test on a non-zero exit status,
    showing the host, the script and its output. Raises subprocess.TimeoutExpired after
    ``timeout`` seconds."""
    result = subprocess.run(
        ["docker", "exec", host, "sh", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if check:
        assert result.returncode == 0, f"{host}: {script}\n{result.stdout}{result.stderr}"
    return result


def host_names(cfg: LabConfig) -> list[str]:
    """Names of the lab's host containers, in order."""
    out = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label={cfg.host_label}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return sorted(out, key=lambda n: int(n.rsplit("-", 1)[-1]) if n[-1].isdigit() else 0)


def wait_booted(name: str, timeout: float = 120.0) -> None:
    """Wait until systemd finished booting, and sshd and the host's dockerd answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = subprocess.run(
            ["docker", "exec", name, "sh", "-c",
             "systemctl is-system-running --wait >/dev/null 2>&1;"
             " systemctl is-active -q ssh.service && docker info >/dev/null 2>&1"],
            capture_output=True,
            check=False,
            timeout=timeout,
        )  # fmt: skip
        if res.returncode == 0:
            return
        time.sleep(1)
    raise SystemExit(f"simulated host {name} did not boot within {timeout:.0f} s")


def start_hosts(cfg: LabConfig, count: int, image: str) -> list[str]:
    """Run hosts spark-sim-1..count (existing ones on the same image are kept)."""
    existing = set(host_names(cfg))
    names = [f"{cfg.host_prefix}-{i}" for i in range(1, count + 1)]
    for name in sorted(existing - set(names)):
        subprocess.run(["docker", "rm", "-f", "-v", name], check=True, capture_output=True)
    for name in names:
        if name in existing:
            current = subprocess.run(
                ["docker", "inspect", "-f", "{{.Config.Image}} {{.State.Running}}", name],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            if current == [image, "true"]:
                continue
            subprocess.run(["docker", "rm", "-f", "-v", name], check=True, capture_output=True)
        subprocess.run(
            ["docker", "run", "-d", "--name", name, "--hostname", name,
             "--network", cfg.network, "--label", f"{cfg.host_label}=1",
             *SYSTEMD_RUN_FLAGS, image],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        log(f"started simulated host {name}")
    for name in names:
        wait_booted(name)
    return names


@contextlib.contextmanager
def own_hosts(cfg: LabConfig, count: int = 1) -> Iterator[list[str]]:
    """Fresh hosts of a test's own (``cfg``'s prefix and label) on the latest spark-sim image,
    removed afterwards; yields their names."""
    remove_hosts(cfg)
    try:
        yield start_hosts(cfg, count, f"{cfg.sim_image}:latest")
    finally:
        remove_hosts(cfg)


def remove_hosts(cfg: LabConfig) -> None:
    """Remove every lab host container and its anonymous volumes."""
    for name in host_names(cfg):
        subprocess.run(["docker", "rm", "-f", "-v", name], check=True, capture_output=True)


def host_address(cfg: LabConfig, name: str) -> str:
    """The host's address on the lab network."""
    return subprocess.run(
        ["docker", "inspect", "-f",
         f"{{{{(index .NetworkSettings.Networks \"{cfg.network}\").IPAddress}}}}", name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()  # fmt: skip
