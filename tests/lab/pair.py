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
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from tests.lab import hosts
from tests.lab.config import LabConfig, log


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
