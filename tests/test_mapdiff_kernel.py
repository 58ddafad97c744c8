# SPDX-License-Identifier: GPL-2.0-only
"""The dry run's map diff against a generation really loaded in a namespace: before anything is
loaded it says so; after importing A, a dry run of B lists the map entries B changes (worked out
by hand below); after importing B, a dry run of B finds nothing to change, and the maps read back
from the kernel are byte for byte what B compiles to."""
import json
import sys

import pytest

from tests.nsutil import python_in

pytestmark = pytest.mark.kernel

HEAD = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
CT = "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
SSH = "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n"
BLOCK = "".join(f"-A INPUT -s 192.0.2.{i}/32 -j DROP\n" for i in range(1, 6))  # one hash set of 5
DNS = "-A INPUT -p udp -m udp --dport 53 -j ACCEPT\n"
A = HEAD + CT + SSH + BLOCK + DNS + "COMMIT\n"
# B: ssh moves to 2222, http is accepted, one blocked address fewer (the set keeps 4)
B = (HEAD + CT + SSH.replace("22", "2222") + "-A INPUT -p tcp -m tcp --dport 80 -j ACCEPT\n"
     + BLOCK.replace("-A INPUT -s 192.0.2.5/32 -j DROP\n", "") + DNS + "COMMIT\n")


def ipt2xdp(ns, *args):
    return ns.run(["env", "IPT2XDP_BACKEND=legacy", sys.executable, "-m", "ipt2xdp", *args], check=False)


def changes(document):
    return {m["name"]: (m["added"], m["removed"], m["changed"]) for m in document["map_diff"]["maps"]
            if m["added"] or m["removed"] or m["changed"]}


def entries(document, name):
    return [(e["op"], e.get("key") or e.get("rule"), e["before"], e["after"])
            for m in document["map_diff"]["maps"] if m["name"] == name for e in m["entries"]]


def test_dry_run_map_diff_against_the_loaded_generation(pair, tmp_path):
    rx = pair.receiver
    a, b = tmp_path / "a.rules", tmp_path / "b.rules"
    a.write_text(A)
    b.write_text(B)

    first = ipt2xdp(rx, "import", "--dry-run", str(a), "--json", "--iface", pair.receiver_if)
    assert first.returncode == 0, first.stderr
    document = json.loads(first.stdout)
    assert document["map_diff"]["loaded"] is False
    assert all(m["removed"] == m["changed"] == 0 for m in document["map_diff"]["maps"])
    assert changes(document)["exact"] == (5, 0, 0)
    plain = ipt2xdp(rx, "import", "--dry-run", str(a), "--iface", pair.receiver_if)
    assert "map entries: nothing loaded: all " in plain.stdout and "\033[" not in plain.stdout

    done = ipt2xdp(rx, "import", str(a), "--iface", pair.receiver_if, "--mode", "native", "--backend", "legacy")
    assert done.returncode == 0, done.stderr

    dry = ipt2xdp(rx, "import", "--dry-run", str(b), "--json")
    assert dry.returncode == 0, dry.stderr
    document = json.loads(dry.stdout)
    diff = document["map_diff"]
    assert (diff["loaded"], diff["against"], diff["generation"], diff["loaded_rules_named"]) == (True, "kernel", 1, True)
    # rule actions: http is a new rule; the set (named by its first rule) now holds 4.
    # exact-match sets: 192.0.2.5 leaves. Sources: 192.0.2.5 no longer singled out.
    # Protocols: tcp gains http in each conntrack class (no entry, entry, not looked up).
    # Destination ports: 22 leaves, 80 and 2222 arrive.
    assert changes(document) == {"actions": (1, 0, 1), "exact": (0, 1, 0), "src": (0, 1, 0),
                                 "proto": (0, 0, 3), "dport": (2, 1, 0)}
    assert entries(document, "dport") == [("removed", "22", ["filter/INPUT #2"], []),
                                          ("added", "80", [], ["filter/INPUT #3"]),
                                          ("added", "2222", [], ["filter/INPUT #2"])]
    assert entries(document, "exact") == [("removed", "src 192.0.2.5/32", "filter/INPUT #7", None)]
    assert entries(document, "src") == [("removed", "192.0.2.5/32", ["filter/INPUT #4"], [])]
    assert ("changed", "filter/INPUT #4", "drop (set of 5)", "drop (set of 4)") in entries(document, "actions")
    assert diff["kernel_maps_identical"] is False
    # the rule-level diff beside it agrees: one rule added, the edited and the dropped one
    assert document["diff"]["added"] == ["-A INPUT -p tcp -m tcp --dport 2222 -j ACCEPT",
                                          "-A INPUT -p tcp -m tcp --dport 80 -j ACCEPT"]

    plain = ipt2xdp(rx, "import", "--dry-run", str(b))
    assert "map entries against generation 1 as loaded in the kernel:" in plain.stdout
    assert "  destination ports: 2 added, 1 removed, 0 changed" in plain.stdout

    done = ipt2xdp(rx, "import", str(b), "--mode", "native", "--backend", "legacy")
    assert done.returncode == 0, done.stderr
    again = json.loads(ipt2xdp(rx, "import", "--dry-run", str(b), "--json").stdout)
    assert again["map_diff"]["generation"] == 2
    assert changes(again) == {}
    assert again["map_diff"]["kernel_maps_identical"] is True
    assert set(again["map_diff"]["kernel_maps"]) == {"cfg", "slots", "value_class", "addr_dir", "addr_bounds",
                                                      "class_rows", "counter_rules", "iif_class", "exact_set",
                                                      "src_fast", "tuple_fast"}
    plain = ipt2xdp(rx, "import", "--dry-run", str(b))
    assert "  no map entry would change\n  the loaded maps are exactly what this plan compiles to" in plain.stdout

    # the diff reads the kernel, not the stored plan: maps compiled from B with dns on port 54,
    # loaded under B's stored plan, are reported as exactly that difference
    tamper = (f"from ipt2xdp import hostinfo, loader\nfrom ipt2xdp.compile import compile\n"
              f"from ipt2xdp.parse import parse\nfrom ipt2xdp.plan import plan\n"
              f"key = loader.status(include_counters=False)['ruleset']['source_digest']\n"
              f"p = plan(parse({B.replace('--dport 53 ', '--dport 54 ')!r}), "
              f"hostinfo.read_host_context(attached=[{pair.receiver_if!r}], backend='legacy'))\n"
              f"loader.apply(compile(p.rules, p.default, overflow='defer'), source_digest=key)\n")
    python_in(rx, tamper)
    tampered = json.loads(ipt2xdp(rx, "import", "--dry-run", str(b), "--json").stdout)
    assert changes(tampered) == {"dport": (1, 1, 0)}
    assert entries(tampered, "dport") == [("added", "53", [], ["filter/INPUT #8"]),
                                          ("removed", "54", ["filter/INPUT #8"], [])]
    assert tampered["map_diff"]["kernel_maps_identical"] is False
