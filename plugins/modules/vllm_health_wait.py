#!/usr/bin/python
# -*- coding: utf-8 -*-
# Apache-2.0
"""Wait (one slice of the budget) for the vLLM endpoint, watching its unit and container."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vllm_health_wait
short_description: Wait for vLLM's /health, failing at once when its unit or container died
version_added: 0.1.0
description:
  - Probes O(url)/health every O(interval_s) seconds and returns as soon as it answers 200.
  - Between probes, reads the systemd unit (and the container, when no unit is watched); fails
    at once when it died, without waiting out the budget.
  - Returns after O(slice_s) seconds with C(state=waiting) and a progress line, so that the
    caller can show progress and call it again with the returned C(since) and
    C(baseline_restarts); fails with C(state=timeout) once O(budget_s) seconds have passed
    since C(since).
options:
  url:
    description: Base URL of the endpoint, e.g. C(http://127.0.0.1:8000).
    type: str
    required: true
  api_key:
    description: Bearer token sent along (vLLM leaves /health open; proxies may not).
    type: str
    default: ""
  budget_s:
    description: Seconds the whole wait may take, counted from O(since).
    type: float
    default: 900
  slice_s:
    description: Seconds after which to return with a progress line.
    type: float
    default: 30
  interval_s:
    description: Seconds between two probes.
    type: float
    default: 1
  since:
    description: Epoch seconds (host clock) when the wait began; 0 for now.
    type: float
    default: 0
  baseline_restarts:
    description: The unit's NRestarts when the wait began; -1 to read it now.
    type: int
    default: -1
  service:
    description: systemd unit running the server (without .service); empty to watch none.
    type: str
    default: ""
  container:
    description: Container name; watched for progress, and for death when no unit is watched.
    type: str
    default: ""
  docker_bin:
    description: Docker client.
    type: path
    default: /usr/bin/docker
author: sparkfleet maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
# wait.yml: one slice of the wait, included again (with a progress line) while the state is
# "waiting"; the first call passes since=0 and baseline_restarts=-1, later ones what it returned.
- name: Wait for the endpoint to answer /health
  sparkfleet.spark.vllm_health_wait:
    url: http://127.0.0.1:8000
    budget_s: 900
    slice_s: 30
    interval_s: 1
    since: "{{ health_wait.since | default(0) }}"
    baseline_restarts: "{{ health_wait.baseline_restarts | default(-1) }}"
    service: vllm
    container: minimax
  register: health_wait

- name: Show the progress of the model load
  ansible.builtin.debug:
    msg: "{{ health_wait.progress }}"
  when: health_wait.state == 'waiting'

- name: Keep waiting
  ansible.builtin.include_tasks: wait.yml
  when: health_wait.state == 'waiting'
"""

