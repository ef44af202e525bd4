"""Tests for the lab's stand-ins for NVIDIA's ``nvidia-smi`` and its container toolkit apt repo.

The repository is built into a temporary directory, served on 127.0.0.1 and read by ``apt-get``
with a configuration of its own (sources, lists, caches and trusted keys all under the temporary
directory), so the machine's apt state is left alone. No Docker is needed.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.standins.nvidia_smi_standin import build_libcuda

pytestmark = pytest.mark.nolab

STANDINS = Path(__file__).resolve().parents[1] / "standins"
BUILD_REPO = STANDINS / "nvidia_apt_standin" / "build_repo.py"
NVIDIA_SMI = STANDINS / "nvidia_smi_standin" / "nvidia-smi"
OLD, NEW = "1.17.8-1", "1.19.0-1"
PACKAGES = (
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
)
REPO_TOOLS = ("dpkg", "dpkg-deb", "gpg", "gpgv", "apt-ftparchive", "apt-get", "apt-cache")
# Debian's own (apt, dpkg) and the lab's host tools (tests/lab/engine.py HOST_TOOLS installs
# apt-utils, gnupg and gpgv at 'make lab-prepare'): missing ones are a failure, not a skip.
REPO_TOOL_PACKAGES = "apt apt-utils dpkg gnupg gpgv"


@pytest.fixture(scope="session")
def repo_tools() -> None:
    missing = [tool for tool in REPO_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: the apt repository stand-in is built and read with "
            f"Debian's tools ('make lab-prepare' installs them; or apt-get install "
            f"{REPO_TOOL_PACKAGES})",
            pytrace=False,
        )


needs_repo_tools = pytest.mark.usefixtures("repo_tools")


def run(
    cmd: list[str | Path],
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with a clean NVIDIA_* environment plus ``env``; never raises on failure."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("NVIDIA_")}
    base = {k: v for k, v in base.items() if "proxy" not in k.lower()}
    base.update({"LC_ALL": "C", **(env or {})})
    return subprocess.run(
        [str(c) for c in cmd],
        env=base,
        input=stdin,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def ok(cmd: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = run(cmd, **kwargs)
    assert result.returncode == 0, f"{cmd} -> {result.returncode}\n{result.stdout}{result.stderr}"
    return result


@pytest.fixture(scope="module")
def libdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A host library directory with the stand-in libcuda for drivers 580.95.05 and 580.1.2."""
    directory = tmp_path_factory.mktemp("libdir")
    built = build_libcuda.compile_libcuda(directory, "580.95.05")
    shutil.copy(built, directory / "libcuda.so.580.1.2")
    return directory


def gpu_env(tmp: Path, libdir: Path, **values: object) -> dict[str, str]:
    """Environment for the toolkit stand-ins: host nvidia-smi, its config holding ``values``,
    the driver library directory and a record directory under ``tmp`` (never the real /run)."""
    return {
        "NVIDIA_HOOK_STANDIN_SOURCE": str(NVIDIA_SMI),
        "NVIDIA_STANDIN_LIBDIR": str(libdir),
        "NVIDIA_STANDIN_HOOK_RECORD_DIR": str(tmp / "hook-containers"),
        **smi_config(tmp, **values),
    }


def smi_config(tmp: Path, **values: object) -> dict[str, str]:
    """Environment pointing the stand-in nvidia-smi at a config file holding ``values``."""
    path = tmp / "nvidia-smi-standin.json"
    path.write_text(json.dumps(values))
    return {"NVIDIA_SMI_STANDIN_CONFIG": str(path)}


# --- the stand-in nvidia-smi -------------------------------------------------------------------


def test_smi_query_csv_with_header(tmp_path: Path) -> None:
    fields = "name,driver_version,memory.total,memory.used,memory.free,compute_cap,pci.bus_id"
    out = ok([NVIDIA_SMI, f"--query-gpu={fields}", "--format=csv"], env=smi_config(tmp_path))
    assert out.stdout.splitlines() == [
        "name, driver_version, memory.total [MiB], memory.used [MiB], memory.free [MiB], "
        "compute_cap, pci.bus_id",
        "NVIDIA GB10, 580.95.05, [N/A], [N/A], [N/A], 12.1, 0000000F:01:00.0",
    ]


