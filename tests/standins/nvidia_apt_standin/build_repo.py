#!/usr/bin/env python3
"""Build a stand-in for NVIDIA's libnvidia-container apt repository, for the sparkfleet test lab.

The lab has no GPU and cannot reach https://nvidia.github.io/libnvidia-container, so this
builds a local repository with the same layout, signing and package relations, whose packages
install stand-in programs (see ``files/``)::

    build_repo.py --out DIR [--version 1.19.0-1 ...] [--arch ARCH ...] [--base-url URL]
                  [--origin O] [--label L] [--key-uid UID] [--suite SUITE [--component C]]

``DIR`` then holds, like NVIDIA's site:

- ``gpgkey``: the ASCII-armored public signing key (a throwaway key made for this build) and
  ``fingerprint``: its 40-hex fingerprint, one line;
- ``stable/deb/<arch>/``: a flat repository (``.deb`` files, ``Packages``, ``Packages.gz``,
  ``Release``, ``InRelease``, ``Release.gpg``) for each ``--arch`` (default: this machine's
  ``dpkg --print-architecture``), holding ``nvidia-container-toolkit``,
  ``nvidia-container-toolkit-base``, ``libnvidia-container-tools`` and ``libnvidia-container1``
  for each ``--version`` (repeatable; default 1.19.0-1), pinned to each other with ``(= V)``;
- ``stable/deb/nvidia-container-toolkit.list`` when ``--base-url`` is given;
- ``keyring.gpg``: the same public key, binary (dearmored), for ``Signed-By`` as a ``.gpg`` file.

With ``--suite SUITE`` the repository is laid out as a Debian archive instead of flat, as
NVIDIA's DGX OS repositories are (``deb URL noble common dgx``): ``dists/SUITE/Release`` (signed,
``Suite``/``Codename`` SUITE, ``Components`` C), ``dists/SUITE/C/binary-<arch>/Packages[.gz]``
and the ``.deb`` files in ``pool/C/``; source ``URIs: http://HOST:PORT/``, ``Suites: SUITE``,
``Components: C``. ``--origin``/``--label`` set the ``Release`` file's ``Origin``/``Label`` (what
apt pins match with ``Pin: release o=...``), ``--key-uid`` the throwaway key's user id, so that a
second stand-in repository (the lab's "DGX" one) has its own key and identity.

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
LABEL = "sparkfleet lab stand-in libnvidia-container"
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


def script(name: str, version: str, arch: str) -> tuple[bytes, int]:
    """A program from ``files/`` with the package's upstream version and the architecture's
    library directory (``/usr/lib/<multiarch>``, where the driver's libcuda lives) baked in."""
    text = (FILES / name).read_text(encoding="utf-8").replace("@VERSION@", upstream_of(version))
    text = text.replace("@LIBDIR@", f"/usr/lib/{multiarch_of(arch)}")
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
        files={"/usr/bin/nvidia-container-cli": script("nvidia-container-cli", version, arch)},
    )
    base = Package(
        "nvidia-container-toolkit-base",
        "utils",
        ["python3"],
        "NVIDIA Container Toolkit Base (lab stand-in)",
        f"This {real}: nvidia-ctk (runtime configure, cdi generate/list),"
        " nvidia-cdi-hook (create-symlinks, update-ldcache) and"
        " nvidia-container-runtime (hands every call to runc).",
        files={
            "/usr/bin/nvidia-ctk": script("nvidia-ctk", version, arch),
            "/usr/bin/nvidia-container-runtime": script("nvidia-container-runtime", version, arch),
            "/usr/bin/nvidia-cdi-hook": script("nvidia-cdi-hook", version, arch),
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
                "nvidia-container-runtime-hook", version, arch
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

    def __init__(self, home: Path, uid: str = KEY_UID) -> None:
        self.home = home
        home.mkdir(mode=0o700)
        self.gpg("--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")
        colons = self.gpg("--with-colons", "--list-keys", uid).stdout
        self.fingerprint = next(
            line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:")
        )

    def gpg(self, *args: str) -> subprocess.CompletedProcess[str]:
        base = ["gpg", "--homedir", str(self.home), "--batch", "--quiet", "--pinentry-mode"]
        return run([*base, "loopback", "--no-tty", *args])

    def public_key(self) -> str:
        return self.gpg("--armor", "--export", self.fingerprint).stdout

    def public_keyring(self, dest: Path) -> None:
        self.gpg("--output", str(dest), "--export", self.fingerprint)

    def sign(self, release: Path) -> None:
        user = ["--local-user", self.fingerprint, "--digest-algo", "SHA512"]
        inrelease, detached = release.with_name("InRelease"), release.with_name("Release.gpg")
        self.gpg(*user, "--clearsign", "--output", str(inrelease), str(release))
        self.gpg(*user, "--armor", "--detach-sign", "--output", str(detached), str(release))

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], check=False)


@dataclass(frozen=True)
class Identity:
    """What the ``Release`` files and the signing key call this repository."""

    origin: str = ORIGIN
    label: str = LABEL
    key_uid: str = KEY_UID


