"""The gateway as the Python API sees it: ``Fleet.endpoint()`` from the inventory (through the
real ``ansible-inventory``), and the gateway's view in ``sparkfleet status``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from sparkfleet import Fleet
from sparkfleet.display import gateway_table, status_table
from sparkfleet.gateway import GatewayError, endpoint_from
from sparkfleet.result import ExitCode, HostResult, RunResult
from tests.unit.plays import GATEWAY_CHECK_PLAY, check_play

pytestmark = pytest.mark.nolab

ROOT = Path(__file__).resolve().parents[2]


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


def test_endpoint_is_the_public_address_when_given() -> None:
    vip = inventory(fleet_gateway_public_address="gw.lan", fleet_gateway_bind_address="10.1.0.5")
    assert Fleet(vip).endpoint() == "http://gw.lan:8080/v1"
    assert Fleet(inventory(fleet_gateway_public_address="fd00::1")).endpoint() == (
        "http://[fd00::1]:8080/v1"
    )


def test_the_role_reports_and_scrapes_the_gateway_where_it_listens(tmp_path: Path) -> None:
    """The role's endpoint (fleet_gateway_result, fleet_gateway_status) names the gateway as
    Fleet.endpoint() does; the scrape configuration targets the exporter's own address."""
    for gateway_vars, public, scraped in (
        ({}, "PUBLIC AT 127.0.0.1", "SCRAPED AT 127.0.0.1:8405"),
        ({"fleet_gateway_bind_address": "10.1.0.5",
          "fleet_gateway_metrics_bind_address": "10.1.0.6"},
         "PUBLIC AT 10.1.0.5", "SCRAPED AT 10.1.0.6:8405"),
        ({"fleet_gateway_public_address": "fd00::1", "fleet_gateway_metrics_bind_address": "::"},
         "PUBLIC AT [fd00::1]", "SCRAPED AT 127.0.0.1:8405"),
    ):  # fmt: skip
        rc, out = run_gateway_checks(
            tmp_path, {"ansible_host": "127.0.0.1", **gateway_vars},
            **{"s-1": {"ansible_host": "10.1.0.1"}},
        )  # fmt: skip
        said = " ".join(out.split())  # the callback wraps long messages
        assert rc == 0 and public in said and scraped in said, out


def test_endpoint_is_the_bind_address_when_the_gateway_listens_on_one() -> None:
    assert (
        Fleet(inventory(fleet_gateway_bind_address="10.1.0.5")).endpoint()
        == "http://10.1.0.5:8080/v1"
    )
    assert (
        Fleet(inventory(fleet_gateway_bind_address="fd00::9")).endpoint()
        == "http://[fd00::9]:8080/v1"
    )
    for wildcard in ("", "::", "0.0.0.0"):
        assert (
            Fleet(inventory(fleet_gateway_bind_address=wildcard)).endpoint()
            == "http://10.0.0.5:8080/v1"
        )


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
    # the gateways in a group of another name, as the fleet's hosts know it
    named: dict[str, Any] = {
        "front": {"hosts": ["gw-a"]},
        "spark": {"hosts": ["s-1"]},
        "_meta": {"hostvars": {"gw-a": {"ansible_host": "10.0.0.9", "fleet_gateway_group": "front"},
                               "s-1": {"fleet_gateway_group": "front"}}},
    }  # fmt: skip
    assert endpoint_from(named) == "http://10.0.0.9:8080/v1"
    named["_meta"]["hostvars"]["s-1"]["fleet_gateway_group"] = "gateway"
    with pytest.raises(
        GatewayError, match=r"disagree on fleet_gateway_group: \['front', 'gateway'\]"
    ):
        endpoint_from(named)


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


