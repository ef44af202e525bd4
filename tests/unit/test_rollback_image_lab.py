"""``rolling_restart.yml``'s rollback of the image (``playbooks/tasks/rollback_image.yml``) against
a real Docker engine: a simulated host's own dockerd pulling two releases of a tiny image through
the lab registry, under one tag whose registry digest changes between them.

- Pinned by digest (``NAME:TAG@sha256:...``, what ``vllm_image_digest`` makes): the previous
  image is found under its digest after the new one was pulled, no ``docker tag`` is run (Docker
  refuses to create a reference with a digest) and nothing is reported changed.
- By tag, the tag moved to the new release by a pull: the tag is pointed back at the previous
  image (changed).
- Pinned, the previous image's digest reference removed (``docker rmi -f NAME@DIGEST``): it is
  pulled again by its digest and names the previous image again (changed).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.lab import access, hosts
from tests.lab.config import REPO_ROOT, LabConfig, venv_tool

pytestmark = pytest.mark.lab

CFG = LabConfig(host_prefix="rbimg", host_label="sparklab.rbimg")
# A Docker Hub name, as the hosts' registry mirror serves it; a tag of its own per release.
REPO = "sparkfleet-lab/rollback-image"
TAG = "release"
# what rolling_restart.yml records of the running container, as Ansible templates it
INSPECT = " ".join("{{ '{{' }}." + f + "{{ '}}' }}" for f in ("Id", "Image", "Config.Image"))


def publish(release: str, where: Path) -> str:
    """Build a tiny image holding ``release``, push it as ``REPO:TAG``; its registry digest."""
    context = where / release
    context.mkdir()
    (context / "release").write_text(release + "\n")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY release /release\n")
    target = f"{CFG.registry_push}/{REPO}:{TAG}"
    env = dict(os.environ, DOCKER_BUILDKIT="0")  # the classic builder, as tests/lab/images.py
    subprocess.run(["docker", "build", "-q", "-t", target, str(context)], check=True, env=env,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    subprocess.run(["docker", "push", "-q", target], check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{range .RepoDigests}}{{println .}}{{end}}",
         target],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    prefix = f"{CFG.registry_push}/{REPO}@"
    found = [d.split("@", 1)[1] for d in out if d.startswith(prefix)]
    assert found, out
    return found[-1]


@pytest.fixture(scope="module")
def host() -> Iterator[str]:
    with hosts.own_hosts(CFG, 1) as names:
        name = names[0]
        # the lab registry as the engine's Docker Hub mirror, as the lab's inventory sets it
        mirror = f'{{"features": {{"cdi": true}}, "registry-mirrors": ["{CFG.registry_mirror}"]}}'
        hosts.sh(name, f"echo '{mirror}' > /etc/docker/daemon.json && systemctl restart docker")
        hosts.wait_booted(name)
        yield name


def rollback(where: Path, name: str) -> subprocess.CompletedProcess[str]:
    """Run the rollback's image tasks on ``name`` for its container ``minimax``."""
    inventory = {"all": {"hosts": {name: access.ansible_host_vars(
        CFG, hosts.host_address(CFG, name), sudo_password=False)}}}  # fmt: skip
    (where / "hosts.yml").write_text(yaml.safe_dump(inventory))
    play = [{
        "name": "Roll back the image", "hosts": "all", "become": True, "gather_facts": False,
        "tasks": [
            {"name": "Record the container",
             "ansible.builtin.command": {"argv": [
                 "docker", "container", "inspect", "--format", INSPECT, "minimax"]},
             "register": "_rolling_before", "changed_when": False},
            {"ansible.builtin.include_tasks":
                str(REPO_ROOT / "playbooks" / "tasks" / "rollback_image.yml")},
        ],
    }]  # fmt: skip
    (where / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1")
    return subprocess.run(
        [venv_tool("ansible-playbook"), "-i", str(where / "hosts.yml"), str(where / "play.yml")],
        capture_output=True, text=True, check=False, env=env, timeout=600,
    )  # fmt: skip


def image_id(name: str, ref: str) -> str:
    return hosts.sh(name, f"docker image inspect --format '{{{{.Id}}}}' {ref}").stdout.strip()


def changed(run: subprocess.CompletedProcess[str]) -> int:
    recap = [line for line in run.stdout.splitlines() if " changed=" in line]
    assert len(recap) == 1, run.stdout[-3000:]
    return int(recap[0].split(" changed=", 1)[1].split()[0])


def test_the_previous_image_comes_back_pinned_or_tagged(host: str, tmp_path: Path) -> None:
    one = publish("one", tmp_path)
    pinned_one = f"{REPO}:{TAG}@{one}"
    hosts.sh(host, f"docker pull -q {pinned_one} && docker create --name minimax {pinned_one} /x")
    previous = image_id(host, pinned_one)
    two = publish("two", tmp_path)  # the tag moves to the new release in the registry
    assert two != one
    hosts.sh(host, f"docker pull -q {REPO}:{TAG}@{two} && docker pull -q {REPO}:{TAG}")
    assert image_id(host, f"{REPO}:{TAG}") != previous

    # Pinned: found under its digest, no tag made (Docker would refuse it), nothing changed.
    refused = hosts.sh(host, f"docker tag {previous} {pinned_one}", check=False)
    assert refused.returncode != 0
    assert "refusing to create a tag with a digest reference" in refused.stderr, refused.stderr
    run = rollback(tmp_path, host)
    assert run.returncode == 0, run.stdout[-4000:]
    assert changed(run) == 0, run.stdout[-4000:]
    assert image_id(host, pinned_one) == previous

    # By tag, moved to the new release: pointed back at the previous image.
    hosts.sh(host, f"docker rm minimax && docker tag {previous} {REPO}:{TAG}"
                   f" && docker create --name minimax {REPO}:{TAG} /x"
                   f" && docker pull -q {REPO}:{TAG}")  # fmt: skip
    assert image_id(host, f"{REPO}:{TAG}") != previous
    run = rollback(tmp_path, host)
    assert run.returncode == 0, run.stdout[-4000:]
    assert changed(run) == 1, run.stdout[-4000:]
    assert image_id(host, f"{REPO}:{TAG}") == previous

    # Pinned, its digest reference removed: pulled again by the digest.
    hosts.sh(host, f"docker rm minimax && docker create --name minimax {pinned_one} /x"
                   f" && docker rmi -f {REPO}@{one}")  # fmt: skip
    assert hosts.sh(host, f"docker image inspect {pinned_one}", check=False).returncode != 0
    run = rollback(tmp_path, host)
    assert run.returncode == 0, run.stdout[-4000:]
    assert changed(run) == 1, run.stdout[-4000:]
    assert image_id(host, pinned_one) == previous
