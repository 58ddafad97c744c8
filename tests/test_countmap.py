# SPDX-License-Identifier: GPL-2.0-only
"""countmap.follow(): XDP's counts stay with the rule objects the kernel's counters stay with
(the kernel's behaviour itself is checked against the real binaries in test_counters_kernel.py)."""
import pytest

from ipt2xdp.wrapper import cmdline
from ipt2xdp.wrapper.countmap import UNKNOWN, Change, follow


def plan(**chains):
    """A plan record with these chains of the filter table: name -> [rule texts]."""
    return {"decisions": [{"table": "filter", "chain": chain, "index": i, "text": f"-A {chain} {text}"}
                          for chain, texts in chains.items() for i, text in enumerate(texts, start=1)]}


OLD = plan(INPUT=["a", "b", "b", "c"], BL=["x", "y"])
COUNTS = {("filter", "INPUT", 1): (1, 10), ("filter", "INPUT", 2): (2, 20), ("filter", "INPUT", 3): (3, 30),
          ("filter", "INPUT", 4): (4, 40), ("filter", "BL", 2): (5, 50), ("filter", "INPUT", 0): (6, 60)}


def moved(change, new):
    return follow(COUNTS, OLD, new, change)


def test_insert_moves_the_rules_after_it_and_keeps_identical_rules_apart():
    got = moved(Change(command="I", chain="INPUT", rulenum=2), plan(INPUT=["a", "b", "b", "b", "c"], BL=["x", "y"]))
    assert got == {("filter", "INPUT", 1): (1, 10), ("filter", "INPUT", 3): (2, 20), ("filter", "INPUT", 4): (3, 30),
                   ("filter", "INPUT", 5): (4, 40), ("filter", "BL", 2): (5, 50), ("filter", "INPUT", 0): (6, 60)}
    # by text alone the new rule 2 would have taken rule 2's count
    assert follow(COUNTS, OLD, plan(INPUT=["a", "b", "b", "b", "c"], BL=["x", "y"]), UNKNOWN)[("filter", "INPUT", 2)] \
        == (2, 20)


def test_delete_by_number_and_by_rulespec_remove_the_right_one_of_two_identical_rules():
    new = plan(INPUT=["a", "b", "c"], BL=["x", "y"])
    by_number = moved(Change(command="D", chain="INPUT", rulenum=3), new)
    assert by_number[("filter", "INPUT", 2)] == (2, 20) and by_number[("filter", "INPUT", 3)] == (4, 40)
    by_spec = moved(Change(command="D", chain="INPUT"), new)  # the kernel deletes the first match
    assert by_spec[("filter", "INPUT", 2)] == (3, 30) and by_spec[("filter", "INPUT", 3)] == (4, 40)


def test_replace_restarts_the_rule_even_with_the_same_text():
    got = moved(Change(command="R", chain="INPUT", rulenum=2), OLD)
    assert ("filter", "INPUT", 2) not in got and got[("filter", "INPUT", 3)] == (3, 30)


def test_rename_flush_and_policy():
    renamed = follow(COUNTS, plan(INPUT=["a", "-j BL"], BL=["x", "y"]), plan(INPUT=["a", "-j BLK"], BLK=["x", "y"]),
                     Change(command="E", chain="BL", new_chain="BLK"))
    assert renamed[("filter", "BLK", 2)] == (5, 50) and renamed[("filter", "INPUT", 2)] == (2, 20)
    flushed = moved(Change(command="F", chain="BL"), plan(INPUT=["a", "b", "b", "c"], BL=[]))
    assert ("filter", "BL", 2) not in flushed and flushed[("filter", "INPUT", 4)] == (4, 40)
    assert ("filter", "INPUT", 0) not in moved(Change(command="P", chain="INPUT"), OLD)
    assert moved(Change(command="P", chain="FORWARD"), OLD)[("filter", "INPUT", 0)] == (6, 60)
    # legacy: every commit to the table zeroes its builtin policy counters
    assert ("filter", "INPUT", 0) not in moved(Change(command="A", chain="BL", legacy=True), OLD)
    assert moved(Change(table="nat", command="A", chain="X", legacy=True), OLD)[("filter", "INPUT", 0)] == (6, 60)