def run_gateway_checks(
    tmp_path: Path, gateway_vars: dict[str, Any] | None = None, **spark_hosts: dict[str, Any]
) -> tuple[int, str]:
    """The role's variable check on a local gateway host ``gw`` (with ``gateway_vars``) in front
    of ``spark_hosts`` (check mode: nothing on this machine changes)."""
    inventory = {
        "all": {
            "children": {
                "spark": {"hosts": spark_hosts},
                "gateway": {
                    "hosts": {"gw": {"ansible_connection": "local"}},
                    "vars": {
                        "fleet_gateway_api_key": "gateway-key-0123456789abcdef",
                        **(gateway_vars or {}),
                    },
                },
            }
        }
    }
    return check_play(tmp_path, inventory, GATEWAY_CHECK_PLAY)


def refused(
    tmp_path: Path, gateway_vars: dict[str, Any] | None, hosts: dict[str, Any], *named: str
) -> str:
    """The checks' output, once they stopped before the role derived anything, each of ``named``
    in it."""
    rc, out = run_gateway_checks(tmp_path, gateway_vars, **hosts)
    assert rc != 0, out
    for text in named:
        assert text in out, out
    assert "BACKEND ADDRESSES" not in out, out
    return out


def accepted(
    tmp_path: Path, gateway_vars: dict[str, Any] | None, hosts: dict[str, Any], addresses: str
) -> str:
    """The checks' output, once they passed with the gateway's backends at ``addresses``
    (space-separated)."""
    rc, out = run_gateway_checks(tmp_path, gateway_vars, **hosts)
    assert rc == 0 and f"BACKEND ADDRESSES {addresses}" in out, out
    return out


def test_a_host_bound_to_one_address_is_reached_there(tmp_path: Path) -> None:
    hosts = {
        "s-1": {"ansible_host": "10.0.0.11", "vllm_bind_address": "192.168.5.11"},
        "s-2": {"ansible_host": "10.0.0.12", "vllm_bind_address": "0.0.0.0"},
        "s-3": {"ansible_host": "10.0.0.13", "vllm_bind_address": "::"},
        "s-4": {"ansible_host": "10.0.0.14"},
        "s-5": {"vllm_bind_address": "127.0.0.1", "fleet_gateway_backend_address": "10.9.0.5"},
    }
    out = accepted(tmp_path, None, hosts, "192.168.5.11 10.0.0.12 10.0.0.13 10.0.0.14 10.9.0.5")
    # a gateway on every address checks itself on the loopback
    assert "CHECKED AT http://127.0.0.1:8080" in out, out


def test_a_gateway_on_one_address_checks_itself_there(tmp_path: Path) -> None:
    for bind, url in (("10.0.0.5", "http://10.0.0.5:8080"), ("fd00::5", "http://[fd00::5]:8080"),
                      ("::", "http://[::1]:8080")):  # fmt: skip
        rc, out = run_gateway_checks(
            tmp_path, {"fleet_gateway_bind_address": bind}, **{"s-1": {"ansible_host": "10.1.0.1"}}
        )
        assert rc == 0 and f"CHECKED AT {url}" in out, out


def test_a_host_bound_to_its_loopback_is_refused_unless_it_is_the_gateway(tmp_path: Path) -> None:
    refused(
        tmp_path, None,
        {"s-1": {"ansible_host": "10.0.0.11", "vllm_bind_address": "127.0.0.1"},
         "s-2": {"ansible_host": "10.0.0.12"}},
        's-1: its proxy answers only on 127.0.0.1 (vllm_bind_address="127.0.0.1")',
        "which the gateway gw cannot reach",
    )  # fmt: skip
    # the gateway on the host itself reaches its loopback
    accepted(tmp_path, None, {"gw": {"vllm_bind_address": "127.0.0.1"}}, "127.0.0.1")


