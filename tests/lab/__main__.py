"""Lab command line: ``python -m tests.lab up|prepare|down|demo|status``.

- ``prepare``: Docker engine, images, network, stand-in services, stand-in vLLM image published.
- ``up --hosts N``: ``prepare`` plus N simulated Spark hosts.
- ``demo``: print each host's endpoint and one chat completion served by the deployed unit.
- ``down``: remove hosts, network, services and the Docker volumes they left.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import urllib.request

from tests import model_profile
from tests.lab import access, engine, hosts, images, services
from tests.lab.config import REPO_ROOT, LabConfig, log, venv_tool


def prepare(cfg: LabConfig) -> dict[str, str]:
    """Everything but the hosts."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    engine.ensure_engine(cfg)
    refs = images.build_all(cfg)
    services.ensure_network(cfg)
    services.start_services(cfg, images.python_target(refs["base"]))
    services.push_vllm_image(cfg, refs["vllm_standin"])
    services.push_vllm_image(cfg, refs["vllm_standin_ray"], cfg.vllm_pair_image)
    return refs


def show_access(cfg: LabConfig) -> None:
    """How Ansible reaches the hosts: its connection and user, and who ``become`` makes it."""
    res = subprocess.run(
        [venv_tool("ansible"), "spark", "-i",
         str(REPO_ROOT / "inventory" / "lab"), "--vault-password-file",
         str(cfg.ssh_dir / access.VAULT_PASSWORD_FILE), "--become", "-o",
         "-m", "ansible.builtin.shell", "-a",
         'echo "ansible_connection={{ ansible_connection }} ansible_user={{ ansible_user }}:'
         ' $(id -un) through sudo from $SUDO_USER"'],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )  # fmt: skip
    # ad-hoc commands always report CHANGED; the line shows who the task ran as
    print("\n".join(part for part in (res.stdout.strip(), res.stderr.strip()) if part))
    if res.returncode != 0:
        raise SystemExit(f"ansible could not reach the lab's hosts (exit {res.returncode})")


def demo(cfg: LabConfig, port: int = 8000) -> None:
    """Show how the hosts are reached, then ask each host's endpoint for one chat completion."""
    show_access(cfg)
    for name in hosts.host_names(cfg):
        addr = hosts.host_address(cfg, name)
        base = f"http://{addr}:{port}/v1"
        with urllib.request.urlopen(f"{base}/models", timeout=30) as resp:
            model = json.load(resp)["data"][0]["id"]
        request = model_profile.load().chat_request("Hello! What can you do?")
        body = json.dumps({**request, "model": model}).encode()
        req = urllib.request.Request(
            f"{base}/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            answer = json.load(resp)
        unit = subprocess.run(
            ["docker", "exec", name, "systemctl", "is-active", "vllm.service"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        print(f"{name}: endpoint {base} (model {model}, vllm.service {unit})")
        print(f"  answer: {answer['choices'][0]['message']['content']!r}")


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m tests.lab", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare")
    up = sub.add_parser("up")
    up.add_argument("--hosts", type=int, default=1)
    sub.add_parser("demo")
    sub.add_parser("down")
    sub.add_parser("status")
    args = parser.parse_args()
    cfg = LabConfig()
    if args.cmd == "prepare":
        prepare(cfg)
    elif args.cmd == "up":
        refs = prepare(cfg)
        names = hosts.start_hosts(cfg, args.hosts, refs["spark_sim"])
        log(f"hosts up: {' '.join(names)}")
    elif args.cmd == "demo":
        demo(cfg)
    elif args.cmd == "down":
        if engine.docker_ok():
            hosts.remove_hosts(cfg)
            subprocess.run(["docker", "network", "rm", cfg.network], capture_output=True)
            subprocess.run(["docker", "volume", "prune", "-f"], capture_output=True)
        services.stop_services(cfg)
        log("lab removed (images and build caches are kept for the next run)")
    elif args.cmd == "status":
        for name in hosts.host_names(cfg) if engine.docker_ok() else []:
            print(name, hosts.host_address(cfg, name))


if __name__ == "__main__":
    main()
