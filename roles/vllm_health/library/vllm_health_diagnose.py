#!/usr/bin/python
# -*- coding: utf-8 -*-
# Apache-2.0
"""Explain why the vLLM service is not healthy: state, logs and a hint for known patterns."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vllm_health_diagnose
short_description: Diagnose a vLLM service that failed its health check
description:
  - Collects the systemd unit's state, the last lines of its journal (which holds the output of
    the container the unit runs in the foreground), the container's state and log when it still
    exists, and matches them against known failure patterns (out of memory, missing model
    files, port in use, image not found, GPU runtime, engine death, start limit, start timeout).
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
    description: Journal lines searched for known patterns.
    type: int
    default: 400
  settings:
    description: The service's settings named in hints (gpu_memory_util, max_model_len, port,
      image, model_dir, model_mount, start_timeout_s).
    type: dict
    default: {}
"""

RETURN = r"""
report:
  description: Multi-line diagnosis - what failed, hints, unit, container, log lines.
  type: str
  returned: always
hints:
  description: Known patterns found (pattern, hint), the most relevant first.
  type: list
  elements: dict
  returned: always
"""

import re

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vllm_health_probe import (
    container_log,
    container_state,
    describe_container,
    describe_unit,
    find_hints,
    journal,
    unit_state,
)

SETTINGS = ("gpu_memory_util", "max_model_len", "port", "image", "model_dir", "model_mount",
            "start_timeout_s")


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
        ),
        supports_check_mode=True,
    )
    p = module.params
    run = module.run_command
    unit = unit_state(run, p["service"])
    container = container_state(run, p["docker_bin"], p["container"])
    journal_lines = journal(run, p["service"], p["lines"])
    scan = journal(run, p["service"], p["scan_lines"], output="cat")
    log_lines = []
    if container is not None and container["exists"]:
        log_lines = container_log(run, p["docker_bin"], p["container"], p["lines"])
    scan_text = scan + log_lines
    if unit is not None:
        scan_text.append("result %s" % unit["result"])
    if container is not None and container.get("oom_killed"):
        scan_text.append("oom-kill")
    settings = dict((k, p["settings"].get(k, "")) for k in SETTINGS)
    settings["port_owner"] = ""
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
