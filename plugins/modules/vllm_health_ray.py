#!/usr/bin/python
# -*- coding: utf-8 -*-
# Apache-2.0
"""Check a pair of Sparks' Ray cluster from one member: both nodes alive with a GPU each."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vllm_health_ray
short_description: Check the Ray cluster of a pair of Sparks from one of its members
version_added: 0.1.0
description:
  - Reads the cluster's nodes from the head's GCS inside the member's running container, with
    the image's own Ray (C(docker exec CONTAINER python3)), and asks each node the GCS holds
    alive for a TCP connection to its raylet's port (a killed node stays "alive" in the GCS for
    a few health checks).
  - Passes when each member has one live node at its address (in O(members)) with one GPU, and no
    other node is in the cluster; otherwise fails naming the member, its address, what is wrong
    and what to look at (C(journalctl -u SERVICE) on that host).
  - Also requires the member's systemd unit active and its container running. Retries every
    O(interval_s) seconds for O(budget_s) seconds before it fails (a worker joins once the
    head's Ray is up); fails at once when the unit is not installed, or stopped or failed
    with no start queued.
options:
  role:
    description: This host's role in the pair (its vllm_pair_role).
    type: str
    required: true
    choices: [head, worker]
  members:
    description: Both members, each with C(name) (inventory host), C(role) and C(address) (its vllm_pair_address).
    type: list
    elements: dict
    required: true
  gcs_address:
    description: The head's GCS, C(ADDRESS:PORT) (the head's vllm_pair_address and vllm_pair_ray_port).
    type: str
    required: true
  service:
    description: systemd unit of the member (without .service); empty to check none.
    type: str
    default: vllm
  container:
    description: The member's container, where the cluster is read.
    type: str
    default: minimax
  docker_bin:
    description: Docker client.
    type: path
    default: /usr/bin/docker
  budget_s:
    description: Seconds to keep trying before failing; 0 for one look.
    type: int
    default: 0
  interval_s:
    description: Seconds between two looks.
    type: float
    default: 3
author: sparkfleet maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Check the pair's Ray cluster from its worker
  sparkfleet.spark.vllm_health_ray:
    role: worker
    members:
      - {name: spark-01, role: head, address: 192.168.100.10}
      - {name: spark-02, role: worker, address: 192.168.100.11}
    gcs_address: 192.168.100.10:6379
    budget_s: 300
  register: pair_ray
"""

RETURN = r"""
members:
  description: Each member as the cluster has it.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: Inventory host., type: str, returned: always}
    role: {description: head or worker., type: str, returned: always}
    address: {description: Its vllm_pair_address., type: str, returned: always}
    node_id: {description: "Its live Ray node (null without one).", type: str, returned: always}
    alive: {description: A live node answers at its address., type: bool, returned: always}
    gpus: {description: "GPUs of that node in Ray (null without one).", type: float, returned: always}
nodes:
  description: >-
    Every node the GCS holds (dead ones included) - node_id, address, alive, answering (its
    raylet port accepts a connection; null for a dead node), gpus, death (Ray's reason).
  returned: always
  type: list
  elements: dict
problems:
  description: What is wrong, a sentence each naming the host; empty when healthy.
  returned: always
  type: list
  elements: str
unit:
  description: The member's unit (name, load, active, sub, result, restarts, ...).
  returned: always
  type: dict
container:
  description: The member's container (exists, running, status, ...).
  returned: always
  type: dict
elapsed_s:
  description: Seconds spent.
  returned: always
  type: float
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.sparkfleet.spark.plugins.module_utils.vllm_health_probe import (
    container_state,
    describe_container,
    describe_unit,
    unit_state,
)
from ansible_collections.sparkfleet.spark.plugins.module_utils.vllm_pair_ray import (
    judge,
    parse_nodes,
    probe_argv,
)


def look(run, p, members):
    """One look: (unit, container, nodes, report, problems, final) - final when waiting on
    cannot help (the unit is gone or stopped)."""
    unit = unit_state(run, p["service"])
    container = container_state(run, p["docker_bin"], p["container"])
    where = "the %s's %s" % (p["role"], describe_unit(unit))
    if unit is not None:
        if unit["load"] == "not-found":
            return unit, container, [], [], ["%s: no such unit (run the vllm_service role)" % where], True
        if unit["active"] in ("inactive", "failed") and not unit["job_pending"]:
            return unit, container, [], [], ["%s: stopped, nothing starts it" % where], True
    if not container["exists"] or not container["running"]:
        return unit, container, [], [], ["%s: %s" % (where, describe_container(container))], False
    # A unit still starting (the head waits for /health, the worker for its raylet) runs its
    # container already: the cluster is read, so that a failure says what it lacks.
    rc, out, err = run(probe_argv(p["docker_bin"], p["container"], p["gcs_address"]))
    nodes, error = parse_nodes(rc, out, err)
    if nodes is None:
        return unit, container, [], [], ["the Ray cluster at %s could not be read from %s: %s" % (
            p["gcs_address"], p["container"], error)], False
    report, problems = judge(nodes, members, p["service"])
    if unit is not None and unit["active"] != "active":
        problems.append("%s: not active yet" % where)
    return unit, container, nodes, report, problems, False


def main():
    module = AnsibleModule(
        argument_spec=dict(
            role=dict(type="str", required=True, choices=["head", "worker"]),
            members=dict(type="list", elements="dict", required=True),
            gcs_address=dict(type="str", required=True),
            service=dict(type="str", default="vllm"),
            container=dict(type="str", default="minimax"),
            docker_bin=dict(type="path", default="/usr/bin/docker"),
            budget_s=dict(type="int", default=0),
            interval_s=dict(type="float", default=3),
        ),
        supports_check_mode=True,
    )
    p = module.params
    members = []
    for m in p["members"]:
        if not all(str(m.get(k) or "") for k in ("name", "role", "address")):
            module.fail_json(msg="members: each needs name, role and address; got %r" % (m,))
        members.append({"name": str(m["name"]), "role": str(m["role"]), "address": str(m["address"])})
    if not p["container"]:
        module.fail_json(msg="container: the member's container is needed (the cluster is read in it)")
    run = module.run_command
    started = time.monotonic()
    while True:
        unit, container, nodes, report, problems, final = look(run, p, members)
        elapsed = round(time.monotonic() - started, 1)
        if not problems or final or elapsed + p["interval_s"] > p["budget_s"]:
            break
        time.sleep(p["interval_s"])
    result = dict(changed=False, members=report, nodes=nodes, problems=problems, unit=unit,
                  container=container, elapsed_s=elapsed)
    if problems:
        module.fail_json(msg="the pair's Ray cluster (checked on the %s, after %.0f s): %s" % (
            p["role"], elapsed, " | ".join(problems)), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
