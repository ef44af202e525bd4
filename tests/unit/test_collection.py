"""The collection as a user installs it: built, installed into a fresh virtualenv with no checkout.

``ansible-galaxy collection build`` in the checkout; a new virtualenv gets ``ansible-core`` and
PyPI's ``ansible`` (which carries community.docker and the other dependencies); the tarball is
installed with ``--offline`` into a directory of its own. Then, from a working directory outside
the checkout (so that no ``ansible.cfg`` of the project is read): ``ansible-doc`` on every module
and plugin, and ``ansible-playbook sparkfleet.spark.site --tags preflight`` against a simulated
host of its own (``coll-sim-1``, label ``sparklab.coll``), reached over SSH as the lab's
passwordless-sudo user.

The ``sparkfleet`` wheel goes into the same virtualenv (``pip wheel`` of the checkout, installed
with what its command line imports: ansible-runner, click, rich; its report-only dependencies,
llama-benchy and matplotlib, are left out to keep the test short), so its CLI has no checkout to
find: ``sparkfleet preflight`` runs the installed collection's playbook, and with
``--container-image`` hands the run to the container engine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.lab import access, hosts
from tests.lab.config import REPO_ROOT, LabConfig

pytestmark = pytest.mark.lab

CFG = LabConfig(host_prefix="coll-sim", host_label="sparklab.coll")
HOST = "coll-sim-1"
COLLECTION = "sparkfleet.spark"
# Every module the roles call, and the action plugin (documented by its module stub).
PLUGINS = sorted(p.stem for p in (REPO_ROOT / "plugins" / "modules").glob("*.py"))


@dataclass
class Installed:
    """A fresh virtualenv with the collection installed, and where to run from."""

    venv: Path
    collections: Path
    workdir: Path
    tarball: Path

    def env(self) -> dict[str, str]:
        """No project configuration: the installed collection and the venv's own tools."""
        env = _clean_env()
        env["ANSIBLE_COLLECTIONS_PATH"] = str(self.collections)
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["ANSIBLE_NOCOLOR"] = "1"
        return env

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a tool of the fresh venv from the work directory."""
        return subprocess.run(
            [str(self.venv / "bin" / argv[0]), *argv[1:]],
            cwd=self.workdir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )


def _clean_env() -> dict[str, str]:
    """The environment without Ansible's, sparkfleet's or a PYTHONPATH (which could show pip and
    Python the checkout's package)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANSIBLE_", "SPARKFLEET_")) and k != "PYTHONPATH"
    }


def _must(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (
        f"{proc.args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("collection")
    galaxy = Path(sys.executable).parent / "ansible-galaxy"
    _must(
        subprocess.run(
            [str(galaxy), "collection", "build", "--output-path", str(base / "dist")],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    )
    (tarball,) = (base / "dist").glob("sparkfleet-spark-*.tar.gz")
    venv = base / "venv"
    _must(
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, check=False
        )
    )
    _must(
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "-c", str(REPO_ROOT / "constraints.txt"),
             "ansible-core", "ansible"],
            capture_output=True,
            text=True,
            check=False,
        )
    )  # fmt: skip
    _must(
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(base / "dist"),
             str(REPO_ROOT)],
            cwd=base, capture_output=True, text=True, check=False,
        )
    )  # fmt: skip
    (wheel,) = (base / "dist").glob("sparkfleet-*.whl")
    _must(
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "-c", str(REPO_ROOT / "constraints.txt"),
             "ansible-runner", "click", "rich"],
            capture_output=True, text=True, check=False, env=_clean_env(),
        )
    )  # fmt: skip
    _must(
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(wheel)],
            capture_output=True, text=True, check=False, env=_clean_env(),
        )
    )  # fmt: skip
    workdir = base / "work"
    workdir.mkdir()
    inst = Installed(venv, base / "collections", workdir, tarball)
    _must(inst.run("ansible-galaxy", "collection", "install", "--offline", "-p",
                   str(inst.collections), str(tarball)))  # fmt: skip
    return inst


