"""Inventories: a path (file or directory), a list of host names, or a dict.

- ``"inventory/spark"`` or ``Path(...)``: any inventory Ansible reads (file, directory, plugin
  config); ``"host1,host2"`` (a comma in a string that is not a path) is a host list.
- ``["spark-1", "spark-2"]``: hosts of group ``spark`` (the group the playbooks target).
- ``{"spark-1": {"ansible_host": "10.0.0.11"}, ...}``: hosts of group ``spark``, with their vars.
- ``{"all": {...}}`` or ``{"spark": {"hosts": {...}, "vars": {...}}}``: Ansible's YAML
  inventory structure, as is.

An inline inventory is handed to ansible-runner, which writes it as ``inventory/hosts.json``
(mode 0600) into the run's private directory, never into the project.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from sparkfleet.errors import InventoryError

InventorySource: TypeAlias = str | os.PathLike[str] | Sequence[str] | Mapping[str, Any]
"""What :class:`sparkfleet.Fleet` accepts as ``inventory=``."""

DEFAULT_GROUP = "spark"
_STRUCTURE_KEYS = frozenset({"hosts", "children", "vars"})


def _is_structure(inv: Mapping[str, Any]) -> bool:
    """Ansible's YAML structure (groups with hosts/children/vars) rather than host -> vars."""
    if "all" in inv:
        return True
    return bool(inv) and all(
        isinstance(v, Mapping) and v and set(v) <= _STRUCTURE_KEYS for v in inv.values()
    )


def normalize(inventory: InventorySource, group: str = DEFAULT_GROUP) -> str | dict[str, Any]:
    """A path string (absolute) or an inventory structure dict."""
    if isinstance(inventory, os.PathLike | str):
        text = os.fspath(inventory)
        path = Path(text).expanduser()
        if path.exists():
            return str(path.resolve())
        if isinstance(inventory, str) and "," in text:
            names = [n.strip() for n in text.split(",") if n.strip()]
            return normalize(names, group)
        raise InventoryError(f"inventory {text} does not exist")
    if isinstance(inventory, Mapping):
        if not inventory:
            raise InventoryError("inventory is empty")
        if _is_structure(inventory):
            copied: dict[str, Any] = json.loads(json.dumps(dict(inventory), default=str))
            return copied
        hosts: dict[str, Any] = {}
        for name, hostvars in inventory.items():
            if hostvars is not None and not isinstance(hostvars, Mapping):
                kind = type(hostvars).__name__
                raise InventoryError(f"inventory host {name!r}: vars must be a mapping, not {kind}")
            hosts[str(name)] = dict(hostvars or {})
        return {"all": {"children": {group: {"hosts": hosts}}}}
    if isinstance(inventory, Sequence):
        names = list(inventory)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise InventoryError(f"inventory list must hold host names, got {names!r}")
        return {"all": {"children": {group: {"hosts": {n: {} for n in names}}}}}
    raise InventoryError(f"unsupported inventory {inventory!r}")
