#!/usr/bin/python
# -*- coding: utf-8 -*-
# Apache-2.0
"""Converge one nftables table of the host's live ruleset on the table a script defines."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vllm_pair_nft
short_description: Keep one nftables table of the live ruleset as a script defines it
version_added: 0.1.0
description:
  - Compares the table as the kernel holds it now (C(nft --stateless list table)) with the table
    O(content) defines, listed the same way after loading O(content) into a network namespace of
    its own (C(unshare --net)), where it touches nothing of the host. So a table flushed,
    deleted or edited by hand (C(nft flush ruleset)) is seen and loaded again, whatever a file on
    disk or a service's state says.
  - With O(state=present), loads O(content) (one C(nft -f) transaction, which replaces the table
    whole when O(content) deletes it first) when the two differ, then checks that the live table
    is the one wanted. With O(state=absent), deletes the table when it exists; a host without
    O(nft_bin) has none (in check mode, a missing O(nft_bin) counts as a table to load, since
    the run would install it first).
  - Other tables (Docker's, the operator's) are never touched. Supports check mode and diff mode
    (the live and the wanted listing).
options:
  family:
    description: The table's address family.
    type: str
    default: inet
    choices: [inet, ip, ip6, arp, bridge, netdev]
  table:
    description: The table's name.
    type: str
    required: true
  content:
    description:
      - An C(nft -f) script that defines the table (for instance C(table inet T), C(delete table
        inet T), C(table inet T { ... }), so that loading it replaces the table whole).
      - Required with O(state=present).
    type: str
  state:
    description: Whether the table must be as O(content) defines it, or absent.
    type: str
    default: present
    choices: [present, absent]
  nft_bin:
    description: The nft command.
    type: path
    default: /usr/sbin/nft
  unshare_bin:
    description: util-linux's unshare, which gives the wanted table a network namespace of its own.
    type: path
    default: /usr/bin/unshare
author: sparkfleet maintainers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Keep Ray's ports of a vLLM pair to the peer (the live table, whatever happened to it)
  sparkfleet.spark.vllm_pair_nft:
    table: sparkfleet_vllm_pair
    content: "{{ lookup('ansible.builtin.template', 'vllm-pair.nft.j2') }}"

- name: Remove the table from a host that left its pair
  sparkfleet.spark.vllm_pair_nft:
    table: sparkfleet_vllm_pair
    state: absent
    nft_bin: /usr/sbin/nft
"""

RETURN = r"""
before:
  description: The live table as C(nft --stateless list table) printed it before the run; empty when
    there was none.
  type: str
  returned: always
  sample: "table inet sparkfleet_vllm_pair {\n\tchain input {\n ..."
after:
  description: The table wanted (empty with O(state=absent)), listed the same way.
  type: str
  returned: always
  sample: "table inet sparkfleet_vllm_pair {\n\tchain input {\n ..."
"""

import os

from ansible.module_utils.basic import AnsibleModule

MISSING = ("No such file or directory", "does not exist")


def listing(text):
    """A table listing with its lines' trailing blanks and the blank lines dropped."""
    return "\n".join(line.rstrip() for line in text.splitlines() if line.strip())


def live_table(module, nft, family, table):
    """The table as the kernel holds it, or "" when there is none."""
    rc, out, err = module.run_command([nft, "--stateless", "list", "table", family, table])
    if rc == 0:
        return listing(out)
    if any(word in err for word in MISSING):
        return ""
    module.fail_json(msg="nft could not list table %s %s: %s" % (family, table, err.strip()))
    return ""  # not reached


def wanted_table(module, params):
    """The table ``content`` defines, as nft lists it, from a network namespace of its own."""
    script = 'set -e; "$0" -f /dev/stdin; "$0" --stateless list table "$1" "$2"'
    argv = [params["unshare_bin"], "--net", "--", "/bin/sh", "-c", script,
            params["nft_bin"], params["family"], params["table"]]  # fmt: skip
    rc, out, err = module.run_command(argv, data=params["content"], binary_data=True)
    if rc != 0:
        module.fail_json(
            msg="the rules do not load (nft -f in a network namespace of its own): %s" % err.strip()
        )
    return listing(out)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            family=dict(type="str", default="inet",
                        choices=["inet", "ip", "ip6", "arp", "bridge", "netdev"]),
            table=dict(type="str", required=True),
            content=dict(type="str"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            nft_bin=dict(type="path", default="/usr/sbin/nft"),
            unshare_bin=dict(type="path", default="/usr/bin/unshare"),
        ),
        required_if=[("state", "present", ["content"])],
        supports_check_mode=True,
    )  # fmt: skip
    p = module.params
    nft, family, table = p["nft_bin"], p["family"], p["table"]
    if not os.access(nft, os.X_OK):
        # no nft, no table; in check mode nft may be about to be installed
        if p["state"] == "absent":
            module.exit_json(changed=False, before="", after="")
        if module.check_mode:
            module.exit_json(changed=True, before="", after="", msg="%s is not installed yet" % nft)
        module.fail_json(msg="%s is not installed: the rules cannot be loaded" % nft)
    before = live_table(module, nft, family, table)
    after = wanted_table(module, p) if p["state"] == "present" else ""
    changed = before != after
    diff = {"before": before + "\n" if before else "", "after": after + "\n" if after else "",
            "before_header": "%s %s (live)" % (family, table),
            "after_header": "%s %s (wanted)" % (family, table)}  # fmt: skip
    if changed and not module.check_mode:
        if p["state"] == "present":
            rc, _out, err = module.run_command([nft, "-f", "/dev/stdin"], data=p["content"],
                                               binary_data=True)  # fmt: skip
            what = "load the rules"
        else:
            rc, _out, err = module.run_command([nft, "delete", "table", family, table])
            what = "delete the table"
        if rc != 0:
            module.fail_json(msg="nft could not %s: %s" % (what, err.strip()), before=before,
                             after=after)  # fmt: skip
        now = live_table(module, nft, family, table)
        if now != after:
            module.fail_json(
                msg="the live table %s %s is not the one wanted after nft loaded it" % (family, table),
                before=before, after=after, live=now,
            )  # fmt: skip
    module.exit_json(changed=changed, before=before, after=after, diff=diff)


if __name__ == "__main__":
    main()