def test_the_tarball_holds_the_collection_and_no_lab(installed: Installed) -> None:
    with tarfile.open(installed.tarball) as tar:
        names = set(tar.getnames())
    manifest = json.loads(
        (
            installed.collections / "ansible_collections" / "sparkfleet" / "spark" / "MANIFEST.json"
        ).read_text()
    )
    assert manifest["collection_info"]["namespace"] == "sparkfleet"
    assert set(manifest["collection_info"]["dependencies"]) == {
        "community.docker", "community.general", "ansible.posix",
    }  # fmt: skip
    for needed in ["playbooks/site.yml", "roles/vllm_service/tasks/main.yml",
                   "plugins/modules/hf_model_fetch.py", "plugins/action/hf_model_wait.py",
                   "plugins/module_utils/vllm_health_probe.py", "meta/runtime.yml",
                   "tests/sanity/ignore-2.19.txt"]:  # fmt: skip
        assert needed in names, needed
    # the sanity ignore file ships (ansible-test reads it there); the lab and its tests do not
    lab = r"(tests/(lab|unit|standins|conftest\.py|__init__\.py)|molecule|src|bench|inventory/lab)"
    leaked = sorted(n for n in names if re.match(lab + r"(/|$)", n))
    assert leaked == []
    # of tests/, only the sanity ignore file: the project's own test helpers stay out
    assert sorted(n for n in names if n.startswith("tests/") and n.endswith(".py")) == []


def test_ansible_doc_reads_every_module_and_plugin(installed: Installed) -> None:
    listed = json.loads(_must(installed.run("ansible-doc", "-t", "module", "-l", COLLECTION, "-j")))
    assert sorted(name.removeprefix(f"{COLLECTION}.") for name in listed) == PLUGINS
    assert "hf_model_wait" in PLUGINS  # the action plugin, by its documentation stub
    for name in PLUGINS:
        out = json.loads(_must(installed.run("ansible-doc", "-j", f"{COLLECTION}.{name}")))
        doc = out[f"{COLLECTION}.{name}"]
        assert doc["doc"]["short_description"], name
        assert str(installed.collections) in doc["doc"]["filename"], name
        assert yaml.safe_load(doc["examples"]), name
        assert doc["return"] is not None, name


@pytest.fixture(scope="module")
def coll_host() -> Iterator[str]:
    with hosts.own_hosts(CFG) as started:
        yield started[0]


def test_a_play_of_the_installed_collection_runs_against_a_lab_host(
    installed: Installed, coll_host: str
) -> None:
    inventory = _inventory(installed, coll_host)
    proc = installed.run("ansible-playbook", f"{COLLECTION}.site", "-i", str(inventory),
                         "--tags", "preflight")  # fmt: skip
    out = _must(proc)
    assert "TASK [sparkfleet.spark.spark_preflight : Gather the host report]" in out
    assert "all requirements met" in out
    assert re.search(rf"{coll_host}\s*: ok=\d+\s+changed=0\s+unreachable=0\s+failed=0", out), out[
        -2000:
    ]


def _inventory(installed: Installed, host: str) -> Path:
    group_vars = yaml.safe_load((REPO_ROOT / "inventory/lab/group_vars/spark.yml").read_text())
    ssh = access.ansible_host_vars(CFG, hosts.host_address(CFG, host), sudo_password=False)
    inventory = installed.workdir / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"spark": {"vars": group_vars, "hosts": {host: ssh}}}))
    return inventory


def test_the_cli_runs_the_installed_collection_without_a_checkout(
    installed: Installed, coll_host: str
) -> None:
    where = _must(installed.run("python", "-c", "import sparkfleet; print(sparkfleet.__file__)"))
    assert str(installed.venv) in where and str(REPO_ROOT) not in where
    proc = installed.run("sparkfleet", "preflight", "-i", str(_inventory(installed, coll_host)),
                         "--json")  # fmt: skip
    result = json.loads(_must(proc))
    assert result["playbook"] == f"{COLLECTION}.site" and result["exit_code"] == 0, result
    assert result["hosts"][coll_host]["status"] == "ok", result
    report = result["hosts"][coll_host]["facts"]["spark_preflight_report"]
    assert report["ok"] is True, report


def test_the_cli_hands_an_execution_environment_run_to_the_engine(
    installed: Installed, coll_host: str
) -> None:
    """No checkout, no project: the run goes to ``docker run IMAGE ansible-playbook
    sparkfleet.spark.site``. The lab's base image has no ansible-playbook, so the container
    exits 127 and the CLI says so, exit code 3: nothing ran (an image built from
    execution-environment.yml has it)."""
    proc = installed.run("sparkfleet", "preflight", "-i", str(_inventory(installed, coll_host)),
                         "--json", "--container-image", f"{CFG.base_image}:latest",
                         "--container-engine", "docker")  # fmt: skip
    result = json.loads(proc.stdout)
    assert proc.returncode == 3 and result["rc"] == 127, result
    assert result["playbook"] == f"{COLLECTION}.site"
    (error,) = result["errors"]
    assert '"ansible-playbook": executable file not found' in error, error
