#!/usr/bin/env python3
"""Build a stand-in for NVIDIA's libnvidia-container apt repository, for the sparkfleet test lab.

The lab has no GPU and cannot reach https://nvidia.github.io/libnvidia-container, so this
builds a local repository with the same layout, signing and package relations, whose packages
install stand-in programs (see ``files/``)::

    build_repo.py --out DIR [--version 1.19.0-1 ...] [--arch ARCH ...] [--base-url URL]

``DIR`` then holds, like NVIDIA's site:

- ``gpgkey``: the ASCII-armored public signing key (a throwaway key made for this build) and
  ``fingerprint``: its 40-hex fingerprint, one line;
- ``stable/deb/<arch>/``: a flat repository (``.deb`` files, ``Packages``, ``Packages.gz``,
  ``Release``, ``InRelease``, ``Release.gpg``) for each ``--arch`` (default: this machine's
  ``dpkg --print-architecture``), holding ``nvidia-container-toolkit``,
  ``nvidia-container-toolkit-base``, ``libnvidia-container-tools`` and ``libnvidia-container1``
  for each ``--version`` (repeatable; default 1.19.0-1), pinned to each other with ``(= V)``;
- ``stable/deb/nvidia-container-toolkit.list`` when ``--base-url`` is given.

Served over HTTP at ``http://HOST:PORT/``, it works with the source line
``deb [signed-by=KEYRING] http://HOST:PORT/stable/deb/$(ARCH) /`` (apt substitutes ``$(ARCH)``)
or its deb822 form (``URIs: http://HOST:PORT/stable/deb/<arch>``, ``Suites: /``).
A rebuild into the same ``DIR`` replaces the previous build. The last line printed is the
signing key's fingerprint.
"""

from __future__ import annotations

import argparse
import gzip
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

FILES = Path(__file__).resolve().parent / "files"
KEY_UID = "sparkfleet lab stand-in NVIDIA repo <lab@invalid>"
MAINTAINER = "sparkfleet lab stand-in <lab@invalid>"
HOMEPAGE = "https://github.com/NVIDIA/nvidia-container-toolkit"
ORIGIN = "sparkfleet lab stand-in NVIDIA"
DEFAULT_VERSION = "1.19.0-1"
CDI_REFRESH_SINCE = (1, 18, 0)
MULTIARCH = {
    "amd64": "x86_64-linux-gnu",
    "arm64": "aarch64-linux-gnu",
    "armhf": "arm-linux-gnueabihf",
    "i386": "i386-linux-gnu",
    "ppc64el": "powerpc64le-linux-gnu",
    "s390x": "s390x-linux-gnu",
}
VERSION_RE = re.compile(r"^(?:\d+:)?\d[A-Za-z0-9.+~]*(?:-[A-Za-z0-9.+~]+)?$")
PLACEHOLDER = b"sparkfleet lab stand-in: not a library\n"  # < 64 bytes: ldconfig skips it


