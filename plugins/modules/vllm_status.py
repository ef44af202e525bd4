#!/usr/bin/python
"""Ansible module: read-only status of the vLLM service on one host."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vllm_status
short_description: Report the vLLM unit, container, model commit and live metrics of a host
version_added: 0.1.0
description:
  - Reads systemd's view of the unit, C(docker inspect) of the container and its image, the
    model manifest, and vLLM's Prometheus C(/metrics). Changes nothing.
options:
  service_name: {description: systemd unit name without .service., type: str, required: true}
  container_name: {description: Container name., type: str, required: true}
  model_dir: {description: Model directory holding .sparkfleet-manifest.json., type: path, required: true}
  port: {description: "Endpoint port (C(/metrics) is read from C(http://ADDRESS:PORT)).", type: int, required: true}
  address:
    description:
      - Address the endpoint listens on, as seen from the host (an IPv6 address without brackets).
    type: str
    default: 127.0.0.1
  pair_role:
    description:
      - A pair of Sparks' member role (its vllm_pair_role); empty for a single host. C(head) and
        C(worker) also read the pair's Ray cluster inside the container (its members' nodes,
        with address, alive and GPUs); a C(worker) serves no API, so its C(/metrics) is not read.
    type: str
    default: ""
    choices: ["", head, worker]
  pair_members:
    description: Both members of the pair, each with C(name), C(role) and C(address) (its vllm_pair_address).
    type: list
    elements: dict
    default: []
  gcs_address:
    description: The head's Ray GCS, C(ADDRESS:PORT).
    type: str
    default: ""
  docker_bin:
    description: Docker client (reads the cluster inside the container).
    type: path
    default: docker
author: sparkfleet maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Read the host's serving state
  sparkfleet.spark.vllm_status:
    service_name: vllm
    container_name: minimax
    model_dir: /opt/huggingface/models/MiniMax-M2.5-REAP-172B-NVFP4
    port: 8000
  register: vllm_status
  check_mode: false

- name: Show it
  ansible.builtin.debug:
    msg: >-
      {{ vllm_status.status.unit.active }}/{{ vllm_status.status.unit.sub }},
      model commit {{ (vllm_status.status.model.commit or '-')[:12] }},
      {{ vllm_status.status.metrics.requests_running | default('-') }} request(s) running
"""

RETURN = r"""
status:
  description: The host's serving state.
  returned: always
  type: dict
  contains:
    unit:
      description: systemd's view of the unit.
      type: dict
      returned: always
      contains:
        loaded:
          description: Whether the unit is loaded.
          type: bool
          returned: always
        active:
          description: C(ActiveState) (C(unknown) when not read).
          type: str
          returned: always
          sample: active
        sub:
          description: C(SubState).
          type: str
          returned: always
          sample: running
        restarts:
          description: C(NRestarts), null when unknown.
          type: int
          returned: always
        since:
          description: C(ActiveEnterTimestamp).
          type: str
          returned: always
    container:
      description: C(docker inspect) of the container and of its image.
      type: dict
      returned: always
      contains:
        present:
          description: Whether the container exists.
          type: bool
          returned: always
        running:
          description: Whether it runs.
          type: bool
          returned: always
        error:
          description: Why C(docker inspect) failed.
          type: str
          returned: when the container does not exist
        health:
          description: Docker's health status, null without a health check.
          type: str
          returned: when present
        started_at:
          description: When it started.
          type: str
          returned: when present
        uptime_s:
          description: Seconds since then, null when not running.
          type: int
          returned: when present
        image:
          description: The image reference it was created from.
          type: str
          returned: when present
        image_id:
          description: Its image id.
          type: str
          returned: when present
        digests:
          description: C(RepoDigests) of that image.
          type: list
          elements: str
          returned: when present
    model:
      description: From the model dir's C(.sparkfleet-manifest.json).
      type: dict
      returned: always
      contains:
        repo_id:
          description: Repository id, null without a manifest.
          type: str
          returned: always
        commit:
          description: Commit fetched, null without a manifest.
          type: str
          returned: always
        files:
          description: Number of files listed.
          type: int
          returned: when the manifest exists
    metrics:
      description: >-
        From C(/metrics), summed over labels - requests_running, requests_waiting,
        kv_cache_usage_perc, prompt_tokens, generation_tokens, requests_ok (those the server
        exports) and ttft_mean_s (null when no request was served); empty when not read.
      type: dict
      returned: always
    metrics_error:
      description: Why C(/metrics) could not be read, null when it was (and on a pair's worker).
      type: str
      returned: always
    pair:
      description: >-
        A pair's member - role, head (its host), peer, members (name, role, address, node_id,
        alive, gpus: as the Ray cluster has them, an empty list when it could not be read),
        problems (sentences naming the host), error (why the cluster could not be read, else
        null); null on a single host.
      type: dict
      returned: always
"""

import datetime
import json
import os
import re
import subprocess

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url
from ansible_collections.sparkfleet.spark.plugins.module_utils.vllm_pair_ray import (
    judge,
    parse_nodes,
    probe_argv,
)

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
GAUGES = {
    "vllm:num_requests_running": "requests_running",
    "vllm:num_requests_waiting": "requests_waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage_perc",
    "vllm:prompt_tokens_total": "prompt_tokens",
    "vllm:generation_tokens_total": "generation_tokens",
    "vllm:request_success_total": "requests_ok",
    "vllm:time_to_first_token_seconds_sum": "_ttft_sum",
    "vllm:time_to_first_token_seconds_count": "_ttft_count",
}


