"""A bad variable stops a role at its first task, with a message naming that variable, its value
and what is allowed, and naming no other variable.

Each case runs the role with ``ansible-playbook`` on localhost (connection local) and one bad
value; the role's first task (its variable check) must fail. The run is in check mode, so that a
check that wrongly passes cannot change this machine either.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.nolab

ROOT = Path(__file__).resolve().parents[2]

PLAY = """
- name: Run one role with one bad variable
  hosts: localhost
  gather_facts: false
  tasks:
    - name: The role
      ansible.builtin.include_role:
        name: "{{ role_under_test }}"
"""

# (role, variable, bad value, words of the allowed range the message must show)
CASES = [
    ("nvidia_container_toolkit", "nvidia_container_toolkit_version", "latest", "Debian version"),
    ("nvidia_container_toolkit", "nvidia_container_toolkit_min_version", "new", "Debian version"),
    ("nvidia_container_toolkit", "nvidia_container_toolkit_gpg_fingerprint", "ABCD", "hex digits"),
    ("nvidia_container_toolkit", "nvidia_container_toolkit_source_file", "/etc/x.sources", ".list"),
    ("nvidia_container_toolkit", "nvidia_container_toolkit_pull_retries", 0, "at least 1"),
    ("spark_preflight", "spark_preflight_port", 70000, "1-65535"),
    ("spark_preflight", "vllm_port", 0, "1-65535"),
    ("spark_preflight", "spark_preflight_gpu_memory_util", 1.5, "(0, 1]"),
    ("spark_preflight", "spark_preflight_model_size_gb", -3, "0 or more"),
    ("spark_preflight", "spark_preflight_min_driver_version", "580.x", "dotted numbers"),
    ("spark_preflight", "spark_preflight_drop_caches", "sometimes", "auto, true or false"),
    ("hf_model", "hf_model_repo_id", "no-owner", "owner/name"),
    ("hf_model", "hf_model_dir", "models/x", "an absolute path"),
    ("hf_model", "hf_model_endpoint", "ftp://mirror", "an http(s) URL"),
    ("hf_model", "hf_model_workers", 65, "1-64"),
    ("hf_model", "hf_model_stall_timeout_s", 4, "5-3600"),
    ("hf_model", "hf_model_proxy", "ftp://proxy:3128", "without credentials"),
    ("hf_model", "hf_model_peer_port", 0, "1-65535"),
    ("hf_model", "hf_model_peer_address", "spark-2.lan", "an IP address"),
    ("hf_model", "hf_model_peer_address", "10.0.0.256", "an IP address"),
    ("hf_model", "hf_model_disk_margin_gb", -1, "0 or more"),
    ("hf_model", "hf_model_fetch_timeout_s", 59, "60 or more"),
]


def run_role(tmp_path: Path, role: str, extra: dict[str, object]) -> tuple[int, str]:
    play = tmp_path / "play.yml"
    play.write_text(PLAY)
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
    }
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "--check", str(play), "-e", json.dumps({"role_under_test": role, **extra}),
         "-e", f"ansible_python_interpreter={sys.executable}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize(("role", "variable", "value", "allowed"), CASES)
def test_a_bad_variable_is_named_with_its_value_and_range(
    tmp_path: Path, role: str, variable: str, value: object, allowed: str
) -> None:
    rc, out = run_role(tmp_path, role, {variable: value})
    assert rc != 0, out
    assert "TASK [" + role + " : Check the variables]" in out, out
    tasks = out.split("TASK [")
    assert "Check the variables" in tasks[-1], "a later task ran:\n" + out
    # one failed item: this variable; the role's other variables passed their checks
    failed = [
        json.loads(line.split(" => ", 1)[1])
        for line in out.splitlines()
        if line.startswith("failed: [localhost] (item=")
    ]
    assert [f["msg"] for f in failed] == [
        f"{failed[0]['item']['var']}={json.dumps(value)} must be {failed[0]['item']['allowed']}"
    ], out
    assert variable in failed[0]["msg"] and allowed in failed[0]["msg"], out


def test_a_proxy_with_credentials_is_named_without_them(tmp_path: Path) -> None:
    rc, out = run_role(tmp_path, "hf_model", {"hf_model_proxy": "http://user:s3cret@proxy:3128"})
    assert rc != 0, out
    assert 'hf_model_proxy=\\"http://***@proxy:3128\\" must be empty or http(s)' in out, out
    assert "s3cret" not in out, out


@pytest.mark.parametrize("address", ["172.29.78.5", "fe80::1", "2001:db8::5"])
def test_an_ip_address_passes_the_peer_address_check(tmp_path: Path, address: str) -> None:
    """A good hf_model_peer_address passes: only the one bad variable given with it is named."""
    rc, out = run_role(tmp_path, "hf_model", {"hf_model_peer_address": address,
                                              "hf_model_workers": 65})  # fmt: skip
    assert rc != 0, out
    failed = [line for line in out.splitlines() if line.startswith("failed: [localhost] (item=")]
    assert len(failed) == 1 and "hf_model_workers=65" in failed[0], out