@dataclass
class Package:
    """One binary package: control fields and the files it installs."""

    name: str
    section: str
    depends: list[str]
    summary: str
    details: str
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # path -> (data, mode)
    symlinks: dict[str, str] = field(default_factory=dict)  # path -> target
    scripts: dict[str, bytes] = field(default_factory=dict)  # postinst, prerm, ...
    conffiles: list[str] = field(default_factory=list)


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; on failure, stop with its output."""
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd)
    if result.returncode != 0:
        sys.exit(f"build_repo: {' '.join(cmd)} failed ({result.returncode}):\n{result.stderr}")
    return result


def upstream_of(version: str) -> str:
    """``1.19.0`` for ``1.19.0-1`` (the toolkit's version as its programs print it)."""
    return version.split(":", 1)[-1].rsplit("-", 1)[0]


def multiarch_of(arch: str) -> str:
    if arch in MULTIARCH:
        return MULTIARCH[arch]
    return run(["dpkg-architecture", "-a", arch, "-qDEB_HOST_MULTIARCH"]).stdout.strip()


def script(name: str, version: str) -> tuple[bytes, int]:
    """A program from ``files/`` with the package's upstream version baked in."""
    text = (FILES / name).read_text(encoding="utf-8").replace("@VERSION@", upstream_of(version))
    return text.encode(), 0o755


def packages_for(version: str, arch: str) -> list[Package]:
    pin = f"(= {version})"
    libdir = f"/usr/lib/{multiarch_of(arch)}"
    real = "is the sparkfleet test lab's stand-in for NVIDIA's package of the same name"
    lib = Package(
        "libnvidia-container1",
        "libs",
        [],
        "NVIDIA container runtime library (lab stand-in)",
        f"This {real}; the library is a placeholder file.",
        files={
            f"{libdir}/libnvidia-container.so.{upstream_of(version)}": (PLACEHOLDER, 0o644),
            "/usr/share/doc/libnvidia-container1/README": (
                (FILES / "README.libnvidia-container1").read_bytes(),
                0o644,
            ),
        },
        symlinks={
            f"{libdir}/libnvidia-container.so.1": f"libnvidia-container.so.{upstream_of(version)}"
        },
    )
    tools = Package(
        "libnvidia-container-tools",
        "utils",
        [f"libnvidia-container1 {pin}"],
        "NVIDIA container runtime library (command-line tools, lab stand-in)",
        f"This {real}: nvidia-container-cli answers info, list and --version from the stand-in"
        " nvidia-smi.",
        files={"/usr/bin/nvidia-container-cli": script("nvidia-container-cli", version)},
    )
    base = Package(
        "nvidia-container-toolkit-base",
        "utils",
        ["python3"],
        "NVIDIA Container Toolkit Base (lab stand-in)",
        f"This {real}: nvidia-ctk (runtime configure, cdi generate/list) and"
        " nvidia-container-runtime (hands every call to runc).",
        files={
            "/usr/bin/nvidia-ctk": script("nvidia-ctk", version),
            "/usr/bin/nvidia-container-runtime": script("nvidia-container-runtime", version),
            "/etc/nvidia-container-runtime/config.toml": (
                (FILES / "config.toml").read_bytes(),
                0o644,
            ),
        },
        conffiles=["/etc/nvidia-container-runtime/config.toml"],
    )
    numbers = tuple(int(n) for n in re.findall(r"\d+", upstream_of(version))[:3])
    if numbers >= CDI_REFRESH_SINCE:
        for unit in ("nvidia-cdi-refresh.service", "nvidia-cdi-refresh.path"):
            base.files[f"/usr/lib/systemd/system/{unit}"] = ((FILES / unit).read_bytes(), 0o644)
        base.scripts["postinst"] = (FILES / "postinst-cdi-refresh").read_bytes()
        base.scripts["prerm"] = (FILES / "prerm-cdi-refresh").read_bytes()
    toolkit = Package(
        "nvidia-container-toolkit",
        "utils",
        [f"nvidia-container-toolkit-base {pin}", f"libnvidia-container-tools {pin}", "python3"],
        "NVIDIA Container Toolkit (lab stand-in)",
        f"This {real}: nvidia-container-runtime-hook, run by Docker for --gpus, copies the"
        " stand-in nvidia-smi into the container.",
        files={
            "/usr/bin/nvidia-container-runtime-hook": script(
                "nvidia-container-runtime-hook", version
            )
        },
    )
    return [toolkit, base, tools, lib]


def control(pkg: Package, version: str, arch: str, installed_kib: int) -> str:
    fields = {
        "Package": pkg.name,
        "Version": version,
        "Architecture": arch,
        "Maintainer": MAINTAINER,
        "Installed-Size": str(installed_kib),
        "Depends": ", ".join(pkg.depends),
        "Section": pkg.section,
        "Priority": "optional",
        "Homepage": HOMEPAGE,
    }
    lines = [f"{key}: {value}" for key, value in fields.items() if value]
    lines.append(f"Description: {pkg.summary}")
    lines += textwrap.wrap(pkg.details, width=79, initial_indent=" ", subsequent_indent=" ")
    return "\n".join(lines) + "\n"


def build_deb(pkg: Package, version: str, arch: str, work: Path, dest: Path) -> Path:
    root = work / f"{pkg.name}_{arch}_{version.replace(':', '%')}"
    debian = root / "DEBIAN"
    debian.mkdir(parents=True)
    size = 0
    for path, (data, mode) in pkg.files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode)
        size += len(data)
    for path, link in pkg.symlinks.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(link)
    for name, data in pkg.scripts.items():
        (debian / name).write_bytes(data)
        (debian / name).chmod(0o755)
    if pkg.conffiles:
        (debian / "conffiles").write_text("".join(f"{c}\n" for c in pkg.conffiles))
    (debian / "control").write_text(control(pkg, version, arch, max(1, (size + 1023) // 1024)))
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]:
        directory.chmod(0o755)
    for meta in ("control", "conffiles"):
        if (debian / meta).exists():
            (debian / meta).chmod(0o644)
    deb = dest / f"{pkg.name}_{version.split(':', 1)[-1]}_{arch}.deb"
    run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)])
    return deb


