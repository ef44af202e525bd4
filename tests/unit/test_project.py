"""Where the package finds its playbooks: the checkout, else the installed collection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparkfleet import project as project_mod
from sparkfleet.errors import ProjectNotFoundError
from sparkfleet.project import COLLECTION, Project, find_collection

pytestmark = pytest.mark.nolab


def _installed(base: Path) -> Path:
    """A collection as ansible-galaxy collection install leaves it (MANIFEST.json, playbooks/)."""
    root = base / "ansible_collections" / "sparkfleet" / "spark"
    (root / "playbooks").mkdir(parents=True)
    (root / "roles").mkdir()
    (root / "playbooks" / "site.yml").write_text("- hosts: spark\n")
    (root / "MANIFEST.json").write_text(json.dumps({"collection_info": {"name": "spark"}}))
    return root


def test_the_first_installed_collection_on_the_paths_is_found(tmp_path: Path) -> None:
    checkout_link = tmp_path / "checkout" / "ansible_collections" / "sparkfleet" / "spark"
    (checkout_link / "playbooks").mkdir(parents=True)
    (checkout_link / "galaxy.yml").write_text("namespace: sparkfleet\n")  # no MANIFEST.json
    installed = _installed(tmp_path / "user")
    _installed(tmp_path / "system")
    paths = [tmp_path / "empty", tmp_path / "checkout", tmp_path / "user", tmp_path / "system"]
    assert find_collection(paths) == installed.resolve()
    assert find_collection([tmp_path / "empty", tmp_path / "checkout"]) is None


def test_without_a_checkout_the_installed_collection_is_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site_packages = tmp_path / "venv" / "lib" / "site-packages" / "sparkfleet"
    site_packages.mkdir(parents=True)
    monkeypatch.setattr(project_mod, "__file__", str(site_packages / "project.py"))
    monkeypatch.delenv("SPARKFLEET_PROJECT_DIR", raising=False)
    monkeypatch.delenv("ANSIBLE_COLLECTIONS_PATH", raising=False)
    monkeypatch.setattr(project_mod, "collection_paths", lambda: [tmp_path / "colls"])
    with pytest.raises(ProjectNotFoundError, match=rf"no collection {COLLECTION} in .*colls"):
        Project.find()
    root = _installed(tmp_path / "colls")
    found = Project.find()
    assert found == Project(root.resolve(), COLLECTION)
    site = found.playbook("site.yml")
    assert found.runner_target(site) == ("sparkfleet.spark.site", None)
    assert found.shown(site) == "sparkfleet.spark.site"
    assert found.config is None and found.configured_strategy() is None
    assert found.ansible_env() == {"ANSIBLE_COLLECTIONS_PATH": str((tmp_path / "colls").resolve())}
    other = tmp_path / "mine.yml"
    other.write_text("- hosts: all\n")
    assert found.runner_target(found.playbook(other)) == ("mine.yml", str(tmp_path))


def test_the_checkout_runs_its_playbooks_by_file() -> None:
    checkout = Project.find()
    assert checkout.collection is None
    site = checkout.playbook("site.yml")
    assert checkout.runner_target(site) == ("site.yml", str(checkout.playbooks_dir))
    assert checkout.shown(site) == "playbooks/site.yml"
