"""Where the project's playbooks, roles and ansible.cfg are, and the environment that uses them."""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path

from sparkfleet.errors import PlaybookNotFoundError, ProjectNotFoundError

PROJECT_DIR_ENV = "SPARKFLEET_PROJECT_DIR"
"""Environment variable naming the project directory (overrides the package's location)."""


def _is_project(path: Path) -> bool:
    return (
        (path / "ansible.cfg").is_file()
        and (path / "playbooks").is_dir()
        and (path / "roles").is_dir()
    )


@dataclass(frozen=True)
class Project:
    """A sparkfleet project directory: ``ansible.cfg``, ``playbooks/``, ``roles/``."""

    root: Path

    @classmethod
    def find(cls, project_dir: str | os.PathLike[str] | None = None) -> Project:
        """The project at ``project_dir``, else ``$SPARKFLEET_PROJECT_DIR``, else the one the
        installed package lives in (an editable install or a checkout)."""
        given = project_dir if project_dir is not None else os.environ.get(PROJECT_DIR_ENV)
        if given:
            root = Path(given).expanduser().resolve()
            if not _is_project(root):
                raise ProjectNotFoundError(
                    f"{root} is not a sparkfleet project (no ansible.cfg, playbooks/ or roles/)"
                )
            return cls(root)
        here = Path(__file__).resolve().parent
        for parent in here.parents:
            if _is_project(parent):
                return cls(parent)
        raise ProjectNotFoundError(
            f"no sparkfleet project (ansible.cfg, playbooks/, roles/) above {here}; "
            f"pass project_dir= or set {PROJECT_DIR_ENV}"
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
    def config(self) -> Path:
        """``ansible.cfg``."""
        return self.root / "ansible.cfg"

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

    def configured_strategy(self) -> str | None:
        """The ``strategy`` ansible.cfg sets in ``[defaults]``, if any."""
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            parser.read(self.config, encoding="utf-8")
        except configparser.Error:
            return None
        return parser.get("defaults", "strategy", fallback=None) or None

    def ansible_env(self) -> dict[str, str]:
        """Environment that makes ansible-playbook use this project's ansible.cfg and roles,
        whatever its working directory."""
        roles = [str(self.roles_dir)]
        extra = os.environ.get("ANSIBLE_ROLES_PATH")
        if extra:
            roles.append(extra)
        return {
            "ANSIBLE_CONFIG": str(self.config),
            "ANSIBLE_ROLES_PATH": os.pathsep.join(roles),
        }
