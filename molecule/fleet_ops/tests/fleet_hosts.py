"""This scenario's hosts as its tests reach them: the playbooks run as a user runs them
(``ansible-playbook`` against the scenario's inventory), commands on a host through ``docker
exec``, a host's address on the lab network."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
INVENTORY = str(Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent)
HOSTS = ["fleet-1", "fleet-2", "fleet-3"]
# A liveness limit for loaded machines, not a bound on how fast things are.
PLAYBOOK_TIMEOUT_S = 1800


def playbook(name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run ``playbooks/NAME`` with the project's ansible.cfg, uncoloured; never raises on a
    failed run (the caller reads ``returncode`` and ``stdout``)."""
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(PROJECT / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(PROJECT / "roles"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
    )
    return subprocess.run(
        ["ansible-playbook", "-i", INVENTORY, str(PROJECT / "playbooks" / name), *extra],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=PROJECT,
        timeout=PLAYBOOK_TIMEOUT_S,
    )


def on(host: str, *cmd: str) -> str:
    """stdout of ``cmd`` run on ``host``; raises CalledProcessError when it fails."""
    return subprocess.run(
        ["docker", "exec", host, *cmd], capture_output=True, text=True, check=True, timeout=600
    ).stdout


def address(host: str) -> str:
    """The host's IPv4 address on the lab network."""
    return subprocess.run(
        ["docker", "inspect", "-f", '{{(index .NetworkSettings.Networks "sparklab").IPAddress}}',
         host],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()  # fmt: skip
