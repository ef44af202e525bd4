#!/usr/bin/python
"""Ansible module: what a host already has of the NVIDIA Container Toolkit, and what to do."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nvidia_toolkit_host_state
short_description: Find existing NVIDIA apt sources and an installed toolkit; plan the install
version_added: 0.1.0
description:
  - Read-only. Reads every apt source (C(sources.list) and C(sources.list.d/*.list) in one-line
    form, C(sources.list.d/*.sources) in deb822 form), keeps the active entries whose URI is
    NVIDIA's container toolkit repository, and reads the keys each of them trusts
    (C(signed-by) keyring files, fingerprints, a key inlined in deb822, or apt's global keyrings).
  - Reads the installed versions of the toolkit packages with dpkg-query.
  - Plans what the role does, so that it never adds a second source for a repository the host
    already has (apt refuses "Conflicting values set for option Signed-By").
options:
  repo_url:
    description: The repository URL the role would configure (V($(ARCH\)) allowed).
    type: str
    required: true
  source_patterns:
    description: Regular expressions; an entry whose URI matches one is NVIDIA's repository too.
    type: list
    elements: str
    default: []
  source_file:
    description: The source file the role writes; entries in it are the role's own.
    type: path
    required: true
  packages:
    description: The toolkit packages.
    type: list
    elements: str
    required: true
  version:
    description: The version all packages are pinned to.
    type: str
    required: true
  fingerprint:
    description: Fingerprint the repository's signing key must have.
    type: str
    required: true
  apt_dir:
    description: apt's configuration directory.
    type: path
    default: /etc/apt
author: sparkfleet maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Find NVIDIA apt sources and an installed toolkit
  sparkfleet.spark.nvidia_toolkit_host_state:
    repo_url: https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH)
    source_patterns:
      - '^https?://nvidia\.github\.io/libnvidia-container/'
      - '^https?://nvidia\.github\.io/nvidia-container-runtime/'
    source_file: /etc/apt/sources.list.d/nvidia-container-toolkit.sources
    packages:
      - nvidia-container-toolkit
      - nvidia-container-toolkit-base
      - libnvidia-container-tools
      - libnvidia-container1
    version: 1.19.0-1
    fingerprint: C95B321B61E88C1809C4F759DDCAE044F796ECB0
  register: toolkit_state

- name: Show the plan
  ansible.builtin.debug:
    msg: "{{ toolkit_state.plan.reason }} (install: {{ toolkit_state.plan.install }})"

- name: Refuse to install from an adopted source that trusts another key
  ansible.builtin.assert:
    that: toolkit_state.plan.key_ok
    fail_msg: >-
      NVIDIA's repository is already configured in
      {{ toolkit_state.sources | rejectattr('own') | map(attribute='file') | unique | join(', ') }}
      but does not trust the expected key
  when:
    - toolkit_state.plan.source == 'adopt'
    - toolkit_state.plan.install
"""

RETURN = r"""
sources:
  description: Active entries for NVIDIA's repository, in apt's order.
  returned: always
  type: list
  elements: dict
  contains:
    file:
      description: The sources file.
      type: str
      returned: always
      sample: /etc/apt/sources.list.d/nvidia-container-toolkit.sources
    line:
      description: Line of the entry (of the stanza's first field in deb822).
      type: int
      returned: always
    format:
      description: C(one-line) or C(deb822).
      type: str
      returned: always
    types:
      description: C(deb) and/or C(deb-src).
      type: list
      elements: str
      returned: always
    uris:
      description: Repository URIs.
      type: list
      elements: str
      returned: always
    suites:
      description: Suites.
      type: list
      elements: str
      returned: always
    components:
      description: Components.
      type: list
      elements: str
      returned: always
    signed_by:
      description: Keyring files and fingerprints of C(signed-by).
      type: list
      elements: str
      returned: always
    signed_by_inline:
      description: A key inlined in a deb822 C(Signed-By) field ("" when none).
      type: str
      returned: always
    trusted:
      description: Whether the entry sets C(trusted=yes).
      type: bool
      returned: always
    key_fingerprints:
      description: Fingerprints of the keys the entry trusts.
      type: list
      elements: str
      returned: always
    keyrings:
      description: Keyring files read for them.
      type: list
      elements: str
      returned: always
    key_errors:
      description: Keyrings or keys that could not be read.
      type: list
      elements: str
      returned: always
    own:
      description: Whether the entry is in O(source_file).
      type: bool
      returned: always
own_source_exists:
  description: Whether the role's source file exists.
  returned: always
  type: bool
packages:
  description: Installed version of each package ("" when not installed).
  returned: always
  type: dict
  sample: {"nvidia-container-toolkit": "1.19.0-1", "libnvidia-container1": ""}
installed_version:
  description: The version all packages share, "" when they are not all installed at one version.
  returned: always
  type: str
  sample: 1.19.0-1
pinned_installed:
  description: Whether every package is installed at the pinned version.
  returned: always
  type: bool
arch:
  description: The dpkg architecture V($(ARCH\)) expands to.
  returned: always
  type: str
  sample: arm64
plan:
  description: What the role does about apt sources and packages.
  returned: always
  type: dict
  contains:
    source:
      description: C(own) (write O(source_file)), C(adopt) (use the source the host has) or C(none).
      type: str
      returned: always
    remove_own_source:
      description: Whether O(source_file) must go because it would clash with an adopted source.
      type: bool
      returned: always
    install:
      description: Whether the packages must be installed (not all at the pinned version).
      type: bool
      returned: always
    key_ok:
      description: Whether an adopted source trusts O(fingerprint) (always true otherwise).
      type: bool
      returned: always
    reason:
      description: The plan in one sentence.
      type: str
      returned: always
"""