@pytest.mark.parametrize("change, kept", [
    (Change(command="restore", replaced_tables=frozenset({"filter"}), touched_tables=frozenset({"filter"})), set()),
    (Change(command="restore", replaced_tables=frozenset({"nat"}), touched_tables=frozenset({"nat"})), set(COUNTS)),
    (Change(command="restore", touched_tables=frozenset({"filter"}), set_chains=frozenset({("filter", "BL")})),
     set(COUNTS) - {("filter", "BL", 2)}),
    (Change(command="restore", touched_tables=frozenset({"filter"}), set_chains=frozenset({("filter", "INPUT")})),
     set(COUNTS) - {("filter", "INPUT", 0)}),
    (Change(command="restore", legacy=True, touched_tables=frozenset({"filter"})), set(COUNTS) - {("filter", "INPUT", 0)}),
])
def test_restore(change, kept):
    assert set(moved(change, OLD)) == kept


def test_a_position_map_that_lands_on_another_text_falls_back_to_text():
    # "-A" claimed, but the kernel also lost rule 1 meanwhile: positions would put b's count on b's twin
    got = moved(Change(command="A", chain="INPUT"), plan(INPUT=["b", "b", "c", "d"], BL=["x", "y"]))
    assert got[("filter", "INPUT", 1)] == (2, 20) and got[("filter", "INPUT", 3)] == (4, 40)


def test_command_lines_describe_the_change():
    cmd = cmdline.parse_iptables(["-w", "-I", "f2b", "3", "-s", "1.2.3.4", "-j", "DROP"])
    assert (cmd.chain, cmd.position) == ("f2b", 3)
    assert cmdline.parse_iptables(["-D", "INPUT", "5"]).position == 5
    assert cmdline.parse_iptables(["-D", "INPUT", "-p", "tcp", "-j", "DROP"]).position is None
    assert cmdline.parse_iptables(["-R", "INPUT", "2", "-j", "DROP", "-c", "9", "99"]).position == 2
    assert cmdline.parse_iptables(["-E", "BL", "BLK"]).new_chain == "BLK"
    assert cmdline.parse_iptables(["-F", "BL"]).chain == "BL" and cmdline.parse_iptables(["-F"]).chain is None
    restore = cmdline.parse_restore(["-n", "-c", "-T", "filter", "--modprobe", "/sbin/modprobe", "rules.v4"])
    assert (restore.noflush, restore.counters, restore.table, restore.file) == (True, True, "filter", "rules.v4")
    assert cmdline.parse_restore(["--noflush", "--counters", "--table=nat"]).table == "nat"


def test_a_change_made_around_the_wrapper_resets_the_policies_the_kernel_must_have_reset():
    old = dict(OLD, policies={"filter/INPUT": "DROP"}, backend="nft")
    same_policy = dict(plan(INPUT=["a", "b", "b", "c", "d"], BL=["x", "y"]), policies={"filter/INPUT": "DROP"})
    assert follow(COUNTS, old, dict(same_policy, backend="nft"))[("filter", "INPUT", 0)] == (6, 60)
    assert ("filter", "INPUT", 0) not in follow(COUNTS, old, dict(same_policy, backend="legacy"))  # a commit
    unchanged = dict(OLD, policies={"filter/INPUT": "DROP"}, backend="legacy")
    assert follow(COUNTS, old, unchanged)[("filter", "INPUT", 0)] == (6, 60)
    accept = dict(OLD, policies={"filter/INPUT": "ACCEPT"}, backend="nft")
    assert ("filter", "INPUT", 0) not in follow(COUNTS, old, accept)  # -P INPUT ACCEPT
