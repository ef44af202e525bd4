#!/usr/bin/python
"""Ansible module: read-only status of the vLLM service on one host."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vllm_status
short_description: Report the vLLM unit, container, model commit and live metrics of a host
description:
  - Reads systemd's view of the unit, C(docker inspect) of the container and its image, the
    model manifest, and vLLM's Prometheus C(/metrics). Changes nothing.
options:
  service_name: {description: systemd unit name without .service., type: str, required: true}
  container_name: {description: Container name., type: str, required: true}
  model_dir: {description: Model directory holding .sparkfleet-manifest.json., type: path, required: true}
  port: {description: Endpoint port., type: int, required: true}
author: sparkfleet
"""

RETURN = r"""
status:
  description: unit (active, sub, restarts, since), container (running, health, started_at,
    uptime_s, image, image_id, digests), model (repo_id, commit), metrics (requests_running,
    requests_waiting, kv_cache_usage_perc, prompt_tokens, generation_tokens, ttft_mean_s,
    requests_ok), metrics_error.
  returned: always
  type: dict
"""

import datetime
import json
import os
import re
import subprocess
import urllib.request

from ansible.module_utils.basic import AnsibleModule

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
    rc, out, _ = _run(["systemctl", "show", name + ".service", "--property",
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
    rc, out, _ = _run(["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", image_id])
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


def main():
    module = AnsibleModule(
        argument_spec={
            "service_name": {"type": "str", "required": True},
            "container_name": {"type": "str", "required": True},
            "model_dir": {"type": "path", "required": True},
            "port": {"type": "int", "required": True},
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
    }
    try:
        url = "http://127.0.0.1:%d/metrics" % params["port"]
        with urllib.request.urlopen(url, timeout=10) as resp:
            status["metrics"] = parse_metrics(resp.read().decode("utf-8", "replace"))
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        status["metrics_error"] = "%s: %s" % (type(exc).__name__, exc)
    module.exit_json(changed=False, status=status)


if __name__ == "__main__":
    main()
