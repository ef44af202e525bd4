"""The gateway as the Python API sees it: ``Fleet.endpoint()`` from the inventory (through the
real ``ansible-inventory``), and the gateway's view in ``sparkfleet status``."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from sparkfleet import Fleet
from sparkfleet.display import gateway_table
from sparkfleet.gateway import GatewayError, endpoint_from
from sparkfleet.result import HostResult, RunResult

pytestmark = pytest.mark.nolab


def inventory(**gateway_vars: Any) -> dict[str, Any]:
    return {
        "all": {
            "children": {
                "spark": {"hosts": {"s-1": {"ansible_host": "10.0.0.11"}}},
                "gateway": {
                    "vars": gateway_vars,
                    "hosts": {"gw-1": {"ansible_host": "10.0.0.5"}, "gw-2": {}},
                },
            }
        }
    }


def test_endpoint_is_the_first_gateway_with_its_port_and_scheme() -> None:
    assert Fleet(inventory()).endpoint() == "http://10.0.0.5:8080/v1"
    tls = inventory(fleet_gateway_port=443, fleet_gateway_tls_cert_file="/etc/ssl/gw.pem")
    assert Fleet(tls).endpoint() == "https://10.0.0.5:443/v1"


def test_no_gateway_group_no_endpoint() -> None:
    assert Fleet({"s-1": {"ansible_host": "10.0.0.11"}}).endpoint() is None


def test_endpoint_brackets_ipv6_and_refuses_templates() -> None:
    listing: dict[str, Any] = {
        "gateway": {"hosts": ["gw"]},
        "_meta": {"hostvars": {"gw": {"ansible_host": "fd00::5", "fleet_gateway_port": 9000}}},
    }
    assert endpoint_from(listing) == "http://[fd00::5]:9000/v1"
    listing["_meta"]["hostvars"]["gw"]["fleet_gateway_port"] = "{{ gw_port }}"
    with pytest.raises(GatewayError, match="fleet_gateway_port is a template"):
        endpoint_from(listing)


def test_status_shows_each_gateways_view_per_host() -> None:
    view = {
        "endpoint": "http://10.0.0.5:8080/v1",
        "error": "",
        "backends": [
            {"host": "s-1", "state": "UP", "in_flight": 3, "served": 120},
            {"host": "s-2", "state": "MAINT", "in_flight": 1, "served": 98},
            {"host": "s-3", "state": "DOWN", "in_flight": 0, "served": 7},
        ],
    }
    gw = HostResult("gw-1", ok=3, facts={"fleet_gateway_status": view})
    result = RunResult(
        "status", "status.yml", "successful", 0, {"gw-1": gw, "s-1": HostResult("s-1")}
    )
    assert gw.endpoint == "http://10.0.0.5:8080/v1"
    table = gateway_table(result)
    assert table is not None
    console = Console(width=200, record=True)
    console.print(table)
    lines = console.export_text().splitlines()
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if "10.0.0.5" in line]
    rows = {c[2]: c[3:] for c in cells}
    assert rows == {
        "s-1": ["UP", "3", "120"],
        "s-2": ["MAINT", "1", "98"],
        "s-3": ["DOWN", "0", "7"],
    }
    assert gateway_table(RunResult("status", "status.yml", "successful", 0, {})) is None
