"""Where the project's playbooks and roles are, and the environment that uses them.

A project is either a checkout (``ansible.cfg``, ``playbooks/``, ``roles/``: its ``ansible.cfg``
and roles apply to every run) or the installed collection ``sparkfleet.spark`` (``ansible-galaxy
collection install``: its playbooks run by their FQCN, ``sparkfleet.spark.site``, under the
operator's own Ansible configuration, as ``ansible-playbook sparkfleet.spark.site`` runs them).
"""

from __future__ import annotations

import configparser
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sparkfleet.errors import PlaybookNotFoundError, ProjectNotFoundError

PROJECT_DIR_ENV = "SPARKFLEET_PROJECT_DIR"
"""Environment variable naming the project directory (overrides the package's location)."""

COLLECTION = "sparkfleet.spark"
"""The collection that holds the playbooks when there is no checkout."""


def _is_project(path: Path) -> bool:
    return (
        (path / "ansible.cfg").is_file()
        and (path / "playbooks").is_dir()
        and (path / "roles").is_dir()
    )


def collection_paths() -> list[Path]:
    """Where Ansible looks for collections, in its order: ``COLLECTIONS_PATHS`` (from
    ``ANSIBLE_COLLECTIONS_PATH``, ``ansible.cfg`` or Ansible's default) then ``sys.path`` (where
    PyPI's ``ansible`` puts its collections); each a directory that holds ``ansible_collections``.
    """
    from ansible import constants

    configured: Iterable[str] = constants.COLLECTIONS_PATHS or ()
    seen: list[Path] = []
    for entry in [*configured, *sys.path]:
        if not entry:
            continue
        path = Path(entry).expanduser()
        if path.name == "ansible_collections":  # Ansible accepts the directory itself too
            path = path.parent
        if path not in seen:
            seen.append(path)
    return seen


def find_collection(paths: Iterable[Path] | None = None) -> Path | None:
    """The installed ``sparkfleet.spark``: the first ``ansible_collections/sparkfleet/spark``
    with a ``MANIFEST.json`` (what ``ansible-galaxy collection install`` writes) and
    ``playbooks/`` on ``paths`` (default :func:`collection_paths`)."""
    namespace, name = COLLECTION.split(".")
    for base in collection_paths() if paths is None else paths:
        candidate = base / "ansible_collections" / namespace / name
        if (candidate / "MANIFEST.json").is_file() and (candidate / "playbooks").is_dir():
            return candidate.resolve()
    return None


@dataclass(frozen=True)
class Project:
    """Where the playbooks are: a checkout (``collection`` is ``None``) or the installed
    collection ``sparkfleet.spark`` (``root`` is its directory, ``collection`` its name)."""

    root: Path
    collection: str | None = None

    @classmethod
    def find(cls, project_dir: str | os.PathLike[str] | None = None) -> Project:
        """The project at ``project_dir``, else ``$SPARKFLEET_PROJECT_DIR``, else the checkout
        the package lives in (an editable install), else the installed collection
        ``sparkfleet.spark`` where Ansible finds collections.

        Raises:
            ProjectNotFoundError: none of these, naming every place looked at.
        """
        given = project_dir if project_dir is not None else os.environ.get(PROJECT_DIR_ENV)
        if given:
            root = Path(given).expanduser().resolve()
            if not root.exists():
                raise ProjectNotFoundError(f"{root} does not exist (the project directory given)")
            if not _is_project(root):
                raise ProjectNotFoundError(
                    f"{root} is not a sparkfleet project (no ansible.cfg, playbooks/ or roles/)"
                )
            return cls(root)
        here = Path(__file__).resolve().parent
        for parent in here.parents:
            if _is_project(parent):
                return cls(parent)
        paths = collection_paths()
        installed = find_collection(paths)
        if installed is not None:
            return cls(installed, COLLECTION)
        raise ProjectNotFoundError(
            f"no sparkfleet project (ansible.cfg, playbooks/, roles/) above {here}, and no "
            f"collection {COLLECTION} in {', '.join(map(str, paths)) or 'no collection path'} "
            f"(ansible-galaxy collection install it, or pass project_dir= / --project-dir, or set "
            f"{PROJECT_DIR_ENV})"
        )

    @property
    def playbooks_dir(self) -> Path:
        """``playbooks/``."""
        return self.root / "playbooks"

    @property
    def roles_dir(self) -> Path:
        """``roles/``."""
        return self.root / "roles"

    @property
    def config(self) -> Path | None:
        """The checkout's ``ansible.cfg`` (``None`` for the installed collection)."""
        return None if self.collection else self.root / "ansible.cfg"

    def playbook(self, name: str | os.PathLike[str], *, needed_by: str | None = None) -> Path:
        """The playbook's path: a name in ``playbooks/`` or any existing path."""
        path = Path(name)
        candidate = path if path.is_absolute() else self.playbooks_dir / path
        if not candidate.is_file() and not path.is_absolute() and path.is_file():
            candidate = path.resolve()
        if not candidate.is_file():
            present = ", ".join(sorted(p.name for p in self.playbooks_dir.glob("*.yml")))
            what = f" ({needed_by} runs it)" if needed_by else ""
            raise PlaybookNotFoundError(
                f"playbook {candidate} not found{what}; playbooks in {self.playbooks_dir}: "
                f"{present or 'none'}"
            )
        return candidate

    def runner_target(self, path: Path) -> tuple[str, str | None]:
        """What ansible-runner gets for the playbook at ``path``: ``(playbook, project_dir)``.

        A playbook of the installed collection runs by its FQCN (``sparkfleet.spark.site``), so
        that Ansible resolves its roles in the collection; any other by file name from its
        directory.
        """
        if self.collection and path.parent == self.playbooks_dir and path.suffix == ".yml":
            return f"{self.collection}.{path.stem}", None
        return path.name, str(path.parent)

    def shown(self, path: Path) -> str:
        """The playbook as results name it: relative to the checkout, or its FQCN."""
        if self.collection:
            return self.runner_target(path)[0] if path.parent == self.playbooks_dir else str(path)
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    def configured_strategy(self) -> str | None:
        """The ``strategy`` ansible.cfg sets in ``[defaults]``, if any."""
        if self.config is None:
            return None
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            parser.read(self.config, encoding="utf-8")
        except configparser.Error:
            return None
        return parser.get("defaults", "strategy", fallback=None) or None

    def ansible_env(self) -> dict[str, str]:
        """Environment that makes ansible-playbook use this project whatever its working
        directory: the checkout's ansible.cfg and roles, or the installed collection's path."""
        if self.collection:
            base = str(self.root.parents[2])  # the directory that holds ansible_collections/
            extra = os.environ.get("ANSIBLE_COLLECTIONS_PATH")
            return {
                "ANSIBLE_COLLECTIONS_PATH": os.pathsep.join([base, *([extra] if extra else [])])
            }
        roles = [str(self.roles_dir)]
        extra = os.environ.get("ANSIBLE_ROLES_PATH")
        if extra:
            roles.append(extra)
        return {
            "ANSIBLE_CONFIG": str(self.root / "ansible.cfg"),
            "ANSIBLE_ROLES_PATH": os.pathsep.join(roles),
        }
