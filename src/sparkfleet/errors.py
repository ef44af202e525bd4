"""Errors raised before a run starts (bad input); a run's own failures are in its result."""

from __future__ import annotations


class FleetError(Exception):
    """Base of sparkfleet's errors: bad usage or input, reported before anything runs."""


class ProjectNotFoundError(FleetError):
    """No project directory (ansible.cfg, playbooks/, roles/) was found."""


class PlaybookNotFoundError(FleetError):
    """The operation's playbook is not in the project."""


class InventoryError(FleetError):
    """The inventory is missing or malformed."""
