"""Run a small play of the project's roles on local inventory hosts, or one of its modules in
process, as the no-lab tests do.

``run_module`` runs a module's ``main()`` with the given arguments and returns its exit status
and its JSON result.

``check_play`` writes an inventory and a play into a test's directory and runs ``ansible-playbook``
from the venv with the project's ``ansible.cfg``, in check mode: nothing on this machine changes
but what a task says it writes with ``check_mode: false``.

``GATEWAY_CHECK_PLAY`` runs ``fleet_gateway``'s variable check on the gateway host ``gw`` and
prints what the role derived from the inventory, one labelled list item each, for assertions:
``BACKEND NAMES``, ``BACKEND ADDRESSES``, ``CHECKED AT`` (the URL the gateway checks itself
at), ``PUBLIC AT`` (the host clients use), ``SCRAPED AT`` (the first Prometheus target) and
``JOBS`` (the Prometheus jobs). A bad variable stops it before any line is printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from ansible.module_utils.testing import patch_module_args

ROOT = Path(__file__).resolve().parents[2]

GATEWAY_CHECK_PLAY = """
- name: The gateway role's checks, then what it derived from the inventory
  hosts: gw
  gather_facts: false
  tasks:
    - name: The role's checks and variables
      ansible.builtin.include_role:
        name: fleet_gateway
        tasks_from: validate
        public: true
    - name: Show the backends, the endpoint and the scrape configuration
      ansible.builtin.debug:
        msg:
          - BACKEND NAMES {{ _fleet_gateway_backends | map(attribute='name') | join(' ') }}
          - BACKEND ADDRESSES {{ _fleet_gateway_backends | map(attribute='address') | join(' ') }}
          - CHECKED AT {{ _fleet_gateway_local_url }}
          - PUBLIC AT {{ _fleet_gateway_public_host }}
          - SCRAPED AT {{ _scrape.scrape_configs[0].static_configs[0].targets[0] }}
          - JOBS {{ _scrape.scrape_configs | map(attribute='job_name') | join(' ') }}
      vars:
        _scrape: >-
          {{ lookup('ansible.builtin.template', 'ROLE/templates/prometheus.yml.j2') | from_yaml }}
""".replace("ROLE", str(ROOT / "roles/fleet_gateway"))


def check_play(
    workdir: Path,
    inventory: object,
    play: str,
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> tuple[int, str]:
    """(exit status, stdout + stderr) of ``play`` (YAML text) run in check mode (unless
    ``check`` is false) on ``inventory`` (a YAML inventory as a dict), both written into
    ``workdir``; ``args`` go to ``ansible-playbook``, ``env`` is added to its environment.
    Times out after 300 s."""
    (workdir / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (workdir / "play.yml").write_text(play)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(workdir / "hosts.yml"),
         *(["--check"] if check else []), str(workdir / "play.yml"),
         "-e", f"ansible_python_interpreter={sys.executable}", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
             **(env or {})},
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def run_module(
    module: ModuleType, args: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any]]:
    """(exit status, result) of one module run."""
    capsys.readouterr()
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        module.main()
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return int(exited.value.code or 0), result
