"""Unit tests of the collection's modules used by the spark_preflight and nvidia_container_toolkit
roles (plugins/modules, plugins/module_utils): the preflight report and its problems, OpenPGP
fingerprints, apt source detection and planning, the daemon.json merge, dockerd's start time.

The modules are imported by their collection names (``collections/`` is on pytest's path). The
GPU is the lab's stand-in nvidia-smi (tests/standins).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.sparkfleet.spark.plugins.modules import docker_daemon_json as daemon
from ansible_collections.sparkfleet.spark.plugins.modules import (
    nvidia_toolkit_docker_state as dstate,
)
from ansible_collections.sparkfleet.spark.plugins.modules import spark_host_report as report

pytestmark = pytest.mark.nolab

# --- spark_preflight: spark_host_report -------------------------------------------------------

NVIDIA_SMI = Path(__file__).resolve().parents[1] / "standins" / "nvidia_smi_standin" / "nvidia-smi"
GB = 10**9


def test_version_tuple() -> None:
    assert report.version_tuple("580.95.05") == (580, 95, 5)
    assert report.version_tuple(" 580 ") == (580,)
    assert report.version_tuple("580.95.05-1") is None
    assert report.version_tuple("[N/A]") is None
    assert report.version_tuple("535.104.05") < report.version_tuple("580.0")
    assert report.version_tuple("580.126.09") > report.version_tuple("580.95.05")


@pytest.mark.parametrize(
    ("text", "mib"),
    [
        ("[N/A]", None),
        ("N/A", None),
        ("[Not Supported]", None),
        ("Not Supported", None),
        ("143771 MiB", 143771),
        ("143771", 143771),
        ("", None),
    ],
)
def test_memory_fields_of_unified_memory_are_not_numbers(text: str, mib: int | None) -> None:
    assert report.parse_memory(text) == mib


def _smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **config: object) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "nvidia-smi").symlink_to(NVIDIA_SMI)
    cfg = tmp_path / "smi.json"
    cfg.write_text(json.dumps(config))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("NVIDIA_SMI_STANDIN_CONFIG", str(cfg))


def test_gpu_report_of_a_gb10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _smi(tmp_path, monkeypatch, driver_version="580.126.09")
    gpu = report.gpu_report()
    assert gpu == {
        "present": True,
        "name": "NVIDIA GB10",
        "driver_version": "580.126.09",
        "count": 1,
        "memory_total": "[N/A]",
        "memory_total_mib": None,
        "error": "",
    }


def test_gpu_report_without_a_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _smi(tmp_path, monkeypatch, fail=True)
    gpu = report.gpu_report()
    assert gpu["present"] is False
    assert gpu["error"].startswith("nvidia-smi exited 9: NVIDIA-SMI has failed")


def test_os_release(tmp_path: Path) -> None:
    path = tmp_path / "os-release"
    path.write_text('PRETTY_NAME="Ubuntu 24.04.3 LTS"\nID=ubuntu\nVERSION_ID="24.04"\n')
    assert report.os_release(str(path)) == {
        "id": "ubuntu",
        "version_id": "24.04",
        "pretty_name": "Ubuntu 24.04.3 LTS",
    }


def test_disk_needs_what_the_manifest_lists_as_missing(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "a.safetensors").write_bytes(b"x" * 100)  # complete
    (model / "b.safetensors").write_bytes(b"x" * 10)  # wrong size: fetched again
    files = {"a.safetensors": 100, "b.safetensors": 200, "c.safetensors": 300}
    manifest = {"files": {n: {"size": s, "sha256": None} for n, s in files.items()}}
    (model / ".sparkfleet-manifest.json").write_text(json.dumps(manifest))
    disk = report.disk_report(str(model), 99 * GB, 7)
    assert disk["basis"] == "manifest"
    assert (disk["needed_bytes"], disk["present_bytes"], disk["required_bytes"]) == (500, 100, 507)
    assert disk["detail"] == "2 of 3 files listed in .sparkfleet-manifest.json missing"
    assert disk["path"] == str(model)


def test_disk_without_manifest_counts_what_is_there_but_not_the_cache(tmp_path: Path) -> None:
    model = tmp_path / "models" / "m"
    (model / ".cache" / "huggingface").mkdir(parents=True)
    (model / ".cache" / "huggingface" / "x.incomplete").write_bytes(b"x" * 1000)
    (model / "sub").mkdir()
    (model / "sub" / "s.safetensors").write_bytes(b"x" * 400)
    disk = report.disk_report(str(model), 1000, 50)
    assert (disk["basis"], disk["present_bytes"], disk["needed_bytes"]) == ("model_size", 400, 600)
    assert disk["required_bytes"] == 650
    assert disk["free_bytes"] > 0


def test_disk_of_a_model_dir_not_there_yet(tmp_path: Path) -> None:
    disk = report.disk_report(str(tmp_path / "a" / "b" / "c"), 99 * GB, 5 * GB)
    assert disk["path"] == str(tmp_path)
    assert disk["needed_bytes"] == 99 * GB and disk["required_bytes"] == 104 * GB


def test_disk_complete_model_needs_no_margin(tmp_path: Path) -> None:
    (tmp_path / "w").write_bytes(b"x" * 10)
    disk = report.disk_report(str(tmp_path), 10, 5 * GB)
    assert (disk["needed_bytes"], disk["required_bytes"]) == (0, 0)


def test_port_free_and_taken_by_a_process() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert report.port_report(port, "minimax", False)["state"] == "free"
        sock.listen()
        taken = report.port_report(port, "minimax", False)
    assert taken["state"] == "taken"
    assert f"(pid {os.getpid()})" in taken["owner"]
    assert Path(sys.executable).name in taken["owner"] or "python" in taken["owner"]


def _healthy() -> tuple[dict[str, Any], dict[str, Any]]:
    rep = {
        "arch": "aarch64",
        "os": {"id": "ubuntu", "version_id": "24.04", "pretty_name": "Ubuntu 24.04.3 LTS"},
        "gpu": {"present": True, "name": "NVIDIA GB10", "driver_version": "580.95.05"},
        "docker": {"running": True, "error": ""},
        "disk": {
            "free_bytes": 200 * GB,
            "required_bytes": 104 * GB,
            "needed_bytes": 99 * GB,
            "path": "/",
            "model_dir": "/opt/m",
            "detail": "spark_preflight_model_size_gb=99 less 0.0 GB present",
        },
        "port": {"number": 8000, "state": "free", "owner": ""},
    }
    params = {
        "expected_arch": "aarch64",
        "os_releases": ["ubuntu 24.04"],
        "gpu_name": "NVIDIA GB10",
        "min_driver_version": "580.0",
        "disk_margin_bytes": 5 * GB,
        "container_name": "minimax",
    }
    return rep, params


def test_a_healthy_spark_has_no_problems() -> None:
    rep, params = _healthy()
    assert report.problems_of(rep, params) == []
    rep["port"] = {"number": 8000, "state": "ours", "owner": "container minimax"}
    rep["os"]["version_id"] = "24.04.1"
    assert report.problems_of(rep, params) == []
    params["os_releases"] = []
    rep["os"]["id"] = "fedora"
    assert report.problems_of(rep, params) == []


def test_every_problem_with_its_numbers() -> None:
    rep, params = _healthy()
    rep["arch"] = "x86_64"
    rep["os"] = {"id": "debian", "version_id": "12", "pretty_name": "Debian GNU/Linux 12"}
    rep["gpu"]["driver_version"] = "535.104.05"
    rep["docker"] = {"running": False, "error": "docker.service is inactive (dead, masked)"}
    rep["disk"]["free_bytes"] = 50 * GB
    rep["port"] = {"number": 8000, "state": "taken", "owner": "python3 -m http.server (pid 7)"}
    assert report.problems_of(rep, params) == [
        "architecture is x86_64, expected spark_preflight_expected_arch=aarch64",
        "OS is debian 12 (Debian GNU/Linux 12), expected one of "
        "spark_preflight_os_releases=ubuntu 24.04",
        "driver 535.104.05 is older than spark_preflight_min_driver_version=580.0",
        "Docker engine not running: docker.service is inactive (dead, masked)",
        "disk: 50.0 GB free on /, but the model fetch needs 99.0 GB under /opt/m "
        "(spark_preflight_model_size_gb=99 less 0.0 GB present) plus "
        "spark_preflight_disk_margin_gb=5: 54.0 GB short",
        "port 8000 (spark_preflight_port) is taken by python3 -m http.server (pid 7), "
        "not by container minimax",
    ]


def test_gpu_problems() -> None:
    rep, params = _healthy()
    rep["gpu"] = {"present": False, "error": "nvidia-smi not found"}
    assert report.problems_of(rep, params) == ["no usable GPU: nvidia-smi not found"]
    rep["gpu"] = {"present": True, "name": "NVIDIA H200", "driver_version": "580.159.04"}
    assert report.problems_of(rep, params) == [
        "GPU is NVIDIA H200, expected a name containing spark_preflight_gpu_name=NVIDIA GB10"
    ]


# --- nvidia_container_toolkit ------------------------------------------------------------------

REPO = "http://172.29.78.1:38081/nvidia/stable/deb/$(ARCH)"
RUNTIME = {"nvidia": {"path": "nvidia-container-runtime", "args": []}}


# --- daemon.json ----------------------------------------------------------------------------

OPERATOR = """{
  "data-root": "/srv/docker",
  "log-opts": {"max-size": "10m"},
  "registry-mirrors": [
    "https://mirror.example"
  ],
  "runtimes": {
    "crun": {
      "path": "/usr/bin/crun"
    }
  },
  "labels": ["owner=Zo\\u00eb"],
  "max-concurrent-downloads": 1.0e1
}
"""


def test_merge_keeps_every_other_byte() -> None:
    merge = {"registry-mirrors": ["http://lab:35000"], "debug": True}
    text, old, new, kept = daemon.edit(OPERATOR, RUNTIME, merge)
    assert kept == []
    assert text == (
        "{\n"
        '  "data-root": "/srv/docker",\n'
        '  "log-opts": {"max-size": "10m"},\n'
        '  "registry-mirrors": [\n'
        '    "https://mirror.example",\n'
        '    "http://lab:35000"\n'
        "  ],\n"
        '  "runtimes": {\n'
        '    "crun": {\n'
        '      "path": "/usr/bin/crun"\n'
        "    },\n"
        '    "nvidia": {\n'
        '      "path": "nvidia-container-runtime",\n'
        '      "args": []\n'
        "    }\n"
        "  },\n"
        '  "labels": ["owner=Zo\\u00eb"],\n'
        '  "max-concurrent-downloads": 1.0e1,\n'
        '  "debug": true\n'
        "}\n"
    )
    assert json.loads(text) == new
    assert {k: v for k, v in new.items() if k not in ("registry-mirrors", "runtimes", "debug")} == {
        k: v for k, v in old.items() if k not in ("registry-mirrors", "runtimes")
    }
    again, _old, newer, _kept = daemon.edit(text, RUNTIME, merge)
    assert again == text and newer == new


@pytest.mark.parametrize("text", [None, "", "  \n", "{}", "{}\n"])
def test_merge_into_missing_or_empty_file(text: str | None) -> None:
    result, old, new, _kept = daemon.edit(text, RUNTIME, {})
    assert old == {} and new == {"runtimes": RUNTIME}
    assert result.startswith('{\n    "runtimes": {\n        "nvidia": {\n')
    assert json.loads(result) == new


def test_compact_file_stays_compact() -> None:
    result = daemon.edit('{"a":1,"b":[1]}', RUNTIME, {"b": [2]})[0]
    assert result == (
        '{"a":1,"b":[1, 2], "runtimes": {"nvidia": {"path": "nvidia-container-runtime",'
        ' "args": []}}}'
    )


def test_nvidia_ctk_output_and_existing_nvidia_runtime_kept() -> None:
    ctk = json.dumps({"runtimes": {"nvidia": {"args": [], "path": "/usr/bin/ncr"}}}, indent=4)
    result, _old, new, kept = daemon.edit(ctk, RUNTIME, {"registry-mirrors": ["http://m"]})
    assert kept == ["nvidia"]
    assert new["runtimes"]["nvidia"]["path"] == "/usr/bin/ncr"
    assert result == ctk[:-2] + ',\n    "registry-mirrors": [\n        "http://m"\n    ]\n}'


def test_scalars_set_lists_extended_objects_merged() -> None:
    text = '{\n  "debug": false,\n  "dns": ["1.1.1.1"],\n  "log-opts": {\n    "a": "1"\n  }\n}\n'
    merge = {"debug": True, "dns": ["1.1.1.1", "8.8.8.8"], "log-opts": {"b": "2"}}
    result, _old, new, _kept = daemon.edit(text, {}, merge)
    assert new == {"debug": True, "dns": ["1.1.1.1", "8.8.8.8"], "log-opts": {"a": "1", "b": "2"}}
    assert result == (
        '{\n  "debug": true,\n  "dns": ["1.1.1.1", "8.8.8.8"],\n'
        '  "log-opts": {\n    "a": "1",\n    "b": "2"\n  }\n}\n'
    )


def test_equal_values_of_other_json_spelling_are_not_rewritten() -> None:
    text = '{"max-concurrent-downloads": 3.0, "debug": true}'
    assert daemon.edit(text, {}, {"max-concurrent-downloads": 3})[0] == text
    assert daemon.edit(text, {}, {"debug": 1})[0] != text  # 1 is not true


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 1,}', "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"a": 1, "a": 2}', "appears twice"),
        ('{"a": 1} trailing', "not valid JSON"),
    ],
)
def test_files_it_will_not_edit(text: str, message: str) -> None:
    with pytest.raises(daemon.JSONLayoutError, match=message):
        daemon.edit(text, RUNTIME, {})


# --- dockerd's start time -------------------------------------------------------------------


def test_process_start_time_of_a_new_process() -> None:
    before = time.time()
    proc = subprocess.Popen(["sleep", "5"])
    try:
        started = dstate.process_start(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert before - 0.1 <= started <= time.time() + 0.1
    assert dstate.process_start(os.getpid()) < before


def test_first_install_is_read_from_dpkg_logs_and_upgrades_do_not_count(tmp_path: Path) -> None:
    old, new = tmp_path / "dpkg.log.1", tmp_path / "dpkg.log"
    old.write_text(
        "2026-09-01 10:00:00 install nvidia-container-toolkit:arm64 <none> 1.18.1-1\n"
        "2026-09-01 10:00:01 status installed nvidia-container-toolkit:arm64 1.18.1-1\n"
    )
    new.write_text(
        "2026-11-30 09:00:00 upgrade nvidia-container-toolkit:arm64 1.18.1-1 1.20.0-1\n"
        "2026-11-30 09:00:05 install nvidia-container-toolkit-base:arm64 <none> 1.20.0-1\n"
    )
    known, at = dstate.first_install("nvidia-container-toolkit", [str(new), str(old)])
    expected = time.mktime(time.strptime("2026-09-01 10:00:00", "%Y-%m-%d %H:%M:%S"))
    assert (known, at) == (True, expected)  # the upgrade in November is not a fresh install
    known, at = dstate.first_install("nvidia-container-toolkit", [str(new)])
    assert (known, at) == (True, 0.0)  # only an upgrade on record: the hook was there before
    assert dstate.first_install("other", [str(new), str(old)]) == (False, 0.0)
    missing = [str(tmp_path / "none")]
    assert dstate.first_install("nvidia-container-toolkit", missing) == (False, 0.0)
