#!/usr/bin/python
"""Ansible module: merge settings into Docker's daemon.json, leaving everything else as it was."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: docker_daemon_json
short_description: Merge settings into Docker's daemon.json without rewriting the rest
version_added: 0.1.0
description:
  - "Edits the file in place: only the values that change are rewritten and new keys are appended
    after the last one, in the file's own indentation. Every other key keeps its position and its
    exact text (numbers, escapes, spacing), so an operator's file stays recognisable and
    C(--diff) shows only what changed."
  - O(runtimes) are added under C(runtimes) when no runtime of that name exists; an existing
    runtime of the same name is kept as it is.
  - "O(merge) is merged recursively: objects key by key, lists are extended with the items they
    lack (never replaced or reordered), other values are set."
  - A file that is not a JSON object, or has a key twice, is left alone and the module fails.
  - Check mode computes the new file and reports it (with C(--diff), the change) without writing.
options:
  path:
    description: The daemon.json file (created when missing).
    type: path
    required: true
  runtimes:
    description: "Runtimes to add when absent, C({name: {path: ..., args: [...]}})."
    type: dict
    default: {}
  merge:
    description: Settings merged into the file.
    type: dict
    default: {}
  backup:
    description: Keep a timestamped copy of the file before changing it.
    type: bool
    default: true
  mode:
    description:
      - Permissions of the file when the module creates it, as an octal string. An existing file
        keeps its own. Use C(0600) for a file that holds credentials (Docker's C(config.json)).
    type: str
    default: "0644"
author: sparkfleet maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Merge the nvidia runtime into Docker's daemon.json
  sparkfleet.spark.docker_daemon_json:
    path: /etc/docker/daemon.json
    runtimes:
      nvidia:
        path: nvidia-container-runtime
        args: []
  register: daemon_json

- name: Add a registry mirror and turn on live-restore, keeping every other key as it is
  sparkfleet.spark.docker_daemon_json:
    path: /etc/docker/daemon.json
    merge:
      registry-mirrors:
        - http://mirror.example.internal:5000
      live-restore: true
    backup: false
  register: daemon_json

- name: Give Docker credentials for a registry (the file is created 0600; never logged)
  sparkfleet.spark.docker_daemon_json:
    path: /root/.docker/config.json
    merge:
      auths:
        registry.example.internal:5000:
          auth: "{{ ('puller:' ~ registry_password) | b64encode }}"
    mode: "0600"
    backup: false
  no_log: true

- name: Restart Docker when a key that dockerd does not reload changed
  ansible.builtin.systemd_service:
    name: docker.service
    state: restarted
  when: >-
    daemon_json.changed_keys
    | difference(['runtimes', 'registry-mirrors', 'live-restore']) | length > 0
"""

RETURN = r"""
changed_keys:
  description: Top-level keys added or changed (Docker must apply these).
  returned: always
  type: list
  elements: str
  sample: [runtimes]
config:
  description: The configuration after the merge.
  returned: always
  type: dict
  sample: {"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}
kept_runtimes:
  description: Runtimes in O(runtimes) that the file already had (left as they were).
  returned: always
  type: list
  elements: str
  sample: []
backup_file:
  description: The copy made before the change.
  returned: when changed, O(backup=true) and the file existed (not in check mode)
  type: str
  sample: /etc/docker/daemon.json.12345.2025-01-01@12:00:00~
"""

import json
import os
import re
import stat
import tempfile
from json.decoder import scanstring

from ansible.module_utils.basic import AnsibleModule

WS = re.compile(r"[ \t\n\r]*")
NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
LITERALS = ("true", "false", "null")


class JSONLayoutError(ValueError):
    """The text is not JSON this module can edit."""


class Node:
    """Where a JSON value sits in the text: [start, end) and, for containers, its children."""

    def __init__(self, kind, start):
        self.kind = kind
        self.start = start
        self.end = start
        self.members = []  # objects: (key, where its opening quote is, child Node)
        self.items = []  # arrays: child Nodes