class Signer:
    """A throwaway OpenPGP signing key in its own GNUPGHOME."""

    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(mode=0o700)
        self.gpg("--passphrase", "", "--quick-gen-key", KEY_UID, "ed25519", "sign", "never")
        colons = self.gpg("--with-colons", "--list-keys", KEY_UID).stdout
        self.fingerprint = next(
            line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:")
        )

    def gpg(self, *args: str) -> subprocess.CompletedProcess[str]:
        base = ["gpg", "--homedir", str(self.home), "--batch", "--quiet", "--pinentry-mode"]
        return run([*base, "loopback", "--no-tty", *args])

    def public_key(self) -> str:
        return self.gpg("--armor", "--export", self.fingerprint).stdout

    def sign(self, release: Path) -> None:
        user = ["--local-user", self.fingerprint, "--digest-algo", "SHA512"]
        inrelease, detached = release.with_name("InRelease"), release.with_name("Release.gpg")
        self.gpg(*user, "--clearsign", "--output", str(inrelease), str(release))
        self.gpg(*user, "--armor", "--detach-sign", "--output", str(detached), str(release))

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], check=False)


def write_index(repo: Path, arch: str) -> None:
    """``Packages``, ``Packages.gz`` and ``Release`` for the flat repository ``repo``."""
    packages = run(["apt-ftparchive", "packages", "."], cwd=repo).stdout
    (repo / "Packages").write_text(packages)
    with gzip.GzipFile(repo / "Packages.gz", "wb", mtime=0) as fh:
        fh.write(packages.encode())
    options = {
        "Origin": ORIGIN,
        "Label": "sparkfleet lab stand-in libnvidia-container",
        "Architectures": arch,
        "Description": "Lab stand-in for NVIDIA's libnvidia-container stable repository",
    }
    cmd = ["apt-ftparchive"]
    for key, value in options.items():
        cmd += ["-o", f"APT::FTPArchive::Release::{key}={value}"]
    release = run([*cmd, "release", "."], cwd=repo).stdout
    (repo / "Release").write_text(release)


def build(out: Path, versions: list[str], arches: list[str], base_url: str | None) -> str:
    """Build the repository into ``out``; return the signing key's fingerprint."""
    for bad in [v for v in versions if not VERSION_RE.match(v)]:
        sys.exit(f"build_repo: not a Debian package version: {bad!r}")
    out.mkdir(parents=True, exist_ok=True)
    stable = out / "stable"
    if stable.exists():
        shutil.rmtree(stable)
    with tempfile.TemporaryDirectory(prefix="nvidia-apt-standin.") as tmp:
        signer = Signer(Path(tmp) / "gnupg")
        try:
            (out / "gpgkey").write_text(signer.public_key())
            (out / "fingerprint").write_text(signer.fingerprint + "\n")
            for arch in arches:
                repo = stable / "deb" / arch
                repo.mkdir(parents=True)
                for version in versions:
                    for pkg in packages_for(version, arch):
                        build_deb(pkg, version, arch, Path(tmp), repo)
                write_index(repo, arch)
                signer.sign(repo / "Release")
        finally:
            signer.close()
    if base_url:
        url = f"{base_url.rstrip('/')}/stable/deb/$(ARCH)"
        keyring = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
        (stable / "deb" / "nvidia-container-toolkit.list").write_text(
            f"deb [signed-by={keyring}] {url} /\n"
        )
    return signer.fingerprint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="directory to build into")
    parser.add_argument(
        "--version",
        dest="versions",
        action="append",
        help=f"Debian version to publish (repeatable; default {DEFAULT_VERSION})",
    )
    parser.add_argument(
        "--arch", dest="arches", action="append", help="Debian architecture (repeatable)"
    )
    parser.add_argument("--base-url", help="also write stable/deb/nvidia-container-toolkit.list")
    args = parser.parse_args(argv)
    versions: list[str] = list(dict.fromkeys(args.versions or [DEFAULT_VERSION]))
    arches: list[str] = list(dict.fromkeys(args.arches or []))
    if not arches:
        arches = [run(["dpkg", "--print-architecture"]).stdout.strip()]
    fingerprint = build(args.out, versions, arches, args.base_url)
    for arch in arches:
        print(f"repository: {args.out / 'stable' / 'deb' / arch} ({', '.join(versions)})")
    print(f"signing key: {args.out / 'gpgkey'}")
    print(fingerprint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
