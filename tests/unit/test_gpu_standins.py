"""Tests for the lab's stand-in CUDA driver library, the lost-devices marker and the host's
daemon-reload simulation (no Docker, no root: the library is compiled with gcc into a temporary
directory and loaded with ctypes in a child Python, the reload simulation runs on a fake /proc).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.standins.nvidia_smi_standin import build_libcuda

pytestmark = pytest.mark.nolab

ROOT = Path(__file__).resolve().parents[2]
NVIDIA_SMI = ROOT / "tests/standins/nvidia_smi_standin/nvidia-smi"
RELOAD = ROOT / "tests/lab/spark-sim/sparklab-gpu-cgroup-reload"
# The check the vllm_service role runs inside a container (through libcuda.so.1, by SONAME).
CUINIT_CHECK = (
    "import ctypes, sys; r = ctypes.CDLL('libcuda.so.1').cuInit(0); "
    "print('cuInit(0) =', r); sys.exit(0 if r == 0 else 1)"
)


@pytest.fixture(scope="module")
def libdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """libcuda.so.580.95.05 (compiled) and libcuda.so.1 -> it, as a driver package installs them."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc not found: the lab compiles its stand-in libcuda (install gcc)")
    directory = tmp_path_factory.mktemp("lib")
    built = build_libcuda.compile_libcuda(directory, "580.95.05")
    (directory / "libcuda.so.1").symlink_to(built.name)
    return directory


