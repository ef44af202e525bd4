"""Record the ansible-runner events the unit tests parse (tests/unit/data/*.jsonl).

Runs real playbooks through :class:`sparkfleet.Fleet` on a simulated host of its own
(``api-rec-1``, label ``sparklab.apirec``) and keeps every raw event, trimmed: gathered facts
and module invocations dropped, long strings cut. Needs the lab (``python -m tests.lab prepare``):

    .venv/bin/python tests/unit/data/record_events.py
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from sparkfleet import (  # noqa: E402
    CancelToken,
    Fleet,
    FleetEvent,
    HostTaskResult,
    HostTaskStarted,
)
from tests.lab import access, hosts  # noqa: E402
from tests.lab.config import LabConfig  # noqa: E402

DATA = Path(__file__).resolve().parent
CFG = LabConfig(host_prefix="api-rec", host_label="sparklab.apirec")
HOST = "api-rec-1"
NO_HOST_ADDRESS = "172.29.78.254"  # on the lab network, held by no container
KEEP_DATA = (
    "play", "play_pattern", "task", "task_action", "resolved_action", "role", "host", "duration",
    "ignore_errors", "is_conditional", "name", "changed", "dark", "failures", "ignored", "ok",
    "processed", "rescued", "skipped", "artifact_data", "handler",
)  # fmt: skip
GATHER = ("gather_facts", "setup", "ansible.builtin.gather_facts", "ansible.builtin.setup")
MAX_STR = 400
STOP_AFTER = "Merge the settings into Docker's daemon.json"  # nvidia_container_toolkit


def _cut(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= MAX_STR else value[:MAX_STR] + "..."
    if isinstance(value, list):
        return [_cut(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _cut(v) for k, v in value.items() if k not in ("invocation", "diff")}
    return value


def trim(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a raw event the parser reads, small."""
    out: dict[str, Any] = {k: raw[k] for k in ("event", "counter", "pid", "created") if k in raw}
    if raw.get("event") in ("warning", "verbose", "error", "deprecated"):
        out["stdout"] = _cut(raw.get("stdout", ""))
    data = raw.get("event_data") or {}
    kept = {k: data[k] for k in KEEP_DATA if k in data}
    if "res" in data:
        res = data["res"]
        if data.get("task_action") in GATHER and raw.get("event") == "runner_on_ok":
            res = {"changed": bool(res.get("changed"))}
        kept["res"] = _cut(res)
    out["event_data"] = kept
    return out


def record(name: str, fleet: Fleet, run: Any) -> None:
    """Run ``run(fleet)`` with a fresh event log, then write it trimmed to DATA/name.jsonl."""
    log = DATA / f"{name}.raw.jsonl"
    log.unlink(missing_ok=True)
    fleet.event_log = log
    result = run(fleet)
    events = [trim(json.loads(line)) for line in log.read_text().splitlines()]
    log.unlink()
    with (DATA / f"{name}.jsonl").open("w") as out:
        for event in events:
            out.write(json.dumps(event, sort_keys=True) + "\n")
    print(f"{name}: {len(events)} events; {result.summary()}")


def main() -> None:
    """Record preflight (ok, failed, unreachable), a stopped deploy, a deploy and health."""
    group_vars = yaml.safe_load((REPO / "inventory/lab/group_vars/spark.yml").read_text())
    hosts.remove_hosts(CFG)
    hosts.start_hosts(CFG, 1, f"{CFG.sim_image}:latest")
    # reached as make lab reaches its hosts: SSH as the user whose sudo password is vaulted
    ssh = access.ansible_host_vars(CFG, hosts.host_address(CFG, HOST), sudo_password=True)
    vault = access.vault_password_file(CFG)
    bad = {**ssh, "spark_preflight_expected_arch": "aarch64"}
    gone = {**ssh, "ansible_host": NO_HOST_ADDRESS}
    members = {HOST: ssh, "api-rec-bad": bad, "api-rec-gone": gone}
    mixed = {"all": {"children": {"spark": {"vars": group_vars, "hosts": members}}}}
    one_inv = {"all": {"children": {"spark": {"vars": group_vars, "hosts": {HOST: ssh}}}}}

    def one() -> Fleet:
        return Fleet(one_inv, vault_password_file=vault, graceful_stop=True)

    try:
        record("preflight_mixed", Fleet(mixed, vault_password_file=vault), lambda f: f.preflight())
        token = CancelToken()
        merged: list[bool] = []

        def stop(event: FleetEvent) -> None:
            """Stop once the toolkit role merged daemon.json (Docker's reload then waits)."""
            if isinstance(event, HostTaskResult) and STOP_AFTER in event.task:
                merged.append(event.status == "changed")
            elif any(merged) and isinstance(event, HostTaskStarted) and not token.stop_requested:
                token.stop()

        record("deploy_stopped", one(), lambda f: f.deploy(on_event=stop, cancel=token))
        record("deploy", one(), lambda f: f.deploy())
        record("health", one(), lambda f: f.health())
    finally:
        hosts.remove_hosts(CFG)


if __name__ == "__main__":
    main()
