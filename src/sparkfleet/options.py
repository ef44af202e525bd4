"""What a run takes: :class:`RunOptions` (one typed set of options for every operation),
:class:`Credentials` (vault ids and the become password) and :class:`ExecutionEnvironment`.

Secrets never reach a command line or a log. A vault password given as a file (or script) is
passed as ``--vault-id LABEL@FILE``, a path; a vault or become password given as a string is
answered at ansible-playbook's own prompt (``--vault-id LABEL@prompt``, ``--ask-vault-pass``,
``--ask-become-pass``) by ansible-runner, which keeps it in ``env/passwords`` (mode 0600) of the
run's private directory; that directory is removed when the run ends.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias, TypedDict

from sparkfleet.errors import FleetError
from sparkfleet.events import EventCallback

PathArg: TypeAlias = str | os.PathLike[str]
Limit: TypeAlias = str | Sequence[str]

DEFAULT_VAULT_LABEL = "default"
"""Ansible's label for a vault id given without one (``C.DEFAULT_VAULT_IDENTITY``)."""
BECOME_PROMPT = r"^BECOME password.*:\s*?$"
"""ansible-playbook's prompt for ``--ask-become-pass`` (as ansible-runner's own docs match it)."""
_LABEL = re.compile(r"^[A-Za-z0-9_.-]+$")


