"""Compile the stand-in CUDA driver library (``libcuda_standin.c``) with the controller's gcc.

``compile_libcuda(dest_dir, driver_version)`` writes ``dest_dir/libcuda.so.<driver_version>``
(SONAME ``libcuda.so.1``, the version compiled in as a fallback) and returns its path.
``multiarch()`` is the Debian multiarch directory name of the compiler's target
(``x86_64-linux-gnu``, ``aarch64-linux-gnu``): the lab installs the library in
``/usr/lib/<multiarch>/`` as NVIDIA's driver packages do, with the ``libcuda.so.1`` symlink.

The simulated hosts are built from a debootstrap of this machine's architecture, so the
controller's gcc targets them; the library needs nothing but libc (``dladdr`` is in libc since
glibc 2.34; ``-ldl`` keeps older controllers working).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "libcuda_standin.c"
DEFAULT_DRIVER_VERSION = "580.95.05"
VERSION_RE = re.compile(r"^\d+(?:\.\d+)+$")


def compiler() -> str:
    """The C compiler (``$CC`` is not consulted: the lab builds with the system's gcc)."""
    found = shutil.which("gcc") or shutil.which("cc")
    if found is None:
        raise SystemExit("gcc not found: the lab compiles its stand-in libcuda (install gcc)")
    return found


def multiarch() -> str:
    """Debian multiarch triplet of the compiler's target, e.g. ``x86_64-linux-gnu``."""
    out = subprocess.run(
        [compiler(), "-print-multiarch"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not out:
        raise SystemExit("gcc -print-multiarch printed nothing: not a Debian-style toolchain")
    return out


def compile_libcuda(dest_dir: Path, driver_version: str = DEFAULT_DRIVER_VERSION) -> Path:
    """Build ``dest_dir/libcuda.so.<driver_version>``; returns its path."""
    if not VERSION_RE.match(driver_version):
        raise ValueError(f"not a driver version: {driver_version!r}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / f"libcuda.so.{driver_version}"
    subprocess.run(
        [compiler(), "-shared", "-fPIC", "-O2", "-Wall", "-Werror",
         "-Wl,-soname,libcuda.so.1", f'-DSTANDIN_DRIVER_VERSION="{driver_version}"',
         "-o", str(out), str(SOURCE), "-ldl"],
        check=True,
        capture_output=True,
        text=True,
    )  # fmt: skip
    return out
