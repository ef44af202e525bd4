# Filter plugin of the hf_model role: who fetches the model from the Hub, who copies it from whom.
"""hf_model_plan: each host's part in one fetch of the model (README, "Model fetch").

Input: the play's hosts in play order, each a dict ``{"name", "address", "link", "pair_role",
"pair_peer", "pair_address", "repo_id", "revision"}`` (``address``: the host's
``hf_model_peer_address``, "" in hub mode; ``link``: ``hf_model_pair_link`` and ``vllm_pair_role``
both set; the ``pair_*`` keys: the host's ``vllm_pair_role``, ``vllm_pair_peer`` and
``vllm_pair_address``, None when undeclared), ``hf_model_source`` (``hub`` or ``peer``) and, in
peer mode, the seed's name.

Output: ``{name: plan}``, one plan per host (``PLAN_KEYS``)::

    from_hub      bool: this host fetches from the Hub (the fetch module's source=hub)
    lister        str: the host whose Hub listing this host's files are checked against
    lists         bool: this host lists the model on the Hub before the fetches start
    group         [str]: the hosts that fetch together with this one (the same lister)
    fleet         [{"name", "address"}]: the module's fleet when this host copies (source=peer):
                  the first host is the seed, or the pair partner it copies from over the link
    upstream      "seed" | "pair": what the first host of `fleet` is to this host
    partner       str | None: the other member of this host's pair when the two copy over
                  their link
    via_link      bool: this host copies only from its partner, over the link
    serve         [str]: addresses this host's rsync daemon listens on ([]: no daemon)
    allow         [str]: addresses that daemon admits
    tree          bool: this host serves hosts of the fleet's tree (peer mode)
    link_clients  int: hosts copying from this one over a link (0 or 1)
    errors        [str]: why this host's declaration is refused ([] when good)

How the hosts are arranged:

- Without pairs (or with ``hf_model_pair_link`` off) the plan is the role's plan before pairs:
  hub mode, each host fetches from the Hub alone; peer mode, the play's hosts, seed first,
  form the tree the module lays over ``fleet``.
- A declared pair copies over its link: one member (the "lead": the seed when the seed is a
  member, else the head) takes the pair's place among the hosts; the other (the "follower")
  copies from the lead only, at the lead's ``vllm_pair_address``, and serves nobody. In peer
  mode the lead is a host of the tree as any other and its daemon also listens on its link
  address, admitting the follower's; in hub mode the lead fetches from the Hub and its daemon
  listens on its link address only: the pair costs the Hub one copy.

A declaration that cannot be planned (a peer outside the play, peers not naming each other, two
heads, an address that is not IPv4, the two members disagreeing on ``hf_model_pair_link``,
``hf_model_repo_id`` or ``hf_model_revision``) puts a message naming the variable, the value and
what is allowed in ``errors`` of the host concerned, and of its peer when the peer is in the play;
such hosts are planned as single hosts (the role stops them before anything changes).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ansible.errors import AnsibleFilterError

PAIR_ROLES = ("head", "worker")
PLAN_KEYS = (
    "from_hub", "lister", "lists", "group", "fleet", "upstream", "partner", "via_link", "serve",
    "allow", "tree", "link_clients", "errors",
)  # fmt: skip


def is_ipv4(value: object) -> bool:
    """Whether ``value`` is a dotted-quad IPv4 address (a host name is not)."""
    if not isinstance(value, str):
        return False
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def declaration_errors(host: dict[str, Any], by_name: dict[str, dict[str, Any]]) -> list[str]:
    """What is wrong with ``host``'s own pair declaration, seen with its peer's (``by_name``: the
    play's hosts by name)."""
    me = host["name"]
    role, peer = host.get("pair_role"), host.get("pair_peer")
    errors = []
    if role not in PAIR_ROLES:
        errors.append("vllm_pair_role=%r must be head or worker" % (role,))
    if peer == me or peer not in by_name:
        errors.append(
            "vllm_pair_peer=%r must be another host of this play (%s) when hf_model_pair_link "
            "is true: both members of a pair fetch together (run with both, or set "
            "hf_model_pair_link: false)" % (peer, ", ".join(sorted(by_name)))
        )
    if not is_ipv4(host.get("pair_address")):
        errors.append(
            "vllm_pair_address=%r must be an IPv4 address (four numbers 0-255)"
            % (host.get("pair_address"),)
        )
    if errors:
        return errors
    other = by_name[peer]
    if not other.get("link"):
        errors.append(
            "hf_model_pair_link differs between the pair's members: true on %s, false on %s "
            "(or %s declares no vllm_pair_role)" % (me, peer, peer)
        )
        return errors
    if other.get("pair_peer") != me:
        errors.append(
            "vllm_pair_peer differs: %s names %s, but %s names %r; the two members must name "
            "each other" % (me, peer, peer, other.get("pair_peer"))
        )
    if other.get("pair_role") == role:
        errors.append(
            "vllm_pair_role=%r on both %s and %s: one member must be head, the other worker"
            % (role, me, peer)
        )
    for var, key in (("hf_model_repo_id", "repo_id"), ("hf_model_revision", "revision")):
        if host.get(key) != other.get(key):
            errors.append(
                "%s differs between the pair's members: %s has %r, %s has %r; a pair copies "
                "one model over its link" % (var, me, host.get(key), peer, other.get(key))
            )
    return errors


def new_plan(name: str) -> dict[str, Any]:
    """A single host's plan in hub mode: from the Hub, alone."""
    return {
        "from_hub": True, "lister": name, "lists": False, "group": [name], "fleet": [],
        "upstream": "seed", "partner": None, "via_link": False, "serve": [], "allow": [],
        "tree": False, "link_clients": 0, "errors": [],
    }  # fmt: skip


def hf_model_plan(
    hosts: list[dict[str, Any]], source: str, seed: str | None = None
) -> dict[str, dict[str, Any]]:
    """``{name: plan}`` for the play's ``hosts`` (see the module's docstring); raises
    AnsibleFilterError for input the role never gives (unknown source, a seed outside the play,
    duplicate names)."""
    names = [host["name"] for host in hosts]
    by_name = {host["name"]: host for host in hosts}
    if len(by_name) != len(names):
        raise AnsibleFilterError("hf_model_plan: duplicate host names in %s" % names)
    if source not in ("hub", "peer"):
        raise AnsibleFilterError("hf_model_plan: source=%r must be hub or peer" % (source,))
    if source == "peer" and seed not in by_name:
        raise AnsibleFilterError("hf_model_plan: the seed %r is not a host of %s" % (seed, names))

    declared = [host for host in hosts if host.get("link")]
    errors = {host["name"]: declaration_errors(host, by_name) for host in declared}
    for host in declared:
        peer = host.get("pair_peer")
        if not errors[host["name"]] and errors.get(peer):
            errors[host["name"]].append(
                "its peer %s (vllm_pair_peer) has a pair declaration that is refused (see its "
                "message)" % peer
            )
    partner = {
        host["name"]: host["pair_peer"] for host in declared if not errors[host["name"]]
    }  # fmt: skip

    def lead_of(name: str) -> str:
        pair = (name, partner[name])
        if source == "peer" and seed in pair:
            return str(seed)
        return next(n for n in pair if by_name[n]["pair_role"] == "head")

    follower_of = {lead_of(n): partner[n] for n in partner if lead_of(n) == n}
    followers = {f: lead for lead, f in follower_of.items()}

    plans = {name: new_plan(name) for name in names}
    for name, plan in plans.items():
        plan["errors"] = errors.get(name, [])
        plan["partner"] = partner.get(name)

    if source == "peer":
        tree = [str(seed)] + [n for n in names if n != seed and n not in followers]
        for name in names:
            plan = plans[name]
            plan.update(lister=seed, group=list(names), from_hub=name == seed, lists=name == seed)
        for name in tree:
            plan = plans[name]
            plan["fleet"] = [{"name": n, "address": by_name[n]["address"]} for n in tree]
            plan["serve"] = [by_name[name]["address"]]
            plan["allow"] = [by_name[n]["address"] for n in tree if n != name]
            plan["tree"] = True
    else:
        for lead, follower in follower_of.items():
            plans[lead].update(lists=True, group=[lead, follower])
            plans[follower].update(lister=lead, group=[lead, follower])

    for lead, follower in follower_of.items():
        plans[lead]["serve"].append(by_name[lead]["pair_address"])
        plans[lead]["allow"].append(by_name[follower]["pair_address"])
        plans[lead]["link_clients"] = 1
        plans[follower].update(
            from_hub=False, lists=False, via_link=True, upstream="pair", serve=[], allow=[],
            tree=False,
            fleet=[{"name": n, "address": by_name[n]["pair_address"]} for n in (lead, follower)],
        )  # fmt: skip
    return plans


class FilterModule:
    """The hf_model role's filters."""

    def filters(self) -> dict[str, Any]:
        return {"hf_model_plan": hf_model_plan}
