# Apache-2.0
"""What the vllm_health modules share: the unit's and the container's state, their logs,
HTTP requests to the endpoint, and the known failure patterns with their hints."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request

UNIT_PROPERTIES = [
    "LoadState",
    "ActiveState",
    "SubState",
    "Result",
    "NRestarts",
    "MainPID",
    "ExecMainStatus",
    "Job",
    "InvocationID",
]


def _int(text, default=0):
    try:
        return int(text)
    except (TypeError, ValueError):
        return default


def unit_state(run, service):
    """The unit's state as a dict, or None when no unit is watched (``service`` empty)."""
    if not service:
        return None
    name = service if service.endswith(".service") else service + ".service"
    argv = ["systemctl", "show", name] + [f"--property={p}" for p in UNIT_PROPERTIES]
    _rc, out, _err = run(argv)
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {
        "name": name,
        "load": props.get("LoadState", ""),
        "active": props.get("ActiveState", ""),
        "sub": props.get("SubState", ""),
        "result": props.get("Result", ""),
        "restarts": _int(props.get("NRestarts")),
        "main_pid": _int(props.get("MainPID")),
        "exit_status": _int(props.get("ExecMainStatus")),
        "job_pending": props.get("Job", "").strip() not in ("", "0"),
        "invocation": props.get("InvocationID", "").strip(),
    }


def unit_death(unit, baseline_restarts):
    """Why the unit counts as dead (a sentence), or None while it may still come up."""
    if unit is None:
        return None
    if unit["load"] == "not-found":
        return "is not installed (no such unit)"
    if unit["restarts"] > baseline_restarts:
        count = unit["restarts"] - baseline_restarts
        return f"died and systemd restarted it ({count} restart(s) since the wait began)"
    if unit["job_pending"]:
        return None  # a start or restart is queued: the unit is changing state, not dead
    outcome = f"result {unit['result']}, exit status {unit['exit_status']}"
    if unit["sub"] == "auto-restart":
        return f"died (systemd restarts it after RestartSec; {outcome})"
    if unit["active"] == "failed":
        return f"failed ({outcome})"
    if unit["active"] in ("inactive", "deactivating"):
        return f"is not running ({unit['active']}, {unit['sub']})"
    starting = unit["active"] == "activating" and unit["sub"] in ("start", "start-post")
    if starting and not unit["main_pid"]:
        return f"lost its main process (exit status {unit['exit_status']})"
    return None


def describe_unit(unit):
    if unit is None:
        return "no unit watched"
    text = f"{unit['name']} {unit['active']} ({unit['sub']})"
    if unit["result"] not in ("", "success"):
        text += f", result {unit['result']}, exit status {unit['exit_status']}"
    if unit["restarts"]:
        text += f", {unit['restarts']} automatic restart(s)"
    return text


def container_state(run, docker, name):
    """The container's state as a dict, or None when no container is watched."""
    if not name:
        return None
    rc, out, _err = run([docker, "inspect", "--format", "{{json .State}}", name])
    if rc != 0:
        return {"name": name, "exists": False}
    try:
        state = json.loads(out)
    except ValueError:
        return {"name": name, "exists": False}
    health = state.get("Health") or {}
    return {
        "name": name,
        "exists": True,
        "status": state.get("Status", ""),
        "running": bool(state.get("Running")),
        "health": health.get("Status", ""),
        "started_at": state.get("StartedAt", ""),
        "exit_code": state.get("ExitCode", 0),
        "oom_killed": bool(state.get("OOMKilled")),
    }


def describe_container(container):
    if container is None:
        return "no container watched"
    if not container["exists"]:
        return (
            f"container {container['name']} absent (the unit runs it with --rm: its output is "
            "in the journal)"
        )
    text = f"container {container['name']} {container['status']}"
    if container["health"]:
        text += f" (health: {container['health']})"
    if not container["running"]:
        text += f", exit code {container['exit_code']}"
    if container["oom_killed"]:
        text += ", killed by the kernel's OOM killer"
    return text


def journal(run, service, lines, output="short-iso"):
    if not service:
        return []
    name = service if service.endswith(".service") else service + ".service"
    argv = ["journalctl", "--unit", name, "--lines", str(lines), "--no-pager", "--quiet"]
    _rc, out, _err = run([*argv, "--output", output])
    return out.splitlines()[-lines:]