def _ws(text, i):
    return WS.match(text, i).end()


def parse_node(text, i):
    """The layout of the JSON value starting at ``text[i]``."""
    i = _ws(text, i)
    if i >= len(text):
        raise JSONLayoutError("unexpected end of text")
    char = text[i]
    if char == "{":
        node = Node("object", i)
        i = _ws(text, i + 1)
        if text[i:i + 1] == "}":
            node.end = i + 1
            return node
        while True:
            if text[i:i + 1] != '"':
                raise JSONLayoutError("expected a key at offset %d" % i)
            key_start = i
            key, i = scanstring(text, i + 1)
            i = _ws(text, i)
            if text[i:i + 1] != ":":
                raise JSONLayoutError("expected ':' at offset %d" % i)
            child = parse_node(text, i + 1)
            node.members.append((key, key_start, child))
            i = _ws(text, child.end)
            if text[i:i + 1] == ",":
                i = _ws(text, i + 1)
                continue
            if text[i:i + 1] == "}":
                node.end = i + 1
                return node
            raise JSONLayoutError("expected ',' or '}' at offset %d" % i)
    if char == "[":
        node = Node("array", i)
        i = _ws(text, i + 1)
        if text[i:i + 1] == "]":
            node.end = i + 1
            return node
        while True:
            child = parse_node(text, i)
            node.items.append(child)
            i = _ws(text, child.end)
            if text[i:i + 1] == ",":
                i = _ws(text, i + 1)
                continue
            if text[i:i + 1] == "]":
                node.end = i + 1
                return node
            raise JSONLayoutError("expected ',' or ']' at offset %d" % i)
    node = Node("scalar", i)
    if char == '"':
        node.end = scanstring(text, i + 1)[1]
        return node
    for literal in LITERALS:
        if text.startswith(literal, i):
            node.end = i + len(literal)
            return node
    match = NUMBER.match(text, i)
    if not match:
        raise JSONLayoutError("unexpected character %r at offset %d" % (char, i))
    node.end = match.end()
    return node


def same(a, b):
    """JSON equality that tells true from 1 and "1" from 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def merged(old, patch):
    """``patch`` merged into ``old``: objects recursively, lists extended, other values set."""
    if isinstance(old, dict) and isinstance(patch, dict):
        out = dict(old)
        for key, value in patch.items():
            out[key] = merged(old[key], value) if key in old else value
        return out
    if isinstance(old, list) and isinstance(patch, list):
        return old + [x for x in patch if not any(same(x, y) for y in old)]
    return patch


def _no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise JSONLayoutError("the key %r appears twice" % key)
        seen[key] = value
    return seen


class Style:
    """How the file is laid out: one value per line (indent unit) or all on one line."""

    def __init__(self, text, root):
        self.pretty = "\n" in text.strip() or not (root.members or root.items)
        self.unit = "    "
        if root.kind == "object" and root.members:
            gap = text[root.start + 1:root.members[0][1]]
            if "\n" in gap:
                self.unit = gap.rsplit("\n", 1)[1] or self.unit

    def dump(self, value, indent):
        if not self.pretty:
            return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
        text = json.dumps(value, ensure_ascii=False, indent=self.unit)
        return text.replace("\n", "\n" + indent)


def line_indent(text, pos):
    start = text.rfind("\n", 0, pos) + 1
    return re.match(r"[ \t]*", text[start:pos]).group(0)


def _gap_before(text, container, first):
    """The separator (",\n<indent>" or ", ") used between a container's children."""
    gap = text[container.start + 1:first]
    if "\n" in gap:
        return ",\n" + gap.rsplit("\n", 1)[1], gap.rsplit("\n", 1)[1]
    return ", ", ""


