"""``ansible-test sanity`` on the collection as it ships: ``python -m tests.sanity.run [TEST ...]``.

The collection is built with ``ansible-galaxy collection build`` and its tarball unpacked into a
temporary ``ansible_collections/sparkfleet/spark`` (ansible-test needs that path), so the files
checked are the files users install, ``tests/sanity/ignore-X.Y.txt`` included. ansible-test runs
each sanity test in a virtualenv of its own (under ``~/.ansible/test``), which it starts with
pip's bootstrap script from ci-files.testing.ansible.com; that host is not reachable from the
machines this project is tested on, so, as ansible-test's own error message offers, the script
is saved beforehand in its cache (``~/.ansible/test/cache/get_pip_<version>.py``): ours
bootstraps the interpreter's bundled pip with ``ensurepip`` and then lets pip install the version
ansible-test asked for from the package index. Exit status: ansible-test's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import ansible_test

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

GET_PIP_STANDIN = """\
# Written by sparkfleet's tests/sanity/run.py in place of ansible-test's get-pip download (its
# host is not reachable here): bootstrap the bundled pip, then install what ansible-test asked.
import ensurepip
import os
import subprocess
import sys

ensurepip.bootstrap(upgrade=True)
os.environ.pop("PIP_CONFIG_FILE", None)
os.environ.pop("ENSUREPIP_OPTIONS", None)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + args))
"""


def pip_version() -> str:
    """The pip version ansible-test bootstraps its virtualenvs with (its own constant)."""
    source = Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
    found = re.search(r"pip='([0-9.]+)'", source.read_text())
    if found is None:
        raise SystemExit(f"no pip version found in {source}")
    return found.group(1)


def ensure_get_pip() -> None:
    """Put the bootstrap stand-in where ansible-test looks before it downloads."""
    version = pip_version().replace(".", "_")
    cache = Path.home() / ".ansible" / "test" / "cache" / f"get_pip_{version}.py"
    if not cache.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(GET_PIP_STANDIN)


def build(into: Path) -> Path:
    """Build the collection and unpack it as ``ansible_collections/sparkfleet/spark``."""
    dist = into / "dist"
    subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(dist)],
        cwd=REPO_ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (tarball,) = dist.glob("sparkfleet-spark-*.tar.gz")
    root = into / "ansible_collections" / "sparkfleet" / "spark"
    root.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(root, filter="data")
    return root


def main() -> int:
    """Run the sanity tests named on the command line (all of them by default)."""
    ensure_get_pip()
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    tests = [arg for name in sys.argv[1:] for arg in ("--test", name)]
    with tempfile.TemporaryDirectory(prefix="sparkfleet-sanity-") as tmp:
        root = build(Path(tmp))
        env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        return subprocess.run(
            [str(BIN / "ansible-test"), "sanity", "--python", python, "--color", "no", *tests],
            cwd=root,
            env=env,
            check=False,
        ).returncode


if __name__ == "__main__":
    sys.exit(main())