def invocation_lines(run, service, lines, invocation, since=0.0):
    """The messages among the unit's last ``lines`` journal entries that belong to its invocation
    ``invocation`` (systemd's InvocationID: the current run, or the last one when it is not
    running), or were logged at or after ``since`` (epoch seconds; 0 for none), oldest first.

    An entry's invocation is its ``_SYSTEMD_INVOCATION_ID`` (the unit's own output) or
    ``INVOCATION_ID`` (systemd's messages about the unit, its "Main process exited, ...,
    status=137" among them): journalctl's JSON output (systemd.journal-fields(7)). A journal
    whose entries carry no invocation at all gives every message, as before systemd 233.
    """
    if not service:
        return []
    name = service if service.endswith(".service") else service + ".service"
    argv = ["journalctl", "--unit", name, "--lines", str(lines), "--no-pager", "--quiet",
            "--output", "json"]
    _rc, out, _err = run(argv)
    entries = []
    for line in out.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("MESSAGE") if isinstance(entry, dict) else None
        if isinstance(message, list):  # journald's form of a message that is not UTF-8
            message = bytes(b for b in message if isinstance(b, int) and 0 <= b < 256)
            message = message.decode("utf-8", "replace")
        if not isinstance(message, str):
            continue
        at = _int(entry.get("__REALTIME_TIMESTAMP")) / 1e6
        owner = entry.get("_SYSTEMD_INVOCATION_ID") or entry.get("INVOCATION_ID") or ""
        entries.append((at, owner, message))
    if not any(owner for _at, owner, _message in entries):
        return [message for _at, _owner, message in entries]
    return [message for at, owner, message in entries
            if (invocation and owner == invocation) or (since and at >= since)]


def container_log(run, docker, name, lines):
    if not name:
        return []
    script = 'exec "$0" logs --tail "$1" "$2" 2>&1'  # both streams, in order
    rc, out, _err = run(["/bin/sh", "-c", script, docker, str(lines), name])
    return out.splitlines()[-lines:] if rc == 0 else []


def http(url, method="GET", payload=None, api_key="", timeout=10.0):
    """(status, parsed JSON body or text, milliseconds); status 0 when nothing answered."""
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if api_key:
        request.add_header("Authorization", "Bearer " + api_key)
    started = time.monotonic()
    try:
        with _opener(url).open(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (OSError, ValueError) as exc:  # refused, reset, timed out, bad URL
        return 0, str(exc), (time.monotonic() - started) * 1000.0
    elapsed = (time.monotonic() - started) * 1000.0
    text = body.decode("utf-8", "replace")
    try:
        return status, json.loads(text) if text.strip() else "", elapsed
    except ValueError:
        return status, text, elapsed


def _opener(url):
    host = urllib.parse.urlsplit(url).hostname or ""
    local = host in ("127.0.0.1", "localhost", "::1")
    return urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if local else []))


def sse(url, payload, api_key="", timeout=10.0):
    """POST ``payload`` and read the answer as a server-sent event stream, as vLLM sends it.

    Returns a dict: ``status`` (0 when nothing answered), ``error`` (why the stream is not a
    valid one, or the body of a non-200 answer; "" when valid), ``events`` (the JSON objects of
    the ``data:`` lines), ``done`` (``data: [DONE]`` came last), ``first_event_ms`` and
    ``total_ms`` (milliseconds from the request to the first event and to the end).
    """
    data = json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("Accept", "text/event-stream")
    if api_key:
        request.add_header("Authorization", "Bearer " + api_key)
    result = {"status": 0, "error": "", "events": [], "done": False,
              "first_event_ms": None, "total_ms": None}
    started = time.monotonic()
    try:
        with _opener(url).open(request, timeout=timeout) as response:
            result["status"] = response.status
            kind = response.headers.get("Content-Type", "")
            if not kind.startswith("text/event-stream"):
                result["error"] = "Content-Type %r, not text/event-stream: %s" % (
                    kind, response.read(300).decode("utf-8", "replace"))
                return result
            for raw in response:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not line or line.startswith(":"):
                    continue  # event separator, comment
                if result["done"]:
                    result["error"] = "data after data: [DONE]: %r" % line[:200]
                    return result
                if not line.startswith("data: "):
                    result["error"] = "a line that is not an SSE data line: %r" % line[:200]
                    return result
                if result["first_event_ms"] is None:
                    result["first_event_ms"] = (time.monotonic() - started) * 1000.0
                text = line[len("data: "):]
                if text == "[DONE]":
                    result["done"] = True
                    continue
                try:
                    event = json.loads(text)
                except ValueError:
                    result["error"] = "an event that is not JSON: %r" % text[:200]
                    return result
                if not isinstance(event, dict):
                    result["error"] = "an event that is not a JSON object: %r" % text[:200]
                    return result
                result["events"].append(event)
    except urllib.error.HTTPError as exc:
        result["status"] = exc.code
        result["error"] = exc.read().decode("utf-8", "replace")[:300]
        return result
    except (OSError, ValueError) as exc:  # refused, reset, timed out mid-stream
        result["error"] = "the stream broke off: %s" % exc
        return result
    finally:
        result["total_ms"] = (time.monotonic() - started) * 1000.0
    if not result["done"]:
        result["error"] = "the stream ended without data: [DONE]"
    return result