class CancelToken:
    """A thread-safe stop request for a run (pass it as ``cancel=``).

    :meth:`stop` asks the run to stop (gracefully when the fleet has ``graceful_stop=True``,
    otherwise at once); :meth:`kill` ends it now (ansible-runner's cancel: ansible-playbook's
    process group is killed).
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._kill = threading.Event()

    def stop(self) -> None:
        """Ask for a stop."""
        self._stop.set()

    def kill(self) -> None:
        """Ask for an immediate stop."""
        self._stop.set()
        self._kill.set()

    @property
    def stop_requested(self) -> bool:
        """True once :meth:`stop` or :meth:`kill` was called."""
        return self._stop.is_set()

    @property
    def kill_requested(self) -> bool:
        """True once :meth:`kill` was called."""
        return self._kill.is_set()


Cancel: TypeAlias = CancelToken | threading.Event | Callable[[], bool]
"""A stop request: a :class:`CancelToken`, a :class:`threading.Event` (set = stop) or a callable
polled about twice a second (True = stop)."""


class RunOptions(TypedDict, total=False):
    """Options of one run, the same for every operation (all optional, keyword-only).

    Pass them as keywords (``fleet.deploy(limit="spark-01", check=True)``) or as one dict
    (``fleet.deploy(**opts)``); a type checker verifies either form.

    Keys:
        limit: host pattern(s) to run on (``--limit``): ``"spark-01,spark-02"`` or a list.
        tags / skip_tags: ``--tags`` / ``--skip-tags`` (a list or a comma-separated string).
        extravars: extra variables as a mapping, over the fleet's (ansible-runner's
            ``extravars``: passed as ``-e @env/extravars``, after ``extra_vars_args``, so these
            win over them).
        extra_vars_args: ``-e`` values exactly as ``ansible-playbook -e`` takes them, parsed
            by Ansible itself, in order: ``"@vars.yml"`` (vault-encrypted or not),
            ``'msg="a b" n=1'``, ``'{"a": [1]}'``. They reach ansible-playbook's argument list
            as given: keep secrets in a vaulted ``@file``, never inline.
        forks: parallel hosts (``--forks``), at least 1.
        credentials: vault ids and the become password, added to the fleet's
            (:class:`Credentials`).
        check / diff: ``--check`` / ``--diff``.
        timeout_s: seconds the whole run may take; then ansible-runner ends it and the result's
            status is ``timeout`` (None: no limit).
        on_event: callback for this run's typed events (instead of the fleet's).
        cancel: a stop request (:data:`Cancel`).
        handle_signals: SIGINT/SIGTERM stop the run, a second one kills it (main thread only);
            the previous handlers are restored afterwards.
    """

    limit: Limit | None
    tags: Sequence[str] | str | None
    skip_tags: Sequence[str] | str | None
    extravars: Mapping[str, Any] | None
    extra_vars_args: Sequence[str]
    forks: int | None
    credentials: Credentials | None
    check: bool
    diff: bool
    timeout_s: int | None
    on_event: EventCallback | None
    cancel: Cancel | None
    handle_signals: bool


@dataclass(frozen=True)
class VaultId:
    """One vault id: a label and where its password comes from (exactly one of the two).

    Args:
        label: the vault id's label (``--vault-id LABEL@...``); Ansible's ``default`` when None.
        source: a file holding the password, or an executable script printing it (Ansible's
            vault password file or client script).
        password: the password itself; it is typed at ansible-playbook's prompt for this id.

    Raises:
        FleetError: neither or both of ``source`` and ``password``, a bad label, or a source
            that is not a file.
    """

    label: str | None = None
    source: PathArg | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.source is None) == (self.password is None):
            raise FleetError("a vault id needs exactly one of source= and password=")
        if self.label is not None and not _LABEL.match(self.label):
            raise FleetError(f"vault id label {self.label!r}: letters, digits, '_', '.', '-' only")
        if self.source is not None and not Path(self.source).expanduser().is_file():
            raise FleetError(f"vault password file {self.source} does not exist")

    def file_arg(self) -> str | None:
        """``--vault-id``'s value for a password file (``LABEL@/abs/path`` or ``/abs/path``,
        ``~`` expanded); None for a password given as text (it goes to a prompt instead)."""
        if self.source is None:
            return None
        source = str(Path(self.source).expanduser().resolve())
        return f"{self.label}@{source}" if self.label else source

    @classmethod
    def parse(cls, spec: str, prompt: Callable[[str], str] | None = None) -> VaultId:
        """A vault id from ``--vault-id``'s syntax: ``LABEL@FILE``, ``FILE``, ``LABEL@prompt``
        or ``prompt`` (then ``prompt(label)`` gives the password; required for those forms)."""
        label, sep, source = spec.rpartition("@")
        if not sep:
            label, source = "", spec
        if source in ("prompt", "prompt_ask_vault_pass"):
            if prompt is None:
                raise FleetError(f"--vault-id {spec}: no way to ask for the password here")
            name = label or DEFAULT_VAULT_LABEL
            return cls(label=name, password=prompt(name))
        return cls(label=label or None, source=source)


@dataclass(frozen=True, repr=False)
class Credentials:
    """Vault ids and the become password for a run (shown as ``Credentials(...)`` only).

    Args:
        vault_ids: the vault ids, tried by Ansible in this order.
        become_password: the privilege escalation password (``--ask-become-pass``); None to
            leave it to the inventory (e.g. ``ansible_become_password`` from a vault).
    """

    vault_ids: tuple[VaultId, ...] = ()
    become_password: str | None = None

    def __repr__(self) -> str:
        labels = ", ".join(v.label or DEFAULT_VAULT_LABEL for v in self.vault_ids)
        become = ", become password" if self.become_password is not None else ""
        return f"Credentials(vault ids: [{labels}]{become})"

    def __add__(self, other: Credentials) -> Credentials:
        """These, then ``other``'s vault ids; ``other``'s become password wins when set."""
        become = other.become_password
        return Credentials(
            vault_ids=(*self.vault_ids, *other.vault_ids),
            become_password=become if become is not None else self.become_password,
        )

    def ansible_args(self) -> tuple[list[str], dict[str, str]]:
        """ansible-playbook's arguments (paths and labels only) and ansible-runner's
        ``passwords`` (prompt pattern -> answer) for these credentials.

        Raises:
            FleetError: two vault ids given as passwords under the same label (their prompts
                could not be told apart).
        """
        args: list[str] = []
        passwords: dict[str, str] = {}
        for vid in self.vault_ids:
            label = vid.label or DEFAULT_VAULT_LABEL
            file_arg = vid.file_arg()
            if file_arg is not None:
                args += ["--vault-id", file_arg]
                continue
            pattern = rf"^Vault password \({re.escape(label)}\):\s*?$"
            if pattern in passwords:
                raise FleetError(f"two vault passwords for the label {label!r}")
            args += ["--vault-id", f"{label}@prompt"]
            passwords[pattern] = str(vid.password)
        if self.become_password is not None:
            args.append("--ask-become-pass")
            passwords[BECOME_PROMPT] = self.become_password
        return args, passwords


@dataclass(frozen=True)
class ExecutionEnvironment:
    """Run ansible-playbook in a container image (an execution environment), through
    ansible-runner's process isolation.

    The image must hold the collection ``sparkfleet.spark`` (``execution-environment.yml``
    builds one): the playbook runs by its FQCN (``sparkfleet.spark.site``), and the run's
    private directory is mounted at ``/runner``. Inventory paths, vault files and keys outside
    it must be mounted with ``volume_mounts``.

    Args:
        image: the container image (``container_image``).
        engine: ``podman`` or ``docker`` (``process_isolation_executable``).
        options: extra options for the engine's ``run`` (``container_options``).
        volume_mounts: ``SRC:DST[:OPTIONS]`` mounts (``container_volume_mounts``).
    """

    image: str
    engine: str = "podman"
    options: tuple[str, ...] = ()
    volume_mounts: tuple[str, ...] = ()

    def runner_kwargs(self) -> dict[str, Any]:
        """ansible-runner's keyword arguments for this environment."""
        return {
            "process_isolation": True,
            "process_isolation_executable": self.engine,
            "container_image": self.image,
            "container_options": list(self.options) or None,
            "container_volume_mounts": list(self.volume_mounts) or None,
        }


__all__ = [
    "BECOME_PROMPT",
    "DEFAULT_VAULT_LABEL",
    "Cancel",
    "CancelToken",
    "Credentials",
    "ExecutionEnvironment",
    "Limit",
    "PathArg",
    "RunOptions",
    "VaultId",
]
