"""The pair stand-in (``sparklab/vllm-standin-ray``: the vLLM stand-in with real Ray) and the
lab's simulated Spark pairs.

On the outer engine, on a network of the test's own: the entrypoint's Ray modes refuse a missing
HEAD_IP as the published script does; a head alone cannot serve with TENSOR_PARALLEL_SIZE=2 (vLLM
0.16's placement-group error, exit 1); once a worker has joined with ``ray start --address``
(two Ray nodes, one GPU each) the head serves, but only once the worker's own copy of the model
is there (each rank loads its weights from its own disk); Ray's dashboard answers on the head's
8265 as the real entrypoint starts it; a worker gone goes unnoticed by /health, and the next
request kills the engine (500) and ends the server, as vLLM's Ray executor does.

On two simulated Sparks (``tests/lab/pair.py``): each reaches the other over the pair network's
interface, whose MTU is the network's; the role ``spark_pair`` passes the pair as declared, and
refuses, before anything changes and naming both hosts and both values, a pair whose members
name different model revisions, a bad role value, an address the interface does not hold and a
link whose MTUs differ.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import yaml

from tests.lab import access, hosts, images, pair
from tests.lab.config import REPO_ROOT, LabConfig, venv_tool

pytestmark = pytest.mark.lab

CFG = LabConfig(host_prefix="pair-sim", host_label="sparklab.pairtest")
NET = pair.PairNet("sparklab-pairtest", "172.29.91.0/24", mtu=9000)
RAY_NET = "sparklab-raytest"
RAY_SUBNET = "172.29.92.0/24"
HEAD_IP = "172.29.92.10"
WORKER_IP = "172.29.92.11"
PORT = 8000
CONTEXT = 196608
# Ray nodes start slowly on a loaded 2-core machine: liveness limits, not bounds.
RAY_UP_S = 900
SERVE_UP_S = 600


@pytest.fixture(scope="module")
def image() -> str:
    """The pair stand-in, built (or reused) by the lab's own recipe."""
    base = images.build_base(CFG)
    return images.build_vllm_standin_ray(CFG, images.build_vllm_standin(CFG, base))