def release_text(cwd: Path, target: str, fields: dict[str, str]) -> str:
    cmd = ["apt-ftparchive"]
    for key, value in fields.items():
        cmd += ["-o", f"APT::FTPArchive::Release::{key}={value}"]
    return run([*cmd, "release", target], cwd=cwd).stdout


def write_packages(directory: Path, packages: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Packages").write_text(packages)
    with gzip.GzipFile(directory / "Packages.gz", "wb", mtime=0) as fh:
        fh.write(packages.encode())


def write_index(repo: Path, arch: str, ident: Identity = Identity()) -> None:
    """``Packages``, ``Packages.gz`` and ``Release`` for the flat repository ``repo``."""
    write_packages(repo, run(["apt-ftparchive", "packages", "."], cwd=repo).stdout)
    fields = {
        "Origin": ident.origin,
        "Label": ident.label,
        "Architectures": arch,
        "Description": "Lab stand-in for NVIDIA's libnvidia-container stable repository",
    }
    (repo / "Release").write_text(release_text(repo, ".", fields))


def build_flat(out: Path, versions: list[str], arches: list[str], signer: Signer, work: Path,
               ident: Identity) -> None:  # fmt: skip
    stable = out / "stable"
    for arch in arches:
        repo = stable / "deb" / arch
        repo.mkdir(parents=True)
        for version in versions:
            for pkg in packages_for(version, arch):
                build_deb(pkg, version, arch, work, repo)
        write_index(repo, arch, ident)
        signer.sign(repo / "Release")


def build_suite(out: Path, versions: list[str], arches: list[str], signer: Signer, work: Path,
                ident: Identity, suite: str, component: str) -> None:  # fmt: skip
    """A Debian archive layout: ``dists/SUITE/...`` and ``pool/COMPONENT/``."""
    pool = out / "pool" / component
    pool.mkdir(parents=True)
    dist = out / "dists" / suite
    for arch in arches:
        for version in versions:
            for pkg in packages_for(version, arch):
                build_deb(pkg, version, arch, work, pool)
        packages = run(["apt-ftparchive", "--arch", arch, "packages", f"pool/{component}"], cwd=out)
        write_packages(dist / component / f"binary-{arch}", packages.stdout)
    fields = {
        "Origin": ident.origin,
        "Label": ident.label,
        "Suite": suite,
        "Codename": suite,
        "Components": component,
        "Architectures": " ".join(arches),
        "Description": f"Lab stand-in for an NVIDIA apt archive ({ident.label})",
    }
    (dist / "Release").write_text(release_text(out, f"dists/{suite}", fields))
    signer.sign(dist / "Release")


def build(
    out: Path,
    versions: list[str],
    arches: list[str],
    base_url: str | None,
    ident: Identity = Identity(),
    suite: str | None = None,
    component: str = "main",
) -> str:
    """Build the repository into ``out``; return the signing key's fingerprint."""
    for bad in [v for v in versions if not VERSION_RE.match(v)]:
        sys.exit(f"build_repo: not a Debian package version: {bad!r}")
    out.mkdir(parents=True, exist_ok=True)
    for old in ("stable", "dists", "pool"):
        if (out / old).exists():
            shutil.rmtree(out / old)
    with tempfile.TemporaryDirectory(prefix="nvidia-apt-standin.") as tmp:
        signer = Signer(Path(tmp) / "gnupg", ident.key_uid)
        try:
            (out / "gpgkey").write_text(signer.public_key())
            (out / "keyring.gpg").unlink(missing_ok=True)
            signer.public_keyring(out / "keyring.gpg")
            (out / "fingerprint").write_text(signer.fingerprint + "\n")
            if suite:
                build_suite(out, versions, arches, signer, Path(tmp), ident, suite, component)
            else:
                build_flat(out, versions, arches, signer, Path(tmp), ident)
        finally:
            signer.close()
    if base_url and not suite:
        url = f"{base_url.rstrip('/')}/stable/deb/$(ARCH)"
        keyring = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
        (out / "stable" / "deb" / "nvidia-container-toolkit.list").write_text(
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
    parser.add_argument("--origin", default=ORIGIN, help="Release Origin")
    parser.add_argument("--label", default=LABEL, help="Release Label")
    parser.add_argument("--key-uid", default=KEY_UID, help="user id of the throwaway signing key")
    parser.add_argument("--suite", help="Debian archive layout with this suite (default: flat)")
    parser.add_argument("--component", default="main", help="component with --suite")
    args = parser.parse_args(argv)
    versions: list[str] = list(dict.fromkeys(args.versions or [DEFAULT_VERSION]))
    arches: list[str] = list(dict.fromkeys(args.arches or []))
    if not arches:
        arches = [run(["dpkg", "--print-architecture"]).stdout.strip()]
    ident = Identity(args.origin, args.label, args.key_uid)
    fingerprint = build(
        args.out, versions, arches, args.base_url, ident, args.suite, args.component
    )
    if args.suite:
        print(f"repository: {args.out} suite {args.suite} component {args.component}"
              f" ({', '.join(versions)})")  # fmt: skip
    for arch in arches if not args.suite else []:
        print(f"repository: {args.out / 'stable' / 'deb' / arch} ({', '.join(versions)})")
    print(f"signing key: {args.out / 'gpgkey'}")
    print(fingerprint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