def assemble_chat_stream(events):
    """One chat completion from its ``chat.completion.chunk`` events: a dict with ``content``,
    ``reasoning``, ``tool_calls`` (OpenAI's shape, ``arguments`` joined by index),
    ``argument_events`` (per tool call, by index: how many events carried a piece of its
    arguments), ``finish_reason``, ``usage`` (the last one sent), ``chunks``; or a sentence when
    an event is not a valid chunk."""
    content, reasoning, calls, argument_events = [], [], {}, {}
    finish, usage = None, None
    for event in events:
        if event.get("object") != "chat.completion.chunk":
            return "an event whose object is %r, not chat.completion.chunk" % event.get("object")
        if event.get("usage"):
            usage = event["usage"]
        for choice in event.get("choices") or []:
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                return "a chunk without a delta: %s" % json.dumps(choice)[:200]
            content.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning") or "")
            for call in delta.get("tool_calls") or []:
                if not isinstance(call, dict) or not isinstance(call.get("index"), int):
                    return "a tool-call delta without an index: %s" % json.dumps(call)[:200]
                entry = calls.setdefault(call["index"], {"id": None, "type": None,
                                                         "function": {"name": "", "arguments": ""}})
                entry["id"] = entry["id"] or call.get("id")
                entry["type"] = entry["type"] or call.get("type")
                function = call.get("function") or {}
                entry["function"]["name"] += function.get("name") or ""
                entry["function"]["arguments"] += function.get("arguments") or ""
                if function.get("arguments"):
                    argument_events[call["index"]] = argument_events.get(call["index"], 0) + 1
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
    return {"content": "".join(content), "reasoning": "".join(reasoning),
            "tool_calls": [calls[i] for i in sorted(calls)],
            "argument_events": [argument_events.get(i, 0) for i in sorted(calls)],
            "finish_reason": finish,
            "usage": usage, "chunks": len(events)}