def run(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{args}\n{result.stdout}{result.stderr}"
    return result


MODEL = CFG.state_dir / "hub" / "repo" / "files"


def ray_container(
    image: str, name: str, ip: str, mode: str, *env: str, model: Path = MODEL
) -> None:
    # restarted on failure as a unit would be: `ray start` can time out on a loaded machine
    run("docker", "run", "-d", "--restart", "on-failure", "--name", name,
        "--network", RAY_NET, "--ip", ip, "--shm-size", "256m", "-v", f"{model}:/models:ro",
        *(arg for e in env for arg in ("-e", e)), image, mode)  # fmt: skip


def gpu_nodes() -> list[float]:
    """The GPU count of each live node of the head's Ray cluster."""
    script = (
        "import json, ray; ray.init(address='auto', logging_level='ERROR'); "
        "print(json.dumps([n['Resources'].get('GPU', 0) for n in ray.nodes() if n['Alive']]))"
    )
    res = run("docker", "exec", "w20t-head", "python3", "-c", script, check=False)
    return list(json.loads(res.stdout.splitlines()[-1])) if res.returncode == 0 else []


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    """Poll ``check`` every 3 s; fail after ``timeout`` s with the Ray containers' last logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(3)
    logs = {
        name: run("docker", "logs", "--tail", "15", name, check=False).stdout[-3000:]
        for name in ("w20t-head", "w20t-worker")
    }
    raise AssertionError(f"{what}: not within {timeout:.0f} s; logs: {logs}")


def serve(*extra_env: str) -> subprocess.Popen[str]:
    env = ["MODEL=/models", f"PORT={PORT}", "TENSOR_PARALLEL_SIZE=2", f"HEAD_IP={HEAD_IP}",
           f"MAX_MODEL_LEN={CONTEXT}", "VLLM_STANDIN_LOAD_SECONDS=1", *extra_env]  # fmt: skip
    return subprocess.Popen(
        ["docker", "exec", *(arg for e in env for arg in ("-e", e)), "w20t-head",
         "/opt/vllm-standin/entrypoint.sh", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def rss_mib(container: str) -> int:
    """The resident memory of every process in ``container``, summed, in MiB."""
    out = run("docker", "exec", container, "ps", "-eo", "rss=").stdout.split()
    return sum(int(kib) for kib in out) // 1024


def get(path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{HEAD_IP}:{PORT}{path}", timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def chat() -> int:
    body = json.dumps({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4})
    req = urllib.request.Request(
        f"http://{HEAD_IP}:{PORT}/v1/chat/completions",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def ray_net() -> Iterator[None]:
    names = ("w20t-head", "w20t-worker")
    run("docker", "rm", "-f", *names, check=False)
    run("docker", "network", "rm", RAY_NET, check=False)
    run("docker", "network", "create", "--subnet", RAY_SUBNET, RAY_NET)
    try:
        yield
    finally:
        run("docker", "rm", "-f", *names, check=False)
        run("docker", "network", "rm", RAY_NET, check=False)


def test_ray_modes_need_head_ip(image: str) -> None:
    worker = run("docker", "run", "--rm", image, "ray-worker", check=False)
    assert worker.returncode == 1
    assert "ERROR: HEAD_IP environment variable must be set for ray-worker mode" in worker.stdout
    served = run("docker", "run", "--rm", "-e", "MODEL=/models", "-e", "TENSOR_PARALLEL_SIZE=2",
                 image, "serve", check=False)  # fmt: skip
    assert served.returncode == 1
    assert "ERROR: HEAD_IP must be set for distributed execution (TP > 1)" in served.stdout
    unknown = run("docker", "run", "--rm", image, "ray-leader", check=False)
    assert unknown.returncode == 1
    assert "Valid modes: ray-head, ray-worker, serve, bash" in unknown.stderr


def test_single_host_standin_has_no_ray() -> None:
    standin = images.build_vllm_standin(CFG, images.build_base(CFG))
    res = run("docker", "run", "--rm", "-e", "HEAD_IP=127.0.0.1", standin, "ray-head", check=False)
    assert res.returncode == 127, res.stdout + res.stderr


@pytest.mark.ray
def test_pair_serves_only_with_both_members(image: str, ray_net: None, tmp_path: Path) -> None:
    worker_model = tmp_path / "worker-models"
    worker_model.mkdir()
    ray_container(image, "w20t-head", HEAD_IP, "ray-head", f"HEAD_IP={HEAD_IP}")
    wait_for("the head's Ray node", lambda: gpu_nodes() == [1.0], RAY_UP_S)

    alone = serve("VLLM_STANDIN_PG_WAIT_SECONDS=15")
    out, _ = alone.communicate(timeout=600)
    assert alone.returncode == 1, out
    assert "Cannot provide a placement group requiring 2.0 GPUs" in out, out
    assert "EngineCore failed to start." in out

    # Ray's dashboard, as the real entrypoint asks for it: on every interface of the head
    with urllib.request.urlopen(f"http://{HEAD_IP}:8265/api/version", timeout=30) as resp:
        assert json.loads(resp.read())["ray_version"] == "2.60.0"

    # The worker's host without the model (the unit's bind mount makes an empty directory): its
    # rank cannot load its weights, and the engine fails naming the worker's node.
    ray_container(image, "w20t-worker", WORKER_IP, "ray-worker",
                  f"HEAD_IP={HEAD_IP}", f"WORKER_IP={WORKER_IP}", model=worker_model)  # fmt: skip
    wait_for("two Ray nodes with a GPU each", lambda: gpu_nodes() == [1.0, 1.0], RAY_UP_S)
    empty = serve()
    out, _ = empty.communicate(timeout=600)
    assert empty.returncode == 1, out
    assert "Cannot find any model weights with `/models`" in out, out
    assert f"ip={WORKER_IP}" in out, out
    assert "EngineCore failed to start." in out

    # Its copy in place (the same files, as the pair's fetch puts them), the pair serves.
    shutil.copytree(MODEL, worker_model, dirs_exist_ok=True)
    server = serve()
    try:
        wait_for("the pair serving", lambda: get("/v1/models")[0] == 200, SERVE_UP_S)
        models = json.loads(get("/v1/models")[1])
        assert models["data"][0]["max_model_len"] == CONTEXT
        assert chat() == 200
        rss = {name: rss_mib(name) for name in ("w20t-head", "w20t-worker")}
        print(f"resident memory of the pair's containers (MiB, the head with the server): {rss}")

        run("docker", "rm", "-f", "w20t-worker")
        # vLLM's Ray executor does not check its workers (check_health): /health stays 200
        assert get("/health")[0] == 200
        assert chat() == 500
        out, _ = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, out  # serve_http returns normally (vllm#48966)
    assert "EngineDeadError" in out
    assert "ray.exceptions.Actor" in out, out


@pytest.fixture
def pair_hosts() -> Iterator[list[pair.PairMember]]:
    with pair.own_pair(CFG, NET, f"{CFG.sim_image}:latest") as members:
        yield members


def test_pair_hosts_reach_each_other_over_the_link(pair_hosts: list[pair.PairMember]) -> None:
    head, worker = pair_hosts
    assert head.interface != "eth0" and head.interface == worker.interface
    for one, other in ((head, worker), (worker, head)):
        mtu = hosts.sh(one.name, f"cat /sys/class/net/{one.interface}/mtu").stdout.strip()
        assert mtu == str(NET.mtu)
        connect = f"socket.create_connection(('{other.pair_address}', 22), timeout=10).close()"
        probe = f'python3 -c "import socket; {connect}"'
        hosts.sh(one.name, probe)
    # the pair network is not the lab network: the link addresses are their own
    assert head.pair_address != head.lab_address


def check_pair(
    tmp_path: Path, members: list[pair.PairMember], **overrides: Mapping[str, object]
) -> subprocess.CompletedProcess[str]:
    """Run role spark_pair on the pair with facts gathered; ``overrides`` per host name."""
    roles = ("head", "worker")
    host_vars: dict[str, dict[str, object]] = {}
    for index, member in enumerate(members):
        peer = members[1 - index]
        host_vars[member.name] = {
            **access.ansible_host_vars(CFG, member.lab_address, sudo_password=False),
            "vllm_pair_role": roles[index],
            "vllm_pair_peer": peer.name,
            "vllm_pair_interface": member.interface,
            "vllm_pair_address": member.pair_address,
            "hf_model_revision": "0123456789abcdef0123456789abcdef01234567",
            **overrides.get(member.name, {}),
        }
    inventory = {"all": {"hosts": host_vars}}
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "play.yml").write_text(
        yaml.safe_dump(
            [{"name": "Pair", "hosts": "all", "gather_facts": True, "roles": ["spark_pair"]}]
        )
    )
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO_ROOT / "roles"),
               ANSIBLE_HOST_KEY_CHECKING="False")  # fmt: skip
    return subprocess.run(
        [venv_tool("ansible-playbook"), "-i", str(tmp_path / "inventory.yml"),
         str(tmp_path / "play.yml")],
        capture_output=True, text=True, check=False, env=env, timeout=900,
    )  # fmt: skip


def test_spark_pair_checks(pair_hosts: list[pair.PairMember], tmp_path: Path) -> None:
    head, worker = pair_hosts
    good = check_pair(tmp_path, pair_hosts)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "changed=0" in good.stdout and "failed=0" in good.stdout

    commit = "fedcba9876543210fedcba9876543210fedcba98"
    mismatch = check_pair(tmp_path, pair_hosts, **{worker.name: {"hf_model_revision": commit}})
    assert mismatch.returncode != 0
    assert (
        f"model revisions differ between the pair's members: {head.name} has "
        'hf_model_revision="0123456789abcdef0123456789abcdef01234567", '
        f'{worker.name} has hf_model_revision="{commit}"'
    ) in " ".join(mismatch.stdout.split()), mismatch.stdout

    bad_role = check_pair(tmp_path, pair_hosts, **{head.name: {"vllm_pair_role": "leader"}})
    assert bad_role.returncode != 0
    assert "vllm_pair_role" in bad_role.stdout and "leader" in bad_role.stdout
    assert "head, worker" in bad_role.stdout, bad_role.stdout

    wrong_address = check_pair(
        tmp_path, pair_hosts, **{head.name: {"vllm_pair_address": "172.29.91.99"}}
    )
    assert wrong_address.returncode != 0
    assert f"hold vllm_pair_address=172.29.91.99 (it holds {head.pair_address})" in " ".join(
        wrong_address.stdout.split()
    ), wrong_address.stdout

    hosts.sh(worker.name, f"ip link set {worker.interface} mtu 1500")
    unequal = check_pair(tmp_path, pair_hosts)
    assert unequal.returncode != 0
    assert f"({head.name}: 9000, {worker.name}: 1500)" in " ".join(unequal.stdout.split())
