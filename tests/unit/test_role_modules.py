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


def _healthy(tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    memory = report.memory_report(
        report.parse_meminfo(_meminfo("spark-idle")), [], 0.93, drop_caches=True
    )
    rep = {
        "arch": "aarch64",
        "os": {"id": "ubuntu", "version_id": "24.04", "pretty_name": "Ubuntu 24.04.3 LTS"},
        "gpu": {"present": True, "name": "NVIDIA GB10", "driver_version": "580.95.05"},
        "docker": {"running": True, "error": ""},
        "memory": {**memory, "source": "/proc/meminfo", "error": "", "apps_error": ""},
        "disk": _disk_on(tmp_path, {}, free=200 * GB),
        "port": {"number": 8000, "state": "free", "owner": ""},
    }
    return rep, _PARAMS.copy()


_PARAMS: dict[str, Any] = {
    "expected_arch": "aarch64",
    "os_releases": ["ubuntu 24.04"],
    "gpu_name": "NVIDIA GB10",
    "min_driver_version": "580.0",
    "disk_margin_bytes": 5 * GB,
    "image_size_bytes": 26 * GB,
    "container_name": "minimax",
    "drop_caches": "auto",
}
_FS_ROOT = {"device": 1, "mount": "/"}
IMAGE = "avarok/dgx-vllm-nvfp4-kernel:v23"


def _disk_on(
    root: Path,
    devices: dict[str, dict[str, Any]],
    free: int,
    image_present: bool = False,
    free_by_mount: dict[str, int] | None = None,
) -> dict[str, Any]:
    """disk_report of a model dir not there yet (ROOT/opt/m: 99 GB to fetch) and the image
    (Docker's data root ROOT/var/lib/docker), on filesystems given by ``devices`` (a directory
    under ROOT -> device and mount; the filesystem of ROOT, mounted on /, otherwise)."""
    (root / "opt").mkdir(exist_ok=True)
    (root / "var" / "lib" / "docker").mkdir(parents=True, exist_ok=True)

    def fs(path: str) -> dict[str, Any]:
        for sub, entry in devices.items():
            if path.startswith(str(root / sub)):
                mount = entry["mount"]
                return {**entry, "free_bytes": (free_by_mount or {}).get(mount, free)}
        return {**_FS_ROOT, "free_bytes": (free_by_mount or {}).get("/", free)}

    image = {
        "ref": IMAGE,
        "present": image_present,
        "size_bytes": 26 * GB,
        "needed_bytes": 0 if image_present else 26 * GB,
        "store": str(root / "var" / "lib" / "docker"),
        "store_source": "docker info",
    }
    disk: dict[str, Any] = report.disk_report(str(root / "opt" / "m"), 99 * GB, 5 * GB, image, fs)
    return disk


def test_a_healthy_spark_has_no_problems(tmp_path: Path) -> None:
    rep, params = _healthy(tmp_path)
    assert report.problems_of(rep, params) == []
    rep["port"] = {"number": 8000, "state": "ours", "owner": "container minimax"}
    rep["os"]["version_id"] = "24.04.1"
    assert report.problems_of(rep, params) == []
    params["os_releases"] = []
    rep["os"]["id"] = "fedora"
    assert report.problems_of(rep, params) == []


def test_every_problem_with_its_numbers(tmp_path: Path) -> None:
    rep, params = _healthy(tmp_path)
    rep["arch"] = "x86_64"
    rep["os"] = {"id": "debian", "version_id": "12", "pretty_name": "Debian GNU/Linux 12"}
    rep["gpu"]["driver_version"] = "535.104.05"
    rep["docker"] = {"running": False, "error": "docker.service is inactive (dead, masked)"}
    rep["disk"] = _disk_on(tmp_path, {}, free=50 * GB)
    rep["port"] = {"number": 8000, "state": "taken", "owner": "python3 -m http.server (pid 7)"}
    assert report.problems_of(rep, params) == [
        "architecture is x86_64, expected spark_preflight_expected_arch=aarch64",
        "OS is debian 12 (Debian GNU/Linux 12), expected one of "
        "spark_preflight_os_releases=ubuntu 24.04",
        "driver 535.104.05 is older than spark_preflight_min_driver_version=580.0",
        "Docker engine not running: docker.service is inactive (dead, masked)",
        f"disk: 50.0 GB free on / (filesystem of {tmp_path}/opt and {tmp_path}/var/lib/docker),"
        f" but the model 99.0 GB under {tmp_path}/opt/m (spark_preflight_model_size_gb=99 less"
        f" 0.0 GB present) + the image {IMAGE} 26.0 GB in {tmp_path}/var/lib/docker (not on the"
        " host: spark_preflight_image_size_gb=26) plus spark_preflight_disk_margin_gb=5 need"
        " 130.0 GB: 80.0 GB short",
        "port 8000 (spark_preflight_port) is taken by python3 -m http.server (pid 7), "
        "not by container minimax",
    ]


def test_gpu_problems(tmp_path: Path) -> None:
    rep, params = _healthy(tmp_path)
    rep["gpu"] = {"present": False, "error": "nvidia-smi not found"}
    assert report.problems_of(rep, params) == ["no usable GPU: nvidia-smi not found"]
    rep["gpu"] = {"present": True, "name": "NVIDIA H200", "driver_version": "580.159.04"}
    assert report.problems_of(rep, params) == [
        "GPU is NVIDIA H200, expected a name containing spark_preflight_gpu_name=NVIDIA GB10"
    ]


# --- spark_preflight: unified memory, on a Spark's figures (tests/unit/data/meminfo) ----------

MEMINFO = Path(__file__).resolve().parent / "data" / "meminfo"
OURS = "3f9c" + "0" * 56 + "beef"  # our container's full ID
OUR_CGROUP = f"0::/system.slice/docker-{OURS}.scope\n"
OTHER_CGROUP = "0::/system.slice/docker-" + "7" * 64 + ".scope\n"


def _meminfo(name: str) -> str:
    return (MEMINFO / f"{name}.txt").read_text()


def _memory(
    meminfo: str,
    apps_csv: str = "",
    util: float = 0.93,
    drop: bool = True,
    cgroups: dict[int, str] | None = None,
) -> dict[str, Any]:
    apps = report.parse_compute_apps(apps_csv)
    for app in apps:
        app["own"] = report.in_container((cgroups or {}).get(app["pid"], ""), OURS)
    mem = report.memory_report(report.parse_meminfo(_meminfo(meminfo)), apps, util, drop)
    return {**mem, "source": "/proc/meminfo", "error": "", "apps_error": ""}


def _memory_problems(memory: dict[str, Any], drop_setting: str = "auto") -> list[str]:
    problems: list[str] = report.memory_problems(memory, {**_PARAMS, "drop_caches": drop_setting})
    return problems


def test_meminfo_is_read_in_bytes() -> None:
    fields = report.parse_meminfo(_meminfo("spark-comfyui"))
    assert fields["MemTotal"] == 127601216 * 1024  # 121.69 GiB
    assert (fields["MemFree"], fields["MemAvailable"]) == (60100000 * 1024, 76000000 * 1024)
    assert fields["HugePages_Total"] == 0  # a count, not kB
    assert report.parse_meminfo("garbage\nMemTotal: x kB\n") == {}


def test_compute_apps_as_nvidia_smi_prints_them() -> None:
    text = "4242, python3, 43520\n2211, VLLM::EngineCore, [N/A]\nNo running processes found\n"
    assert report.parse_compute_apps(text) == [
        {"pid": 4242, "name": "python3", "used_bytes": 43520 * 2**20},
        {"pid": 2211, "name": "VLLM::EngineCore", "used_bytes": None},
    ]
    assert report.parse_compute_apps("") == []


def test_compute_apps_from_the_lab_stand_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    apps = [{"pid": 4242, "process_name": "python3 main.py --listen", "used_memory_mib": 43520}]
    _smi(tmp_path, monkeypatch, compute_apps=apps)
    assert report.compute_apps() == (
        [{"pid": 4242, "name": "python3 main.py --listen", "used_bytes": 43520 * 2**20}],
        "",
    )
    (tmp_path / "smi.json").write_text("{}")
    assert report.compute_apps() == ([], "")
    (tmp_path / "smi.json").write_text('{"fail": true}')
    apps_found, error = report.compute_apps()
    assert apps_found == [] and error.startswith("nvidia-smi exited 9: NVIDIA-SMI has failed")


def test_our_own_server_is_found_by_its_cgroup() -> None:
    assert report.in_container(OUR_CGROUP, OURS)
    assert report.in_container(f"0::/docker/{OURS}\n", OURS)  # cgroupfs driver
    assert not report.in_container(OTHER_CGROUP, OURS)
    assert not report.in_container(OUR_CGROUP, "")


def test_an_idle_spark_has_the_memory() -> None:
    mem = _memory("spark-idle")
    assert mem["ok"] and mem["basis"] == "MemAvailable"
    assert round(mem["needed_bytes"] / 2**30, 2) == 113.17  # 0.93 x 121.69 GiB
    assert _memory_problems(mem) == []


def test_another_gpu_process_holds_the_memory() -> None:
    mem = _memory("spark-comfyui", "4242, python3 main.py --listen, 43520\n")
    assert not mem["ok"]
    assert _memory_problems(mem) == [
        "unified memory: spark_preflight_gpu_memory_util=0.93 (vllm_gpu_memory_util) x MemTotal "
        "121.7 GiB = 113.2 GiB needed at start-up, 72.5 GiB free (MemAvailable: the page cache "
        "is dropped before each start, vllm_drop_caches=auto, on for a GB10): 40.7 GiB short; "
        "held: 42.5 GiB by GPU process python3 main.py --listen (pid 4242), "
        "6.7 GiB by the kernel and other processes"
    ]


def test_a_full_page_cache_passes_once_it_is_dropped() -> None:
    kept = _memory("spark-after-fetch", drop=False)
    assert not kept["ok"] and kept["basis"] == "MemFree"
    assert _memory_problems(kept, "false") == [
        "unified memory: spark_preflight_gpu_memory_util=0.93 (vllm_gpu_memory_util) x MemTotal "
        "121.7 GiB = 113.2 GiB needed at start-up, 13.3 GiB free (MemFree: the page cache is "
        "kept, vllm_drop_caches=false; MemAvailable 114.9 GiB): 99.9 GiB short; held: 99.4 GiB by"
        " the page cache (vllm_drop_caches=true drops it before each start), 9.0 GiB by the "
        "kernel and other processes"
    ]
    dropped = _memory("spark-after-fetch", drop=True)
    assert dropped["ok"] and dropped["usable_bytes"] == dropped["available_bytes"]
    assert _memory_problems(dropped) == []


def test_a_kit_short_of_memory_even_after_dropping_caches_names_the_fraction() -> None:
    mem = _memory("spark-102gib")
    assert _memory_problems(mem) == [
        "unified memory: spark_preflight_gpu_memory_util=0.93 (vllm_gpu_memory_util) x MemTotal "
        "121.7 GiB = 113.2 GiB needed at start-up, 102.0 GiB free (MemAvailable: the page cache "
        "is dropped before each start, vllm_drop_caches=auto, on for a GB10): 11.2 GiB short; "
        "held: 19.7 GiB by the kernel and other processes"
    ]
    assert _memory("spark-102gib", util=0.83)["ok"]  # 101.0 GiB


def test_a_serving_host_counts_its_own_server_on_a_rerun() -> None:
    engine = "2211, VLLM::EngineCore, 112000\n"
    serving = _memory("spark-serving", engine, cgroups={2211: OUR_CGROUP})
    assert serving["ok"]
    assert serving["own_bytes"] == 112000 * 2**20 and serving["others_bytes"] == 0
    assert serving["usable_bytes"] == serving["available_bytes"] + serving["own_bytes"]
    # the same figures with the engine in another container: refused, and it is named
    squatter = _memory("spark-serving", engine, cgroups={2211: OTHER_CGROUP})
    assert not squatter["ok"]
    (problem,) = _memory_problems(squatter)
    assert "5.9 GiB free (MemAvailable" in problem
    assert "held: 109.4 GiB by GPU process VLLM::EngineCore (pid 2211)" in problem


def test_memory_not_readable_or_not_unified(tmp_path: Path) -> None:
    missing = report.host_memory(str(tmp_path / "none"), 0.93, True, True, "")
    assert (missing["checked"], missing["ok"]) == (False, False)
    assert _memory_problems(missing) == [
        f"unified memory: cannot read {tmp_path}/none: [Errno 2] No such file or directory: "
        f"'{tmp_path}/none'; spark_preflight_meminfo_path={tmp_path}/none"
    ]
    discrete = report.host_memory(str(tmp_path / "none"), 0.93, True, False, "")
    assert (discrete["checked"], discrete["ok"]) == (False, True)
    assert _memory_problems(discrete) == []


def test_host_memory_reads_the_file_and_the_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    apps = [{"pid": 4242, "process_name": "python3", "used_memory_mib": 43520}]
    _smi(tmp_path, monkeypatch, compute_apps=apps)
    mem = report.host_memory(str(MEMINFO / "spark-comfyui.txt"), 0.93, True, True, OURS)
    assert (mem["checked"], mem["ok"], mem["others_bytes"]) == (True, False, 43520 * 2**20)
    assert mem["apps"] == [
        {"pid": 4242, "name": "python3", "used_bytes": 43520 * 2**20, "own": False}
    ]


def test_drop_caches_auto_is_on_for_a_gb10() -> None:
    assert report.resolve_drop_caches("auto", "NVIDIA GB10") is True
    assert report.resolve_drop_caches("auto", "NVIDIA H200") is False
    assert report.resolve_drop_caches("auto", "") is False
    assert report.resolve_drop_caches("false", "NVIDIA GB10") is False
    assert report.resolve_drop_caches("true", "NVIDIA H200") is True


# --- spark_preflight: disk for the model and the image, per filesystem --------------------------


def test_model_and_image_on_one_filesystem(tmp_path: Path) -> None:
    disk = _disk_on(tmp_path, {}, free=104 * GB)
    (fs,) = disk["filesystems"]
    assert fs["paths"] == [f"{tmp_path}/opt", f"{tmp_path}/var/lib/docker"]
    assert fs["needs"] == [{"what": "model", "bytes": 99 * GB}, {"what": "image", "bytes": 26 * GB}]
    assert (fs["required_bytes"], fs["ok"]) == (130 * GB, False)
    assert (disk["free_bytes"], disk["required_bytes"]) == (104 * GB, 130 * GB)
    (problem,) = report.disk_problems(disk, _PARAMS)
    assert problem.startswith(f"disk: 104.0 GB free on / (filesystem of {tmp_path}/opt and ")
    assert " + the image " in problem and problem.endswith("need 130.0 GB: 26.0 GB short")
    # the image already pulled: the 99 GB model and the margin fit
    pulled = _disk_on(tmp_path, {}, 104 * GB, image_present=True)
    assert report.disk_problems(pulled, _PARAMS) == []


def test_model_and_image_on_separate_filesystems_each_named(tmp_path: Path) -> None:
    devices = {"var/lib/docker": {"device": 2, "mount": "/var/lib/docker"}}
    free = {"/": 60 * GB, "/var/lib/docker": 20 * GB}
    disk = _disk_on(tmp_path, devices, 0, free_by_mount=free)
    assert [(f["mount"], f["required_bytes"]) for f in disk["filesystems"]] == [
        ("/", 104 * GB),
        ("/var/lib/docker", 31 * GB),
    ]
    assert report.disk_problems(disk, _PARAMS) == [
        f"disk: 60.0 GB free on / (filesystem of {tmp_path}/opt), but the model 99.0 GB under"
        f" {tmp_path}/opt/m (spark_preflight_model_size_gb=99 less 0.0 GB present) plus"
        " spark_preflight_disk_margin_gb=5 need 104.0 GB: 44.0 GB short",
        f"disk: 20.0 GB free on /var/lib/docker (filesystem of {tmp_path}/var/lib/docker), but"
        f" the image {IMAGE} 26.0 GB in {tmp_path}/var/lib/docker (not on the host:"
        " spark_preflight_image_size_gb=26) plus spark_preflight_disk_margin_gb=5 need 31.0 GB:"
        " 11.0 GB short",
    ]
    # enough on the model's filesystem, not on Docker's: only Docker's is refused
    free = {"/": 500 * GB, "/var/lib/docker": 30 * GB}
    roomy = _disk_on(tmp_path, devices, 0, free_by_mount=free)
    assert [
        p.split(" free on ")[1].split(" ")[0] for p in report.disk_problems(roomy, _PARAMS)
    ] == ["/var/lib/docker"]


def test_a_filesystem_with_nothing_to_hold_needs_no_margin() -> None:
    needs = [
        {"path": "/opt/m", "what": "model", "bytes": 0},
        {"path": "/var/lib/docker", "what": "image", "bytes": 0},
    ]
    fs_of = {
        "/opt/m": {"device": 1, "mount": "/", "free_bytes": 1},
        "/var/lib/docker": {"device": 1, "mount": "/", "free_bytes": 1},
    }
    assert report.plan_filesystems(needs, fs_of, 5 * GB) == [
        {"mount": "/", "paths": ["/opt/m", "/var/lib/docker"], "free_bytes": 1, "needs": [],
         "required_bytes": 0, "ok": True}
    ]  # fmt: skip


def test_docker_data_root_when_docker_is_stopped(tmp_path: Path) -> None:
    daemon_json = tmp_path / "daemon.json"
    assert report.docker_image_store(False, str(daemon_json)) == ("/var/lib/docker", "default")
    daemon_json.write_text('{"data-root": "/srv/docker", "features": {"cdi": true}}')
    assert report.docker_image_store(False, str(daemon_json)) == ("/srv/docker", "daemon.json")
    daemon_json.write_text('{"data-root": "relative"}')
    assert report.docker_image_store(False, str(daemon_json)) == ("/var/lib/docker", "default")


def test_disk_report_measures_real_filesystems(tmp_path: Path) -> None:
    image = report.image_report("", 0, False)
    disk = report.disk_report(str(tmp_path / "model"), 10, 5, image)
    (fs,) = disk["filesystems"]
    assert fs["paths"] == [str(tmp_path)] and fs["free_bytes"] > 0
    assert os.path.ismount(fs["mount"]) and str(tmp_path).startswith(fs["mount"])
    assert (fs["required_bytes"], disk["required_bytes"]) == (15, 15)


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
