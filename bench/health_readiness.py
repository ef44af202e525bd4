"""How soon vllm_health notices that the server answers (target: within 2 s).

Starts the vLLM stand-in (tests/standins/vllm_standin/server.py) on 127.0.0.1 with a simulated
load of a few seconds, watches its /health every 5 ms from here to learn when it first answers,
and runs the vllm_health role against it with ansible-playbook on localhost, as a deployment
runs it (readiness wait only: no unit, no container, no API checks; a progress line every
``--slice`` seconds, so that some loads end between two slices of the wait). For each run it
prints the delay between the server's first answer and the moment the role noticed it, then
the worst delay over the 2 s target, measured in this run::

    .venv/bin/python bench/health_readiness.py [--runs 6] [--slice 2]

Needs no lab: only this checkout's virtual environment.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / "tests" / "standins" / "vllm_standin" / "server.py"
TARGET_S = 2.0
PLAYBOOK = """
- name: Wait for the endpoint as a deployment does
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Run vllm_health
      ansible.builtin.include_role:
        name: vllm_health
    - name: Keep the result
      ansible.builtin.copy:
        content: "{{ vllm_health_result | to_json }}"
        dest: "{{ result_file }}"
        mode: "0644"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def model_dir(root: Path) -> Path:
    model = root / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["MiniMaxM2ForCausalLM"]}))
    (model / "model.safetensors").write_bytes(b"\0" * 16)
    return model


def first_answer(port: int, stop: threading.Event, seen: list[float]) -> None:
    """Record when /health first answers 200, polling every 5 ms."""
    url = f"http://127.0.0.1:{port}/health"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while not stop.is_set():
        try:
            with opener.open(url, timeout=1) as response:
                if response.status == 200:
                    seen.append(time.time())
                    return
        except OSError:
            pass
        time.sleep(0.005)


def one_run(work: Path, load_s: float, slice_s: int) -> float:
    """Seconds between the server's first answer and the role noticing it."""
    port = free_port()
    env = dict(os.environ, VLLM_STANDIN_LOAD_SECONDS=str(load_s),
               VLLM_STANDIN_CONTROL_FILE=str(work / "none.json"))  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, str(SERVER), "serve", str(model_dir(work)), "--host", "127.0.0.1",
         "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    stop, seen = threading.Event(), []
    watcher = threading.Thread(target=first_answer, args=(port, stop, seen), daemon=True)
    watcher.start()
    try:
        playbook, result = work / "wait.yml", work / "result.json"
        playbook.write_text(PLAYBOOK)
        extra = {
            "vllm_health_url": f"http://127.0.0.1:{port}",
            "vllm_health_service": "",
            "vllm_health_container": "",
            "vllm_health_progress_s": slice_s,
            "vllm_health_timeout_s": 120,
            "vllm_health_check_models": False,
            "vllm_health_check_chat": False,
            "vllm_health_check_tool_call": False,
            "result_file": str(result),
            "ansible_python_interpreter": sys.executable,
        }
        subprocess.run(
            [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,",
             str(playbook), "-e", json.dumps(extra)],
            env=dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO / "roles")),
            cwd=REPO, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        watcher.join(5)
        noticed = float(json.loads(result.read_text())["ready_at"])
    finally:
        stop.set()
        server.terminate()
        server.wait()
    return noticed - seen[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--slice", type=int, default=2, help="vllm_health_progress_s")
    args = parser.parse_args()
    delays = []
    for run in range(args.runs):
        load_s = 2.0 + run * args.slice * 0.37  # loads ending at different points of a slice
        with tempfile.TemporaryDirectory() as tmp:
            delay = one_run(Path(tmp), load_s, args.slice)
        delays.append(delay)
        print(f"load {load_s:4.1f} s: noticed {delay:5.2f} s after the first answer")
    worst = max(delays)
    print(f"worst delay {worst:.2f} s / target {TARGET_S:.0f} s = ratio {worst / TARGET_S:.2f}")


if __name__ == "__main__":
    main()
