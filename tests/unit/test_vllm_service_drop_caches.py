"""vllm_service's unit drops the page cache before each start where the GPU is a GB10
(``vllm_drop_caches: auto``, the default), as ``true``/``false`` say otherwise: the role's own
template and variables, rendered by ansible-playbook on this machine (no host, no lab)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.nolab

ROOT = Path(__file__).resolve().parents[2]
DROP = "ExecStartPre=-/bin/sh -c 'sync && echo 3 > /proc/sys/vm/drop_caches'"
# (vllm_drop_caches, the GPU's name from preflight's report, from nvidia-smi) -> drop?
CASES = [
    ("auto", "NVIDIA GB10", None, True),
    ("auto", None, "NVIDIA GB10", True),
    ("auto", "NVIDIA H200", None, False),
    ("auto", None, "NVIDIA H200", False),
    (False, "NVIDIA GB10", None, False),
    ("false", "NVIDIA GB10", None, False),
    (True, "NVIDIA H200", None, True),
    ("yes", None, None, True),
]

# The GPU's name is set as the role finds it at run time: preflight's report is a fact, the
# nvidia-smi answer a registered result (both rank above task vars; the role, skipped here,
# registers a skipped result under the same name).
PLAY = """\
- name: Render vllm_service's unit for each case
  hosts: localhost
  gather_facts: false
  roles:
    - {role: vllm_service, when: false}
  tasks:
    - name: Render each case
      ansible.builtin.include_tasks: "{{ out }}/case.yml"
      loop: "{{ cases }}"
      loop_control:
        index_var: index
"""
CASE = """\
- name: The GPU's name as preflight and nvidia-smi give it
  ansible.builtin.set_fact:
    spark_preflight_report: "{{ {'gpu': {'name': item.report}} if item.report else {} }}"
    _vllm_service_gpu_name: "{{ {'rc': 0, 'stdout_lines': [item.smi]} if item.smi else {'rc': 9} }}"
- name: Render the unit
  ansible.builtin.template:
    src: "{{ root }}/roles/vllm_service/templates/vllm.service.j2"
    dest: "{{ out }}/{{ index }}.service"
    mode: "0644"
  vars:
    vllm_drop_caches: "{{ item.setting }}"
    _vllm_service_systemd_version: 257
    _vllm_service_config_digest: rendered-for-the-test
"""


def test_the_page_cache_is_dropped_on_a_gb10_by_default(tmp_path: Path) -> None:
    play = tmp_path / "render.yml"
    play.write_text(PLAY)
    (tmp_path / "case.yml").write_text(CASE)
    cases = [{"setting": s, "report": r, "smi": n} for s, r, n, _drop in CASES]
    extra = {"root": str(ROOT), "out": str(tmp_path), "cases": cases}
    playbook = Path(sys.executable).parent / "ansible-playbook"
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    proc = subprocess.run(
        [str(playbook), "-i", "localhost,", "-c", "local", str(play), "-e", json.dumps(extra),
         "-e", f"ansible_python_interpreter={sys.executable}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = [DROP in (tmp_path / f"{i}.service").read_text() for i in range(len(CASES))]
    assert got == [drop for *_case, drop in CASES]