def cuinit(libdir: Path, tmp: Path, config: object | None, marker: bool = False) -> int:
    """cuInit(0) in a child Python that finds libcuda.so.1 by name in ``libdir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVIDIA_")}
    env["LD_LIBRARY_PATH"] = str(libdir)
    path = tmp / "nvidia-smi-standin.json"
    path.unlink(missing_ok=True)
    if config is not None:
        path.write_text(config if isinstance(config, str) else json.dumps(config))
    env["NVIDIA_SMI_STANDIN_CONFIG"] = str(path)
    lost = tmp / "devices-lost"
    lost.unlink(missing_ok=True)
    if marker:
        lost.write_text("lost\n")
    env["NVIDIA_STANDIN_DEVICES_LOST_MARKER"] = str(lost)
    result = subprocess.run(
        [sys.executable, "-c", CUINIT_CHECK], env=env, capture_output=True, text=True, timeout=30
    )
    code = int(result.stdout.strip().rpartition(" ")[2])
    assert result.returncode == (0 if code == 0 else 1)
    return code


def test_cuinit_results(libdir: Path, tmp_path: Path) -> None:
    assert cuinit(libdir, tmp_path, {"driver_version": "580.95.05"}) == 0
    assert cuinit(libdir, tmp_path, '{\n  "driver_version" :\n "580.95.05", "fail": false}') == 0
    assert cuinit(libdir, tmp_path, {}) == 0  # nvidia-smi's default driver, 580.95.05
    assert cuinit(libdir, tmp_path, None) == 100  # no driver: CUDA_ERROR_NO_DEVICE
    assert cuinit(libdir, tmp_path, {"driver_version": "580.95.05", "fail": True}) == 100
    # the "kernel module" moved on, the library did not: CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
    assert cuinit(libdir, tmp_path, {"driver_version": "580.159.03"}) == 803
    # devices lost (legacy hook + daemon-reload): CUDA_ERROR_UNKNOWN, whatever the config says
    assert cuinit(libdir, tmp_path, {"driver_version": "580.95.05"}, marker=True) == 999
    assert cuinit(libdir, tmp_path, None, marker=True) == 999


def test_library_version_comes_from_its_file_name(libdir: Path, tmp_path: Path) -> None:
    newer = tmp_path / "lib"
    newer.mkdir()
    shutil.copy(libdir / "libcuda.so.580.95.05", newer / "libcuda.so.580.159.03")
    (newer / "libcuda.so.1").symlink_to("libcuda.so.580.159.03")
    assert cuinit(newer, tmp_path, {"driver_version": "580.159.03"}) == 0
    assert cuinit(newer, tmp_path, {"driver_version": "580.95.05"}) == 803
    unversioned = tmp_path / "plain"
    unversioned.mkdir()
    shutil.copy(libdir / "libcuda.so.580.95.05", unversioned / "libcuda.so.1")
    assert cuinit(unversioned, tmp_path, {"driver_version": "580.95.05"}) == 0  # compiled in
    assert cuinit(unversioned, tmp_path, {"driver_version": "580.159.03"}) == 803


def test_library_exports_and_soname(libdir: Path) -> None:
    out = subprocess.run(
        ["objdump", "-p", "-T", str(libdir / "libcuda.so.580.95.05")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "SONAME               libcuda.so.1" in out
    needed = [line.split()[1] for line in out.splitlines() if line.strip().startswith("NEEDED")]
    assert needed == ["libc.so.6"]
    for symbol in ("cuInit", "cuDriverGetVersion"):
        assert any(line.endswith(f" {symbol}") and ".text" in line for line in out.splitlines())
    probe = (
        "import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); v = ctypes.c_int(0); "
        "r = lib.cuDriverGetVersion(ctypes.byref(v)); "
        "print(r, v.value, lib.cuDriverGetVersion(None))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(libdir / "libcuda.so.1")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == ["0", "13000", "1"]


def test_compile_refuses_a_bad_version(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        build_libcuda.compile_libcuda(tmp_path, "580.95.05; rm -rf /")


def test_smi_fails_like_nvml_when_devices_are_lost(tmp_path: Path) -> None:
    marker = tmp_path / "devices-lost"
    env = {"NVIDIA_STANDIN_DEVICES_LOST_MARKER": str(marker), "PATH": os.environ["PATH"]}
    assert subprocess.run([NVIDIA_SMI, "-L"], env=env, capture_output=True).returncode == 0
    marker.write_text("lost\n")
    for args in (["-L"], [], ["--query-gpu=name", "--format=csv"]):
        result = subprocess.run([NVIDIA_SMI, *args], env=env, capture_output=True, text=True)
        assert result.returncode == 255
        assert result.stdout == "Failed to initialize NVML: Unknown Error\n"


def fake_process(proc: Path, pid: int, start: str) -> Path:
    """A /proc/<pid> with a stat line (start time = field 22) and a root with /dev."""
    (proc / str(pid) / "root/dev").mkdir(parents=True)
    fields = ["S", *["0"] * 18, start, "0"]
    (proc / str(pid) / "stat").write_text(f"{pid} (python3 x) {' '.join(fields)}\n")
    return proc / str(pid) / "root/dev/.nvidia-standin-devices-lost"


def test_reload_marks_recorded_running_containers_only(tmp_path: Path) -> None:
    proc, records = tmp_path / "proc", tmp_path / "run/hook-containers"
    records.mkdir(parents=True)
    alive = fake_process(proc, 101, "5000")
    reused = fake_process(proc, 102, "9999")  # the pid now belongs to another process
    unrecorded = fake_process(proc, 103, "7000")  # e.g. a CDI container
    for pid, start in ((101, "5000"), (102, "6000"), (104, "8000")):  # 104: gone
        entry = {"id": f"c{pid}", "pid": pid, "start_time": start, "rootfs": "/x"}
        (records / f"c{pid}.json").write_text(json.dumps(entry))
    (records / "broken.json").write_text("{")
    env = {
        "PATH": os.environ["PATH"],
        "NVIDIA_STANDIN_HOOK_RECORD_DIR": str(records),
        "SPARKLAB_PROC_ROOT": str(proc),
    }
    args: list[str | Path] = [
        RELOAD,
        "/run/systemd/generator",
        "/run/systemd/generator.early",
        "/run/gen.late",
    ]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert alive.read_text().startswith("devices lost at daemon-reload")
    assert not reused.exists()
    assert not unrecorded.exists()
    assert sorted(p.name for p in records.iterdir()) == ["broken.json", "c101.json"]
    assert "container c101 (pid 101): GPU devices lost" in result.stderr
    assert "c101" in (tmp_path / "run/reload.log").read_text()

    shutil.rmtree(proc / "101/root/dev")  # marker cannot be written: still exit 0
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "marker not written" in result.stderr
