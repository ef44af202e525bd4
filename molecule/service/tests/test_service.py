"""The service scenario: what converge left on svc-spark, then the ways a Spark fails.

Static checks first (unit, environment file, container, image record, API key), then runs of
converge.yml driven from here: a second run that must change nothing, bad settings that must be
refused before anything changes, and faults injected through the stand-in's control file in the
model directory (the lab's own data; the unit mounts it read-only into the container): a crash
after start, out of memory at start-up, a model directory emptied under a deployed service.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import model_profile

SCENARIO = Path(__file__).resolve().parents[1]
INVENTORY = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
HOST = "svc-spark"
API_KEY = "sparklab-svc-key-0f3a9c"  # molecule.yml, host_vars
PROFILE = model_profile.load()  # the card's settings, as the roles read them
MODEL_DIR = PROFILE.model_dir
MOUNT = PROFILE.model_mount
CONTROL = f"{MODEL_DIR}/.vllm-standin.json"
SERVED = PROFILE.served_model_name
IMAGE = PROFILE.image.rsplit(":", 1)[0]
CARD_ENV = PROFILE.container_env()
CARD_CHAT = PROFILE.chat_request("Hello! What can you do?")


# --------------------------------------------------------------------------- helpers

# Liveness limits for a loaded machine (CI runs this scenario beside two other stages on two
# cores), not bounds on how fast anything is: a playbook run, a wait on the host.
PLAYBOOK_TIMEOUT_S = 1800
WAIT_TIMEOUT_S = 600


def sh(command: str, check: bool = True, timeout: float = 300) -> str:
    """Run ``command`` on the simulated host (docker exec, quicker than testinfra's ansible)."""
    res = subprocess.run(
        ["docker", "exec", HOST, "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and res.returncode != 0:
        raise AssertionError(f"{command!r} exited {res.returncode}: {res.stdout}{res.stderr}")
    return res.stdout


def unit_props(*names: str) -> dict[str, str]:
    out = sh("systemctl show vllm.service " + " ".join(f"--property={n}" for n in names))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def timespan_s(text: str) -> float:
    """Seconds in a systemd time span as ``systemctl show`` prints it (``1min 27.311s``)."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
    total = 0.0
    for value, unit in re.findall(r"([0-9.]+)(us|ms|min|s|h)", text):
        total += float(value) * units[unit]
    return total


def snapshot() -> dict[str, str]:
    """What a refused run must leave alone: files, the container, systemd's last reload."""
    return {
        "files": sh(
            "sha256sum /etc/systemd/system/vllm.service /etc/vllm/vllm.env "
            "/etc/vllm/vllm.image.json /etc/systemd/system/vllm-proxy.service "
            "/etc/vllm/vllm-proxy.cfg /etc/vllm/vllm-proxy.keys"
        ),
        "started_at": sh("docker inspect -f '{{.State.StartedAt}}' minimax").strip(),
        "units_loaded": sh("systemctl show --property=UnitsLoadTimestampMonotonic").strip(),
        "main_pid": unit_props("MainPID")["MainPID"],
        # the proxy's unit rewrites this file at each start and reload
        "proxy_loaded": sh("stat -c %y /run/vllm-proxy/loaded").strip(),
    }


class Run:
    """One ansible-playbook run of converge.yml and what it left."""

    def __init__(self, proc: subprocess.CompletedProcess[str], result_file: Path) -> None:
        self.rc = proc.returncode
        self.output = proc.stdout + proc.stderr
        text = result_file.read_text() if result_file.is_file() else ""
        self.result: dict[str, Any] = json.loads(text) if text.strip() else {}

    def json_output(self) -> dict[str, Any]:
        start = self.output.index("{")
        data: dict[str, Any] = json.JSONDecoder().raw_decode(self.output[start:])[0]
        return data

    def failures(self) -> list[str]:
        """Messages of the failed tasks (json stdout callback)."""
        messages = []
        for play in self.json_output()["plays"]:
            for task in play["tasks"]:
                result = task["hosts"].get(HOST, {})
                if result.get("failed"):
                    messages.append(str(result.get("msg", "")))
        return messages

    def changed_tasks(self) -> dict[str, Any]:
        """Results of the tasks that reported a change (json stdout callback)."""
        return {
            t["task"]["name"]: t["hosts"][HOST]
            for p in self.json_output()["plays"]
            for t in p["tasks"]
            if t["hosts"].get(HOST, {}).get("changed")
        }

    def task_names(self) -> list[str]:
        return [t["task"]["name"] for p in self.json_output()["plays"] for t in p["tasks"]]


@functools.cache
def image_digest() -> str:
    """The digest converge pinned the image to, from the image record."""
    ref: str = json.loads(sh("cat /etc/vllm/vllm.image.json"))["current"]["ref"]
    return ref.rsplit("@", 1)[1]


def converge(*args: str, json_output: bool = False, timeout: float = PLAYBOOK_TIMEOUT_S) -> Run:
    """Run converge.yml (as molecule does) with extra arguments."""
    digest = image_digest()
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.json"
        env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
        if json_output:
            env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.builtin.json"
        proc = subprocess.run(
            ["ansible-playbook", "-i", str(INVENTORY), str(SCENARIO / "converge.yml"),
             "-e", f"sparklab_result_file={result_file}",
             "-e", f"sparklab_image_digest={digest}", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )  # fmt: skip
        return Run(proc, result_file)


def wait_for(
    what: str, predicate: Any, timeout: float = WAIT_TIMEOUT_S, every: float = 0.5
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def restart_and_wait_until_active() -> None:
    """The unit cleared and restarted; returns once it is active (serving). A first start may
    fail while Docker releases the port of the container before; Restart= then retries."""
    sh("systemctl reset-failed vllm.service; systemctl restart --no-block vllm.service")
    wait_for(
        "the service to be active",
        lambda: unit_props("ActiveState")["ActiveState"] == "active",
    )


def restore_service() -> None:
    """No fault injected (a quick load), the unit cleared and restarted; returns once it serves."""
    inject({"load_seconds": 1})
    restart_and_wait_until_active()


def inject(control: dict[str, Any]) -> None:
    sh(f"printf '%s' {shlex.quote(json.dumps(control))} > {CONTROL}")


def curl(args: str) -> tuple[int, str]:
    """(HTTP status, body) of a curl on the host."""
    out = sh(f"curl -sS -o /tmp/curl.out -w '%{{http_code}}' {args}; echo; cat /tmp/curl.out")
    status, _, body = out.partition("\n")
    return int(status), body


# --------------------------------------------------------------------------- what converge left


def test_unit_file_runs_the_cards_launch(host: Any) -> None:
    unit = host.file("/etc/systemd/system/vllm.service")
    assert unit.mode == 0o644
    text = unit.content_string
    assert text.startswith("#\n# Ansible managed")
    digest = host.file("/etc/vllm/vllm.image.json").content_string
    ref = json.loads(digest)["current"]["ref"]
    assert re.fullmatch(rf"{IMAGE}:v23@sha256:[0-9a-f]{{64}}", ref)
    exec_start = " ".join(text.split("ExecStart=", 1)[1].split("\n#", 1)[0].split()).replace(
        " \\ ", " "
    )
    for part in [
        "/usr/bin/docker run --rm --name minimax --pull=never",
        "--device nvidia.com/gpu=all --ipc=host",
        f"-v {MODEL_DIR}:{MOUNT}:ro -v /var/cache/sparkfleet/vllm/vllm:/root/.cache/vllm",
        "--network host --env-file /etc/vllm/vllm.env --log-driver json-file",
        'u.urlopen(\\"http://127.0.0.1:18000/health\\", timeout=5)',
        f"--health-start-period=900s --health-retries=3 {ref}",
    ]:
        assert part in exec_start
    for line in [
        "ExecStartPre=-/bin/sh -c '/usr/bin/docker rm -f minimax 2>/dev/null'",
        "ExecStop=/usr/bin/docker stop -t 60 minimax",
        "Restart=always",
        "RestartSec=3",
        "TimeoutStartSec=900",
        "TimeoutStopSec=90",
        "StartLimitBurst=5",
    ]:
        assert f"\n{line}\n" in text
    # vllm_drop_caches=auto: on, as the host's (stand-in) GPU is a GB10
    assert "\nExecStartPre=-/bin/sh -c 'sync && echo 3 > /proc/sys/vm/drop_caches'\n" in text
    assert API_KEY not in text
    verify = host.run("systemd-analyze verify /etc/systemd/system/vllm.service")
    assert verify.rc == 0, verify.stderr


def test_environment_file_is_private_and_holds_the_key(host: Any) -> None:
    directory = host.file("/etc/vllm")
    assert (directory.mode, directory.user) == (0o700, "root")
    env_file = host.file("/etc/vllm/vllm.env")
    assert (env_file.mode, env_file.user, env_file.group) == (0o600, "root", "root")
    entries = [line for line in env_file.content_string.splitlines() if not line.startswith("#")]
    # never the key: Docker and containerd keep a container's environment in files others read
    assert dict(e.split("=", 1) for e in entries) == CARD_ENV


def test_container_runs_with_the_cards_environment_and_a_read_only_model() -> None:
    info = json.loads(sh("docker inspect minimax"))[0]
    assert info["State"]["Running"]
    image_env = json.loads(sh(f"docker image inspect {shlex.quote(info['Image'])}"))[0]
    inherited = dict(e.split("=", 1) for e in image_env["Config"]["Env"] or [])
    env = dict(e.split("=", 1) for e in info["Config"]["Env"])
    added = {k: v for k, v in env.items() if inherited.get(k) != v}
    assert added == CARD_ENV
    mounts = {(m["Source"], m["Destination"], m["RW"]) for m in info["Mounts"]}
    assert (MODEL_DIR, MOUNT, False) in mounts  # read-only; the others are the caches
    assert {m[1] for m in mounts} == {
        MOUNT,
        "/root/.cache/vllm",
        "/root/.cache/flashinfer",
        "/root/.triton",
    }
    assert info["HostConfig"]["IpcMode"] == "host"
    # the GPU through CDI (the toolkit's spec), which a systemd daemon-reload cannot take away
    requests = [(r["Driver"], r["DeviceIDs"]) for r in info["HostConfig"]["DeviceRequests"]]
    assert requests == [("cdi", ["nvidia.com/gpu=all"])]
    # on the host's network, vLLM listening on the loopback only: the proxy is the way in
    assert info["HostConfig"]["NetworkMode"] == "host"
    assert not info["HostConfig"]["PortBindings"]
    probe = info["Config"]["Healthcheck"]["Test"]
    assert probe[0] == "CMD-SHELL" and "127.0.0.1:18000/health" in probe[1]
    sh("docker exec minimax " + " ".join(shlex.quote(p) for p in ["sh", "-c", probe[1]]))
    wait_for(
        "Docker's health check to pass",
        lambda: sh("docker inspect -f '{{.State.Health.Status}}' minimax").strip() == "healthy",
        60,
    )


def test_the_key_never_reaches_a_command_line_or_the_journal() -> None:
    assert API_KEY not in sh("ps -eo args")
    assert API_KEY not in sh("journalctl --no-pager -o cat")
    assert API_KEY not in sh("systemctl show vllm.service")


def test_the_previous_image_stays_for_a_rollback(host: Any) -> None:
    record = json.loads(host.file("/etc/vllm/vllm.image.json").content_string)
    running = sh("docker inspect -f '{{.Image}}' minimax").strip()
    assert record["current"]["id"] == running
    older = sh(f"docker image inspect -f '{{{{.Id}}}}' {IMAGE}:v22").strip()
    assert record["previous"] == {"ref": f"{IMAGE}:v22", "id": older}
    assert older != running


KEYLESS: dict[str, tuple[str, int, int | None]] = {
    # request: (curl arguments, status through the proxy, status from vLLM itself)
    "GET /health": ("/health", 200, 200),
    "GET /metrics": ("/metrics", 200, 200),
    "GET /v1/models": ("/v1/models", 401, 200),
    "POST /v1/chat/completions": (
        f"-d {shlex.quote(json.dumps(CARD_CHAT))} /v1/chat/completions",
        401,
        200,
    ),
    "POST /invocations": (f"-d {shlex.quote(json.dumps(CARD_CHAT))} /invocations", 401, 200),
    "POST /tokenize": ("""-d '{"prompt": "Hello"}' /tokenize""", 401, 200),
    "POST /health": ("-X POST /health", 401, 405),
    "GET /%761/models (an encoded /v1)": ("/%761/models", 401, None),
}


@pytest.mark.parametrize("request_line", list(KEYLESS))
def test_requests_without_the_key_are_refused_on_every_route_but_health(request_line: str) -> None:
    """vLLM's own key would leave /invocations and /tokenize open (vllm#58144), so vLLM gets none:
    on its loopback port everything answers; through the proxy, the only way in from outside,
    every route but /health and /metrics is refused."""
    args, via_proxy, direct = KEYLESS[request_line]
    target = args.rsplit(" ", 1)
    head = target[0] + " " if len(target) == 2 else ""
    json_type = "-H 'Content-Type: application/json' "
    status, body = curl(f"{json_type}{head}http://127.0.0.1:8000{target[-1]}")
    assert status == via_proxy, body
    if status == 401:  # OpenAI's error shape, which clients' SDKs read
        assert json.loads(body)["error"]["code"] == "invalid_api_key"
    if direct is not None:
        assert curl(f"{json_type}{head}http://127.0.0.1:18000{target[-1]}")[0] == direct


# Authorization headers as vLLM 0.16's AuthenticationMiddleware.verify_token reads the first one
# (entrypoints/openai/server_utils.py: value.partition(" "), scheme "bearer" in any case, the
# rest exactly the key); the proxy accepts exactly what it accepts.
AUTHORIZATION: dict[str, tuple[list[str], int]] = {
    "Bearer KEY": ([f"Bearer {API_KEY}"], 200),
    "bearer KEY": ([f"bearer {API_KEY}"], 200),
    "BEARER KEY": ([f"BEARER {API_KEY}"], 200),
    "Bearer KEY, trailing space (HTTP strips it)": ([f"Bearer {API_KEY} "], 200),
    "Bearer  KEY (two spaces)": ([f"Bearer  {API_KEY}"], 401),
    "Bearer KEY junk": ([f"Bearer {API_KEY} junk"], 401),
    "Bearer KEYx": ([f"Bearer {API_KEY}x"], 401),
    "BearerKEY": ([f"Bearer{API_KEY}"], 401),
    "Basic KEY": ([f"Basic {API_KEY}"], 401),
    "KEY alone": ([API_KEY], 401),
    "a wrong header, then the right one": (["Bearer nope", f"Bearer {API_KEY}"], 401),
}


@pytest.mark.parametrize("case", list(AUTHORIZATION))
def test_the_key_is_matched_exactly_as_vllm_matches_it(case: str) -> None:
    headers, status = AUTHORIZATION[case]
    args = " ".join(f"-H {shlex.quote('Authorization: ' + h)}" for h in headers)
    assert curl(f"{args} http://127.0.0.1:8000/v1/models")[0] == status


def test_the_proxy_is_the_only_way_in_from_the_network() -> None:
    """From the controller on the lab network: the proxy's port answers (401 without the key),
    vLLM's loopback port does not answer at all."""
    address = _sparklab_address(HOST)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://{address}:8000/v1/models", timeout=10)
    assert refused.value.code == 401
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://{address}:18000/health", timeout=10)
    assert "127.0.0.1:18000" in sh("ss -Hltn 'sport = :18000'")
    assert "0.0.0.0:8000" in sh("ss -Hltnp 'sport = :8000'")
    assert "haproxy" in sh("ss -Hltnp 'sport = :8000'")


# Connects to each (address, port) given as JSON and prints what happened: "open" or the error.
_CONNECT_PROBE = """
import json, socket, sys
result = {}
for address, port in json.loads(sys.argv[1]):
    try:
        socket.create_connection((address, port), timeout=5).close()
        result[f"{address}:{port}"] = "open"
    except OSError as exc:
        result[f"{address}:{port}"] = type(exc).__name__
print(json.dumps(result))
"""


def _sparklab_address(container: str) -> str:
    return subprocess.run(
        ["docker", "inspect", "-f", '{{(index .NetworkSettings.Networks "sparklab").IPAddress}}',
         container], capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def test_a_lan_neighbour_routing_to_the_hosts_containers_reaches_only_the_proxy() -> None:
    """A neighbour on the lab LAN that routes Docker's bridge networks through the host (Docker
    before 28 forwards such traffic to a published container port, even one published on
    127.0.0.1 only) reaches no vLLM port: vLLM runs on the host's network, on the loopback. A
    container bridged as vLLM's was before, started here, shows the neighbour does get through."""
    address = _sparklab_address(HOST)
    assert json.loads(sh("docker inspect minimax"))[0]["HostConfig"]["NetworkMode"] == "host"
    control = f"sparklab-bridged-{uuid.uuid4().hex[:8]}"
    image = sh("docker inspect -f '{{.Image}}' minimax").strip()
    sh(f"docker run -d --rm --name {control} -p 127.0.0.1:18999:8000 --entrypoint python3 "
       f"{image} -m http.server 8000")  # fmt: skip
    try:
        wait_for("the bridged container", lambda: curl("http://127.0.0.1:18999/")[0] == 200, 60)
        subnets = sh("docker network inspect bridge -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}'")
        addresses = sh(
            "docker ps -q | xargs docker inspect -f "
            "'{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}'"
        ).split()
        control_ip = sh(f"docker inspect -f '{{{{.NetworkSettings.IPAddress}}}}' {control}").strip()
        assert control_ip in addresses
        targets = [[address, 18000]] + [[ip, port] for ip in addresses for port in (8000, 18000)]
        routes = " && ".join(f"ip route add {net} via {address}" for net in subnets.split())
        neighbour = subprocess.run(
            ["docker", "run", "--rm", "--network", "sparklab", "--cap-add", "NET_ADMIN",
             "--label", "sparklab.molecule=service", "--entrypoint", "sh",
             "sparklab/spark-sim:latest", "-c",
             f"{routes} && python3 -c {shlex.quote(_CONNECT_PROBE)} "
             f"{shlex.quote(json.dumps(targets))} && curl -s -o /dev/null -w '%{{http_code}}' http://{address}:8000/v1/models"],
            capture_output=True, text=True, timeout=300, check=True,
        ).stdout.splitlines()  # fmt: skip
        reached = json.loads(neighbour[0])
        assert reached.pop(f"{control_ip}:8000") == "open"  # the hole the host network closes
        assert "open" not in reached.values(), reached
        assert neighbour[1] == "401"  # the proxy: the way in, with the key
    finally:
        sh(f"docker rm -f {control}", check=False)


def test_the_proxy_passes_a_stream_as_it_comes() -> None:
    """A streamed chat through the proxy arrives in events as vLLM sends them: the first one
    long before the last (the stand-in decodes 28 tokens a second)."""
    auth = f"-H 'Authorization: Bearer {API_KEY}'"
    request = dict(CARD_CHAT, stream=True, max_tokens=60)
    body = shlex.quote(json.dumps(request))
    script = (f"curl -sSN {auth} -H 'Content-Type: application/json' -d {body} "
              "http://127.0.0.1:8000/v1/chat/completions | while IFS= read -r line; do "
              'if [ -n "$line" ]; then echo "$(date +%s.%N) ${line%%,*}"; fi; done')  # fmt: skip
    lines = sh(script).splitlines()
    assert lines[-1].endswith("data: [DONE]")
    stamps = [float(line.split(" ", 1)[0]) for line in lines]
    # decoding 60 tokens takes ~2 s; a buffering proxy would hand them over all at once
    assert stamps[-1] - stamps[0] > 1.0, lines


def test_endpoint_answers_the_cards_curl_example_with_the_key() -> None:
    auth = f"-H 'Authorization: Bearer {API_KEY}'"
    status, body = curl(f"{auth} http://localhost:8000/v1/models")
    assert status == 200
    models = json.loads(body)["data"]
    assert [(m["id"], m["max_model_len"]) for m in models] == [(SERVED, PROFILE.max_model_len)]
    status, body = curl(
        f"{auth} http://localhost:8000/v1/chat/completions "
        f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(CARD_CHAT))}"
    )
    assert status == 200
    content = json.loads(body)["choices"][0]["message"]["content"]
    assert re.match(r"^<think>.+</think>\s*\S", content, re.DOTALL)


# --------------------------------------------------------------------------- runs


def test_second_run_reloads_and_restarts_nothing() -> None:
    before = snapshot()
    run = converge(json_output=True)
    assert run.rc == 0, run.output[-3000:]
    assert run.json_output()["stats"][HOST]["changed"] == 0, run.changed_tasks()
    handlers = {"Reload systemd units", "Stop vllm for the restart", "Start vllm again"}
    assert not handlers & set(run.task_names())
    assert snapshot() == before
    assert run.result["healthy"] is True
    tool_call = {"function": "get_weather", "arguments": {"location": "Paris"}}
    assert run.result["tool_call"] == tool_call
    assert run.result["unauthenticated_status"] == 401
    # through the proxy, without the key: the routes vLLM's own key leaves open are refused too
    assert run.result["refused"] == {"GET /v1/models": 401, "POST /v1/chat/completions": 401,
                                     "POST /invocations": 401, "POST /tokenize": 401}  # fmt: skip
    # and with it, streamed and not: an answer after the reasoning, a tool call
    assert run.result["streamed"]["tool_call"] == tool_call
    assert run.result["streamed"]["answer"] and run.result["streamed"]["chunks"] > 1
    assert run.result["attempts"] == {"chat": 1, "chat_stream": 1, "tool_call": 1,
                                      "tool_call_stream": 1}  # fmt: skip
    assert all(isinstance(v, float) for v in run.result["latency_ms"].values())


BAD_INPUTS = {
    "util 0.95": (
        ["-e", "vllm_gpu_memory_util=0.95"],
        "vllm_gpu_memory_util=0.95 is outside the allowed range (0, 0.93]",
    ),
    "util 0": (
        ["-e", "vllm_gpu_memory_util=0"],
        "vllm_gpu_memory_util=0 is outside the allowed range (0, 0.93]",
    ),
    "max len 300000": (
        ["-e", "vllm_max_model_len=300000"],
        "vllm_max_model_len=300000 is outside the allowed range 1-196608",
    ),
    "port 0": (["-e", "vllm_port=0"], "vllm_port=0 is outside the allowed range 1-65535"),
    "extra arg with a quote": (
        ["-e", json.dumps({"vllm_extra_args": ["--trust-remote-code", '--served-model-name="x"']})],
        'vllm_extra_args holds ["--served-model-name=\\"x\\""]: allowed in each item are letters',
    ),
    "empty model dir": (
        ["-e", "vllm_model_dir=/srv/models/empty"],
        "vllm_model_dir=/srv/models/empty is not a complete model: config.json is missing; "
        "no model.safetensors.index.json and no *.safetensors file",
    ),
    "model dir missing a shard": (
        ["-e", "vllm_model_dir=/srv/models/partial"],
        "vllm_model_dir=/srv/models/partial is not a complete model: 1 of 20 shards named by "
        "the index are missing or empty (model-00007-of-00020.safetensors)",
    ),
    "bind address the host does not have": (
        ["-e", "vllm_bind_address=198.51.100.77"],
        'vllm_bind_address="198.51.100.77" is not an address of svc-spark: allowed are 0.0.0.0, '
        "::, 127.0.0.1, ::1, 172.",
    ),
    "digest not sha256": (
        ["-e", "vllm_image_digest=sha256:1234"],
        'vllm_image_digest="sha256:1234" empty or sha256: followed by 64 lowercase hex digits',
    ),
}


@pytest.fixture(scope="module")
def refused_runs() -> Iterator[tuple[dict[str, Run], dict[str, str], dict[str, str]]]:
    """Every bad input run at once (they fail before changing anything), plus a check-mode run."""
    before = snapshot()
    cases = {name: [*args, "--tags", "service"] for name, (args, _msg) in BAD_INPUTS.items()}
    cases["check mode"] = ["--check", "--diff", "--tags", "service", "-e", "vllm_drop_caches=false"]
    cases["check mode, proxy"] = ["--check", "--diff", "--tags", "service",
                                  "-e", "vllm_metrics_require_key=true"]  # fmt: skip
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            name: pool.submit(converge, *args, json_output=not name.startswith("check mode"))
            for name, args in cases.items()
        }
        runs = {name: future.result() for name, future in futures.items()}
    yield runs, before, snapshot()


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_before_anything_changes(
    case: str, refused_runs: tuple[dict[str, Run], dict[str, str], dict[str, str]]
) -> None:
    runs, before, after = refused_runs
    run = runs[case]
    assert run.rc == 2, run.output[-2000:]
    failures = run.failures()
    assert len(failures) == 1
    assert BAD_INPUTS[case][1] in failures[0]
    stats = run.json_output()["stats"][HOST]
    assert stats["changed"] == 0
    assert "Write the systemd unit" not in run.task_names()
    assert after == before


def test_check_mode_shows_a_change_without_making_it(
    refused_runs: tuple[dict[str, Run], dict[str, str], dict[str, str]],
) -> None:
    runs, before, after = refused_runs
    run = runs["check mode"]
    assert run.rc == 0, run.output[-2000:]
    assert "-ExecStartPre=-/bin/sh -c 'sync && echo 3 > /proc/sys/vm/drop_caches'" in run.output
    assert re.search(rf"{HOST}\s*: ok=\d+\s+changed=[1-9]", run.output)
    assert after == before
    # a proxy setting: the proxy's configuration changes (and is reloaded), never vLLM's unit
    run = runs["check mode, proxy"]
    assert run.rc == 0, run.output[-2000:]
    assert "-    acl open_route path /metrics" in run.output
    reload = re.search(r"TASK \[vllm_service : Reload the proxy whose loaded [^\n]*\n(\w+)",
                       run.output)  # fmt: skip
    assert reload and reload[1] == "changed", run.output[-3000:]
    assert "changed: [svc-spark] => (item=vllm.service)" not in run.output
    stop = re.search(r"TASK \[vllm_service : Stop the service that runs another[^\n]*\n(\w+)",
                     run.output)  # fmt: skip
    assert stop and stop[1] == "skipping", run.output[-3000:]


# --------------------------------------------------------------------------- faults


def test_crash_after_start_is_restarted_and_health_goes_green_again() -> None:
    state_dir = f"/dev/shm/sparklab-crash-{uuid.uuid4().hex[:8]}"
    try:
        inject({"fault": "crash_after_start:2", "load_seconds": 1, "state_dir": state_dir})
        sh("systemctl reset-failed vllm.service", timeout=300)
        before = int(unit_props("NRestarts")["NRestarts"])
        # The server dies 2 s after it is ready: the unit's start succeeds when ExecStartPost's
        # /health poll (every 2 s) catches it up in time, and fails ("the control process
        # exited with error code") when the crash comes first, as a loaded machine makes
        # likely. Either way systemd restarts it (Restart=always), which is what is checked.
        restart = subprocess.run(
            ["docker", "exec", HOST, "systemctl", "restart", "vllm.service"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert restart.returncode == 0 or "control process exited" in restart.stderr, (
            restart.stdout + restart.stderr
        )

        def restarted() -> bool:
            props = unit_props("NRestarts", "ActiveState", "SubState")
            return int(props["NRestarts"]) > before and props["SubState"] in (
                "start-post",
                "running",
            )

        wait_for("systemd to restart the crashed service", restarted)
        run = converge("--tags", "health")
        assert run.rc == 0, run.output[-3000:]
        assert run.result["healthy"] is True
        assert run.result["unit"]["restarts"] > before
        journal = sh("journalctl -u vllm.service --no-pager -o cat -n 200")
        assert "EngineDeadError" in journal
        assert "Scheduled restart job" in journal
        sh(f"test -f {state_dir}/vllm-standin-crashed")
        # the back-off grows (RestartSteps, systemd >= 254): the next delay exceeds the first
        delays = unit_props("RestartUSec", "RestartUSecNext", "RestartSteps")
        assert delays["RestartSteps"] == "5"
        assert timespan_s(delays["RestartUSecNext"]) > timespan_s(delays["RestartUSec"]), delays
    finally:
        sh(f"rm -rf {state_dir}", check=False)
        restore_service()


@pytest.mark.long
def test_out_of_memory_at_start_fails_fast_with_a_hint() -> None:
    try:
        inject({"fault": "oom_at_start", "load_seconds": 20})
        sh("systemctl reset-failed vllm.service; systemctl restart --no-block vllm.service")
        run = converge("--tags", "health", "-e", "vllm_health_progress_s=2")
        assert run.rc == 2, run.output[-3000:]
        result = run.result
        assert result["healthy"] is False
        assert result["failed_task"] == "Wait for the endpoint to answer /health"
        assert "vllm.service died" in result["failure"]
        assert result["wait_elapsed_s"] < 900  # failed at the death, not at the budget's end
        hints = result["diagnosis"]["hints"]
        assert hints[0]["pattern"] == "out_of_memory"
        assert "lower vllm_gpu_memory_util (now 0.93" in hints[0]["hint"]
        assert re.search(
            r"loading: \d+ s of 900 s; vllm.service activating \(start-post\)", run.output
        )
        assert "Hint: out of memory at start-up" in run.output
        journal = sh("journalctl -u vllm.service --no-pager -o cat -n 400")
        assert "torch.OutOfMemoryError: CUDA out of memory" in journal
        assert "Journal of vllm.service (last 30 lines):" in run.output
    finally:
        restore_service()


@pytest.mark.long
def test_model_dir_emptied_under_the_service_is_diagnosed() -> None:
    aside = f"{MODEL_DIR}.aside"
    try:
        sh(f"mv {MODEL_DIR} {aside} && mkdir {MODEL_DIR}")
        sh("systemctl reset-failed vllm.service; systemctl restart --no-block vllm.service")
        run = converge("--tags", "health")
        assert run.rc == 2, run.output[-3000:]
        hints = run.result["diagnosis"]["hints"]
        assert hints[0]["pattern"] == "model_files"
        assert f"vllm_model_dir={MODEL_DIR}" in hints[0]["hint"]
        assert "Invalid repository ID or local directory specified" in run.output
    finally:
        sh(f"test -d {aside} && rm -rf {MODEL_DIR} && mv {aside} {MODEL_DIR}", check=False)
        restore_service()


@pytest.mark.long
def test_port_clash_is_diagnosed() -> None:
    try:
        sh("systemctl stop vllm.service")
        # vLLM's loopback port (the proxy's port is HAProxy's)
        sh("systemd-run --unit sparklab-squatter python3 -m http.server --bind 127.0.0.1 18000")
        wait_for("the squatter to listen", lambda: curl("http://127.0.0.1:18000/")[0] == 200, 30)
        sh("systemctl start --no-block vllm.service")
        run = converge("--tags", "health")
        assert run.rc == 2, run.output[-3000:]
        hints = run.result["diagnosis"]["hints"]
        assert hints[0]["pattern"] == "port_in_use"
        assert "vllm_internal_port=18000 is already taken on the host (held by" in hints[0]["hint"]
        assert '"python3"' in hints[0]["hint"]
        # vLLM's own bind() on the host's network (Docker's proxy said "address already in use")
        assert "OSError: [Errno 98] Address already in use" in run.output
    finally:
        sh("systemctl stop sparklab-squatter", check=False)
        restore_service()


# ------------------------------------------------------------------------ the service's life cycle


def _serves() -> bool:
    cmd = "curl -fs -o /dev/null -m 5 http://127.0.0.1:8000/health && echo ok"
    return sh(cmd, check=False).strip() == "ok"


def _restarted_since(before: int) -> bool:
    props = unit_props("NRestarts", "SubState")
    return int(props["NRestarts"]) > before and props["SubState"] in ("start-post", "running")


@contextlib.contextmanager
def serving_with_fault(fault: str) -> Iterator[int]:
    """The service restarted with ``fault`` (once: its marker lives in a fresh state dir under
    /dev/shm, the host's with --ipc=host); yields the restart count once it serves, and puts the
    service back without a fault afterwards."""
    state_dir = f"/dev/shm/sparklab-fault-{uuid.uuid4().hex[:8]}"
    try:
        inject({"fault": fault, "load_seconds": 1, "state_dir": state_dir})
        restart_and_wait_until_active()
        yield int(unit_props("NRestarts")["NRestarts"])
    finally:
        sh(f"rm -rf {state_dir}", check=False)
        restore_service()


def test_an_engine_that_exits_0_is_restarted_by_design() -> None:
    """vLLM 0.16 exits 0 when its engine dies after start-up (vllm#48966): Restart=on-failure
    would leave the service dead; Restart=always brings it back."""
    with serving_with_fault("engine_death_after_start:8") as before:
        wait_for("systemd to restart the service after exit 0", lambda: _restarted_since(before))
        journal = sh("journalctl -u vllm.service --no-pager -o cat -n 300")
        after_death = journal.rsplit("EngineCore encountered a fatal error", 1)[1]
        # a clean exit (systemd logs no failure for status 0), then a restart all the same
        assert "Finished server process" in after_death
        restart = after_death.index("Scheduled restart job")
        # systemd logs "Main process exited, code=..., status=..." only for a failure
        assert "Main process exited" not in after_death[:restart]
        wait_for("the restarted server to serve", _serves)


@pytest.mark.long
def test_a_server_stuck_answering_503_after_readiness_is_restarted() -> None:
    with serving_with_fault("unready_after_start:4") as before:
        wait_for("the watch to have the server restarted", lambda: _restarted_since(before))
        watch = sh("journalctl -u vllm-watch.service --no-pager -o cat -n 50")
        assert "has not answered /health with 200 for" in watch
        wait_for("the restarted server to serve", _serves)
        run = converge("--tags", "health")
        assert run.rc == 0 and run.result["unit"]["restarts"] > before, run.output[-3000:]


def _served_len() -> int:
    status, body = curl(
        f"-m 10 -H 'Authorization: Bearer {API_KEY}' http://127.0.0.1:8000/v1/models"
    )
    assert status == 200, body
    return int(json.loads(body)["data"][0]["max_model_len"])


def test_a_deploy_killed_after_the_environment_write_is_finished_by_the_next_run() -> None:
    env_file = "/etc/vllm/vllm.env"
    try:
        digest = image_digest()
        proc = subprocess.Popen(
            ["ansible-playbook", "-i", str(INVENTORY), str(SCENARIO / "converge.yml"),
             "-e", f"sparklab_image_digest={digest}", "-e", "vllm_max_model_len=32768",
             "--tags", "service"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            wait_for(
                "the run to write the new environment",
                lambda: "MAX_MODEL_LEN=32768" in sh(f"cat {env_file}"),
                every=0.1,
            )
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # killed before it restarted anything: the server still runs the old setting
        assert _served_len() == PROFILE.max_model_len
        # the next run writes nothing new, but finds the container started with another
        # configuration and restarts it
        run = converge("-e", "vllm_max_model_len=32768", "--tags", "service", json_output=True)
        assert run.rc == 0, run.output[-3000:]
        changed = [name.split(" : ", 1)[-1] for name in run.changed_tasks()]  # without the role
        # (a kill that came after the stop leaves the unit stopped: then the start finishes it)
        restarted = ("Stop the service that runs another", "Start the service")
        assert any(name.startswith(restarted) for name in changed), changed
        assert not any(name.startswith("Write the container environment") for name in changed)
        run = converge("-e", "vllm_max_model_len=32768", "--tags", "health")
        assert run.rc == 0, run.output[-3000:]
        assert _served_len() == 32768
        again = converge("-e", "vllm_max_model_len=32768", json_output=True)
        assert again.rc == 0, again.output[-3000:]
        assert again.json_output()["stats"][HOST]["changed"] == 0, again.changed_tasks()
    finally:
        converge()
        assert _served_len() == PROFILE.max_model_len


@pytest.mark.long
def test_a_narrowed_bind_address_is_where_health_and_status_look(tmp_path: Path) -> None:
    """With vllm_bind_address one of the host's addresses, nothing answers on 127.0.0.1:8000:
    the health check and status.yml reach the proxy at that address."""
    address = _sparklab_address(HOST)
    narrowed = ("-e", f"vllm_bind_address={address}")
    try:
        run = converge(*narrowed, "--tags", "service,health")
        assert run.rc == 0, run.output[-3000:]
        assert run.result["healthy"] is True
        assert run.result["endpoint"] == f"http://{address}:8000/v1"
        assert f"{address}:8000" in sh("ss -Hltn 'sport = :8000'")
        assert curl("http://127.0.0.1:8000/health")[0] == 0  # nothing there
        status_file = tmp_path / "status.json"
        status = subprocess.run(
            ["ansible-playbook", "-i", str(INVENTORY), str(SCENARIO.parents[1] / "playbooks" /
             "status.yml"), *narrowed, "-e", f"fleet_status_output_file={status_file}"],
            capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT_S, check=False,
            env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0"),
        )  # fmt: skip
        assert status.returncode == 0, status.stdout[-3000:]
        report = json.loads(status_file.read_text())[HOST]
        assert report["metrics_error"] is None and report["metrics"], report
    finally:
        run = converge("--tags", "service")
        assert run.rc == 0, run.output[-3000:]


@pytest.mark.long
def test_a_host_running_the_bridged_container_is_moved_to_the_host_network() -> None:
    """As the role left a host before: vLLM in a bridged container published on 127.0.0.1
    (PORT 8000 inside, -p 127.0.0.1:18000:8000) under another configuration digest. One run
    restarts it on the host's network; the next changes nothing."""
    unit = sh("cat /etc/systemd/system/vllm.service")
    env = sh("cat /etc/vllm/vllm.env")
    label = re.search(r"sparkfleet\.config=([0-9a-f]{64})", unit)
    assert label
    old_unit = unit.replace("--network host", "-p 127.0.0.1:18000:8000").replace(label[1], "0" * 64)
    old_env = env.replace("HOST=127.0.0.1\n", "").replace("PORT=18000", "PORT=8000")
    assert old_unit != unit and old_env != env
    sh(f"printf '%s' {shlex.quote(old_unit)} > /etc/systemd/system/vllm.service")
    sh(f"printf '%s' {shlex.quote(old_env)} > /etc/vllm/vllm.env")
    sh("systemctl daemon-reload")
    restart_and_wait_until_active()
    assert json.loads(sh("docker inspect minimax"))[0]["HostConfig"]["NetworkMode"] != "host"
    run = converge(json_output=True)
    assert run.rc == 0, run.output[-3000:]
    changed = {name.split(" : ", 1)[-1] for name in run.changed_tasks()}
    assert "Stop the service that runs another configuration than the one written" in changed
    assert json.loads(sh("docker inspect minimax"))[0]["HostConfig"]["NetworkMode"] == "host"
    again = converge(json_output=True)
    assert again.rc == 0, again.output[-3000:]
    assert again.json_output()["stats"][HOST]["changed"] == 0, again.changed_tasks()


def _listening(port: int) -> bool:
    return sh(f"ss -Hltn 'sport = :{port}' | wc -l").strip() != "0"


@pytest.mark.long
def test_renamed_unit_container_and_port_replace_the_old_instance_and_back() -> None:
    moved = ["-e", "vllm_service_name=vllm-b", "-e", "vllm_container_name=minimax-b",
             "-e", "vllm_port=8001"]  # fmt: skip
    try:
        run = converge(*moved)
        assert run.rc == 0, run.output[-3000:]
        containers = sh("docker ps --format '{{.Names}}'").split()
        assert containers == ["minimax-b"]
        assert sh("test -e /etc/systemd/system/vllm.service; echo $?").strip() == "1"
        assert sh("systemctl is-active vllm-b.service").strip() == "active"
        assert not _listening(8000) and _listening(8001)
        assert unit_props("LoadState")["LoadState"] == "not-found"  # vllm.service is gone
    finally:
        back = converge()
        assert back.rc == 0, back.output[-3000:]
    assert sh("docker ps --format '{{.Names}}'").split() == ["minimax"]
    assert _listening(8000) and not _listening(8001)
    assert sh("systemctl show -p LoadState --value vllm-b.service").strip() == "not-found"
    record = json.loads(sh("cat /var/lib/sparkfleet/vllm-instance.json"))
    assert record == {"service": "vllm", "container": "minimax", "port": 8000,
                      "config_dir": "/etc/vllm"}  # fmt: skip


# ------------------------------------------------------------------------ the proxy and the key


def _proxy_pid() -> str:
    return sh("systemctl show -p MainPID --value vllm-proxy.service").strip()


@pytest.mark.long
def test_a_proxy_change_reloads_the_proxy_and_leaves_vllm_alone() -> None:
    """A proxy setting is applied by a graceful reload (same master process, vLLM's container
    untouched); a run killed after writing the configuration but before the reload is finished
    by the next one, which finds the running proxy loaded other files."""
    default_config = sh("cat /etc/vllm/vllm-proxy.cfg")
    before = snapshot()
    pid = _proxy_pid()
    try:
        run = converge("-e", "vllm_metrics_require_key=true", "--tags", "service",
                       json_output=True)  # fmt: skip
        assert run.rc == 0, run.output[-3000:]
        changed = {name.split(" : ", 1)[-1] for name in run.changed_tasks()}
        assert changed == {
            "Write the proxy's configuration (no secret in it)",
            "Reload the proxy whose loaded configuration or key differs from the files",
        }, changed
        assert curl("http://127.0.0.1:8000/metrics")[0] == 401
        assert curl(f"-H 'Authorization: Bearer {API_KEY}' http://127.0.0.1:8000/metrics")[0] == 200
        assert curl("http://127.0.0.1:8000/health")[0] == 200
        after = snapshot()
        assert (after["started_at"], after["main_pid"]) == (
            before["started_at"],
            before["main_pid"],
        )
        assert _proxy_pid() == pid
        # as a run killed between the write and the reload leaves it
        sh(f"printf '%s' {shlex.quote(default_config)} > /etc/vllm/vllm-proxy.cfg")
        run = converge("--tags", "service", json_output=True)
        assert run.rc == 0, run.output[-3000:]
        changed = {name.split(" : ", 1)[-1] for name in run.changed_tasks()}
        assert changed == {
            "Reload the proxy whose loaded configuration or key differs from the files"
        }, changed
        assert curl("http://127.0.0.1:8000/metrics")[0] == 200
    finally:
        converge("--tags", "service")
    assert snapshot()["started_at"] == before["started_at"]


@pytest.mark.long
def test_a_reload_that_fails_is_not_recorded_as_loaded() -> None:
    """A configuration HAProxy checks as valid but cannot apply (an address the host does not
    have): the reload fails, the old workers go on serving, and the record of what the proxy
    loaded stays, so the next run of the role still sees the files differ from what runs."""
    config = sh("cat /etc/vllm/vllm-proxy.cfg")
    loaded = sh("cat /run/vllm-proxy/loaded")
    pid = _proxy_pid()
    try:
        sh("sed -i 's/^    bind .*/    bind 198.51.100.77:8000/' /etc/vllm/vllm-proxy.cfg")
        sh("haproxy -c -q -f /etc/vllm/vllm-proxy.cfg")  # the check does not bind: it passes
        reload = subprocess.run(
            ["docker", "exec", HOST, "systemctl", "reload", "vllm-proxy"],
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert reload.returncode != 0
        assert sh("cat /run/vllm-proxy/loaded") == loaded
        assert _proxy_pid() == pid
        assert "started no new worker" in sh("journalctl -u vllm-proxy -n 20 --no-pager -o cat")
        authorized = f"-H 'Authorization: Bearer {API_KEY}' http://127.0.0.1:8000/v1/models"
        wait_for("the old workers to serve again", lambda: curl(authorized)[0] == 200, 60)
    finally:
        sh(f"printf '%s' {shlex.quote(config)} > /etc/vllm/vllm-proxy.cfg")
    # what runs is what the files say again: the next run writes nothing and reloads nothing
    run = converge("--tags", "service", json_output=True)
    assert run.rc == 0, run.output[-3000:]
    assert run.json_output()["stats"][HOST]["changed"] == 0, run.changed_tasks()


@pytest.mark.long
def test_the_cards_sampling_served_as_vllms_defaults() -> None:
    """vllm_serve_card_sampling: vLLM starts with --override-generation-config and a request
    that sets no sampling gets the card's (the checkpoint's generation_config.json has no
    min_p); --enable-log-requests makes vLLM log what each request got."""
    logged = ["-e", json.dumps({"vllm_extra_args": [*PROFILE.extra_args, "--enable-log-requests"]})]
    card = PROFILE.sampling
    try:
        run = converge("-e", "vllm_serve_card_sampling=true", *logged)
        assert run.rc == 0 and run.result["healthy"], run.output[-3000:]
        args = sh("cat /etc/vllm/vllm.env | grep ^VLLM_EXTRA_ARGS=")
        assert (
            "--override-generation-config="
            + json.dumps(card, sort_keys=True, separators=(",", ":"))
            in args
        )
        bare = {
            "model": SERVED,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 8,
        }
        status, _body = curl(
            f"-H 'Authorization: Bearer {API_KEY}' -H 'Content-Type: application/json' "
            f"-d {shlex.quote(json.dumps(bare))} http://127.0.0.1:8000/v1/chat/completions"
        )
        assert status == 200
        journal = sh("journalctl -u vllm.service --no-pager -o cat -n 300")
        started = journal.rsplit("non-default args", 1)[1]
        assert (
            "Using default chat sampling params from model: {'temperature': 1.0, 'top_k': 40, "
            "'top_p': 0.95, 'min_p': 0.01}" in started
        )
        received = [line for line in started.splitlines() if "Received request chatcmpl" in line]
        expected = (f"temperature={card['temperature']}, top_p={card['top_p']}, "
                    f"top_k={card['top_k']}, min_p={card['min_p']}")  # fmt: skip
        assert expected in received[-1], received[-1:]
    finally:
        back = converge()
        assert back.rc == 0, back.output[-3000:]


def test_the_benchmark_goes_through_the_proxy_with_the_key(tmp_path: Path) -> None:
    extra = {
        "llm_benchmark_prefill_tokens": [512],
        "llm_benchmark_decode_tokens": 16,
        "llm_benchmark_long_context_tokens": 0,
        "llm_benchmark_runs": 1,
        "llm_benchmark_latency_mode": "none",
        "llm_benchmark_results_dir": str(tmp_path),
    }
    proc = subprocess.run(
        ["ansible-playbook", "-i", str(INVENTORY),
         str(SCENARIO.parents[1] / "playbooks" / "benchmark.yml"), "-e", json.dumps(extra)],
        capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT_S, check=False,
        env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0"),
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    (run_dir,) = tmp_path.iterdir()
    fleet = json.loads((run_dir / "fleet.json").read_text())
    (report,) = fleet["hosts"]
    # the host's port 8000 is the proxy's (vLLM's own is on its loopback): measured through it,
    # with the key (the proxy refuses every request without it)
    assert report["summary"]["decode_tps"] > 0, report
    assert API_KEY not in proc.stdout + proc.stderr


def _files_holding_the_key() -> dict[str, str]:
    """Every file under the host's writable trees that holds the key, with its mode."""
    out = sh(
        f"grep -rlsF -- {shlex.quote(API_KEY)} /etc /var /run /tmp /root /home /opt /srv "
        "| xargs -r stat -c '%a %U %n'",
        timeout=300,
    )
    return {line.split(" ", 2)[2]: line.split(" ", 2)[0] + " " + line.split(" ", 2)[1]
            for line in out.splitlines()}  # fmt: skip


def test_after_every_run_the_key_is_in_0600_root_files_only_and_never_in_argv_or_the_journal() -> (
    None
):
    assert API_KEY not in sh("ps -eo args")
    assert API_KEY not in sh("journalctl --no-pager -o cat")
    files = _files_holding_the_key()
    assert files == {"/etc/vllm/vllm-proxy.keys": "600 root"}


def test_uninstall_removes_the_proxy_and_only_the_haproxy_it_installed() -> None:
    uninstall = SCENARIO.parents[1] / "playbooks" / "uninstall.yml"

    def run_uninstall() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ansible-playbook", "-i", str(INVENTORY), str(uninstall)],
            capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT_S, check=False,
            env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0"),
        )  # fmt: skip

    installed = "dpkg-query -W -f '${Status}' haproxy 2>/dev/null; true"
    assert json.loads(sh("cat /var/lib/sparkfleet/vllm-proxy.json")) == {"installed_haproxy": True}
    # the package's own instance, which nothing configured, does not run beside the proxy
    assert sh(
        "systemctl is-enabled haproxy.service; systemctl is-active haproxy.service", check=False
    ).split() == ["disabled", "inactive"]
    proc = run_uninstall()
    assert proc.returncode == 0, proc.stdout[-3000:]
    for path in ("/etc/systemd/system/vllm-proxy.service", "/etc/vllm/vllm-proxy.cfg",
                 "/etc/vllm/vllm-proxy.keys", "/var/lib/sparkfleet/vllm-proxy.json"):  # fmt: skip
        assert sh(f"test -e {path}; echo $?").strip() == "1", path
    assert "install ok installed" not in sh(installed)  # the role installed it: removed
    assert not _listening(8000) and not _listening(18000)
    again = run_uninstall()
    assert again.returncode == 0 and re.search(rf"{HOST}\s*: ok=\d+\s+changed=0", again.stdout)
    # a HAProxy the host had before is adopted, and kept by the uninstall
    sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy",
       timeout=PLAYBOOK_TIMEOUT_S)  # fmt: skip
    run = converge("--tags", "service")
    assert run.rc == 0, run.output[-3000:]
    assert json.loads(sh("cat /var/lib/sparkfleet/vllm-proxy.json")) == {"installed_haproxy": False}
    # the host's own instance is left alone (its enablement is dpkg's: a reinstall after a
    # removal without purge keeps the state the package had)
    leave = re.search(r"TASK \[vllm_service : Stop and disable the distribution's [^\n]*\n(\w+)",
                      run.output)  # fmt: skip
    assert leave and leave[1] == "skipping", run.output[-3000:]
    install = re.search(r"TASK \[vllm_service : Install HAProxy from the [^\n]*\n(\w+)",
                        run.output)  # fmt: skip
    assert install and install[1] == "skipping", run.output[-3000:]
    proc = run_uninstall()
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "install ok installed" in sh(installed)
