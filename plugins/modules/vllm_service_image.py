#!/usr/bin/python
# -*- coding: utf-8 -*-
# Apache-2.0
"""Make the serving image present (pulled explicitly, optionally by digest) and record it."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vllm_service_image
short_description: Pull the vLLM image when missing and record the current and previous image
version_added: 0.1.0
description:
  - Looks the image up locally (by tag, or by tag and digest when O(digest) is set) and pulls it
    only when it is missing, retrying a failed pull.
  - Keeps a small JSON record of the image the unit runs and of the one it ran before, so the
    previous image can be named for a rollback. Images are never removed.
  - In check mode nothing is pulled or written; RV(pulled) tells whether a pull would happen.
options:
  image:
    description: Image reference without digest, e.g. C(avarok/dgx-vllm-nvfp4-kernel:v23).
    type: str
    required: true
  digest:
    description: Manifest digest (C(sha256:...)) the image must have; empty for the tag alone.
    type: str
    default: ""
  record:
    description: Path of the JSON record of the current and previous image.
    type: path
    required: true
  docker_bin:
    description: Docker client.
    type: path
    default: /usr/bin/docker
  pull_retries:
    description: Attempts of a failing pull.
    type: int
    default: 3
  pull_retry_delay:
    description: Seconds between two attempts.
    type: int
    default: 10
  update_record:
    description:
      - Whether to write O(record). V(false) only pulls (C(rolling_restart.yml) pulls while the host
        still serves, and the role records the image when it applies it); the record is read for
        RV(previous) either way.
    type: bool
    default: true
author: sparkfleet maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Pull the image when missing, and record it (the previous one stays for a rollback)
  sparkfleet.spark.vllm_service_image:
    image: avarok/dgx-vllm-nvfp4-kernel:v23
    record: /etc/vllm/vllm.image.json
  register: vllm_image

- name: Pin the image by digest, with more patience for a slow registry
  sparkfleet.spark.vllm_service_image:
    image: avarok/dgx-vllm-nvfp4-kernel:v23
    digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
    record: /etc/vllm/vllm.image.json
    docker_bin: /usr/bin/docker
    pull_retries: 5
    pull_retry_delay: 30
  register: vllm_image

- name: Pull a new release while the host still serves; the role records it when it applies it
  sparkfleet.spark.vllm_service_image:
    image: avarok/dgx-vllm-nvfp4-kernel:v24
    record: /etc/vllm/vllm.image.json
    update_record: false

- name: Name the image to roll back to
  ansible.builtin.debug:
    msg: "running {{ vllm_image.ref }}; previous {{ vllm_image.previous.ref | default('none') }}"
"""

RETURN = r"""
ref:
  description: The reference the unit runs (image, or image@digest).
  type: str
  returned: always
  sample: avarok/dgx-vllm-nvfp4-kernel:v23
id:
  description: Local image id of RV(ref) (empty in check mode before a pull).
  type: str
  returned: always
  sample: sha256:4f2b9c0a0d1e...
pulled:
  description: Whether the image was (or, in check mode, would be) pulled.
  type: bool
  returned: always
  sample: false
pull_attempts:
  description: Attempts the pull took (0 when there was none).
  type: int
  returned: always
  sample: 0
record:
  description: O(record).
  type: str
  returned: always
  sample: /etc/vllm/vllm.image.json
previous:
  description: The image the unit ran before, or null.
  type: dict
  returned: always
  contains:
    ref:
      description: Its reference.
      type: str
      returned: when there was a previous image
    id:
      description: Its image id.
      type: str
      returned: when there was a previous image
    present:
      description: Whether the engine still holds it.
      type: bool
      returned: when there was a previous image
"""

import json
import os
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule


def inspect_id(module, docker, ref):
    """Local image id of ``ref``, or "" when the engine holds no such image."""
    rc, out, _err = module.run_command([docker, "image", "inspect", "--format", "{{.Id}}", ref])
    return out.strip() if rc == 0 else ""


def read_record(path):
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_record(path, data):
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".image-record-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# docker's message of a failed pull, at most this many of its last lines and characters
ERROR_LINES = 10
ERROR_CHARS = 2000


def pull(module, docker, ref, retries, delay):
    """Pull ``ref``; fails the module with docker's message (its last ``ERROR_LINES`` lines of
    standard error, joined by " | ") after ``retries`` attempts."""
    errors = []
    for attempt in range(1, retries + 1):
        rc, _out, err = module.run_command([docker, "pull", ref])
        if rc == 0:
            return attempt
        lines = [line.strip() for line in err.splitlines() if line.strip()]
        message = " | ".join(lines[-ERROR_LINES:])[-ERROR_CHARS:]
        errors.append(message or "rc=%d" % rc)
        if attempt < retries:
            time.sleep(delay)
    module.fail_json(
        msg="docker pull %s failed %d times; last error: %s (check vllm_image, "
        "vllm_image_digest and the host's registry access)" % (ref, retries, errors[-1]),
        errors=errors,
    )
    return retries


def main():
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="str", required=True),
            digest=dict(type="str", default=""),
            record=dict(type="path", required=True),
            docker_bin=dict(type="path", default="/usr/bin/docker"),
            pull_retries=dict(type="int", default=3),
            pull_retry_delay=dict(type="int", default=10),
            update_record=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    docker = params["docker_bin"]
    ref = "%s@%s" % (params["image"], params["digest"]) if params["digest"] else params["image"]

    image_id = inspect_id(module, docker, ref)
    pulled = not image_id
    attempts = 0
    if pulled and not module.check_mode:
        attempts = pull(module, docker, ref, max(1, params["pull_retries"]), params["pull_retry_delay"])
        image_id = inspect_id(module, docker, ref)
        if not image_id:
            module.fail_json(msg="docker pull %s succeeded but the image is not listed" % ref)

    before = read_record(params["record"])
    current = before.get("current") if isinstance(before.get("current"), dict) else None
    previous = before.get("previous") if isinstance(before.get("previous"), dict) else None
    after = before
    if params["update_record"]:
        # the image the unit ran until now becomes the previous one
        if current and image_id and current.get("id") != image_id:
            previous = {"ref": current.get("ref", ""), "id": current.get("id", "")}
        after = {"current": {"ref": ref, "id": image_id}, "previous": previous}
    record_changed = bool(image_id) and after != before
    if record_changed and not module.check_mode:
        write_record(params["record"], after)

    previous_out = None
    if previous:
        previous_out = dict(previous, present=bool(previous.get("id")) and bool(
            inspect_id(module, docker, previous["id"])))
    module.exit_json(
        changed=pulled or record_changed,
        ref=ref,
        id=image_id,
        pulled=pulled,
        pull_attempts=attempts,
        previous=previous_out,
        record=params["record"],
        diff=dict(
            before=json.dumps(before, indent=2, sort_keys=True) + "\n",
            after=json.dumps(after, indent=2, sort_keys=True) + "\n",
            before_header=params["record"],
            after_header=params["record"],
        ),
    )


if __name__ == "__main__":
    main()
