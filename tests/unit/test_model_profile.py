"""The model profile is the one source of the card's settings: the README's table agrees with it,
no other file repeats the card's environment, and every role that needs a card value takes it
from the profile (an override of a profile variable reaches the roles' variables)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import model_profile

pytestmark = pytest.mark.nolab

ROOT = model_profile.ROOT
PROFILE = model_profile.load()


def readme_profile_table() -> dict[str, str]:
    """Rows of the README's "The model profile" table: variable -> the value column's text."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## The model profile", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(model_profile_\w+)` \| (.+) \|$", section, re.MULTILINE)
    return dict(rows)


def _codes(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


def _pairs(cell: str) -> dict[str, str]:
    return dict(code.split("=", 1) for code in _codes(cell))


def _number(text: str) -> float:
    return float(text)


def test_readme_table_matches_the_profile() -> None:
    table = readme_profile_table()
    raw = yaml.safe_load(model_profile.PROFILE_FILE.read_text())
    assert set(table) == set(raw), "README's profile table and the profile name other variables"
    assert _codes(table["model_profile_repo_id"]) == [PROFILE.repo_id]
    assert _codes(table["model_profile_dir"]) == [PROFILE.model_dir]
    assert _number(_codes(table["model_profile_size_gb"])[0]) == PROFILE.size_gb
    assert _codes(table["model_profile_image"]) == [PROFILE.image]
    assert _number(_codes(table["model_profile_image_size_gb"])[0]) == PROFILE.image_size_gb
    assert _codes(table["model_profile_served_model_name"]) == [PROFILE.served_model_name]
    assert int(_codes(table["model_profile_context_len"])[0]) == PROFILE.context_len
    assert int(_codes(table["model_profile_max_model_len"])[0]) == PROFILE.max_model_len
    assert _number(_codes(table["model_profile_gpu_memory_util"])[0]) == PROFILE.gpu_memory_util
    util_max = _number(_codes(table["model_profile_gpu_memory_util_max"])[0])
    assert util_max == PROFILE.gpu_memory_util_max
    pair_len = int(_codes(table["model_profile_pair_max_model_len"])[0])
    assert pair_len == PROFILE.pair_max_model_len == PROFILE.context_len
    pair_util = _number(_codes(table["model_profile_pair_gpu_memory_util"])[0])
    assert pair_util == PROFILE.pair_gpu_memory_util
    assert _pairs(table["model_profile_kernel_env"]) == PROFILE.kernel_env
    assert _codes(table["model_profile_extra_args"])[0].split() == PROFILE.extra_args
    sampling = {k: _number(v) for k, v in _pairs(table["model_profile_sampling"]).items()}
    assert sampling == PROFILE.sampling
    performance = {k: _number(v) for k, v in _pairs(table["model_profile_performance"]).items()}
    assert performance == PROFILE.performance


def _project_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def test_the_cards_environment_is_written_in_one_file() -> None:
    """Each kernel setting with its value, in any spelling (KEY=v, KEY: v, "KEY": "v"), occurs
    in the profile and in the README's table only."""
    patterns = {
        key: re.compile(rf"""{key}["']?\s*[:=]\s*["']?{re.escape(value)}\b""")
        for key, value in PROFILE.kernel_env.items()
    }
    allowed = {model_profile.PROFILE_FILE, ROOT / "README.md"}
    found: dict[str, list[str]] = {}
    for path in _project_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for key, pattern in patterns.items():
            if pattern.search(text):
                found.setdefault(key, []).append(str(path.relative_to(ROOT)))
    for key in patterns:
        assert set(found.get(key, [])) <= {str(p.relative_to(ROOT)) for p in allowed}, key
        assert "roles/model_profile/defaults/main.yml" in found[key], key


RESOLVE_PLAY = """
- name: Resolve the roles' defaults without running their tasks
  hosts: localhost
  gather_facts: false
  roles:
    - {role: hf_model, when: false}
    - {role: vllm_service, when: false}
    - {role: vllm_health, when: false}
    - {role: llm_benchmark, when: false}
    - {role: spark_preflight, when: false}
    - {role: fleet_status, when: false}
    - {role: nvidia_container_toolkit, when: false}
  tasks:
    - name: Write the variables that come from the profile
      ansible.builtin.copy:
        dest: "{{ out }}"
        mode: "0600"
        content: >-
          {{ {
            'hf_model_repo_id': hf_model_repo_id, 'hf_model_dir': hf_model_dir,
            'vllm_image': vllm_image, 'vllm_model_dir': vllm_model_dir,
            'vllm_model_mount': vllm_model_mount,
            'vllm_gpu_memory_util': vllm_gpu_memory_util,
            'vllm_max_model_len': vllm_max_model_len, 'vllm_extra_args': vllm_extra_args,
            'vllm_served_model_name': vllm_served_model_name,
            'vllm_kernel_env': vllm_kernel_env, 'vllm_health_model': vllm_health_model,
            'vllm_health_max_model_len': vllm_health_max_model_len,
            'vllm_health_sampling': vllm_health_sampling,
            'llm_benchmark_model': llm_benchmark_model,
            'llm_benchmark_served_model_name': llm_benchmark_served_model_name,
            'llm_benchmark_model_dir': llm_benchmark_model_dir,
            'llm_benchmark_reference': llm_benchmark_reference,
            'spark_preflight_model_dir': spark_preflight_model_dir,
            'spark_preflight_model_size_gb': spark_preflight_model_size_gb,
            'spark_preflight_image': spark_preflight_image,
            'spark_preflight_image_size_gb': spark_preflight_image_size_gb,
            'spark_preflight_gpu_memory_util': spark_preflight_gpu_memory_util,
            'fleet_status_model_dir': fleet_status_model_dir,
            'nvidia_container_toolkit_verify_image': nvidia_container_toolkit_verify_image,
          } | to_json }}
"""


def resolve(tmp_path: Path, *extra: str) -> dict[str, Any]:
    play = tmp_path / "resolve.yml"
    play.write_text(RESOLVE_PLAY)
    out = tmp_path / "resolved.json"
    playbook = Path(sys.executable).parent / "ansible-playbook"
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    proc = subprocess.run(
        [str(playbook), "-i", "localhost,", "-c", "local", str(play), "-e", f"out={out}",
         "-e", f"ansible_python_interpreter={sys.executable}", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    resolved: dict[str, Any] = json.loads(out.read_text())
    return resolved


def test_roles_take_the_cards_values_from_the_profile(tmp_path: Path) -> None:
    got = resolve(tmp_path)
    assert got == {
        "hf_model_repo_id": PROFILE.repo_id,
        "hf_model_dir": PROFILE.model_dir,
        "vllm_image": PROFILE.image,
        "vllm_model_dir": PROFILE.model_dir,
        "vllm_model_mount": PROFILE.model_mount,
        "vllm_gpu_memory_util": PROFILE.gpu_memory_util,
        "vllm_max_model_len": PROFILE.max_model_len,
        "vllm_extra_args": PROFILE.extra_args,
        "vllm_served_model_name": PROFILE.served_model_name,
        "vllm_kernel_env": PROFILE.kernel_env,
        "vllm_health_model": PROFILE.served_model_name,
        "vllm_health_max_model_len": PROFILE.max_model_len,
        "vllm_health_sampling": PROFILE.sampling,
        "llm_benchmark_model": PROFILE.repo_id,
        "llm_benchmark_served_model_name": PROFILE.served_model_name,
        "llm_benchmark_model_dir": PROFILE.model_dir,
        "llm_benchmark_reference": PROFILE.performance,
        "spark_preflight_model_dir": PROFILE.model_dir,
        "spark_preflight_model_size_gb": PROFILE.size_gb,
        "spark_preflight_image": PROFILE.image,
        "spark_preflight_image_size_gb": PROFILE.image_size_gb,
        "spark_preflight_gpu_memory_util": PROFILE.gpu_memory_util,
        "fleet_status_model_dir": PROFILE.model_dir,
        "nvidia_container_toolkit_verify_image": PROFILE.image,
    }


def test_an_override_of_the_profile_reaches_every_role(tmp_path: Path) -> None:
    override = {
        "model_profile_repo_id": "example/Other-Model",
        "model_profile_dir": "/srv/models/Other-Model",
        "model_profile_image": "registry.example:5000/vllm:other",
        "model_profile_served_model_name": "other",
        "model_profile_max_model_len": 8192,
        "model_profile_kernel_env": {"VLLM_OTHER": "1"},
        "model_profile_extra_args": ["--enforce-eager"],
    }
    got = resolve(tmp_path, "-e", json.dumps(override))
    assert got["hf_model_repo_id"] == got["llm_benchmark_model"] == "example/Other-Model"
    dirs = {got[k] for k in got if k.endswith("model_dir") or k == "hf_model_dir"}
    assert dirs == {"/srv/models/Other-Model"}
    assert got["vllm_model_mount"] == "/models/Other-Model"
    assert got["vllm_image"] == got["nvidia_container_toolkit_verify_image"]
    assert got["vllm_image"] == got["spark_preflight_image"] == "registry.example:5000/vllm:other"
    names = {got["vllm_served_model_name"], got["vllm_health_model"]}
    assert names | {got["llm_benchmark_served_model_name"]} == {"other"}
    assert got["vllm_max_model_len"] == got["vllm_health_max_model_len"] == 8192
    assert got["vllm_kernel_env"] == {"VLLM_OTHER": "1"}
    assert got["vllm_extra_args"] == ["--enforce-eager"]


def test_an_empty_served_name_means_the_model_path_everywhere(tmp_path: Path) -> None:
    """vllm_served_model_name "" serves the model under its path in the container (vLLM's
    default): the health check and the benchmark must ask for that name, not the profile's."""
    got = resolve(tmp_path, "-e", json.dumps({"vllm_served_model_name": ""}))
    assert got["vllm_served_model_name"] == ""
    assert got["vllm_health_model"] == got["llm_benchmark_served_model_name"] == PROFILE.model_mount
