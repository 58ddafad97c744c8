# SPDX-License-Identifier: GPL-2.0-only
"""The dry run's map diff on two compiled plans: exact counts per map for a rule added, a rule
removed, a port changed, a set member removed and the policy changed, and how entries read.
(The kernel side, maps read back from a loaded generation, is tests/test_mapdiff_kernel.py.)"""
import ipaddress

from ipt2xdp import mapdiff
from ipt2xdp.compile import compile as compile_tables
from ipt2xdp.hostinfo import Device, HostContext
from ipt2xdp.parse import parse
from ipt2xdp.plan import plan
from ipt2xdp.report import as_json, as_table, decision_records

HOST = HostContext(devices=(Device("lo", 1), Device("eth0", 2)),
                   local_destinations=(ipaddress.IPv4Network("10.0.0.1/32"),), attached=("eth0",))
HEAD = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
SSH = "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n"
BLOCK = "".join(f"-A INPUT -s 192.0.2.{i}/32 -j DROP\n" for i in range(1, 5))  # 4 rules: one hash set
DNS = "-A INPUT -p udp -m udp --dport 53 -j ACCEPT\n"
A = HEAD + SSH + BLOCK + DNS + "COMMIT\n"


class Loaded:
    """What mapread.read_loaded() returns, made from a compiled plan instead of the kernel."""

    def __init__(self, tables):
        self.maps = {name: m for name, m in tables.maps.items() if name != "counters"}
        self.generation, self.deferring_all = 7, False


def compiled(text):
    result = plan(parse(text, "test.rules"), HOST)
    return result, compile_tables(result.rules, result.default, overflow="defer")


def record(result):
    return {"counter_paths": [[[r.table, r.chain, r.index] for r in path] for path in result.counter_paths],
            "decisions": decision_records(result)}


def map_diff(old_text, new_text):
    old, old_tables = compiled(old_text)
    new, new_tables = compiled(new_text)
    return mapdiff.map_diff(new, new_tables, Loaded(old_tables), record(old))


def counts(diff):
    """{map: (added, removed, changed)} of the maps with any change."""
    return {m["name"]: (m["added"], m["removed"], m["changed"]) for m in diff["maps"]
            if m["added"] or m["removed"] or m["changed"]}


def entries(diff, name):
    return next(m for m in diff["maps"] if m["name"] == name)["entries"]


def test_the_same_plan_changes_nothing_and_its_maps_are_identical():
    diff = map_diff(A, A)
    assert counts(diff) == {}
    assert diff["kernel_maps_identical"] is True and set(diff["kernel_maps"].values()) == {0}
    assert "no map entry would change" in "\n".join(mapdiff.table_lines(diff))


def test_nothing_loaded_adds_every_entry():
    new, tables = compiled(A)
    diff = mapdiff.map_diff(new, tables, None, None)
    # slots: the not-local guard, ssh, the set of 4, dns, the policy; 4 set members; source: the
    # set's range; destination: the guard's two ranges around 10.0.0.1; tcp and udp; ports 22, 53
    assert counts(diff) == {"actions": (5, 0, 0), "exact": (4, 0, 0), "src": (1, 0, 0), "dst": (2, 0, 0),
                            "proto": (2, 0, 0), "dport": (2, 0, 0)}
    assert diff["loaded"] is False
    assert "map entries: nothing loaded: all 16 would be added" in as_table(new, None, map_diff=diff)


def test_a_rule_added():
    diff = map_diff(A, A.replace(SSH, SSH + "-A INPUT -p tcp -m tcp --dport 80 -j ACCEPT\n"))
    assert counts(diff) == {"actions": (1, 0, 0), "proto": (0, 0, 1), "dport": (1, 0, 0)}
    assert entries(diff, "actions") == [{"op": "added", "rule": "filter/INPUT #2", "before": None, "after": "accept"}]
    assert entries(diff, "dport") == [{"op": "added", "key": "80", "before": [], "after": ["filter/INPUT #2"]}]
    assert entries(diff, "proto") == [{"op": "changed", "key": "tcp", "before": ["filter/INPUT #1"],
                                       "after": ["filter/INPUT #1", "filter/INPUT #2"]}]
    assert diff["kernel_maps_identical"] is False and diff["kernel_maps"]["slots"] > 0


def test_a_rule_removed():
    diff = map_diff(A, A.replace(DNS, ""))
    assert counts(diff) == {"actions": (0, 1, 0), "proto": (0, 1, 0), "dport": (0, 1, 0)}
    assert entries(diff, "dport") == [{"op": "removed", "key": "53", "before": ["filter/INPUT #6"], "after": []}]
    assert entries(diff, "actions")[0]["before"] == "accept"


def test_a_port_changed_is_one_rule_edited_in_place():
    diff = map_diff(A, A.replace("--dport 22 ", "--dport 2222 "))
    assert counts(diff) == {"dport": (1, 1, 0)}
    assert [(e["op"], e["key"]) for e in entries(diff, "dport")] == [("removed", "22"), ("added", "2222")]
    # raw: the destination-port classes are numbered in value order, so {ssh} and {dns} swap class
    # rows (2 rows), and ports 22, 53 and 2222 point at other rows (3 value_class entries)
    assert diff["kernel_maps"] == {**{name: 0 for name in diff["kernel_maps"]}, "value_class": 3, "class_rows": 2}


def test_the_policy_changed():
    diff = map_diff(A, A.replace(":INPUT DROP", ":INPUT ACCEPT"))
    assert counts(diff) == {"actions": (0, 0, 1)}
    assert entries(diff, "actions") == [{"op": "changed", "rule": "filter/INPUT policy", "before": "drop",
                                         "after": "accept"}]