def render(text, node, old, new, style):
    """The text for ``node`` once its value ``old`` becomes ``new``, rewriting only what changes."""
    if same(old, new):
        return text[node.start:node.end]
    if node.kind == "object" and isinstance(new, dict) and node.members:
        pieces, pos = [], node.start
        for key, _key_start, child in node.members:
            if key in new and not same(old[key], new[key]):
                pieces += [text[pos:child.start], render(text, child, old[key], new[key], style)]
                pos = child.end
        added = [k for k in new if k not in old]
        if added:
            last = node.members[-1][2]
            pieces.append(text[pos:last.end])
            pos = last.end
            sep, indent = _gap_before(text, node, node.members[0][1])
            for key in added:
                pieces.append("%s%s: %s" % (sep, json.dumps(key, ensure_ascii=False),
                                            style.dump(new[key], indent)))
        pieces.append(text[pos:node.end])
        return "".join(pieces)
    if (node.kind == "array" and isinstance(new, list) and node.items
            and len(new) > len(old) and same(old, new[:len(old)])):
        last = node.items[-1]
        sep, indent = _gap_before(text, node, node.items[0].start)
        extra = "".join(sep + style.dump(item, indent) for item in new[len(old):])
        return text[node.start:last.end] + extra + text[last.end:node.end]
    return style.dump(new, line_indent(text, node.start))


def edit(text, runtimes, merge):
    """(new text, old config, new config, runtimes kept) for ``text`` (None: no file)."""
    source = text if text is not None and text.strip() else "{}\n"
    try:
        old = json.loads(source, object_pairs_hook=_no_duplicates)
    except ValueError as exc:
        raise JSONLayoutError("not valid JSON: %s" % exc) from exc
    if not isinstance(old, dict):
        raise JSONLayoutError("the top level is not a JSON object")
    root = parse_node(source, 0)
    new = dict(old)
    have = old.get("runtimes") if isinstance(old.get("runtimes"), dict) else {}
    kept = sorted(name for name in runtimes if name in have)
    add = {name: spec for name, spec in runtimes.items() if name not in have}
    if add:
        new = merged(new, {"runtimes": add})
    new = merged(new, merge)
    style = Style(source, root)
    result = source[:root.start] + render(source, root, old, new, style) + source[root.end:]
    if not same(json.loads(result), new):
        raise JSONLayoutError("internal error: the edited text does not hold the merged settings")
    return result, old, new, kept


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "runtimes": {"type": "dict", "default": {}},
            "merge": {"type": "dict", "default": {}},
            "backup": {"type": "bool", "default": True},
            "mode": {"type": "str", "default": "0644"},
        },
        supports_check_mode=True,
    )
    path = module.params["path"]
    try:
        int(module.params["mode"], 8)
    except ValueError:
        module.fail_json(msg="mode=%r is not an octal permission string such as 0600" % module.params["mode"])
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        text = None
    except (OSError, UnicodeDecodeError) as exc:
        module.fail_json(msg="cannot read %s: %s" % (path, exc))
    try:
        result, old, new, kept = edit(text, module.params["runtimes"], module.params["merge"])
    except JSONLayoutError as exc:
        module.fail_json(msg="%s: %s; it was left unchanged" % (path, exc))
    changed_keys = [k for k in new if k not in old or not same(old[k], new[k])]
    out = {"changed_keys": changed_keys, "config": new, "kept_runtimes": kept}
    if result == text:
        module.exit_json(changed=False, **out)
    out["diff"] = {"before": text or "", "after": result,
                   "before_header": path, "after_header": path}
    if module.check_mode:
        module.exit_json(changed=True, **out)
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        # a directory made for a private file is private too
        private = int(module.params["mode"], 8) & 0o077 == 0
        os.makedirs(directory, mode=0o700 if private else 0o755)
    if text is not None and module.params["backup"]:
        out["backup_file"] = module.backup_local(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".daemon.json.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(result)
    if text is None:
        mode = int(module.params["mode"], 8)
    else:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    os.chmod(tmp, mode)
    module.atomic_move(tmp, path)
    os.chmod(path, mode)  # atomic_move gives a new file the umask's permissions
    module.exit_json(changed=True, **out)


if __name__ == "__main__":
    main()
