"""Link rates in the lab: ``tc`` shaping of the stand-in Hub's uplink and of each host's LAN link.

The lab's hosts are containers on one Linux bridge, so without shaping every link runs at memory
speed and the Hub is as near as any peer. This module gives the lab a site's shape:

- **the Hub's uplink**, one for the whole site: the stand-in Hub runs on the bridge's gateway
  address, so what it sends to the hosts leaves through the bridge device (``br-<network id>``).
  An HTB root there sends the Hub's packets (source address the gateway, source port the Hub's)
  to one class of ``rate``, shared by every host; everything else goes to a default class at
  10 Gbit/s, so other users of the lab are not slowed down.
- **each host's LAN link**: a TBF on the container's ``eth0`` (what it sends, in its network
  namespace) and one on its veth peer in the lab machine's namespace (what it receives).

HTB and TBF are in the lab machine's kernel; netem is not (no added latency or loss). Rates are
in Mbit/s (10^6 bit/s, as ``tc`` reads ``mbit``). Every change is undone by :func:`unshape_hub` /
:func:`unshape_host` (or on leaving :func:`shaped`); a host's shaping also ends with its container.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Sequence

from tests.lab.config import LabConfig, log

HUB_HANDLE = "5319"  # the root qdisc this module puts on the bridge: "5319:"
OTHER_RATE = "10gbit"


class ShapingError(RuntimeError):
    """The link cannot be shaped as asked (e.g. someone else's qdisc is there)."""


def _run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ShapingError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def bridge_device(cfg: LabConfig) -> str:
    """The Linux bridge behind the lab's Docker network (its name option, else br-<id[:12]>)."""
    out = _run(
        "docker", "network", "inspect", "-f",
        '{{.Id}} {{index .Options "com.docker.network.bridge.name"}}', cfg.network,
    ).split()  # fmt: skip
    return out[1] if len(out) > 1 and out[1] != "<no" else f"br-{out[0][:12]}"


def _root_qdisc(show: str) -> str:
    """The root qdisc line of ``tc qdisc show dev X`` output ('' when none)."""
    return next((line for line in show.splitlines() if " root " in line), "")


def _burst(mbit: float) -> str:
    """A burst of 20 ms at the rate, at least 64 KiB (a burst under rate/HZ caps the rate)."""
    return str(max(64 * 1024, int(mbit * 1e6 / 8 / 50)))


def shape_hub(cfg: LabConfig, port: int, mbit: float) -> None:
    """Limit what the stand-in Hub on ``cfg.gateway``:``port`` sends, to all hosts together.

    Raises ShapingError when the bridge already has a root qdisc other than this module's.
    """
    dev = bridge_device(cfg)
    root = _root_qdisc(_run("tc", "qdisc", "show", "dev", dev))
    if f"htb {HUB_HANDLE}:" in root:
        unshape_hub(cfg)
    elif root and not root.startswith(("qdisc noqueue", "qdisc pfifo_fast", "qdisc fq_codel")):
        raise ShapingError(f"{dev} is already shaped by someone else: {root}")
    h = HUB_HANDLE
    _run("tc", "qdisc", "add", "dev", dev, "root", "handle", f"{h}:", "htb", "default", "99")
    _run("tc", "class", "add", "dev", dev, "parent", f"{h}:", "classid", f"{h}:99",
         "htb", "rate", OTHER_RATE)  # fmt: skip
    _run("tc", "class", "add", "dev", dev, "parent", f"{h}:", "classid", f"{h}:10",
         "htb", "rate", f"{mbit}mbit", "ceil", f"{mbit}mbit", "burst", _burst(mbit))  # fmt: skip
    # explicit leaves: a bridge's tx queue length is 0, which the default pfifo would take
    for leaf in ("10", "99"):
        _run("tc", "qdisc", "add", "dev", dev, "parent", f"{h}:{leaf}", "pfifo", "limit", "1000")
    _run("tc", "filter", "add", "dev", dev, "parent", f"{h}:", "protocol", "ip", "prio", "1",
         "u32", "match", "ip", "src", f"{cfg.gateway}/32", "match", "ip", "sport", str(port),
         "0xffff", "flowid", f"{h}:10")  # fmt: skip
    log(f"Hub uplink ({cfg.gateway}:{port} on {dev}) shaped to {mbit:g} Mbit/s")


def unshape_hub(cfg: LabConfig) -> None:
    """Remove this module's root qdisc from the bridge (nothing else)."""
    dev = bridge_device(cfg)
    if f"htb {HUB_HANDLE}:" in _root_qdisc(_run("tc", "qdisc", "show", "dev", dev)):
        _run("tc", "qdisc", "del", "dev", dev, "root")


def host_veth(name: str) -> str:
    """The lab machine's end of the container's eth0 (found by its peer interface index)."""
    index = _run("docker", "exec", name, "cat", "/sys/class/net/eth0/iflink").strip()
    for line in _run("ip", "-o", "link", "show").splitlines():
        number, rest = line.split(":", 1)
        if number.strip() == index:
            return rest.split("@", 1)[0].strip()
    raise ShapingError(f"no interface with index {index} (the peer of {name}'s eth0)")


def shape_host(name: str, mbit: float) -> None:
    """Limit the host's LAN link to ``mbit`` each way (TBF on both ends of its veth pair)."""
    tbf = ["tbf", "rate", f"{mbit}mbit", "burst", _burst(mbit), "latency", "100ms"]
    _run("docker", "exec", name, "tc", "qdisc", "replace", "dev", "eth0", "root", *tbf)
    _run("tc", "qdisc", "replace", "dev", host_veth(name), "root", *tbf)


def unshape_host(name: str) -> None:
    """Remove the host's link shaping (both ends); a host already gone needs none."""
    with contextlib.suppress(ShapingError):
        _run("docker", "exec", name, "tc", "qdisc", "del", "dev", "eth0", "root")
    with contextlib.suppress(ShapingError):
        _run("tc", "qdisc", "del", "dev", host_veth(name), "root")


@contextlib.contextmanager
def shaped(
    cfg: LabConfig, hub_port: int, hub_mbit: float, hosts: Sequence[str], lan_mbit: float
) -> Iterator[None]:
    """The Hub's uplink at ``hub_mbit`` and each host's LAN link at ``lan_mbit``, undone after."""
    try:
        shape_hub(cfg, hub_port, hub_mbit)
        for name in hosts:
            shape_host(name, lan_mbit)
        log(f"LAN links of {', '.join(hosts)} shaped to {lan_mbit:g} Mbit/s each way")
        yield
    finally:
        for name in hosts:
            unshape_host(name)
        unshape_hub(cfg)