import glob
import os
import re
import subprocess

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.sparkfleet.spark.plugins.module_utils.sparkfleet_openpgp import OpenPGPError, fingerprints

FPR_RE = re.compile(r"^[0-9A-Fa-f]{40}([0-9A-Fa-f]{24})?!?$")
VALID_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _opts(text):
    """One-line options ``[a=b c=d,e]`` -> {"a": ["b"], "c": ["d", "e"]}."""
    opts = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if sep:
            opts[key.rstrip("+-").lower()] = [v for v in value.split(",") if v]
    return opts


def parse_one_line(path, text):
    """Entries of a one-line format sources file."""
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _sep, rest = line.partition(" ")
        if kind not in ("deb", "deb-src"):
            continue
        rest = rest.strip()
        opts = {}
        if rest.startswith("["):
            close = rest.find("]")
            if close == -1:
                continue
            opts = _opts(rest[1:close])
            rest = rest[close + 1:].strip()
        words = rest.split()
        if len(words) < 2:
            continue
        entries.append({
            "file": path, "line": number, "format": "one-line", "types": [kind],
            "uris": [words[0]], "suites": [words[1]], "components": words[2:],
            "signed_by": opts.get("signed-by", []), "signed_by_inline": "",
            "trusted": opts.get("trusted", ["no"])[-1] == "yes",
        })
    return entries


def _stanzas(text):
    """deb822 stanzas as ``(first line number, {field: value})`` (continuation lines joined)."""
    stanzas, fields, start, last = [], {}, 0, None
    for number, raw in enumerate(text.splitlines() + [""], 1):
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                stanzas.append((start, fields))
            fields, last = {}, None
            continue
        if raw[0] in " \t" and last:
            value = raw.strip()
            fields[last] += "\n" + ("" if value == "." else value)
            continue
        key, sep, value = raw.partition(":")
        if not sep:
            continue
        if not fields:
            start = number
        last = key.strip().lower()
        fields[last] = value.strip()
    return stanzas


def parse_deb822(path, text):
    """Entries of a deb822 ``.sources`` file (disabled stanzas left out)."""
    entries = []
    for start, fields in _stanzas(text):
        if fields.get("enabled", "yes").strip().lower() == "no":
            continue
        signed = fields.get("signed-by", "")
        inline = signed if "BEGIN PGP PUBLIC KEY BLOCK" in signed else ""
        entries.append({
            "file": path, "line": start, "format": "deb822",
            "types": fields.get("types", "").split(), "uris": fields.get("uris", "").split(),
            "suites": fields.get("suites", "").split(),
            "components": fields.get("components", "").split(),
            "signed_by": [] if inline else [s for s in re.split(r"[\s,]+", signed) if s],
            "signed_by_inline": inline,
            "trusted": fields.get("trusted", "no").strip().lower() == "yes",
        })
    return entries


def read_sources(apt_dir):
    """Every entry apt reads, in apt's order (sources.list, then sources.list.d by name)."""
    entries = []
    main = os.path.join(apt_dir, "sources.list")
    files = [main] if os.path.isfile(main) else []
    for path in sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*"))):
        name = os.path.basename(path)
        if os.path.isfile(path) and VALID_NAME.match(name) and name.endswith((".list", ".sources")):
            files.append(path)
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except OSError:
            continue
        parse = parse_deb822 if path.endswith(".sources") else parse_one_line
        entries.extend(parse(path, text))
    return entries


def normalize_uri(uri, arch):
    """Compare-able form of a repository URI: no scheme, no trailing slash, $(ARCH) expanded."""
    uri = uri.replace("$(ARCH)", arch).strip()
    uri = re.sub(r"^[a-z0-9+]+://", "", uri, flags=re.IGNORECASE)
    host, _sep, rest = uri.partition("/")
    return (host.lower() + "/" + rest).rstrip("/")


def is_nvidia(uri, repo_url, patterns, arch):
    if normalize_uri(uri, arch) == normalize_uri(repo_url, arch):
        return True
    return any(re.search(p, uri) for p in patterns)


