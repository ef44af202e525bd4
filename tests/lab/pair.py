"""Two simulated DGX Sparks cabled as a pair: each gets a second interface on a lab network of
its own (a Docker bridge) that stands for the ConnectX-7 link between two Sparks.

A pair's hosts are ordinary lab hosts (``hosts.start_hosts``: SSH, sudo and Docker on the lab
network ``sparklab``) plus one interface on the pair's network, with a fixed address each (the
network's ``.11`` and ``.12``), as a QSFP cable with static addresses gives. The bridge's MTU
is set per network (``PairNet.mtu``; a ConnectX link is usually run with jumbo frames, 9000),
so a pair with unequal MTUs can be made by connecting one host to a second network.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.lab import access, hosts
from tests.lab.config import REPO_ROOT, LabConfig, log, venv_tool


@dataclass(frozen=True)
class PairNet:
    """A lab network standing for one ConnectX link: Docker network ``name``, IPv4 ``subnet``
    (a /24 outside the lab's own), ``mtu`` in bytes."""

    name: str
    subnet: str
    mtu: int = 9000

    def address(self, index: int) -> str:
        """The fixed address of pair member ``index`` (0 or 1): the subnet's .11 or .12."""
        return str(ipaddress.ip_network(self.subnet)[11 + index])


@dataclass(frozen=True)
class PairMember:
    """One host of a pair: its container ``name``, address on the lab network (SSH), address
    and interface name on the pair network."""

    name: str
    lab_address: str
    pair_address: str
    interface: str


def ensure_pair_net(net: PairNet) -> None:
    """Create the pair's bridge network (kept when it exists)."""
    found = subprocess.run(["docker", "network", "inspect", net.name], capture_output=True)
    if found.returncode == 0:
        return
    subprocess.run(
        ["docker", "network", "create", "--driver", "bridge", "--subnet", net.subnet,
         "--opt", f"com.docker.network.driver.mtu={net.mtu}", "--label", "sparklab=1", net.name],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def interface_of(host: str, address: str) -> str:
    """The name of the interface that holds ``address`` in host ``host``."""
    out = hosts.sh(host, f"ip -o -4 addr show to {address}").stdout.split()
    if len(out) < 2:
        raise SystemExit(f"{host} has no interface with address {address}")
    return out[1]


def start_pair(cfg: LabConfig, net: PairNet, image: str) -> list[PairMember]:
    """Hosts ``<cfg.host_prefix>-1`` and ``-2`` (``hosts.start_hosts``), each connected to
    ``net`` at its fixed address; returns them in order (the first is meant as the head)."""
    ensure_pair_net(net)
    names = hosts.start_hosts(cfg, 2, image)
    members = []
    for index, name in enumerate(names):
        address = net.address(index)
        attached = subprocess.run(
            ["docker", "inspect", "-f", f'{{{{with index .NetworkSettings.Networks "{net.name}"}}}}'
             "{{.IPAddress}}{{end}}", name],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if attached != address:
            subprocess.run(
                ["docker", "network", "connect", "--ip", address, net.name, name],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            log(f"{name}: {address} on {net.name} (the pair link)")
        members.append(
            PairMember(name, hosts.host_address(cfg, name), address, interface_of(name, address))
        )
    return members


def remove_pair(cfg: LabConfig, net: PairNet) -> None:
    """Remove the pair's hosts (``cfg``'s label) and its network."""
    hosts.remove_hosts(cfg)
    subprocess.run(["docker", "network", "rm", net.name], capture_output=True, check=False)


@contextlib.contextmanager
def own_pair(cfg: LabConfig, net: PairNet, image: str) -> Iterator[list[PairMember]]:
    """A fresh pair (``start_pair``, after removing what ``cfg`` and ``net`` name), removed
    afterwards."""
    remove_pair(cfg, net)
    try:
        yield start_pair(cfg, net, image)
    finally:
        remove_pair(cfg, net)


def declared(cfg: LabConfig, members: list[PairMember]) -> dict[str, dict[str, object]]:
    """{name: inventory variables} of the pair: SSH access as the lab's passwordless-sudo user,
    and the pair's declaration (``vllm_pair_*``), the first member the head."""
    return {
        member.name: {
            **access.ansible_host_vars(cfg, member.lab_address, sudo_password=False),
            "vllm_pair_role": ("head", "worker")[index],
            "vllm_pair_peer": members[1 - index].name,
            "vllm_pair_interface": member.interface,
            "vllm_pair_address": member.pair_address,
        }
        for index, member in enumerate(members)
    }


def write_inventory(where: Path, host_vars: dict[str, dict[str, object]]) -> None:
    """``where``/inventory: the group ``spark`` of ``host_vars``, with the lab's group_vars."""
    (where / "inventory").mkdir()
    (where / "inventory" / "hosts.yml").write_text(yaml.safe_dump({"spark": {"hosts": host_vars}}))
    (where / "inventory" / "group_vars").symlink_to(REPO_ROOT / "inventory" / "lab" / "group_vars")


def playbook(where: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``ansible-playbook`` of ``where``/``name`` on ``where``/inventory, with this tree's roles
    and collection (never raises on failure; 30 minutes at most)."""
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO_ROOT / "roles"),
               ANSIBLE_COLLECTIONS_PATH=str(REPO_ROOT / "collections"),
               ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_PIPELINING="True")  # fmt: skip
    return subprocess.run(
        [venv_tool("ansible-playbook"), "-i", str(where / "inventory"), str(where / name), *args],
        capture_output=True, text=True, check=False, env=env, timeout=1800,
    )  # fmt: skip