def test_bad_gateway_variables_are_named_with_value_and_range(tmp_path: Path) -> None:
    cert, key = tmp_path / "gw.crt", tmp_path / "gw.key"
    cert.write_text("not a certificate\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n")
    bad = {
        "fleet_gateway_affinity_expire_m": 0,
        "fleet_gateway_prometheus_scrape_interval_s": 0,
        "fleet_gateway_instance": "my gateway",
        "fleet_gateway_tls_cert_file": str(cert),
        "fleet_gateway_tls_key_file": str(key),
    }
    out = refused(
        tmp_path, bad, {"s-1": {"ansible_host": "10.0.0.11"}},
        "fleet_gateway_affinity_expire_m=0 and fleet_gateway_affinity_table_size=100000: each at",
        "fleet_gateway_prometheus_scrape_interval_s=0: must be at least 1",
        'fleet_gateway_instance="my gateway": a name of letters, digits and . _ -',
        f"fleet_gateway_tls_cert_file='{cert}' / fleet_gateway_tls_key_file='{key}': must be a PEM",
    )  # fmt: skip
    assert "c2VjcmV0" not in out, out


def test_addresses_paths_package_and_timeout_are_checked_before_any_change(tmp_path: Path) -> None:
    bad = {
        "fleet_gateway_bind_address": "eth0",
        "fleet_gateway_metrics_bind_address": "10.0.0.5 ssl",
        "fleet_gateway_config_dir": "/etc",
        "fleet_gateway_run_dir": "/var/run/gw",
        "fleet_gateway_admin_socket": "/run/gw/admin sock",
        "fleet_gateway_package": "haproxy; reboot",
        "fleet_gateway_timeout_s": 100000,
        "fleet_gateway_api_key": "#fleet-key-0123456789",
    }
    out = refused(
        tmp_path, bad, {"s-1": {"fleet_gateway_backend_address": "10.0.0.11:8000/x"}},
        'fleet_gateway_bind_address="eth0": an IPv4 or IPv6 address',
        'fleet_gateway_metrics_bind_address="10.0.0.5 ssl": an IPv4 or',
        's-1: address "10.0.0.11:8000/x" (fleet_gateway_backend_address)',
        'fleet_gateway_config_dir="/etc": an absolute directory of the gateway\'s own',
        'fleet_gateway_run_dir="/var/run/gw": /run/NAME',
        'fleet_gateway_admin_socket="/run/gw/admin sock": an absolute path',
        'fleet_gateway_package="haproxy; reboot": a Debian package name',
        "fleet_gateway_timeout_s=100000: must be at least 300",
        "and may not start with # (HAProxy's key file would read it as a comment)",
    )  # fmt: skip
    assert "#fleet-key-0123456789" not in out, out
    # the same values, good: an IPv6 gateway on every address, a comma in the key
    good = {
        "fleet_gateway_bind_address": "::",
        "fleet_gateway_metrics_bind_address": "127.0.0.1",
        "fleet_gateway_config_dir": "/etc/gw-a",
        "fleet_gateway_run_dir": "/run/gw-a",
        "fleet_gateway_package": "haproxy=2.8.16-0ubuntu0.24.04.1",
        "fleet_gateway_timeout_s": 86400,
        "fleet_gateway_api_key": "fleet,key-0123456789",
    }
    accepted(tmp_path, good, {"s-1": {"ansible_host": "fd00::11"}}, "fd00::11")


def test_a_health_run_leaves_the_gateway_alone(tmp_path: Path) -> None:
    """``sparkfleet health`` (``site.yml --tags health``) reaches no gateway task: it would put a
    host back that a rolling restart has just taken out. A service run puts hosts back."""
    inventory = {
        "all": {
            "children": {
                "spark": {"hosts": {"s-1": {"ansible_host": "10.0.0.11"}}},
                "gateway": {"hosts": {"gw": {"ansible_host": "10.0.0.5"}}},
            }
        }
    }
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}

    def tasks(tags: str) -> str:
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "ansible-playbook"), "--list-tasks",
             "-i", str(tmp_path / "hosts.yml"), "--tags", tags, "playbooks/site.yml"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    # the gateway play's own checks (read-only) stay in a health run
    health = tasks("health")
    assert "Put the healthy host back into the gateway's rotation" not in health, health
    assert "Drain the host at the gateway" not in health, health
    assert "fleet_gateway : Check the gateway\t" in health, health
    assert "Put the healthy host back into the gateway's rotation" in tasks("service")


