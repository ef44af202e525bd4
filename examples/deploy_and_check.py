"""Deploy a fleet of DGX Sparks, health-check what came up, and print the endpoints to use.

    python examples/deploy_and_check.py inventory/spark
    python examples/deploy_and_check.py inventory/spark --limit spark-01,spark-02 -e vllm_port=8001
    python examples/deploy_and_check.py inventory/spark -e @vault.yml --vault-id prod@prompt -K

Each serving host is printed with the OpenAI-compatible base URL a client on this machine
reaches (``http://HOST:PORT/v1``, not the host's own loopback). ``-e`` takes what
``ansible-playbook -e`` takes; passwords are asked for without echo. Ctrl-C ends the deploy (run
it again to converge). Exits 0 when every host serves, 1 when a host failed, 2 when a host was
unreachable.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from sparkfleet import (
    Credentials,
    DownloadProgress,
    Fleet,
    FleetEvent,
    HostTaskResult,
    RunResult,
    TaskStarted,
    VaultId,
)


def show(event: FleetEvent) -> None:
    """Print what a fleet script usually wants to see while a run goes on."""
    if isinstance(event, TaskStarted) and not event.is_handler:
        print(f"-- {event.role + ' : ' if event.role else ''}{event.task}", flush=True)
    elif isinstance(event, HostTaskResult) and event.is_failure:
        print(f"   {event.host}: {event.status.value}: {event.message}", flush=True)
    elif isinstance(event, DownloadProgress) and event.fraction is not None:
        print(f"   {event.host}: model {event.fraction:.0%}", flush=True)


def summary(deploy: RunResult, health: RunResult | None) -> list[str]:
    """One line per host: serving (the endpoint to use, latency) or what stopped it."""
    lines = [deploy.summary()]
    for name, host in deploy.hosts.items():
        checked = health.hosts.get(name) if health else None
        result = checked.health if checked else host.health
        if host.succeeded and checked and checked.succeeded and result:
            latency = f"{result.chat_seconds:.2f} s" if result.chat_seconds else "?"
            where = checked.endpoint or "an endpoint it did not report"
            lines.append(f"  {name}: serving {result.model} at {where} (chat {latency})")
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
    parser.add_argument(
        "-e",
        dest="extra_vars",
        action="append",
        default=[],
        help="extra variables, as ansible-playbook -e takes them (repeat)",
    )
    parser.add_argument(
        "--vault-id", action="append", default=[], help="LABEL@FILE or LABEL@prompt (repeat)"
    )
    parser.add_argument(
        "-K", "--ask-become-pass", action="store_true", help="ask for the sudo password"
    )
    args = parser.parse_args()

    def ask(label: str) -> str:
        return getpass.getpass(f"Vault password ({label}): ")

    credentials = Credentials(
        vault_ids=tuple(VaultId.parse(spec, prompt=ask) for spec in args.vault_id),
        become_password=getpass.getpass("BECOME password: ") if args.ask_become_pass else None,
    )
    fleet = Fleet(args.inventory, extra_vars_args=args.extra_vars, credentials=credentials)
    deploy = fleet.deploy(limit=args.limit, on_event=show, handle_signals=True)
    deployed = [h.name for h in deploy.hosts.values() if h.succeeded]
    health = fleet.health(limit=deployed) if deployed and not deploy.canceled else None
    print("\n".join(summary(deploy, health)))
    worst = max([deploy.exit_code, health.exit_code if health else 0])
    return int(worst)


if __name__ == "__main__":
    sys.exit(main())
