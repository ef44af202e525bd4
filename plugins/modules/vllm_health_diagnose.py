#!/usr/bin/python
# -*- coding: utf-8 -*-
# Apache-2.0
"""Explain why the vLLM service is not healthy: state, logs and a hint for known patterns."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vllm_health_diagnose
short_description: Diagnose a vLLM service that failed its health check
version_added: 0.1.0
description:
  - Collects the systemd unit's state, the last lines of its journal (which holds the output of
    the container the unit runs in the foreground), the container's state and log when it still
    exists, and matches them against known failure patterns (out of memory, missing model
    files, port in use, image not found, GPU runtime, engine death, start limit, start timeout).
  - Only the unit's current invocation (systemd's InvocationID, its run now or its last run
    when it is not running) and what was logged since O(since) are searched for the patterns, so
    an old failure left in the journal (an out-of-memory exit, status 137, of a run long gone)
    gives no hint. A hint names only the settings it has values for.
  - Returns a report ready to print and the same information structured. Read-only.
options:
  failure:
    description: What failed (the failing task's message); the report's first line.
    type: str
    default: ""
  service:
    description: systemd unit (without .service); empty for none.
    type: str
    default: ""
  container:
    description: Container name; empty for none.
    type: str
    default: ""
  docker_bin:
    description: Docker client.
    type: path
    default: /usr/bin/docker
  lines:
    description: Log lines shown from the journal and from the container.
    type: int
    default: 30
  scan_lines:
    description: Journal lines searched for known patterns (of them, those of the current
      invocation and those since O(since)).
    type: int
    default: 400
  since:
    description: Epoch seconds (host clock) when the caller began to watch the unit (the
      health wait's C(since)); journal lines logged since then are searched too, whichever
      run of the unit logged them. 0 for the current invocation alone.
    type: float
    default: 0
  settings:
    description: The service's settings named in hints (gpu_memory_util, max_model_len, port,
      port_variable (the variable that sets that port, default vllm_port), image, model_dir,
      model_mount, start_timeout_s; at the head of a pair also pair_peer and pair_peer_address,
      the worker's host and link address, and service, its unit).
    type: dict
    default: {}
author: sparkfleet maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Check the endpoint, diagnosing a failure
  block:
    - name: Check that /v1/models serves the model
      sparkfleet.spark.vllm_health_api:
        url: http://127.0.0.1:8000
        check: models
  rescue:
    - name: Diagnose the failure
      sparkfleet.spark.vllm_health_diagnose:
        failure: "{{ ansible_failed_result.msg | default('task ' ~ ansible_failed_task.name ~ ' failed') }}"
        service: vllm
        container: minimax
        docker_bin: /usr/bin/docker
        lines: 30
        settings:
          gpu_memory_util: 0.93
          max_model_len: 65536
          port: 8000
          image: avarok/dgx-vllm-nvfp4-kernel:v23
          model_dir: /opt/huggingface/models/MiniMax-M2.5-REAP-172B-NVFP4
          model_mount: /models/MiniMax-M2.5-REAP-172B-NVFP4
          start_timeout_s: 900
      register: diagnosis

    - name: Report the diagnosis
      ansible.builtin.fail:
        msg: "{{ diagnosis.report }}"
"""

RETURN = r"""
report:
  description: Multi-line diagnosis - what failed, hints, unit, container, log lines.
  type: str
  returned: always
hints:
  description: Known patterns found, the most relevant first.
  type: list
  elements: dict
  returned: always
  contains:
    pattern:
      description: Key of the pattern.
      type: str
      returned: always
      sample: out_of_memory
    hint:
      description: What it means and what to do, with the O(settings) filled in.
      type: str
      returned: always
unit:
  description: State of the systemd unit; null when O(service) is empty.
  type: dict
  returned: always
  contains:
    name:
      description: Unit name, with C(.service).
      type: str
      returned: always
      sample: vllm.service
    load:
      description: C(LoadState).
      type: str
      returned: always
      sample: loaded
    active:
      description: C(ActiveState).
      type: str
      returned: always
      sample: failed
    sub:
      description: C(SubState).
      type: str
      returned: always
      sample: failed
    result:
      description: C(Result).
      type: str
      returned: always
      sample: exit-code
    restarts:
      description: C(NRestarts).
      type: int
      returned: always
    main_pid:
      description: C(MainPID), 0 when none.
      type: int
      returned: always
    exit_status:
      description: C(ExecMainStatus).
      type: int
      returned: always
    job_pending:
      description: Whether a start or stop job is queued for the unit.
      type: bool
      returned: always
container:
  description: State of the container; null when O(container) is empty.
  type: dict
  returned: always
  contains:
    name:
      description: O(container).
      type: str
      returned: always
    exists:
      description: Whether the container exists.
      type: bool
      returned: always
    status:
      description: Docker's C(State.Status).
      type: str
      returned: when the container exists
      sample: exited
    running:
      description: Whether it runs.
      type: bool
      returned: when the container exists
    health:
      description: Docker's health status ("" without a health check).
      type: str
      returned: when the container exists
    started_at:
      description: When it started.
      type: str
      returned: when the container exists
    exit_code:
      description: Exit code of its main process.
      type: int
      returned: when the container exists
    oom_killed:
      description: Whether the kernel's OOM killer killed it.
      type: bool
      returned: when the container exists
journal:
  description: The last O(lines) lines of the unit's journal.
  type: list
  elements: str
  returned: always
container_log:
  description: The last O(lines) lines of the container's log (empty when it does not exist).
  type: list
  elements: str
  returned: always
"""

