"""What the fleet API costs over plain ansible-playbook, on the lab.

Runs the same no-op play (bench/api_noop.yml: facts, ping, a command, a stat, a set_fact) on
simulated hosts of its own (``api-bench-N``, label ``sparklab.apibench``), alternately through
:meth:`sparkfleet.Fleet.run` and through ``ansible-playbook`` with the same inventory file,
configuration and roles path, and prints the ratio of the median wall times measured in this run
(goal: at most 1.15). Needs the lab (``python -m tests.lab prepare``)::

    .venv/bin/python bench/api_overhead.py [--rounds 7] [--hosts 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from sparkfleet import Fleet  # noqa: E402
from sparkfleet.project import Project  # noqa: E402
from tests.lab import access, hosts  # noqa: E402
from tests.lab.config import LabConfig  # noqa: E402

PLAY = Path(__file__).resolve().parent / "api_noop.yml"
CFG = LabConfig(host_prefix="api-bench", host_label="sparklab.apibench")
GOAL = 1.15


def write_inventory(names: list[str], directory: Path) -> Path:
    """An inventory file: group ``spark``, the lab's group vars, the hosts over SSH (sudo)."""
    group_vars = yaml.safe_load((REPO / "inventory/lab/group_vars/spark.yml").read_text())
    members = {
        n: access.ansible_host_vars(CFG, hosts.host_address(CFG, n), sudo_password=False)
        for n in names
    }
    path = directory / "hosts.yml"
    path.write_text(yaml.safe_dump({"spark": {"vars": group_vars, "hosts": members}}))
    return path


def _cpu() -> float:
    """CPU seconds used so far by this process and its waited-for children."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_wrapper(inventory: Path) -> tuple[float, float]:
    """Wall and controller CPU seconds of one run through the fleet API (default settings)."""
    cpu, started = _cpu(), time.perf_counter()
    result = Fleet(str(inventory)).run(PLAY)
    elapsed, used = time.perf_counter() - started, _cpu() - cpu
    if not result.ok:
        raise SystemExit(f"wrapper run failed: {result.to_json()}")
    return elapsed, used


def run_plain(inventory: Path) -> tuple[float, float]:
    """Wall and controller CPU seconds of one plain ansible-playbook run (output kept in a pipe,
    as the wrapper keeps its events)."""
    env = {**os.environ, **Project.find().ansible_env()}
    playbook = str(Path(sys.executable).parent / "ansible-playbook")
    cpu, started = _cpu(), time.perf_counter()
    proc = subprocess.run(
        [playbook, "-i", str(inventory), str(PLAY)],
        env=env,
        cwd=PLAY.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    elapsed, used = time.perf_counter() - started, _cpu() - cpu
    if proc.returncode != 0:
        raise SystemExit(f"ansible-playbook failed ({proc.returncode}): {proc.stdout[-3000:]}")
    return elapsed, used


def _line(label: str, runs: list[tuple[float, float]]) -> str:
    wall = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    each = ", ".join(f"{r[0]:.2f}" for r in runs)
    return f"  {label:<24} median {wall:6.2f} s wall, {cpu:5.2f} s CPU  (wall: {each})"


def main() -> None:
    """Measure and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="measured runs of each kind")
    parser.add_argument("--hosts", type=int, default=2, help="simulated hosts")
    args = parser.parse_args()
    hosts.remove_hosts(CFG)
    names = hosts.start_hosts(CFG, args.hosts, f"{CFG.sim_image}:latest")
    try:
        with tempfile.TemporaryDirectory(prefix="sparkfleet-bench-") as tmp:
            inventory = write_inventory(names, Path(tmp))
            run_plain(inventory)  # warm-up: caches, Python bytecode
            run_wrapper(inventory)
            wrapper: list[tuple[float, float]] = []
            plain: list[tuple[float, float]] = []
            for _ in range(args.rounds):
                plain.append(run_plain(inventory))
                wrapper.append(run_wrapper(inventory))
    finally:
        hosts.remove_hosts(CFG)
    ratio = statistics.median(r[0] for r in wrapper) / statistics.median(r[0] for r in plain)
    cpu_ratio = statistics.median(r[1] for r in wrapper) / statistics.median(r[1] for r in plain)
    print(f"no-op play on {args.hosts} simulated hosts, {args.rounds} alternating rounds")
    print(_line("plain ansible-playbook:", plain))
    print(_line("sparkfleet Fleet.run:", wrapper))
    verdict = "meets" if ratio <= GOAL else "misses"
    print(f"  ratio wrapper/plain: {ratio:.3f} wall ({verdict} the goal of <= {GOAL}), "
          f"{cpu_ratio:.3f} controller CPU")  # fmt: skip


if __name__ == "__main__":
    main()
