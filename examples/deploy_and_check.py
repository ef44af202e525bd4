"""Deploy a fleet of DGX Sparks, health-check what came up, and print a summary.

    python examples/deploy_and_check.py inventory/spark
    python examples/deploy_and_check.py inventory/spark --limit spark-01,spark-02 -e vllm_port=8001

Ctrl-C stops the deploy gracefully (the tasks in flight finish); a second Ctrl-C kills it.
Exits 0 when every host serves, 1 when a host failed, 2 when a host was unreachable.
"""

from __future__ import annotations

import argparse
import sys

from sparkfleet import DownloadProgress, FleetEvent, HostTaskResult, RunResult, TaskStarted
from sparkfleet.fleet import Fleet


def show(event: FleetEvent) -> None:
    """Print what a fleet script usually wants to see while a run goes on."""
    if isinstance(event, TaskStarted) and not event.is_handler:
        print(f"-- {event.role + ' : ' if event.role else ''}{event.task}", flush=True)
    elif isinstance(event, HostTaskResult) and event.is_failure:
        print(f"   {event.host}: {event.status.value}: {event.message}", flush=True)
    elif isinstance(event, DownloadProgress) and event.fraction is not None:
        print(f"   {event.host}: model {event.fraction:.0%}", flush=True)


def summary(deploy: RunResult, health: RunResult | None) -> list[str]:
    """One line per host: serving (endpoint, latency) or what stopped it."""
    lines = [deploy.summary()]
    for name, host in deploy.hosts.items():
        checked = health.hosts.get(name) if health else None
        result = checked.health if checked else host.health
        if host.succeeded and checked and checked.succeeded and result:
            latency = f"{result.chat_seconds:.2f} s" if result.chat_seconds else "?"
            lines.append(f"  {name}: serving {result.model} at {result.endpoint} (chat {latency})")
        elif not host.succeeded:
            lines.append(f"  {name}: {host.status} at {host.failed_task}: {host.message}")
        elif checked and not checked.succeeded:
            lines.append(f"  {name}: unhealthy at {checked.failed_task}: {checked.message}")
        else:
            lines.append(f"  {name}: deployed, not checked")
    return lines


def main() -> int:
    """Deploy, then check the hosts that deployed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inventory", help="inventory path or comma-separated hosts")
    parser.add_argument("--limit", help="hosts or groups to deploy")
    parser.add_argument("-e", dest="extravars", action="append", default=[], help="key=value")
    args = parser.parse_args()
    extravars = dict(pair.split("=", 1) for pair in args.extravars)

    fleet = Fleet(args.inventory, extravars=extravars)
    deploy = fleet.deploy(limit=args.limit, on_event=show, handle_signals=True)
    deployed = [h.name for h in deploy.hosts.values() if h.succeeded]
    health = fleet.health(limit=deployed) if deployed and not deploy.canceled else None
    print("\n".join(summary(deploy, health)))
    worst = max([deploy.exit_code, health.exit_code if health else 0])
    return int(worst)


if __name__ == "__main__":
    sys.exit(main())
