#!/usr/bin/python
"""Ansible module: install a repository signing key as an apt keyring file, fingerprint checked."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nvidia_toolkit_apt_key
short_description: Install an apt keyring file after checking the key's fingerprint
version_added: 0.1.0
description:
  - When O(dest) already holds a key with O(fingerprint), nothing is downloaded or changed.
  - Otherwise the key is downloaded from O(url) and its fingerprints computed (no gpg needed);
    it is written to O(dest) only when one of them is O(fingerprint). A key that does not match
    is never written; the module then returns RV(matched=false) and the fingerprints found, and
    the caller decides (the role fails, naming both).
  - O(dest) ending in C(.asc) keeps the armored key; any other name gets the binary keyring
    (as C(gpg --dearmor) writes it).
  - Check mode downloads and checks the key but writes nothing. C(--diff) shows the fingerprints.
options:
  url:
    description: Where the key is published.
    type: str
    required: true
  dest:
    description: Keyring file.
    type: path
    required: true
  fingerprint:
    description: Fingerprint the key must have (40 or 64 hex digits, any case, spaces allowed).
    type: str
    required: true
  timeout:
    description: Download timeout in seconds.
    type: int
    default: 30
author: sparkfleet maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Install NVIDIA's signing key (armored, as the .asc name asks)
  sparkfleet.spark.nvidia_toolkit_apt_key:
    url: https://nvidia.github.io/libnvidia-container/gpgkey
    dest: /usr/share/keyrings/nvidia-container-toolkit-keyring.asc
    fingerprint: C95B321B61E88C1809C4F759DDCAE044F796ECB0
  register: nvidia_key

- name: Fail when the published key is not the expected one (it was not installed)
  ansible.builtin.assert:
    that: nvidia_key.matched
    fail_msg: >-
      the key has fingerprint(s) {{ nvidia_key.fingerprints | join(', ') or 'none' }},
      expected C95B321B61E88C1809C4F759DDCAE044F796ECB0

- name: Install the same key as a binary keyring, as gpg --dearmor writes it
  sparkfleet.spark.nvidia_toolkit_apt_key:
    url: https://nvidia.github.io/libnvidia-container/gpgkey
    dest: /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
    fingerprint: C95B 321B 61E8 8C18 09C4  F759 DDCA E044 F796 ECB0
    timeout: 60
"""

RETURN = r"""
matched:
  description: Whether the key (already in place or downloaded) has O(fingerprint).
  returned: always
  type: bool
  sample: true
fingerprints:
  description: Fingerprints of the key found at O(url) (or in O(dest) when it already matched).
  returned: always
  type: list
  elements: str
  sample: [C95B321B61E88C1809C4F759DDCAE044F796ECB0]
downloaded:
  description: Whether the key was downloaded.
  returned: always
  type: bool
  sample: false
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.sparkfleet.spark.plugins.module_utils.sparkfleet_openpgp import OpenPGPError, dearmor, fingerprints, is_armored
from ansible.module_utils.urls import fetch_url


def read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def key_fingerprints(data):
    try:
        return [k["fingerprint"] for k in fingerprints(data)]
    except OpenPGPError:
        return []


def main():
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "dest": {"type": "path", "required": True},
            "fingerprint": {"type": "str", "required": True},
            "timeout": {"type": "int", "default": 30},
        },
        supports_check_mode=True,
    )
    p = module.params
    wanted = p["fingerprint"].replace(" ", "").upper()
    current = read(p["dest"])
    current_fprs = key_fingerprints(current) if current is not None else []
    if wanted in current_fprs:
        module.exit_json(changed=False, matched=True, fingerprints=current_fprs, downloaded=False)

    response, info = fetch_url(module, p["url"], timeout=p["timeout"])
    if response is None or info.get("status") != 200:
        module.fail_json(msg="could not download the key from %s: HTTP %s %s"
                         % (p["url"], info.get("status"), info.get("msg", "")))
    data = response.read()
    try:
        found = [k["fingerprint"] for k in fingerprints(data)]
    except OpenPGPError as exc:
        module.fail_json(msg="%s does not hold an OpenPGP public key: %s" % (p["url"], exc))
    if wanted not in found:
        module.exit_json(changed=False, matched=False, fingerprints=found, downloaded=True)

    content = data if p["dest"].endswith(".asc") or not is_armored(data) else dearmor(data)
    diff = {
        "before_header": p["dest"], "after_header": p["dest"],
        "before": "" if current is None else "key %s\n" % (", ".join(current_fprs) or "unreadable"),
        "after": "key %s\n" % ", ".join(found),
    }
    if current == content:
        module.exit_json(changed=False, matched=True, fingerprints=found, downloaded=True)
    if not module.check_mode:
        directory = os.path.dirname(p["dest"]) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o755)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".keyring.")
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(tmp, 0o644)
        module.atomic_move(tmp, p["dest"])
    module.exit_json(changed=True, matched=True, fingerprints=found, downloaded=True, diff=diff)


if __name__ == "__main__":
    main()
