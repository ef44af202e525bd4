# Apache-2.0
"""A pair of Sparks' Ray cluster as its members see it: read inside a member's container with
the image's own Ray, and judged against the pair's declaration (vllm_pair_* variables).

Ray's node table comes from the head's GCS (``ray._private.internal_api.get_state_from_address``,
what ``ray memory`` reads it with: no driver joins the cluster, so it works from a container
whose own Ray node is gone; older or newer Rays without it: ``ray.init`` and ``ray.nodes()``).
``ray status`` does not name the nodes' addresses, and ``ray list nodes`` needs the dashboard,
which the lab's head runs without. Each node the GCS holds alive is also asked for a TCP
connection to its raylet's port (NodeManagerPort): the GCS marks a node whose raylet was killed
dead only after its health checks failed (Ray's defaults, src/ray/common/ray_config_def.h:
health_check_failure_threshold 5, health_check_period_ms 3000), and a killed worker's container
comes back as a new node at the same address meanwhile.

Node entries (``parse_nodes``): ``node_id`` (hex), ``address`` (NodeManagerAddress: the
node's ``--node-ip-address``, the member's ``vllm_pair_address``), ``alive`` (the GCS's view),
``answering`` (the raylet port accepts a connection; None when not asked: a dead node),
``gpus`` (Ray's GPU resource of the node), ``death`` (Ray's reason for a dead node).
"""

from __future__ import annotations

import json

# Run as `python3 -c PROBE GCS_ADDRESS` in a member's container; prints one JSON line:
# {"nodes": [...]} or {"error": "..."}.
PROBE = r"""
import json, socket, sys
address = sys.argv[1]
try:
    try:
        from ray._private.internal_api import get_state_from_address
        table = get_state_from_address(address).node_table()
    except (ImportError, AttributeError):
        import ray
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        table = ray.nodes()
except Exception as exc:
    print(json.dumps({"error": "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")}))
    sys.exit(0)
nodes = []
for node in table:
    alive = bool(node.get("Alive"))
    host, port = node.get("NodeManagerAddress") or "", node.get("NodeManagerPort") or 0
    answering = None
    if alive and host and port:
        try:
            socket.create_connection((host, int(port)), timeout=3).close()
            answering = True
        except OSError:
            answering = False
    nodes.append({
        "node_id": node.get("NodeID") or "",
        "address": host,
        "alive": alive,
        "answering": answering,
        "gpus": float((node.get("Resources") or {}).get("GPU", 0) or 0),
        "death": node.get("DeathReasonMessage") or "",
    })
print(json.dumps({"nodes": nodes}))
"""


def probe_argv(docker, container, gcs_address):
    """The command that reads the cluster inside ``container`` (a running member's)."""
    return [docker, "exec", container, "python3", "-c", PROBE, gcs_address]


def parse_nodes(rc, out, err):
    """(nodes, error) from the probe's exit status and output: the node entries (module
    docstring), or None and why the cluster could not be read."""
    if rc != 0:
        why = (err or out).strip().splitlines()
        return None, "the probe exited %s: %s" % (rc, why[-1] if why else "no output")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        return None, "the probe printed no result: %s" % (out.strip()[-300:] or "nothing")
    try:
        answer = json.loads(lines[-1])
    except ValueError:
        return None, "the probe printed no JSON: %s" % lines[-1][:300]
    if answer.get("error"):
        return None, "Ray's GCS could not be read: %s" % answer["error"]
    nodes = answer.get("nodes")
    if not isinstance(nodes, list):
        return None, "the probe's answer holds no node list"
    return [n for n in nodes if isinstance(n, dict)], None


def _short(node_id):
    return (node_id or "?")[:12]


def judge(nodes, members, service="vllm"):
    """Judge the cluster against the pair's members.

    ``members``: ``[{"name": inventory host, "role": "head" | "worker", "address": its
    vllm_pair_address}]``. Returns ``(report, problems)``: ``report`` is one entry per member,
    ``{"name", "role", "address", "node_id", "alive", "gpus"}`` (``alive``: a node at its
    address that the GCS holds alive and whose raylet answers; ``node_id`` and ``gpus`` of that
    node, None without one); ``problems`` are sentences naming the host and what to look at
    (its ``journalctl -u SERVICE``); empty when each member has exactly one live node with one
    GPU, no node of the cluster is gone unnoticed, and no other node is in it.
    """
    report, problems = [], []
    addresses = set()
    for member in members:
        name, role, address = member["name"], member["role"], member["address"]
        addresses.add(address)
        here = [n for n in nodes if n.get("address") == address]
        live = [n for n in here if n.get("alive") and n.get("answering") is not False]
        gone = [n for n in here if n.get("alive") and n.get("answering") is False]
        dead = [n for n in here if not n.get("alive")]
        node = live[0] if live else None
        report.append({
            "name": name, "role": role, "address": address,
            "node_id": node["node_id"] if node else None,
            "alive": node is not None,
            "gpus": node["gpus"] if node else None,
        })
        where = "the %s %s (%s)" % (role, name, address)
        look = "look at `journalctl -u %s` on %s" % (service, name)
        if gone:
            since = (", and a new node joined since: the head's server ran on the old one and "
                     "restarts") if live else ""
            problems.append(
                "%s: its Ray node %s is gone (its raylet does not answer; Ray has not noticed "
                "yet)%s; %s" % (where, _short(gone[0]["node_id"]), since, look))
        elif not live:
            why = ""
            if dead:
                why = " (its last node %s died: %s)" % (
                    _short(dead[-1]["node_id"]), dead[-1].get("death") or "no reason given")
            problems.append("%s: no Ray node of it in the cluster%s; %s" % (where, why, look))
        if len(live) > 1:
            problems.append("%s: %d live Ray nodes at its address (%s), one expected; %s" % (
                where, len(live), ", ".join(_short(n["node_id"]) for n in live), look))
        if node is not None and node.get("gpus") != 1.0:
            problems.append("%s: its Ray node has %s GPU(s), 1 expected (NUM_GPUS=1); %s" % (
                where, "%g" % node.get("gpus", 0), look))
    for other in nodes:
        if other.get("alive") and other.get("address") not in addresses:
            problems.append(
                "a Ray node %s at %s is in the cluster, which is neither member's "
                "vllm_pair_address" % (_short(other.get("node_id")), other.get("address")))
    return report, problems


def describe(report):
    """The members in a line: ``spark-01 head 192.168.100.10 node 1a2b.. GPU 1, ...``."""
    parts = []
    for m in report:
        state = ("node %s, %g GPU" % (_short(m["node_id"]), m["gpus"])) if m["alive"] else "no node"
        parts.append("%s (%s, %s): %s" % (m["name"], m["role"], m["address"], state))
    return "; ".join(parts)
