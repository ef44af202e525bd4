"""The module ``vllm_pair_nft`` in-process, with nft scripted as a kernel whose ruleset a hand
may have flushed: it compares the live table with the one the script defines (listed by nft in a
network namespace of its own), loads the script only when they differ, reports honestly in check
mode and diff mode, and deletes the table for ``state: absent``. The real nft and kernel are
exercised in the lab (``test_vllm_pair_service_lab.py``: ``nft flush ruleset`` on a member, then
a run of the role)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.sparkfleet.spark.plugins.modules import vllm_pair_nft as nft_module

from tests.unit.plays import run_module

pytestmark = pytest.mark.nolab

TABLE = "sparkfleet_vllm_pair"
SCRIPT = (
    f"table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n"
    "    chain input {\n        tcp dport { 6379, 8265 } counter drop\n    }\n}\n"
)
LISTED = (
    f"table inet {TABLE} {{\n\tchain input {{\n\t\ttcp dport {{ 6379, 8265 }} counter drop\n"
    "\t}\n}\n"
)


class Kernel:
    """nft as the host's kernel answers it: ``tables`` {name: listing}; every call recorded."""

    def __init__(self, tables: dict[str, str]) -> None:
        self.tables = dict(tables)
        self.calls: list[list[str]] = []

    def run(self, argv: list[str], data: str | None = None) -> tuple[int, str, str]:
        self.calls.append(argv)
        if argv[0] == "/usr/bin/unshare":  # the wanted table, from a namespace of its own
            assert argv[1:4] == ["--net", "--", "/bin/sh"], argv
            if data != SCRIPT:
                return 1, "", "Error: syntax error, unexpected junk"
            return 0, LISTED, ""
        assert argv[0] == "/usr/sbin/nft", argv
        if argv[1:4] == ["--stateless", "list", "table"]:
            name = argv[5]
            if name in self.tables:
                return 0, self.tables[name], ""
            return 1, "", "Error: No such file or directory\nlist table inet x\n"
        if argv[1:] == ["-f", "/dev/stdin"]:
            assert data == SCRIPT
            self.tables[TABLE] = LISTED
            return 0, "", ""
        if argv[1:3] == ["delete", "table"]:
            del self.tables[argv[4]]
            return 0, "", ""
        raise AssertionError(argv)

    def loads(self) -> int:
        return len([c for c in self.calls if c[1:2] in (["-f"], ["delete"])])


def host(monkeypatch: pytest.MonkeyPatch, kernel: Kernel, nft: bool = True) -> None:
    """The module's commands go to ``kernel``; nft is installed (``nft``) or not."""
    monkeypatch.setattr(
        nft_module.AnsibleModule,
        "run_command",
        lambda self, argv, data=None, **kw: kernel.run(argv, data),
    )
    monkeypatch.setattr(nft_module.os, "access", lambda path, mode: nft)


def converge(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], kernel: Kernel,
    **args: Any,
) -> dict[str, Any]:  # fmt: skip
    host(monkeypatch, kernel)
    return run_module(nft_module, {"table": TABLE, "content": SCRIPT, **args}, capsys)[1]


def test_a_flushed_ruleset_is_loaded_again(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kernel = Kernel({})  # `nft flush ruleset`: no table, whatever the unit or the file say
    checked = converge(monkeypatch, capsys, kernel, _ansible_check_mode=True, _ansible_diff=True)
    assert checked["changed"] and kernel.loads() == 0
    assert checked["diff"]["before"] == "" and "counter drop" in checked["diff"]["after"]
    loaded = converge(monkeypatch, capsys, kernel)
    assert loaded["changed"] and kernel.loads() == 1
    again = converge(monkeypatch, capsys, kernel)
    assert not again["changed"] and kernel.loads() == 1


def test_an_edited_table_is_replaced_and_a_good_one_kept(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kernel = Kernel({TABLE: LISTED.replace("6379, 8265", "6379")})  # 8265 let through by hand
    result = converge(monkeypatch, capsys, kernel)
    assert result["changed"] and kernel.tables[TABLE] == LISTED
    assert "{ 6379 }" in result["before"] and "{ 6379, 8265 }" in result["after"]
    kept = Kernel({TABLE: LISTED + "\n"})  # the same listing, blank lines aside
    assert not converge(monkeypatch, capsys, kept)["changed"] and kept.loads() == 0


def test_absent_deletes_the_table_only_when_there(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kernel = Kernel({TABLE: LISTED, "docker": "table ip nat {}"})
    gone = converge(monkeypatch, capsys, kernel, state="absent", content=None)
    assert gone["changed"] and list(kernel.tables) == ["docker"]  # the others are left alone
    assert not converge(monkeypatch, capsys, kernel, state="absent", content=None)["changed"]
    assert not [c for c in kernel.calls if c[0] == "/usr/bin/unshare"]


def test_rules_that_do_not_load_fail_before_anything_changes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kernel = Kernel({})
    host(monkeypatch, kernel)
    capsys.readouterr()
    with patch_module_args({"table": TABLE, "content": "junk"}), pytest.raises(SystemExit):
        nft_module.main()
    result = json.loads(capsys.readouterr().out)
    assert result["failed"] and "syntax error" in result["msg"]
    assert kernel.loads() == 0


def test_check_mode_before_nft_is_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kernel = Kernel({})
    host(monkeypatch, kernel, nft=False)
    capsys.readouterr()
    with (
        patch_module_args({"table": TABLE, "content": SCRIPT, "_ansible_check_mode": True}),
        pytest.raises(SystemExit),
    ):
        nft_module.main()
    assert json.loads(capsys.readouterr().out)["changed"] and kernel.calls == []
    with patch_module_args({"table": TABLE, "state": "absent"}), pytest.raises(SystemExit):
        nft_module.main()
    assert not json.loads(capsys.readouterr().out)["changed"] and kernel.calls == []
