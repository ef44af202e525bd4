"""Benchmark of hf_model_source=peer at realistic link rates: the model reaches N hosts in about
the time it takes one.

Simulated DGX Sparks (spark-sim containers of this benchmark's own, on the lab network) converge
the hf_model role in peer mode against the stand-in Hub, with ``tc`` giving the lab a site's
shape (tests/lab/netshape.py): one Hub uplink shared by the site, and a LAN link per host, at
``--lan-mbit`` = ``--hub-mbit`` x 10 by default. For N = 1 and each of ``--hosts``, in one run:

  fleet time   from the seed's fetch start to the last host's fetch end (the hosts' progress
               files), and its ratio to the time for 1 host (goal <= 1.25)
  Hub bytes    bytes the stand-in Hub served / model size (goal 1.00 +- 1 %), and which hosts
               asked (only the seed should)

Run from the repository root, as root, with the lab prepared (``python -m tests.lab prepare``):

  .venv/bin/python -m bench.hf_model_fanout [--size-gb 0.4] [--hub-mbit 80] [--lan-mbit 800]
      [--hosts 2,4,6] [--workdir /var/tmp/sparkfleet-fanout]

It takes a few minutes (about 5 fetches of size / Hub rate, plus the plays), and removes its
hosts, its Hub and its shaping when it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.lab import access, netshape
from tests.lab import hosts as lab_hosts
from tests.lab.config import LabConfig
from tests.standins.hf_hub_standin.runner import StandinHub, build_fixture

ROOT = Path(__file__).resolve().parents[1]
REPO = "saricles/MiniMax-M2.5-REAP-172B-A10B-NVFP4-GB10"
SHARDS = 20
HUB_PORT = 39391
MODEL_DIR = "/opt/huggingface/models/MiniMax-M2.5-REAP-172B-NVFP4"
PROGRESS = "/run/sparkfleet/hf_model-progress.json"
LAB = LabConfig(host_prefix="hf-fanout", host_label="sparklab.hf-fanout")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def on(host: str, *argv: str) -> str:
    return subprocess.run(
        ["docker", "exec", host, *argv], check=True, capture_output=True, text=True
    ).stdout


def inventory(path: Path, hosts: list[str], hub: StandinHub, workdir: Path) -> None:
    gateway = LAB.gateway
    found = {
        name: access.ansible_host_vars(LAB, lab_hosts.host_address(LAB, name), sudo_password=False)
        for name in hosts
    }
    group = {
        "hf_model_source": "peer",
        "hf_model_endpoint": hub.url,
        "hf_model_disk_margin_gb": 0.1,
        "hf_model_progress_interval_s": 5,
        "hf_model_progress_dir": str(workdir / "progress"),
        "hf_model_pip_extra_args": (
            f"--no-index --trusted-host {gateway} --find-links http://{gateway}:38081/wheels/"
        ),
    }
    path.write_text(json.dumps({"all": {"hosts": found, "vars": group}}))


def converge(inventory_path: Path) -> float:
    env = dict(
        os.environ,
        ANSIBLE_ROLES_PATH=str(ROOT / "roles"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"),
    )
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory_path)]
    cmd.append(str(ROOT / "bench" / "hf_model_converge.yml"))
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"ansible-playbook failed:\n{proc.stdout[-6000:]}")
    return time.monotonic() - started


def fetch_window(hosts: list[str]) -> tuple[float, dict[str, list[float]]]:
    """Seconds from the seed's fetch start (the first host's) to the last host's fetch end, and
    each host's [start, end] from the seed's start (the hosts' progress files; they share the lab
    machine's clock). Peers start their fetch with the seed's, and wait for its first file."""
    states = {h: json.loads(on(h, "cat", PROGRESS)) for h in hosts}
    for host, state in states.items():
        if state["phase"] != "done" or state["bytes_done"] != state["bytes_total"]:
            raise SystemExit(f"{host}: the fetch did not end complete: {state}")
    origin = states[hosts[0]]["started_at"]
    spans = {h: [round(s["started_at"] - origin, 2), round(s["updated_at"] - origin, 2)]
             for h, s in states.items()}  # fmt: skip
    return max(end for _, end in spans.values()), spans


def verify(hosts: list[str], meta: dict[str, Any]) -> None:
    """Every host holds every file with the fixture's sha256 (hashed on the host)."""
    wanted = {f["path"]: f["sha256"] for f in meta["files"]}
    for host in hosts:
        out = on(host, "sh", "-c", f"cd {MODEL_DIR} && sha256sum {' '.join(sorted(wanted))}")
        got = {line.split(None, 1)[1].strip(): line.split(None, 1)[0] for line in out.splitlines()}
        if got != wanted:
            raise SystemExit(f"{host}: files differ from the fixture")


def wipe(hosts: list[str]) -> None:
    for host in hosts:
        on(host, "rm", "-rf", MODEL_DIR, PROGRESS)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    counts = sorted({1, *(int(n) for n in args.hosts.split(","))})
    shard = max(1, int(args.size_gb * 1e9 / SHARDS))
    meta = build_fixture(workdir / "repo", shard)
    total = int(meta["total_size"])
    hub = StandinHub({REPO: workdir / "repo"}, workdir, host=LAB.gateway, port=HUB_PORT, cdn=False)
    hub.start()
    names: list[str] = []
    out: dict[str, Any] = {
        "model_gb": total / 1e9,
        "hub_mbit": args.hub_mbit,
        "lan_mbit": args.lan_mbit,
        "runs": {},
    }
    try:
        names = lab_hosts.start_hosts(LAB, max(counts), f"{LAB.sim_image}:latest")
        addresses = {lab_hosts.host_address(LAB, n): n for n in names}
        inv = workdir / "inventory.json"
        log("warm-up: the role once on every host, unshaped (venv, rsync)")
        inventory(inv, names, hub, workdir)
        converge(inv)
        for count in counts:
            hosts = names[:count]
            wipe(names)
            hub.clean()
            inventory(inv, hosts, hub, workdir)
            with netshape.shaped(LAB, HUB_PORT, args.hub_mbit, names, args.lan_mbit):
                play_s = converge(inv)
            window, spans = fetch_window(hosts)
            verify(hosts, meta)
            stats = hub.stats()
            clients = {addresses.get(ip, ip): n for ip, n in stats.get("clients", {}).items()}
            out["runs"][str(count)] = {
                "fetch_s": window,
                "play_s": play_s,
                "hub_ratio": stats["bytes_served"] / total,
                "hub_clients": clients,
                "hosts": spans,
            }
            ratio = stats["bytes_served"] / total
            log(f"{count} host(s): fleet {window:.1f} s (play {play_s:.0f} s), Hub bytes / model "
                f"{ratio:.4f}, from {sorted(clients)}; {spans}")  # fmt: skip
    finally:
        lab_hosts.remove_hosts(LAB)
        hub.stop()
    one = out["runs"]["1"]["fetch_s"]
    for run_ in out["runs"].values():
        run_["ratio"] = run_["fetch_s"] / one
    return out


def report(out: dict[str, Any]) -> None:
    print(
        f"hf_model_source=peer, {out['model_gb']:.2f} GB model, Hub uplink {out['hub_mbit']:g} "
        f"Mbit/s shared, LAN {out['lan_mbit']:g} Mbit/s per host "
        f"(Hub:LAN = 1:{out['lan_mbit'] / out['hub_mbit']:g})"
    )
    for count, r in out["runs"].items():
        print(
            f"  N={count}: fleet time {r['fetch_s']:.1f} s, / time for 1 host = {r['ratio']:.3f} "
            f"(goal <= 1.25); Hub bytes / model size = {r['hub_ratio']:.4f} (goal 1.00 +- 0.01), "
            f"asked by {', '.join(sorted(r['hub_clients'])) or '(not reported by this stand-in)'}"
            f"; play {r['play_s']:.0f} s"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=0.4)
    parser.add_argument("--hub-mbit", type=float, default=80.0)
    parser.add_argument("--lan-mbit", type=float, default=800.0)
    parser.add_argument("--hosts", default="2,4,6", help="fleet sizes besides 1")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/sparkfleet-fanout"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir))
    try:
        out = run(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report(out)
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
