"""The fleet's front door as the inventory describes it (role ``fleet_gateway``).

:func:`gateway_endpoint` reads the inventory with ``ansible-inventory --list`` (the project's
``ansible.cfg``, group and host variables merged, vault files opened with the vault ids given)
and returns the OpenAI-compatible base URL of the first host of group ``gateway``:
``SCHEME://ADDRESS:PORT/v1`` with ``https`` when ``fleet_gateway_tls_cert_file`` is set, the
host's ``ansible_host`` (else its name; IPv6 in brackets) and ``fleet_gateway_port`` (default
8080, the role's). Values are taken as the inventory holds them: a Jinja expression in one of
these three variables is not evaluated (:class:`GatewayError`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sparkfleet.errors import FleetError

GATEWAY_GROUP = "gateway"
DEFAULT_PORT = 8080  # roles/fleet_gateway/defaults/main.yml: fleet_gateway_port


class GatewayError(FleetError):
    """The inventory could not be read, or describes the gateway in a way not understood."""


def _ansible_inventory() -> str:
    beside = Path(sys.executable).parent / "ansible-inventory"
    return str(beside) if beside.exists() else "ansible-inventory"


def read_inventory(
    inventory: str | Mapping[str, Any], env: Mapping[str, str], vault_args: Sequence[str] = ()
) -> dict[str, Any]:
    """``ansible-inventory --list`` of a path or of an inventory structure (written to a 0600
    temporary file for the call). Raises :class:`GatewayError` when the command fails."""
    with tempfile.TemporaryDirectory(prefix="sparkfleet-inv-") as tmp:
        source = inventory
        if not isinstance(inventory, str):
            path = Path(tmp) / "hosts.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(inventory, fh)
            source = str(path)
        done = subprocess.run(
            [_ansible_inventory(), "-i", str(source), "--list", *vault_args],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, **env},
        )
    if done.returncode != 0:
        raise GatewayError(f"ansible-inventory failed: {done.stderr.strip()[-500:]}")
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def endpoint_from(listing: Mapping[str, Any], group: str | None = None) -> str | None:
    """The gateway's base URL from an ``ansible-inventory --list`` listing; None without a host
    in ``group`` (default: the inventory's ``fleet_gateway_group``, as the fleet's hosts have it,
    else ``gateway``). The address is the gateway's ``fleet_gateway_public_address`` (a VIP, a
    DNS name) when set, else its ``fleet_gateway_bind_address`` when it names one address (the
    gateway listens there only), else its ``ansible_host`` (or its name); as the role reports it.

    Raises:
        GatewayError: a variable it reads is a template, or hosts disagree on
            ``fleet_gateway_group``.
    """
    if group is None:
        all_vars: Mapping[str, Mapping[str, Any]] = (listing.get("_meta") or {}).get("hostvars", {})
        named = {
            str(v["fleet_gateway_group"]) for v in all_vars.values() if "fleet_gateway_group" in v
        }
        if len(named) > 1:
            raise GatewayError(f"hosts disagree on fleet_gateway_group: {sorted(named)}")
        group = named.pop() if named else GATEWAY_GROUP
    members: list[str] = list((listing.get(group) or {}).get("hosts") or [])
    if not members:
        return None
    name = members[0]
    hostvars: Mapping[str, Any] = (listing.get("_meta") or {}).get("hostvars", {}).get(name, {})
    bind = str(hostvars.get("fleet_gateway_bind_address", ""))
    address = str(hostvars.get("ansible_host", name))
    public = str(hostvars.get("fleet_gateway_public_address", ""))
    if public:
        address = public
    elif bind not in ("", "::", "0.0.0.0", "*"):
        address = bind
    port = hostvars.get("fleet_gateway_port", DEFAULT_PORT)
    tls = hostvars.get("fleet_gateway_tls_cert_file", "")
    for var, value in (("ansible_host", address), ("fleet_gateway_bind_address", bind),
                       ("fleet_gateway_public_address", public), ("fleet_gateway_port", port),
                       ("fleet_gateway_tls_cert_file", tls)):  # fmt: skip
        if "{{" in str(value):
            raise GatewayError(f"{name}: {var} is a template ({value}); give it as a value")
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    scheme = "https" if str(tls) else "http"
    return f"{scheme}://{address}:{int(port)}/v1"