# Known failure patterns: (key, regex over the journal and container log, hint template).
# The hint's {fields} come from the settings the role passes (the vllm_service variables); a
# [segment] is left out when a field in it has no value, so no hint shows a placeholder.
PATTERNS = [
    (
        "image_not_found",
        r"No such image|Unable to find image|pull access denied|manifest unknown|"
        r"repository does not exist",
        "image not found: the host does not hold the unit's image[ {image}] (the unit runs it "
        "with --pull=never). "
        "Re-run the vllm_service role (it pulls the image, vllm_image / vllm_image_digest) or "
        "`docker pull` it on the host.",
    ),
    (
        "port_in_use",
        r"address already in use|port is already allocated",
        "port in use: {port_variable}[={port}] is already taken on the host{port_owner}. Stop "
        "what holds it or choose another {port_variable}.",
    ),
    (
        "gpu_runtime",
        r"could not select device driver|nvidia-container-cli|Failed to initialize NVML|"
        r"unknown or invalid runtime name: nvidia",
        "Docker could not give the container the GPU: check the NVIDIA container toolkit "
        "(nvidia_container_toolkit role; `docker info` must list the nvidia runtime).",
    ),
    (
        "model_files",
        r"Invalid repository ID or local directory|No such file or directory: '[^']*"
        r"(\.safetensors|config\.json|\.json)'|safetensors shards missing|"
        r"Cannot find any model weights|invalid safetensors index",
        "model files missing: vLLM did not find the model[ under {model_mount}][ (vllm_model_dir="
        "{model_dir})]. Re-run the hf_model role (it fetches only what is missing) and check "
        "that the directory holds config.json and every shard of model.safetensors.index.json.",
    ),
    (
        "out_of_memory",
        r"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory|"
        r"Not enough memory|status=137|oom-kill|"
        # vLLM 0.16's own start-up checks (vllm/v1/worker/utils.py, vllm/v1/core/kv_cache_utils.py)
        r"is less than desired GPU memory utilization|No available memory for the cache blocks|"
        r"KV cache is needed, which is larger than the available KV cache memory",
        "out of memory at start-up: lower vllm_gpu_memory_util ([now {gpu_memory_util}; ]0.93 is "
        "the card's safe maximum, 0.95 fails) or vllm_max_model_len[ (now {max_model_len})], and "
        "consider vllm_drop_caches: true (on unified memory the page cache counts against the "
        "GPU).",
    ),
    (
        "start_limit",
        r"Start request repeated too quickly|start-limit-hit",
        "systemd stopped restarting the unit after repeated failures: fix the cause above, then "
        "re-run the vllm_service role (it clears the failed state) or `systemctl reset-failed`.",
    ),
    (
        "start_timeout",
        r"start-post operation timed out|start operation timed out|Result: timeout|result timeout",
        "the model did not answer within vllm_start_timeout_s[ ({start_timeout_s} s)]: systemd "
        "killed it. Look for a stalled load above (unified memory under pressure wedges loads).",
    ),
    (
        # A pair's head: a model step met a Ray worker that is gone (Ray's exceptions, as
        # ray.exceptions names them; vLLM's Ray executor does not check its workers before).
        "ray_worker_lost",
        r"ray\.exceptions\.(ActorDiedError|ActorUnavailableError|RayActorError|NodeDiedError|"
        r"RayChannelError|RayChannelTimeoutError)|The actor died unexpectedly",
        "the pair's server lost its Ray worker: the worker[ {pair_peer}][ ({pair_peer_address})] "
        "left the cluster. Look at it (`journalctl -u {service}`[ on {pair_peer}]); systemd "
        "restarts this server, which waits for the worker to join again.",
    ),
    (
        "engine_died",
        r"EngineDeadError|EngineCore encountered a fatal error|Engine core initialization failed",
        "the vLLM engine died: the lines above it name the cause. systemd restarts the unit "
        "whatever the exit status (Restart=always; vLLM 0.16 exits 0 when its engine dies).",
    ),
]

CONSEQUENCES = ("engine_died", "start_limit")
FIELD = re.compile(r"\{([a-z_]+)\}")


def fill(template, values):
    """``template`` with its {fields} from ``values`` (strings); a [segment] whose fields are
    not all given (missing or empty) is left out, a field outside one becomes its value or
    nothing."""

    def segment(match):
        inner = match.group(1)
        return inner if all(values.get(name) for name in FIELD.findall(inner)) else ""

    text = re.sub(r"\[([^\[\]]*)\]", segment, template)
    return FIELD.sub(lambda match: values.get(match.group(1)) or "", text)


def find_hints(lines, settings):
    """Hints for the known patterns found in ``lines``, the latest-occurring first."""
    found = []
    for key, regex, template in PATTERNS:
        pattern = re.compile(regex, re.IGNORECASE)
        positions = [i for i, line in enumerate(lines) if pattern.search(line)]
        if positions:
            found.append((positions[-1], key, template))
    found.sort(key=lambda item: -item[0])
    values = dict((k, "" if v is None else str(v)) for k, v in settings.items())
    if not values.get("port_variable"):
        values["port_variable"] = "vllm_port"  # the setting that names the port
    if not values.get("service"):
        values["service"] = "vllm"  # the role's default unit
    hints = [{"pattern": key, "hint": fill(template, values)} for _at, key, template in found]
    # Consequences (an engine death, systemd giving up) come after the cause they follow.
    causes = [h for h in hints if h["pattern"] not in CONSEQUENCES]
    return causes + [h for h in hints if h["pattern"] in CONSEQUENCES]