def test_a_set_member_removed_splits_the_set_into_plain_rules():
    # 3 blocked addresses are too few for a hash set: the set (named by its first rule) becomes a
    # plain rule, the other two get slots of their own, and the source ranges are re-cut
    diff = map_diff(A, A.replace("-A INPUT -s 192.0.2.2/32 -j DROP\n", ""))
    assert counts(diff) == {"actions": (2, 0, 1), "exact": (0, 4, 0), "src": (0, 1, 2)}
    assert entries(diff, "actions")[0] == {"op": "changed", "rule": "filter/INPUT #2", "before": "drop (set of 4)",
                                           "after": "drop"}
    assert entries(diff, "src") == [
        {"op": "removed", "key": "192.0.2.2/32", "before": ["filter/INPUT #2"], "after": []},
        {"op": "changed", "key": "192.0.2.3/32", "before": ["filter/INPUT #2"], "after": ["filter/INPUT #3"]},
        {"op": "changed", "key": "192.0.2.4/32", "before": ["filter/INPUT #2"], "after": ["filter/INPUT #4"]}]
    assert {e["key"] for e in entries(diff, "exact")} == {f"src 192.0.2.{i}/32" for i in range(1, 5)}


def test_entries_stop_at_the_limit_and_say_how_many_more():
    many = "".join(f"-A INPUT -p tcp -m tcp --dport {1000 + 2 * i} -j ACCEPT\n" for i in range(60))
    diff = map_diff(A, A.replace(DNS, DNS + many))
    dport = next(m for m in diff["maps"] if m["name"] == "dport")
    assert (dport["added"], len(dport["entries"]), dport["truncated"]) == (60, mapdiff.ENTRY_LIMIT, 10)
    assert dport["entries"][0]["key"] == "1000"


def test_report_shows_the_section_in_json_and_table():
    new, tables = compiled(A.replace("--dport 22 ", "--dport 2222 "))
    old, old_tables = compiled(A)
    diff = mapdiff.map_diff(new, tables, Loaded(old_tables), record(old))
    import json

    document = json.loads(as_json(new, decision_records(old), map_diff=diff))
    dport = next(m for m in document["map_diff"]["maps"] if m["name"] == "dport")
    assert (dport["map"], dport["added"], dport["removed"], dport["truncated"]) == ("destination ports", 1, 1, 0)
    plain = as_table(new, decision_records(old), colour=False, map_diff=diff)
    assert "map entries against generation 7 as loaded in the kernel:" in plain
    assert "  destination ports: 1 added, 1 removed, 0 changed\n    - 22: was filter/INPUT #1\n    + 2222: filter/INPUT #1" in plain
    assert "\033[" not in plain
    coloured = as_table(new, decision_records(old), colour=True, map_diff=diff)
    assert "\033[31m-\033[0m 22: was filter/INPUT #1" in coloured


def test_icmp_types_and_input_devices_read_as_such():
    before = HEAD + "-A INPUT -p icmp -m icmp --icmp-type 8 -j DROP\nCOMMIT\n"
    after = HEAD + "-A INPUT -p icmp -m icmp --icmp-type 0 -j DROP\n-A INPUT -i eth0 -p udp -j DROP\nCOMMIT\n"
    old, old_tables = compiled(before)
    new, new_tables = compiled(after)
    diff = mapdiff.map_diff(new, new_tables, Loaded(old_tables), record(old), {2: "eth0"})
    # the icmp rule edited in place: type 8 (all its codes) leaves, type 0 arrives; the new udp rule
    # singles out udp and eth0 (every other device does not match it)
    assert counts(diff) == {"actions": (1, 0, 0), "icmp": (1, 1, 0), "proto": (1, 0, 0), "iif": (1, 0, 0)}
    assert [(e["op"], e["key"]) for e in entries(diff, "icmp")] == [("added", "type 0"), ("removed", "type 8")]
    assert entries(diff, "iif") == [{"op": "added", "key": "eth0 (ifindex 2)", "before": [], "after": ["filter/INPUT #2"]}]
    assert entries(diff, "proto") == [{"op": "added", "key": "udp", "before": [], "after": ["filter/INPUT #2"]}]


FAST = HEAD + BLOCK + SSH + DNS + "COMMIT\n"  # the blocklist first: the fast path's alone


def test_a_blocklist_change_names_the_address_in_the_fast_path():
    new, tables = compiled(FAST)
    assert tables.maps["src_fast"].count == 4 and tables.maps["exact_set"].count == 0
    nothing = mapdiff.map_diff(new, tables, None, None)
    assert counts(nothing)["src_fast"] == (5, 0, 0)  # four sources and the destinations they apply to
    assert counts(nothing)["actions"] == (8, 0, 0)   # guard, the four DROPs, ssh, dns, the policy
    diff = map_diff(FAST, FAST.replace(BLOCK, BLOCK + "-A INPUT -s 198.51.100.0/24 -j DROP\n")
                    .replace("-A INPUT -s 192.0.2.3/32 -j DROP\n", ""))
    assert counts(diff) == {"actions": (1, 1, 0), "src_fast": (1, 1, 0)}
    assert entries(diff, "src_fast") == [
        {"op": "removed", "key": "192.0.2.3/32", "before": "filter/INPUT #3", "after": None},
        {"op": "added", "key": "198.51.100.0/24", "before": None, "after": "filter/INPUT #4"}]
    assert entries(diff, "actions") == [
        {"op": "added", "rule": "filter/INPUT #4", "before": None, "after": "drop"},
        {"op": "removed", "rule": "filter/INPUT #3", "before": "drop", "after": None}]
    assert "    + 198.51.100.0/24: filter/INPUT #4" in "\n".join(mapdiff.table_lines(diff))
    assert map_diff(FAST, FAST)["kernel_maps_identical"] is True and counts(map_diff(FAST, FAST)) == {}
