#!/usr/bin/python
# -*- coding: utf-8 -*-
# Apache-2.0
"""Report whether a model directory holds what vLLM loads: config.json and every shard."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vllm_model_files
short_description: Check a model directory for config.json and its safetensors shards
version_added: 0.1.0
description:
  - Reads C(model.safetensors.index.json) when present and checks that every shard its
    C(weight_map) names exists and is not empty; without an index, at least one
    C(*.safetensors) file must exist. Read-only; never fails by itself.
options:
  path:
    description: The model directory.
    type: path
    required: true
author: sparkfleet maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Look for the model's config and shards
  sparkfleet.spark.vllm_model_files:
    path: /opt/huggingface/models/MiniMax-M2.5-REAP-172B-NVFP4
  register: model_files

- name: Check the model directory
  ansible.builtin.assert:
    that: model_files.ok
    fail_msg: "not a complete model: {{ model_files.problems | join('; ') }}"
"""

RETURN = r"""
ok:
  description: Whether the directory holds config.json and all shards.
  type: bool
  returned: always
  sample: true
problems:
  description: What is missing or wrong, one sentence each.
  type: list
  elements: str
  returned: always
  sample: [config.json is missing]
shards:
  description: Number of shards expected (from the index) or found.
  type: int
  returned: always
  sample: 20
missing:
  description: Shards named by the index but absent or empty.
  type: list
  elements: str
  returned: always
  sample: []
shard_bytes:
  description: Total size in bytes of the shards present.
  type: int
  returned: always
  sample: 98765432100
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule


def inspect_dir(path):
    """(problems, shards expected, missing or empty shards, bytes of the present shards)."""
    if not os.path.isdir(path):
        return ["the directory does not exist"], 0, [], 0
    problems = []
    if not os.path.isfile(os.path.join(path, "config.json")):
        problems.append("config.json is missing")
    index_file = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index_file):
        try:
            with open(index_file, encoding="utf-8") as handle:
                shards = sorted(set(json.load(handle)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return problems + ["model.safetensors.index.json is unreadable (%s)" % exc], 0, [], 0
    else:
        shards = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
        if not shards:
            problems.append("no model.safetensors.index.json and no *.safetensors file")
    missing, size = [], 0
    for name in shards:
        full = os.path.join(path, name)
        if not os.path.isfile(full) or os.path.getsize(full) == 0:
            missing.append(name)
        else:
            size += os.path.getsize(full)
    if missing:
        problems.append(
            "%d of %d shards named by the index are missing or empty (%s%s)"
            % (len(missing), len(shards), ", ".join(missing[:3]), ", ..." if len(missing) > 3 else "")
        )
    return problems, len(shards), missing, size


def main():
    module = AnsibleModule(
        argument_spec=dict(path=dict(type="path", required=True)),
        supports_check_mode=True,
    )
    problems, shards, missing, size = inspect_dir(module.params["path"])
    module.exit_json(
        changed=False, ok=not problems, problems=problems, shards=shards, missing=missing,
        shard_bytes=size,
    )


if __name__ == "__main__":
    main()
