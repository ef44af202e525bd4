"""``vllm_service_image`` run in process against a Docker client of the test's own (a shell script
answering ``image inspect`` and ``pull`` as Docker's CLI does: the image's ID on standard output
and exit 0 when present, by reference or by ID, exit 1 with "No such image" otherwise; a failed
pull's message on standard error, exit 1).

- ``update_record: false`` (``rolling_restart.yml``'s pull while the host still serves) pulls a
  missing image and leaves the record as it was, byte for byte; the role's own run afterwards
  records the new image, the one it replaces as the previous.
- A pull that keeps failing names docker's message whole (its last error's lines, up to 10 and
  2,000 characters), not only its last line: behind a registry mirror, Docker's last line can be
  the fallback's error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.sparkfleet.spark.plugins.modules import (
    vllm_service_image as image_module,
)

from tests.unit.plays import run_module

pytestmark = pytest.mark.nolab

OLD = ("avarok/dgx-vllm-nvfp4-kernel:v23", "sha256:" + "a" * 64)
NEW = ("avarok/dgx-vllm-nvfp4-kernel:v24", "sha256:" + "b" * 64)


def fake_docker(tmp_path: Path, pull_error: str = "") -> Path:
    """A Docker client whose engine holds OLD, and NEW once pulled (``pull_error``: every pull
    fails with that text on standard error)."""
    held = tmp_path / "held"
    held.mkdir()
    (held / OLD[0].replace("/", "_")).write_text(OLD[1])
    (tmp_path / "pull-error").write_text(pull_error)
    docker = tmp_path / "docker"
    docker.write_text(
        "#!/bin/sh\n"
        f"held={held}\n"
        'if [ "$1 $2" = "image inspect" ]; then\n'
        '  eval ref=\\${$#}; f="$held/$(echo "$ref" | tr / _)"\n'
        '  [ -f "$f" ] && { cat "$f"; echo; exit 0; }\n'
        '  grep -qx "$ref" "$held"/* && { echo "$ref"; exit 0; }\n'
        '  echo "Error response from daemon: No such image: $ref" >&2; exit 1\n'
        "fi\n"
        'if [ "$1" = pull ]; then\n'
        f"  if [ -s {tmp_path}/pull-error ]; then cat {tmp_path}/pull-error >&2; exit 1; fi\n"
        f'  [ "$2" = "{NEW[0]}" ] && printf %s "{NEW[1]}" > "$held/$(echo "$2" | tr / _)"\n'
        "  exit 0\n"
        "fi\n"
        "exit 2\n"
    )
    docker.chmod(0o755)
    return docker


def run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, docker: Path, image: str, **args: Any
) -> tuple[int, dict[str, Any]]:
    return run_module(
        image_module,
        {"image": image, "record": str(tmp_path / "vllm.image.json"), "docker_bin": str(docker),
         "pull_retries": 2, "pull_retry_delay": 0, **args},
        capsys,
    )  # fmt: skip


def test_a_pull_alone_records_nothing_and_the_serving_run_records_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    docker = fake_docker(tmp_path)
    status, first = run(capsys, tmp_path, docker, OLD[0])
    assert status == 0 and first["changed"], first
    record = tmp_path / "vllm.image.json"
    recorded = record.read_bytes()
    assert json.loads(recorded)["current"] == {"ref": OLD[0], "id": OLD[1]}

    status, pulled = run(capsys, tmp_path, docker, NEW[0], update_record=False)
    assert status == 0, pulled
    assert (pulled["changed"], pulled["pulled"], pulled["id"]) == (True, True, NEW[1]), pulled
    assert record.read_bytes() == recorded

    status, served = run(capsys, tmp_path, docker, NEW[0])
    assert status == 0, served
    assert (served["changed"], served["pulled"]) == (True, False), served
    assert json.loads(record.read_bytes()) == {
        "current": {"ref": NEW[0], "id": NEW[1]},
        "previous": {"ref": OLD[0], "id": OLD[1]},
    }
    assert served["previous"] == {"ref": OLD[0], "id": OLD[1], "present": True}
    status, again = run(capsys, tmp_path, docker, NEW[0])
    assert status == 0 and not again["changed"], again


def test_a_failed_pull_names_dockers_whole_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    message = (
        "Error response from daemon: manifest for avarok/dgx-vllm-nvfp4-kernel:v24 not found: "
        "manifest unknown\n"
        'Error response from daemon: Get "https://registry-1.docker.io/v2/": dial tcp: lookup '
        "registry-1.docker.io: no such host\n"
    )
    docker = fake_docker(tmp_path, pull_error=message)
    status, failed = run(capsys, tmp_path, docker, NEW[0], update_record=False)
    assert status == 1, failed
    assert failed["msg"].startswith(f"docker pull {NEW[0]} failed 2 times; last error: "), failed
    assert "manifest unknown | Error response from daemon" in failed["msg"], failed["msg"]
    assert "no such host (check vllm_image, vllm_image_digest" in failed["msg"], failed["msg"]
    assert len(failed["errors"]) == 2, failed
    assert not (tmp_path / "vllm.image.json").exists()