RETURN = r"""
state:
  description: C(ready), C(waiting) (slice over, call again), C(dead) or C(timeout) (both failed).
  type: str
  returned: always
  sample: ready
since:
  description: Epoch seconds (host clock) when the wait began; pass it to the next call.
  type: float
  returned: always
  sample: 1735732800.5
baseline_restarts:
  description: The unit's NRestarts when the wait began; pass it to the next call.
  type: int
  returned: always
  sample: 0
elapsed_s:
  description: Seconds since O(since).
  type: float
  returned: always
  sample: 212.4
budget_s:
  description: O(budget_s).
  type: float
  returned: always
  sample: 900.0
url:
  description: O(url).
  type: str
  returned: always
  sample: http://127.0.0.1:8000
unit:
  description: >-
    State of the unit (name, load, active, sub, result, restarts, main_pid, exit_status,
    job_pending); null when O(service) is empty.
  type: dict
  returned: always
container:
  description: >-
    State of the container (name, exists, and when it exists status, running, health,
    started_at, exit_code, oom_killed); null when O(container) is empty.
  type: dict
  returned: always
ready_at:
  description: Epoch seconds (host clock) when /health first answered 200.
  type: float
  returned: when ready
  sample: 1735733012.904
ready_after_s:
  description: Seconds from O(since) to that answer.
  type: float
  returned: when ready
  sample: 212.3
health_latency_ms:
  description: Milliseconds that /health took to answer.
  type: float
  returned: when ready
  sample: 1.7
progress:
  description: One line - elapsed time, unit and container state, the last log line.
  type: str
  returned: always
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.sparkfleet.spark.plugins.module_utils.vllm_health_probe import (
    container_state,
    describe_container,
    describe_unit,
    http,
    journal,
    container_log,
    unit_death,
    unit_state,
)


def progress_line(module, params, elapsed, unit, container):
    last = journal(module.run_command, params["service"], 1, output="cat")
    if not last:
        last = container_log(module.run_command, params["docker_bin"], params["container"], 1)
    parts = ["loading: %d s of %d s" % (elapsed, params["budget_s"])]
    if unit is not None:
        parts.append(describe_unit(unit))
    if container is not None:
        parts.append(describe_container(container))
    line = "; ".join(parts)
    if last:
        line += "; last log line: %s" % last[-1].strip()[:200]
    return line


def current_instance(unit):
    """Whether a server answering now is the unit's current one, not one about to be stopped."""
    if unit is None:
        return True
    if unit["active"] == "activating":
        return unit["sub"] in ("start", "start-post")
    return unit["active"] == "active" and not unit["job_pending"]


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            api_key=dict(type="str", default="", no_log=True),
            budget_s=dict(type="float", default=900),
            slice_s=dict(type="float", default=30),
            interval_s=dict(type="float", default=1),
            since=dict(type="float", default=0),
            baseline_restarts=dict(type="int", default=-1),
            service=dict(type="str", default=""),
            container=dict(type="str", default=""),
            docker_bin=dict(type="path", default="/usr/bin/docker"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    run = module.run_command
    url = params["url"].rstrip("/") + "/health"
    since = params["since"] or time.time()
    unit = unit_state(run, params["service"])
    baseline = params["baseline_restarts"]
    if baseline < 0:
        baseline = unit["restarts"] if unit else 0
    slice_end = time.monotonic() + params["slice_s"]
    unhealthy = 0

    def finish(state, **extra):
        elapsed = time.time() - since
        container = container_state(run, params["docker_bin"], params["container"])
        result = dict(
            changed=False, state=state, since=since, baseline_restarts=baseline,
            elapsed_s=round(elapsed, 1), budget_s=params["budget_s"], unit=unit,
            container=container, url=params["url"],
            progress=progress_line(module, params, elapsed, unit, container), **extra)
        if state in ("dead", "timeout"):
            module.fail_json(**result)
        module.exit_json(**result)

    while True:
        probed_at = time.time()
        status, _body, latency_ms = http(url, api_key=params["api_key"], timeout=2.0)
        if status == 200:
            unit = unit_state(run, params["service"])
            if current_instance(unit):
                finish("ready", ready_at=round(probed_at + latency_ms / 1000.0, 3),
                       ready_after_s=round(probed_at - since, 1),
                       health_latency_ms=round(latency_ms, 1))
        unhealthy = unhealthy + 1 if status == 503 else 0
        if unhealthy >= 3:
            finish("dead", msg="%s answers 503 (the engine is dead), %d s into the %d s budget" % (
                url, time.time() - since, params["budget_s"]))
        unit = unit_state(run, params["service"])
        reason = unit_death(unit, baseline)
        if reason:
            finish("dead", msg="%s %s, %d s into the %d s budget (vllm_health_timeout_s) while "
                   "waiting for %s" % (unit["name"], reason, time.time() - since,
                                       params["budget_s"], url))
        if unit is None and params["container"]:
            container = container_state(run, params["docker_bin"], params["container"])
            if not container["exists"] or not container["running"]:
                finish("dead", msg="%s, %d s into the %d s budget" % (
                    describe_container(container), time.time() - since, params["budget_s"]))
        if time.time() - since >= params["budget_s"]:
            finish("timeout", msg="%s did not answer within the %d s budget "
                   "(vllm_health_timeout_s)" % (url, params["budget_s"]))
        if time.monotonic() >= slice_end:
            finish("waiting")
        time.sleep(max(0.0, params["interval_s"] - (time.time() - probed_at)))


if __name__ == "__main__":
    main()