def test_an_address_out_of_range_and_a_bad_host_port_are_refused(tmp_path: Path) -> None:
    bad = {
        "fleet_gateway_bind_address": "10.0.0.300",
        "fleet_gateway_metrics_bind_address": "1::2::3",
    }
    hosts: dict[str, dict[str, Any]] = {
        "s-1": {"ansible_host": "10.0.0.11", "vllm_port": "80x"},
        "s-2": {"ansible_host": "10.0.0.12", "vllm_port": 70000},
        "s-3": {"ansible_host": "10.0.0.13", "vllm_port": 8001},
    }
    out = refused(
        tmp_path, bad, hosts,
        'fleet_gateway_bind_address="10.0.0.300": an IPv4 or IPv6 address',
        'fleet_gateway_metrics_bind_address="1::2::3": an IPv4 or',
        's-1: vllm_port="80x"; s-2: vllm_port=70000; each backend\'s vllm_port',
        "must be a number 1-65535",
    )  # fmt: skip
    assert "s-3: vllm_port" not in out, out
    good = {
        "fleet_gateway_bind_address": "255.255.255.254",
        "fleet_gateway_metrics_bind_address": "::ffff:10.0.0.5",
    }
    hosts = {"s-1": {"ansible_host": "10.0.0.11", "vllm_port": 65535}}
    accepted(tmp_path, good, hosts, "10.0.0.11")


def test_status_of_a_stopped_gateway_is_not_serving_and_no_spark_row() -> None:
    """A gateway whose statistics page does not answer (its HAProxy stopped) makes ``status``
    exit NOT_SERVING; a gateway-only host is shown in the gateway table, not as an empty Spark
    row."""
    refused = "Status code was -1 and not [200]: Request failed: <urlopen error [Errno 111] ...>"
    stopped = {"endpoint": "http://10.0.0.5:8080/v1", "backends": [], "error": refused}
    gw = HostResult("gw-1", ok=3, facts={"fleet_gateway_status": stopped})
    result = RunResult("status", "status.yml", "successful", 0, {"gw-1": gw})
    assert result.not_serving_hosts == ["gw-1"]
    assert result.exit_code == ExitCode.NOT_SERVING
    console = Console(width=200, record=True)
    console.print(status_table(result))
    assert "gw-1" not in console.export_text()
    running = HostResult("gw-1", ok=3, facts={"fleet_gateway_status": {**stopped, "error": ""}})
    ok = RunResult("status", "status.yml", "successful", 0, {"gw-1": running})
    assert ok.exit_code == ExitCode.OK


def test_status_exits_not_serving_while_a_gateway_keeps_a_host_out() -> None:
    """A host a gateway holds in maintenance (left drained by a stopped roll) or down does not
    serve the fleet: ``status`` names it and exits NOT_SERVING; ``UP 1/2`` (HAProxy 2.8 right
    after a host is put back) counts as up."""

    def status(*states: str) -> RunResult:
        backends = [{"host": f"s-{i}", "state": st, "in_flight": 0, "served": 1}
                    for i, st in enumerate(states, 1)]  # fmt: skip
        view = {"endpoint": "http://10.0.0.5:8080/v1", "error": "", "backends": backends}
        hosts = {"gw-1": HostResult("gw-1", ok=3, facts={"fleet_gateway_status": view})}
        return RunResult("status", "status.yml", "successful", 0, hosts)

    assert status("UP", "UP 1/2").exit_code == ExitCode.OK
    held = status("UP", "MAINT", "DOWN")
    assert held.not_serving_hosts == ["s-2", "s-3"]
    assert held.exit_code == ExitCode.NOT_SERVING