def parse_metrics(text):
    """Sum the samples of the metrics we report over their labels."""
    totals = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        if not match or match.group(1) not in GAUGES:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        key = GAUGES[match.group(1)]
        totals[key] = totals.get(key, 0.0) + value
    count = totals.pop("_ttft_count", 0.0)
    total = totals.pop("_ttft_sum", 0.0)
    result = {k: int(v) if k != "kv_cache_usage_perc" and v == int(v) else v
              for k, v in totals.items()}
    result["ttft_mean_s"] = (total / count) if count else None
    return result


def _run(argv):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout.strip(), proc.stderr.strip()


def unit_status(name):
    rc, out, _err = _run(["systemctl", "show", name + ".service", "--property",
                         "ActiveState,SubState,NRestarts,ActiveEnterTimestamp,LoadState"])
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line) if rc == 0 else {}
    return {
        "loaded": props.get("LoadState") == "loaded",
        "active": props.get("ActiveState", "unknown"),
        "sub": props.get("SubState", "unknown"),
        "restarts": int(props["NRestarts"]) if props.get("NRestarts", "").isdigit() else None,
        "since": props.get("ActiveEnterTimestamp", ""),
    }


def _parse_time(stamp):
    stamp = re.sub(r"(\.\d{6})\d*", r"\1", stamp).replace("Z", "+00:00")
    try:
        return datetime.datetime.fromisoformat(stamp)
    except ValueError:
        return None


def container_status(name):
    rc, out, err = _run(["docker", "inspect", name])
    if rc != 0:
        return {"present": False, "running": False, "error": err}
    info = json.loads(out)[0]
    state = info.get("State", {})
    started = _parse_time(state.get("StartedAt", ""))
    uptime = None
    if state.get("Running") and started:
        uptime = int((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds())
    image_id = info.get("Image", "")
    rc, out, _err = _run(["docker", "image", "inspect", "--format", "{{json .RepoDigests}}",
                          image_id])
    digests = json.loads(out) if rc == 0 and out else []
    return {
        "present": True,
        "running": bool(state.get("Running")),
        "health": (state.get("Health") or {}).get("Status"),
        "started_at": state.get("StartedAt"),
        "uptime_s": uptime,
        "image": info.get("Config", {}).get("Image"),
        "image_id": image_id,
        "digests": digests or [],
    }


def model_status(model_dir):
    try:
        with open(os.path.join(model_dir, ".sparkfleet-manifest.json")) as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return {"repo_id": None, "commit": None}
    return {"repo_id": manifest.get("repo_id"), "commit": manifest.get("commit"),
            "files": len(manifest.get("files", {}))}


def pair_status(role, members, gcs_address, docker, container, service):
    """The pair's Ray cluster as this member's container reads it (module option pair)."""
    members = [{"name": str(m.get("name", "")), "role": str(m.get("role", "")),
                "address": str(m.get("address", ""))} for m in members]
    head = next((m["name"] for m in members if m["role"] == "head"), "")
    peer = next((m["name"] for m in members if m["role"] != role), "")
    status = {"role": role, "head": head, "peer": peer, "members": [], "problems": [],
              "error": None}
    if not container.get("running"):
        status["error"] = "the container does not run"
        return status
    nodes, error = parse_nodes(*_run(probe_argv(docker, container["name"], gcs_address)))
    if nodes is None:
        status["error"] = error
        return status
    status["members"], status["problems"] = judge(nodes, members, service)
    return status


def main():
    module = AnsibleModule(
        argument_spec={
            "service_name": {"type": "str", "required": True},
            "container_name": {"type": "str", "required": True},
            "model_dir": {"type": "path", "required": True},
            "port": {"type": "int", "required": True},
            "address": {"type": "str", "default": "127.0.0.1"},
            "pair_role": {"type": "str", "default": "", "choices": ["", "head", "worker"]},
            "pair_members": {"type": "list", "elements": "dict", "default": []},
            "gcs_address": {"type": "str", "default": ""},
            "docker_bin": {"type": "path", "default": "docker"},
        },
        supports_check_mode=True,
    )
    params = module.params
    status = {
        "unit": unit_status(params["service_name"]),
        "container": container_status(params["container_name"]),
        "model": model_status(params["model_dir"]),
        "metrics": {},
        "metrics_error": None,
        "pair": None,
    }
    if params["pair_role"]:
        container = dict(status["container"], name=params["container_name"])
        status["pair"] = pair_status(params["pair_role"], params["pair_members"],
                                     params["gcs_address"], params["docker_bin"], container,
                                     params["service_name"])
    if params["pair_role"] == "worker":
        module.exit_json(changed=False, status=status)  # no API, no /metrics
    try:
        address = params["address"]
        host = "[%s]" % address if ":" in address else address
        url = "http://%s:%d/metrics" % (host, params["port"])
        resp = open_url(url, timeout=10)
        status["metrics"] = parse_metrics(resp.read().decode("utf-8", "replace"))
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        status["metrics_error"] = "%s: %s" % (type(exc).__name__, exc)
    module.exit_json(changed=False, status=status)


if __name__ == "__main__":
    main()