def test_smi_query_noheader_nounits_and_config(tmp_path: Path) -> None:
    env = smi_config(tmp_path, driver_version="580.126.09", uuid="GPU-1234")
    fields = "name,driver_version,memory.total,compute_cap,uuid,power.draw,utilization.gpu,count"
    out = ok([NVIDIA_SMI, f"--query-gpu={fields}", "--format=csv,noheader,nounits"], env=env)
    assert out.stdout == "NVIDIA GB10, 580.126.09, [N/A], 12.1, GPU-1234, 4.53, 0, 1\n"
    units = ok([NVIDIA_SMI, "--query-gpu=power.draw,utilization.gpu", "--format=csv"], env=env)
    assert units.stdout.splitlines() == ["power.draw [W], utilization.gpu [%]", "4.53 W, 0 %"]
    noheader = ok([NVIDIA_SMI, "--query-gpu=temperature.gpu", "--format=csv,noheader"], env=env)
    assert noheader.stdout == "42\n"


def test_smi_default_driver_without_config(tmp_path: Path) -> None:
    env = {"NVIDIA_SMI_STANDIN_CONFIG": str(tmp_path / "absent.json")}
    out = ok([NVIDIA_SMI, "--query-gpu=driver_version", "--format=csv,noheader"], env=env)
    assert out.stdout == "580.95.05\n"


def test_smi_bad_field_exits_2(tmp_path: Path) -> None:
    result = run([NVIDIA_SMI, "--query-gpu=name,bogus", "--format=csv"], env=smi_config(tmp_path))
    assert result.returncode == 2
    assert 'Field "bogus" is not a valid field to query.' in result.stdout


def test_smi_fail_exits_9(tmp_path: Path) -> None:
    result = run([NVIDIA_SMI], env=smi_config(tmp_path, fail=True))
    assert result.returncode == 9
    assert result.stdout.startswith(
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    )


def test_smi_table_list_and_q(tmp_path: Path) -> None:
    env = smi_config(tmp_path, driver_version="580.95.05", cuda_version="13.0")
    table = ok([NVIDIA_SMI], env=env).stdout.splitlines()
    boxed = [line for line in table[1:] if line]
    assert all(len(line) == 91 for line in boxed), [len(line) for line in boxed]
    assert "Driver Version: 580.95.05      CUDA Version: 13.0" in table[2]
    assert "NVIDIA GB10" in table[8]
    assert "Not Supported" in table[9]
    listing = ok([NVIDIA_SMI, "-L"], env=env).stdout
    assert re.fullmatch(r"GPU 0: NVIDIA GB10 \(UUID: GPU-[0-9a-f-]{36}\)\n", listing)
    query = ok([NVIDIA_SMI, "-q"], env=env).stdout
    assert re.search(r"^    Product Name {39}: NVIDIA GB10$", query, re.MULTILINE)
    assert re.search(r"^Driver Version {41}: 580\.95\.05$", query, re.MULTILINE)
    assert "CUDA Version        : 13.0" in ok([NVIDIA_SMI, "--version"], env=env).stdout


# --- the stand-in apt repository ---------------------------------------------------------------


@dataclass(frozen=True)
class Repo:
    root: Path
    fingerprint: str
    arch: str
    keyring: Path  # the public key, dearmored, as apt's signed-by wants it
    gnupg: Path  # an empty GNUPGHOME for gpg/gpgv calls

    @property
    def flat(self) -> Path:
        return self.root / "stable" / "deb" / self.arch

    def deb(self, package: str, version: str) -> Path:
        return self.flat / f"{package}_{version}_{self.arch}.deb"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    root = tmp_path_factory.mktemp("nvidia-repo")
    (root / "stale-file").write_text("kept: build_repo only replaces what it writes")
    ok([sys.executable, BUILD_REPO, "--out", root, "--version", NEW])  # rebuilt just below
    out = ok([sys.executable, BUILD_REPO, "--out", root, "--version", OLD, "--version", NEW])
    fingerprint = (root / "fingerprint").read_text().strip()
    assert out.stdout.splitlines()[-1] == fingerprint
    gnupg = tmp_path_factory.mktemp("gnupg")
    gnupg.chmod(0o700)
    keyring = tmp_path_factory.mktemp("keyrings") / "nvidia-container-toolkit-keyring.gpg"
    gpg = ["gpg", "--homedir", str(gnupg), "--batch", "--yes"]
    ok([*gpg, "--dearmor", "--output", keyring, root / "gpgkey"])
    arch = ok(["dpkg", "--print-architecture"]).stdout.strip()
    return Repo(root, fingerprint, arch, keyring, gnupg)