def _key_file_fingerprints(path):
    with open(path, "rb") as handle:
        return [k["fingerprint"] for k in fingerprints(handle.read())]


def global_keyrings(apt_dir):
    rings = [os.path.join(apt_dir, "trusted.gpg")]
    rings += sorted(glob.glob(os.path.join(apt_dir, "trusted.gpg.d", "*.gpg")))
    rings += sorted(glob.glob(os.path.join(apt_dir, "trusted.gpg.d", "*.asc")))
    return [r for r in rings if os.path.isfile(r)]


def entry_keys(entry, apt_dir):
    """(fingerprints the entry trusts, keyring files read, errors)."""
    found, rings, errors = [], [], []
    if entry["signed_by_inline"]:
        try:
            found += [k["fingerprint"] for k in fingerprints(entry["signed_by_inline"].encode())]
        except OpenPGPError as exc:
            errors.append("inline Signed-By key: %s" % exc)
        return sorted(set(found)), rings, errors
    items = entry["signed_by"]
    paths = [s for s in items if not FPR_RE.match(s)]
    found += [s.rstrip("!").upper() for s in items if FPR_RE.match(s)]
    if not items:
        paths = global_keyrings(apt_dir)
    for path in paths:
        rings.append(path)
        try:
            found += _key_file_fingerprints(path)
        except (OSError, OpenPGPError) as exc:
            errors.append("%s: %s" % (path, exc))
    return sorted(set(found)), rings, errors


def dpkg_arch():
    try:
        out = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                             check=False, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    return out or "amd64"


def installed_versions(packages):
    """{package: installed version or ""} from dpkg-query."""
    versions = dict.fromkeys(packages, "")
    try:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Package}\t${Version}\t${db:Status-Abbrev}\n", *packages],
            capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return versions
    for line in proc.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] in versions and parts[2].strip() in ("ii", "hi"):
            versions[parts[0]] = parts[1]
    return versions


def plan(sources, own_source_exists, pinned_installed, fingerprint, own_file):
    """What the role does about apt sources and packages."""
    foreign = [s for s in sources if not s["own"]]
    wanted = fingerprint.upper()
    if foreign:
        files = sorted({s["file"] for s in foreign})
        key_ok = any(wanted in s["key_fingerprints"] for s in foreign)
        reason = "NVIDIA's repository is already configured in %s: using it" % ", ".join(files)
        if own_source_exists:
            reason += " and removing %s, which would clash with it" % own_file
        return {"source": "adopt", "remove_own_source": own_source_exists,
                "install": not pinned_installed, "key_ok": key_ok, "reason": reason}
    if pinned_installed and not own_source_exists:
        return {"source": "none", "remove_own_source": False, "install": False, "key_ok": True,
                "reason": "the toolkit is installed at the pinned version and no NVIDIA apt source"
                          " is configured: leaving apt sources alone"}
    return {"source": "own", "remove_own_source": False, "install": not pinned_installed,
            "key_ok": True, "reason": "configuring NVIDIA's repository in %s" % own_file}


def main():
    module = AnsibleModule(
        argument_spec={
            "repo_url": {"type": "str", "required": True},
            "source_patterns": {"type": "list", "elements": "str", "default": []},
            "source_file": {"type": "path", "required": True},
            "packages": {"type": "list", "elements": "str", "required": True},
            "version": {"type": "str", "required": True},
            "fingerprint": {"type": "str", "required": True},
            "apt_dir": {"type": "path", "default": "/etc/apt"},
        },
        supports_check_mode=True,
    )
    p = module.params
    for pattern in p["source_patterns"]:
        try:
            re.compile(pattern)
        except re.error as exc:
            module.fail_json(msg="source pattern %r is not a regular expression: %s" % (pattern, exc))
    arch = dpkg_arch()
    own_file = os.path.realpath(p["source_file"])
    sources = []
    for entry in read_sources(p["apt_dir"]):
        if not any(is_nvidia(u, p["repo_url"], p["source_patterns"], arch) for u in entry["uris"]):
            continue
        keys, rings, errors = entry_keys(entry, p["apt_dir"])
        entry.update({"key_fingerprints": keys, "keyrings": rings, "key_errors": errors,
                      "own": os.path.realpath(entry["file"]) == own_file})
        sources.append(entry)
    versions = installed_versions(p["packages"])
    distinct = set(versions.values())
    installed = distinct.pop() if len(distinct) == 1 else ""
    pinned = installed == p["version"]
    own_exists = os.path.exists(p["source_file"])
    module.exit_json(
        changed=False, sources=sources, own_source_exists=own_exists, packages=versions,
        installed_version=installed, pinned_installed=pinned, arch=arch,
        plan=plan(sources, own_exists, pinned, p["fingerprint"], p["source_file"]),
    )


if __name__ == "__main__":
    main()