import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.sparkfleet.spark.plugins.module_utils.vllm_health_probe import (
    container_log,
    container_state,
    describe_container,
    describe_unit,
    find_hints,
    invocation_lines,
    journal,
    unit_state,
)

SETTINGS = ("gpu_memory_util", "max_model_len", "port", "port_variable", "image", "model_dir",
            "model_mount", "start_timeout_s", "pair_peer", "pair_peer_address", "service")


def port_owner(run, port):
    """' (held by users:(("python3",pid=1,fd=3)))' from ss, or '' when unknown."""
    if not re.match(r"^[0-9]+$", str(port)):
        return ""
    rc, out, _err = run(["ss", "-Htlnp", "sport = :%s" % port])
    owners = sorted(set(re.findall(r"users:\(\(.*?\)\)", out))) if rc == 0 else []
    return " (held by %s)" % ", ".join(owners) if owners else ""


def indent(lines):
    return ["  " + line for line in lines] if lines else ["  (none)"]


def main():
    module = AnsibleModule(
        argument_spec=dict(
            failure=dict(type="str", default=""),
            service=dict(type="str", default=""),
            container=dict(type="str", default=""),
            docker_bin=dict(type="path", default="/usr/bin/docker"),
            lines=dict(type="int", default=30),
            scan_lines=dict(type="int", default=400),
            settings=dict(type="dict", default={}),
            since=dict(type="float", default=0),
        ),
        supports_check_mode=True,
    )
    p = module.params
    run = module.run_command
    unit = unit_state(run, p["service"])
    container = container_state(run, p["docker_bin"], p["container"])
    journal_lines = journal(run, p["service"], p["lines"])
    invocation = unit["invocation"] if unit is not None else ""
    scan = invocation_lines(run, p["service"], p["scan_lines"], invocation, p["since"])
    log_lines = []
    if container is not None and container["exists"]:
        log_lines = container_log(run, p["docker_bin"], p["container"], p["lines"])
    scan_text = scan + log_lines
    if unit is not None:
        scan_text.append("result %s" % unit["result"])
    if container is not None and container.get("oom_killed"):
        scan_text.append("oom-kill")
    settings = dict((k, p["settings"].get(k, "")) for k in SETTINGS)
    settings["port_variable"] = settings["port_variable"] or "vllm_port"
    settings["port_owner"] = ""
    settings["service"] = settings["service"] or p["service"] or "vllm"
    if any(re.search(r"address already in use|port is already allocated", line, re.I) for line in scan_text):
        settings["port_owner"] = port_owner(run, settings["port"])
    hints = find_hints(scan_text, settings)

    report = [p["failure"].strip() or "The vLLM service is not healthy.", ""]
    if hints:
        report += ["Hint: " + hints[0]["hint"]] + ["Also: " + h["hint"] for h in hints[1:]]
    elif unit is None and container is None:
        report += ["Hint: no unit or container watched here (vllm_health_service and "
                   "vllm_health_container are empty): read the endpoint's own logs."]
    else:
        report += ["Hint: no known failure pattern in the logs; read the lines below."]
    report += ["", "Unit: " + describe_unit(unit), "Container: " + describe_container(container)]
    if unit is not None:
        report += ["", "Journal of %s (last %d lines):" % (unit["name"], len(journal_lines))]
        report += indent(journal_lines)
    if log_lines or (container is not None and container["exists"]):
        report += ["", "Container log of %s (last %d lines):" % (p["container"], len(log_lines))]
        report += indent(log_lines)
    module.exit_json(
        changed=False, report="\n".join(report), hints=hints, unit=unit, container=container,
        journal=journal_lines, container_log=log_lines,
    )


if __name__ == "__main__":
    main()