@pytest.fixture(scope="module")
def extracted(repo: Repo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four packages of the newest version unpacked into one tree."""
    tree = tmp_path_factory.mktemp("unpacked")
    for package in PACKAGES:
        ok(["dpkg-deb", "-x", repo.deb(package, NEW), tree])
    return tree


@needs_repo_tools
def test_repo_layout_and_key(repo: Repo) -> None:
    assert re.fullmatch(r"[0-9A-F]{40}", repo.fingerprint)
    assert (repo.root / "gpgkey").read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    shown = ok(
        ["gpg", "--homedir", repo.gnupg, "--with-colons", "--show-keys", repo.root / "gpgkey"]
    )
    assert f"fpr:::::::::{repo.fingerprint}:" in shown.stdout
    assert (repo.root / "stale-file").exists()
    names = {p.name for p in repo.flat.iterdir()}
    expected = {f"{p}_{v}_{repo.arch}.deb" for p in PACKAGES for v in (OLD, NEW)}
    assert names == expected | {"Packages", "Packages.gz", "Release", "InRelease", "Release.gpg"}


@needs_repo_tools
def test_release_signature_verifies(repo: Repo, tmp_path: Path) -> None:
    gpgv = ["gpgv", "--homedir", str(repo.gnupg), "--keyring", str(repo.keyring)]
    ok([*gpgv, repo.flat / "InRelease"])
    ok([*gpgv, repo.flat / "Release.gpg", repo.flat / "Release"])
    tampered = tmp_path / "InRelease"
    signed = (repo.flat / "InRelease").read_text()
    tampered.write_text(signed.replace("\nArchitectures: ", "\nArchitectures:  ", 1))
    assert tampered.read_text() != signed
    assert run([*gpgv, tampered]).returncode != 0


@needs_repo_tools
def test_release_describes_indexes(repo: Repo) -> None:
    release = (repo.flat / "Release").read_text()
    assert re.search(r"^Origin: .*lab stand-in", release, re.MULTILINE)
    assert re.search(r"^Label: .*lab stand-in", release, re.MULTILINE)
    for index in ("Packages", "Packages.gz"):
        digest = hashlib.sha256((repo.flat / index).read_bytes()).hexdigest()
        assert re.search(rf"^ {digest} +\d+ {re.escape(index)}$", release, re.MULTILINE)


@needs_repo_tools
@pytest.mark.parametrize("version", [OLD, NEW])
def test_packages_pin_each_other(repo: Repo, version: str) -> None:
    def field(package: str, name: str) -> str:
        return ok(["dpkg-deb", "-f", repo.deb(package, version), name]).stdout.strip()

    pin = f"(= {version})"
    depends = field("nvidia-container-toolkit", "Depends").split(", ")
    assert f"nvidia-container-toolkit-base {pin}" in depends
    assert f"libnvidia-container-tools {pin}" in depends
    assert field("libnvidia-container-tools", "Depends") == f"libnvidia-container1 {pin}"
    for package in PACKAGES:
        assert field(package, "Package") == package
        assert field(package, "Version") == version
        assert field(package, "Architecture") == repo.arch
        assert "lab stand-in" in field(package, "Description")
        info = ok(["dpkg-deb", "-I", repo.deb(package, version)]).stdout
        assert "Maintainer: " in info


@needs_repo_tools
def test_packages_contents(repo: Repo) -> None:
    def contents(package: str) -> str:
        return ok(["dpkg-deb", "-c", repo.deb(package, NEW)]).stdout

    toolkit = contents("nvidia-container-toolkit")
    assert re.search(
        r"^-rwxr-xr-x root/root .* \./usr/bin/nvidia-container-runtime-hook$", toolkit, re.MULTILINE
    )
    base = contents("nvidia-container-toolkit-base")
    for path in (
        "usr/bin/nvidia-ctk",
        "usr/bin/nvidia-container-runtime",
        "usr/bin/nvidia-cdi-hook",
    ):
        assert re.search(rf"^-rwxr-xr-x root/root .* \./{path}$", base, re.MULTILINE), path
    assert "./etc/nvidia-container-runtime/config.toml" in base
    assert "./usr/bin/nvidia-container-cli" in contents("libnvidia-container-tools")
    lib = contents("libnvidia-container1")
    assert "/libnvidia-container.so.1 -> libnvidia-container.so.1.19.0" in lib
    assert "./usr/share/doc/libnvidia-container1/README" in lib
    conffiles = ok(["dpkg-deb", "-I", repo.deb("nvidia-container-toolkit-base", NEW), "conffiles"])
    assert conffiles.stdout.strip() == "/etc/nvidia-container-runtime/config.toml"


@needs_repo_tools
def test_programs_report_their_package_version(repo: Repo, tmp_path: Path) -> None:
    for version in (OLD, NEW):
        tree = tmp_path / version
        ok(["dpkg-deb", "-x", repo.deb("nvidia-container-toolkit-base", version), tree])
        out = ok([tree / "usr/bin/nvidia-ctk", "--version"]).stdout
        assert out.splitlines()[0] == f"NVIDIA Container Toolkit CLI version {version[:-2]}"


# --- apt against the served repository ---------------------------------------------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def served(repo: Repo) -> Iterator[str]:
    """The repository served over HTTP on 127.0.0.1, at a free port; yields its base URL."""
    handler = functools.partial(QuietHandler, directory=str(repo.root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Apt:
    """``apt-get``/``apt-cache`` confined to a directory: nothing of the machine's apt state."""

    def __init__(self, home: Path, source_list: str | None, source_parts: str | None) -> None:
        self.home = home
        for sub in ("state/lists/partial", "cache/archives/partial", "parts"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        (home / "sources.list").write_text(source_list or "")
        if source_parts:
            (home / "parts" / "nvidia-container-toolkit.sources").write_text(source_parts)
        options = {
            "Dir::Etc::sourcelist": str(home / "sources.list"),
            "Dir::Etc::sourceparts": str(home / "parts") if source_parts else "/dev/null",
            "Dir::State": str(home / "state"),
            "Dir::Cache": str(home / "cache"),
            "Dir::Etc::trusted": "/dev/null",
            "Dir::Etc::trustedparts": "/dev/null",
            "Dir::Etc::preferences": "/dev/null",
            "Dir::Etc::preferencesparts": "/dev/null",
            "Debug::NoLocking": "true",
            "Acquire::Languages": "none",
            "Acquire::http::Proxy": "DIRECT",
        }
        if os.geteuid() == 0:
            options["APT::Sandbox::User"] = "root"  # _apt cannot enter pytest's 0700 tmp dirs
        self.options = [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]

    def __call__(
        self, tool: str, *args: str, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run([tool, *self.options, *args], cwd=cwd)


def pinned(version: str) -> list[str]:
    return [f"{package}={version}" for package in PACKAGES]


@needs_repo_tools
@pytest.mark.parametrize("form", ["one-line", "deb822"])
def test_apt_update_install_and_download(
    repo: Repo, served: str, tmp_path: Path, form: str
) -> None:
    if form == "one-line":
        line = f"deb [signed-by={repo.keyring}] {served}/stable/deb/$(ARCH) /\n"
        apt = Apt(tmp_path, line, None)
    else:
        stanza = (
            f"Types: deb\nURIs: {served}/stable/deb/{repo.arch}\nSuites: /\n"
            f"Signed-By: {repo.keyring}\n"
        )
        apt = Apt(tmp_path, None, stanza)
    update = apt("apt-get", "update")
    assert update.returncode == 0, update.stdout + update.stderr
    messages = update.stdout + update.stderr
    assert not re.search(r"^(W|E|Err):", messages, re.MULTILINE), messages
    madison = apt("apt-cache", "madison", "nvidia-container-toolkit").stdout
    assert {OLD, NEW} <= {row.split("|")[1].strip() for row in madison.splitlines()}

    for version in (OLD, NEW):
        sim = apt("apt-get", "install", "-s", "-y", *pinned(version))
        assert sim.returncode == 0, sim.stdout + sim.stderr
        for package in PACKAGES:
            assert re.search(
                rf"^Inst {re.escape(package)} \({re.escape(version)} ", sim.stdout, re.MULTILINE
            )

    uris = apt("apt-get", "--print-uris", "download", *pinned(NEW))
    assert uris.returncode == 0, uris.stderr
    for package in PACKAGES:
        assert f"{served}/stable/deb/{repo.arch}/./{package}_{NEW}_{repo.arch}.deb" in uris.stdout

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    fetched = apt("apt-get", "download", *pinned(NEW), cwd=downloads)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    for package in PACKAGES:
        name = f"{package}_{NEW}_{repo.arch}.deb"
        assert (downloads / name).read_bytes() == (repo.flat / name).read_bytes()


@needs_repo_tools
def test_apt_refuses_mixed_versions(repo: Repo, served: str, tmp_path: Path) -> None:
    apt = Apt(tmp_path, f"deb [signed-by={repo.keyring}] {served}/stable/deb/$(ARCH) /\n", None)
    assert apt("apt-get", "update").returncode == 0
    mixed = [f"nvidia-container-toolkit={NEW}", f"nvidia-container-toolkit-base={OLD}"]
    assert apt("apt-get", "install", "-s", "-y", *mixed).returncode != 0


@needs_repo_tools
def test_apt_rejects_repo_signed_by_another_key(repo: Repo, served: str, tmp_path: Path) -> None:
    gnupg = tmp_path / "gnupg"
    gnupg.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(gnupg), "--batch", "--pinentry-mode", "loopback"]
    ok([*gpg, "--passphrase", "", "--quick-gen-key", "other <other@invalid>", "ed25519"])
    other = tmp_path / "other.gpg"
    ok([*gpg, "--output", other, "--export", "other@invalid"])
    run(["gpgconf", "--homedir", gnupg, "--kill", "all"])
    apt = Apt(tmp_path / "apt", f"deb [signed-by={other}] {served}/stable/deb/$(ARCH) /\n", None)
    update = apt("apt-get", "update")
    assert "NO_PUBKEY" in update.stdout + update.stderr
    assert "nvidia-container-toolkit" not in apt("apt-cache", "pkgnames").stdout


# --- the packaged programs ---------------------------------------------------------------------


def go_json(value: object) -> str:
    return json.dumps(value, indent=4, sort_keys=True)


@needs_repo_tools
def test_ctk_runtime_configure_keeps_other_keys(extracted: Path, tmp_path: Path) -> None:
    ctk = extracted / "usr/bin/nvidia-ctk"
    daemon = tmp_path / "daemon.json"
    existing: dict[str, Any] = {
        "registry-mirrors": ["http://10.89.0.1:5000"],
        "data-root": "/srv/docker",
        "log-opts": {"max-size": "10m", "max-file": "3"},
        "runtimes": {"lab": {"path": "/usr/local/bin/lab-runc"}},
    }
    daemon.write_text(json.dumps(existing, indent=2) + "\n")
    first = ok([ctk, "runtime", "configure", "--runtime=docker", f"--config={daemon}"])
    assert f"INFO[0000] Wrote updated config to {daemon}" in first.stderr
    assert "restarted" in first.stderr
    written = daemon.read_bytes()
    config = json.loads(written)
    for key in ("registry-mirrors", "data-root", "log-opts"):
        assert config[key] == existing[key]
    assert config["runtimes"] == {
        "lab": {"path": "/usr/local/bin/lab-runc"},
        "nvidia": {"args": [], "path": "nvidia-container-runtime"},
    }
    assert "default-runtime" not in config
    assert written.decode() == go_json(config)  # 4-space indent, as the real tool writes
    ok([ctk, "runtime", "configure", "--runtime=docker", f"--config={daemon}"])
    assert daemon.read_bytes() == written

    ok([ctk, "runtime", "configure", "--runtime=docker", f"--config={daemon}", "--set-as-default"])
    assert json.loads(daemon.read_text())["default-runtime"] == "nvidia"


@needs_repo_tools
def test_ctk_runtime_configure_new_and_broken_files(extracted: Path, tmp_path: Path) -> None:
    ctk = extracted / "usr/bin/nvidia-ctk"
    fresh = tmp_path / "etc/docker/daemon.json"
    ok([ctk, "runtime", "configure", "--runtime=docker", f"--config={fresh}"])
    assert json.loads(fresh.read_text()) == {
        "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}
    }
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = run([ctk, "runtime", "configure", "--runtime=docker", f"--config={broken}"])
    assert result.returncode == 1
    assert broken.read_text() == "{not json"


@needs_repo_tools
def test_ctk_cdi_generate_and_list(extracted: Path, libdir: Path, tmp_path: Path) -> None:
    ctk = extracted / "usr/bin/nvidia-ctk"
    env = gpu_env(tmp_path, libdir)
    spec_dir = tmp_path / "run/cdi"
    empty = ok([ctk, "cdi", "list", f"--spec-dir={spec_dir}"], env=env)
    assert empty.stdout == ""
    ok([ctk, "cdi", "generate", f"--output={spec_dir / 'nvidia.yaml'}"], env=env)
    text = (spec_dir / "nvidia.yaml").read_text()
    assert text.startswith("---\ncdiVersion: ")
    assert "libcuda.so.580.95.05" in text  # what the role looks for to tell a current spec
    spec = yaml.safe_load(text)
    assert spec["kind"] == "nvidia.com/gpu"
    uuid = "GPU-a9c4e8f2-3b61-4d0e-9f7a-5c2b8e1d6f30"
    assert [device["name"] for device in spec["devices"]] == ["0", uuid, "all"]
    for device in spec["devices"]:
        assert device["containerEdits"], "CDI rejects a device without edits"
    edits = spec["containerEdits"]
    assert edits["env"] == ["NVIDIA_VISIBLE_DEVICES=void"]
    mounts = {m["containerPath"]: m["hostPath"] for m in edits["mounts"]}
    lib = f"/usr/lib/{build_libcuda.multiarch()}"
    assert mounts == {
        "/usr/bin/nvidia-smi": str(NVIDIA_SMI),
        f"{lib}/libcuda.so.580.95.05": str(libdir / "libcuda.so.580.95.05"),
    }  # the config mount is /etc/nvidia-smi-standin.json itself, absent on this machine
    assert edits["hooks"] == [
        {
            "hookName": "createContainer",
            "path": "/usr/bin/nvidia-cdi-hook",
            "args": ["nvidia-cdi-hook", "create-symlinks", "--link",
                     f"libcuda.so.580.95.05::{lib}/libcuda.so.1"],
        },
        {
            "hookName": "createContainer",
            "path": "/usr/bin/nvidia-cdi-hook",
            "args": ["nvidia-cdi-hook", "update-ldcache", "--folder", lib],
        },
    ]  # fmt: skip
    listed = ok([ctk, "cdi", "list", f"--spec-dir={spec_dir}"], env=env)
    assert listed.stdout.splitlines() == [
        "nvidia.com/gpu=0", f"nvidia.com/gpu={uuid}", "nvidia.com/gpu=all"
    ]  # fmt: skip
    assert "Found 3 CDI devices" in listed.stderr

    newer = gpu_env(tmp_path, libdir, driver_version="580.1.2")
    ok([ctk, "cdi", "generate", f"--output={spec_dir / 'nvidia.yaml'}"], env=newer)
    text = (spec_dir / "nvidia.yaml").read_text()
    assert "libcuda.so.580.1.2" in text
    assert "libcuda.so.580.95.05" not in text

    failing = gpu_env(tmp_path, libdir, fail=True)
    result = run([ctk, "cdi", "generate", f"--output={tmp_path / 'x.yaml'}"], env=failing)
    assert result.returncode == 1
    assert not (tmp_path / "x.yaml").exists()

    no_lib = gpu_env(tmp_path, libdir, driver_version="590.0.1")
    result = run([ctk, "cdi", "generate", f"--output={tmp_path / 'x.yaml'}"], env=no_lib)
    assert result.returncode == 1
    assert "libcuda.so.590.0.1: not found" in result.stderr
    assert not (tmp_path / "x.yaml").exists()


@needs_repo_tools
def test_container_cli_info(extracted: Path, tmp_path: Path) -> None:
    cli = extracted / "usr/bin/nvidia-container-cli"
    env = {"NVIDIA_HOOK_STANDIN_SOURCE": str(NVIDIA_SMI), **smi_config(tmp_path)}
    info = ok([cli, "info"], env=env).stdout
    assert "NVRM version:   580.95.05" in info
    assert "Model:          NVIDIA GB10" in info
    assert "Architecture:   12.1" in info
    assert ok([cli, "list"], env=env).stdout == "/usr/bin/nvidia-smi\n"
    assert ok([cli, "--version"]).stdout.startswith("cli-version: 1.19.0\n")
    assert run([cli, "info"], env={**env, **smi_config(tmp_path, fail=True)}).returncode == 1


def fake_bundle(tmp_path: Path, root_path: str, env: list[str] | None = None) -> Path:
    bundle = tmp_path / "bundle"
    (bundle / "rootfs/usr/bin").mkdir(parents=True)
    (bundle / "rootfs/bin").symlink_to("usr/bin")
    process = {
        "args": ["nvidia-smi"],
        "env": env or ["PATH=/usr/bin", "NVIDIA_VISIBLE_DEVICES=all"],
    }
    config = {"ociVersion": "1.0.2", "root": {"path": root_path}, "process": process}
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def state(bundle: Path) -> str:
    return json.dumps(
        {
            "ociVersion": "1.0.2",
            "id": "c0",
            "status": "creating",
            "pid": 4242,
            "bundle": str(bundle),
        }
    )


@needs_repo_tools
@pytest.mark.parametrize("absolute", [False, True])
def test_hook_copies_nvidia_smi_into_rootfs(
    extracted: Path, libdir: Path, tmp_path: Path, absolute: bool
) -> None:
    hook = extracted / "usr/bin/nvidia-container-runtime-hook"
    bundle = fake_bundle(tmp_path, str(tmp_path / "bundle/rootfs") if absolute else "rootfs")
    env = gpu_env(tmp_path, libdir, driver_version="580.1.2")
    ok([hook, "prestart"], env=env, stdin=state(bundle))
    copied = bundle / "rootfs/usr/bin/nvidia-smi"
    assert copied.read_bytes() == NVIDIA_SMI.read_bytes()
    assert os.access(copied, os.X_OK)
    config = bundle / "rootfs/etc/nvidia-smi-standin.json"
    assert json.loads(config.read_text())["driver_version"] == "580.1.2"
    inside = {"NVIDIA_SMI_STANDIN_CONFIG": str(config)}
    out = ok([copied, "--query-gpu=name,driver_version", "--format=csv,noheader"], env=inside)
    assert out.stdout == "NVIDIA GB10, 580.1.2\n"
    lib = bundle / "rootfs/usr/lib" / build_libcuda.multiarch()
    assert (lib / "libcuda.so.580.1.2").read_bytes() == (libdir / "libcuda.so.580.1.2").read_bytes()
    assert os.readlink(lib / "libcuda.so.1") == "libcuda.so.580.1.2"
    recorded = json.loads((tmp_path / "hook-containers/c0.json").read_text())
    assert recorded["id"] == "c0"
    assert recorded["pid"] == 4242
    assert Path(recorded["rootfs"]).resolve() == (bundle / "rootfs").resolve()


@needs_repo_tools
def test_hook_stays_inside_rootfs(extracted: Path, libdir: Path, tmp_path: Path) -> None:
    hook = extracted / "usr/bin/nvidia-container-runtime-hook"
    bundle = fake_bundle(tmp_path, "rootfs")
    rootfs = bundle / "rootfs"
    shutil.rmtree(rootfs / "usr")
    outside = tmp_path / "host-usr"
    (rootfs / "usr").symlink_to(outside)  # absolute: means <rootfs><outside> in the container
    ok([hook, "prestart"], env=gpu_env(tmp_path, libdir), stdin=state(bundle))
    assert not outside.exists()
    assert (rootfs / str(outside).lstrip("/") / "bin/nvidia-smi").is_file()


@needs_repo_tools
def test_hook_other_stages_and_failures(extracted: Path, libdir: Path, tmp_path: Path) -> None:
    hook = extracted / "usr/bin/nvidia-container-runtime-hook"
    env = {**gpu_env(tmp_path, libdir), "NVIDIA_SMI_STANDIN_CONFIG": "/absent"}
    for stage in ("poststart", "poststop"):
        assert run([hook, stage], env=env, stdin="not json").returncode == 0

    missing = run([hook, "prestart"], env=env, stdin=state(tmp_path / "no-such-bundle"))
    assert missing.returncode == 1
    assert "no-such-bundle/config.json" in missing.stderr

    bundle = fake_bundle(tmp_path, "rootfs-gone")
    gone = run([hook, "prestart"], env=env, stdin=state(bundle))
    assert gone.returncode == 1
    assert "root filesystem" in gone.stderr

    bundle = fake_bundle(tmp_path / "void", "rootfs", ["NVIDIA_VISIBLE_DEVICES=void"])
    ok([hook, "prestart"], env=env, stdin=state(bundle))  # CDI containers: not touched
    assert not (bundle / "rootfs/usr/bin/nvidia-smi").exists()
    assert not (tmp_path / "hook-containers").exists(), "a CDI container was recorded"

    bundle = fake_bundle(tmp_path / "noconf", "rootfs")
    ok([hook, "prestart"], env=env, stdin=state(bundle))  # no config file: still fine
    assert (bundle / "rootfs/usr/bin/nvidia-smi").is_file()
    assert not (bundle / "rootfs/etc/nvidia-smi-standin.json").exists()
    lib = bundle / "rootfs/usr/lib" / build_libcuda.multiarch()
    assert os.readlink(lib / "libcuda.so.1") == "libcuda.so.580.95.05"  # the default driver

    bundle = fake_bundle(tmp_path / "nodriver", "rootfs")
    no_driver = {**env, "NVIDIA_HOOK_STANDIN_SOURCE": str(tmp_path / "absent-smi")}
    assert run([hook, "prestart"], env=no_driver, stdin=state(bundle)).returncode == 1

    bundle = fake_bundle(tmp_path / "nolib", "rootfs")
    no_lib = gpu_env(tmp_path / "nolib", libdir, driver_version="590.0.1")
    result = run([hook, "prestart"], env=no_lib, stdin=state(bundle))
    assert result.returncode == 1
    assert "libcuda.so.590.0.1 not found" in result.stderr

    bundle = fake_bundle(tmp_path / "failing", "rootfs")
    failing = gpu_env(tmp_path / "failing", libdir, fail=True)
    result = run([hook, "prestart"], env=failing, stdin=state(bundle))
    assert result.returncode == 1
    assert "driver not loaded" in result.stderr


# --- nvidia-cdi-hook ---------------------------------------------------------------------------


@needs_repo_tools
@pytest.mark.parametrize("absolute", [False, True])
def test_cdi_hook_create_symlinks(extracted: Path, tmp_path: Path, absolute: bool) -> None:
    cdi_hook = extracted / "usr/bin/nvidia-cdi-hook"
    bundle = fake_bundle(tmp_path, str(tmp_path / "bundle/rootfs") if absolute else "rootfs")
    rootfs = bundle / "rootfs"
    (rootfs / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (rootfs / "lib").symlink_to("usr/lib")  # parents resolve inside the root
    link = "libcuda.so.580.95.05::/lib/x86_64-linux-gnu/libcuda.so.1"
    ok([cdi_hook, "create-symlinks", "--link", link], stdin=state(bundle))
    made = rootfs / "usr/lib/x86_64-linux-gnu/libcuda.so.1"
    assert os.readlink(made) == "libcuda.so.580.95.05"
    again = "libcuda.so.580.1.2::/usr/lib/x86_64-linux-gnu/libcuda.so.1"
    ok([cdi_hook, "create-symlinks", f"--link={again}", "--link", "a::/new/dir/b"],
       stdin=state(bundle))  # fmt: skip
    assert os.readlink(made) == "libcuda.so.580.1.2"
    assert os.readlink(rootfs / "new/dir/b") == "a"
    ok([cdi_hook, "update-ldcache", "--folder", "/usr/lib/x86_64-linux-gnu"], stdin=state(bundle))
    assert ok([cdi_hook, "--version"]).stdout == "NVIDIA CDI Hook version 1.19.0\n"


@needs_repo_tools
def test_cdi_hook_refusals(extracted: Path, tmp_path: Path) -> None:
    cdi_hook = extracted / "usr/bin/nvidia-cdi-hook"
    bundle = fake_bundle(tmp_path, "rootfs")
    (bundle / "rootfs/usr/bin/real-file").write_text("not a link")
    cases = {
        "a file exists": ["create-symlinks", "--link", "x::/usr/bin/real-file"],
        "TARGET::LINK": ["create-symlinks", "--link", "no-separator"],
        "absolute path": ["create-symlinks", "--link", "x::relative/link"],
        "not defined": ["update-ldcache", "--bogus"],
        "No help topic": ["enable-everything"],
    }
    for expected, args in cases.items():
        result = run([cdi_hook, *args], stdin=state(bundle))
        assert result.returncode == 1, args
        assert expected in result.stderr, (args, result.stderr)
    assert (bundle / "rootfs/usr/bin/real-file").read_text() == "not a link"
    for command in (["create-symlinks", "--link", "a::/b"], ["update-ldcache"]):
        result = run([cdi_hook, *command], stdin=state(tmp_path / "no-such-bundle"))
        assert result.returncode == 1
        assert "no-such-bundle/config.json" in result.stderr


# --- a second repository laid out as NVIDIA's DGX archive, pinned above the first -------------


@needs_repo_tools
def test_dgx_style_suite_repo_wins_through_its_pin(repo: Repo, served: str, tmp_path: Path) -> None:
    dgx = tmp_path / "dgx"
    origin = "sparklab-nvidia-dgx"
    ok([sys.executable, BUILD_REPO, "--out", dgx, "--version", "1.20.0-1", "--version",
        "1.20.1-1", "--origin", origin, "--label", "DGX stand-in", "--key-uid",
        "dgx <dgx@invalid>", "--suite", "noble", "--component", "common"])  # fmt: skip
    assert (dgx / "fingerprint").read_text().strip() != repo.fingerprint  # its own key
    release = (dgx / "dists/noble/Release").read_text()
    for field in (f"Origin: {origin}", "Label: DGX stand-in", "Suite: noble", "Codename: noble",
                  "Components: common", f"Architectures: {repo.arch}"):  # fmt: skip
        assert re.search(rf"^{re.escape(field)}$", release, re.MULTILINE), field
    assert (dgx / "pool/common" / f"nvidia-container-toolkit_1.20.1-1_{repo.arch}.deb").is_file()
    assert not (dgx / "stable").exists()

    handler = functools.partial(QuietHandler, directory=str(dgx))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        sources = (
            f"Types: deb\nURIs: {served}/stable/deb/{repo.arch}\nSuites: /\n"
            f"Signed-By: {repo.keyring}\n\n"
            f"Types: deb\nURIs: {url}\nSuites: noble\nComponents: common\n"
            f"Signed-By: {dgx / 'keyring.gpg'}\n"
        )
        apt = Apt(tmp_path / "apt", None, sources)
        (tmp_path / "prefs").mkdir()
        (tmp_path / "prefs" / "nvidia-dgx").write_text(
            f"Package: *\nPin: release o={origin}\nPin-Priority: 600\n"
        )
        apt.options += ["-o", f"Dir::Etc::preferencesparts={tmp_path / 'prefs'}"]
        update = apt("apt-get", "update")
        assert update.returncode == 0, update.stdout + update.stderr
        assert not re.search(r"^(W|E|Err):", update.stdout + update.stderr, re.MULTILINE)
        policy = apt("apt-cache", "policy", "nvidia-container-toolkit").stdout
        assert "Candidate: 1.20.1-1" in policy
        assert f"600 {url.rstrip('/')} noble/common" in policy
        assert f"500 {served}/stable/deb/{repo.arch}" in policy
        sim = apt("apt-get", "install", "-s", "-y", *pinned("1.20.0-1"))
        assert sim.returncode == 0, sim.stdout + sim.stderr
        assert re.search(r"^Inst nvidia-container-toolkit \(1\.20\.0-1 ", sim.stdout, re.MULTILINE)
    finally:
        server.shutdown()
        server.server_close()
