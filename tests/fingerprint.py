# SPDX-License-Identifier: GPL-2.0-only
"""Fingerprints of everything an import derives from a ruleset text: the parsed IR, the canonical
text (render), the plan (classifier, decisions, counter paths, codes, notes), the report records
and the compiled map contents. Speed work must leave every one of them unchanged.

    .venv/bin/python -m tests.fingerprint --write   # record tests/fingerprints.json (only on purpose)

The recorded values come from the code before an optimisation; tests/test_fingerprint.py recomputes
them. Values are serialised canonically (sets sorted), so a frozenset built in another order is
the same value, while any change of a field, type, order of rules or byte of a map is a difference.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import ipaddress
import json
import os
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ipt2xdp.classifier import IntervalSet  # noqa: E402
from ipt2xdp.hostinfo import Device, HostContext, RouteType  # noqa: E402

GOLDEN = Path(__file__).with_name("fingerprints.json")
RANDOM_SEEDS = range(150)
N = ipaddress.IPv4Network
ROUTES = (RouteType(N("10.77.1.2/32"), "LOCAL", 5, 255), RouteType(N("10.77.1.255/32"), "BROADCAST", 5, 255),
          RouteType(N("198.51.100.10/32"), "LOCAL", 5, 255), RouteType(N("127.0.0.0/8"), "LOCAL", 1, 255),
          RouteType(N("10.77.1.0/24"), "UNICAST", 5, 254), RouteType(N("0.0.0.0/0"), "UNICAST", 5, 254))
# Two hosts: a plain receiver (veth attached, addrtype known, no external helpers) and a forwarding
# one with external helpers possible and addrtype unknown, attached to a bridge port and a device.
HOSTS = {
    "receiver": HostContext(devices=(Device("lo", 1), Device("rcv0", 5, "veth", link=4), Device("eth0", 6)),
                            local_destinations=(N("10.77.1.2/32"), N("10.77.1.255/32"), N("127.0.0.0/8"),
                                                N("198.51.100.10/32"), N("224.0.0.0/4")),
                            attached=("rcv0",), ct_external_helpers=False, route_types=ROUTES),
    "router": HostContext(devices=(Device("lo", 1), Device("br0", 3, "bridge"), Device("eth0", 4, master=3),
                                   Device("eth1", 6), Device("fwd0", 7, "veth")),
                          local_destinations=(N("10.0.0.1/32"), N("127.0.0.0/8"), N("224.0.0.0/4")),
                          forwarding=True, attached=("eth0", "eth1")),
}


def canonical(value):
    """A JSON-able form of a value in which equal values are equal and unequal values differ."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [type(value).__name__] + [[f.name, canonical(getattr(value, f.name))]
                                         for f in dataclasses.fields(value)]
    if isinstance(value, enum.Enum):
        return [type(value).__name__, value.name]
    if isinstance(value, (set, frozenset)):
        return ["set"] + sorted((canonical(v) for v in value), key=json.dumps)
    if isinstance(value, (list, tuple)):
        return [type(value).__name__] + [canonical(v) for v in value]
    if isinstance(value, dict):
        return ["dict"] + [[canonical(k), canonical(v)] for k, v in value.items()]
    if isinstance(value, bytes):
        return ["bytes", value.hex()]
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv4Address)):
        return [type(value).__name__, str(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return [type(value).__name__, value]
    raise TypeError(f"no canonical form for {type(value).__name__}")


def _hash(value) -> str:
    return hashlib.sha256(json.dumps(canonical(value)).encode()).hexdigest()[:20]


def _with_sets(host: HostContext, ruleset) -> HostContext:
    """The host with a made-up mirrored copy of every set the ruleset reads (set-guard paths)."""
    from ipt2xdp import ipsets

    names = ipsets.referenced_sets(ruleset)
    if not names:
        return host
    sets = []
    for name in names:
        digest = hashlib.sha256(name.encode()).digest()
        base = int.from_bytes(digest[:4], "big") & 0xFFFFFF00
        sets.append(ipsets.IpSet(name, "hash:ip", addresses=IntervalSet.of([(base, base + digest[4] % 7)]),
                                 members=1 + digest[4] % 7))
    return dataclasses.replace(host, ipsets=tuple(sets))


def _without_fast_path(maps: dict) -> dict:
    """The maps as compile made them before the fast paths (recorded then): no src_fast or tuple_fast,
    and gen_config as its first 84 bytes and a zero pad (the fast path's fields came after them).
    The fast path has its own tests (tests/test_fastpath.py, tests/bpf/test_fastpath.py)."""
    import dataclasses as dc

    out = {name: m for name, m in maps.items() if name not in ("src_fast", "tuple_fast")}
    cfg = out["cfg"]
    out["cfg"] = dc.replace(cfg, values=cfg.values[:84] + bytes(4), value_size=88)
    return out


def fingerprint(text: str, host_name: str) -> dict:
    """Hashes of each stage of an import of *text* on the named host (a parse error is recorded)."""
    from ipt2xdp import report
    from ipt2xdp.compile import compile as compile_tables
    from ipt2xdp.errors import CapacityError, ParseError
    from ipt2xdp.parse import parse
    from ipt2xdp.plan import plan
    from ipt2xdp.render import render

    try:
        ruleset = parse(text, "fingerprint.rules")
    except ParseError as error:
        return {"parse_error": str(error)}
    out = {"ir": _hash(ruleset), "render": _hash(render(ruleset.without_positions()))}
    host = _with_sets(HOSTS[host_name], ruleset)
    result = plan(ruleset, host)
    out["plan"] = _hash(result)
    out["report"] = _hash([report.decision_records(result), report.summary(result)])
    try:
        # unreduced (the class bitmaps hold the whole classifier, as recorded): the reduction is
        # proven apart (tests/test_fastpath.py, tests/bpf/test_fastpath.py)
        tables = compile_tables(result.rules, result.default, overflow="defer", reduce=False)
    except CapacityError as error:
        out["compile_error"] = str(error)
        return out
    out["tables"] = _hash([_without_fast_path(tables.maps), tables.rule_count, tables.slot_count, tables.set_count, tables.rule_ids,
                           tables.default_action, tables.overflowed_rules, tables.field_mask, tables.notes])
    return out


def shared_rulesets() -> dict:
    root = Path(os.environ.get("IPT2XDP_SHARED_RULESETS") or ROOT.parent / "shared" / "rulesets")
    if not (root / "MANIFEST.txt").is_file():
        root = Path("/work/shared/rulesets")
    return {str(p.relative_to(root)): p.read_text(errors="replace")
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "MANIFEST.txt"}


def random_ruleset(seed: int) -> str:
    from compat_tests import rulegen

    rng = random.Random(seed)
    return rulegen.render(rulegen.generate(seed, max_rules=rng.choice((6, 12, 40)), max_chains=rng.choice((1, 3, 5)),
                                           forwarding=seed % 3 == 0))


def bench_rulesets() -> dict:
    from bench import e2e, parse_bench

    return {"rules_ruleset(3000)": e2e.rules_ruleset(3000), "blocklist_ruleset(3000)": e2e.blocklist_ruleset(3000),
            "parse_bench.mixed(3000)": parse_bench.mixed(3000),
            "parse_bench.blocklist(3000)": parse_bench.blocklist(3000)}


def cases() -> dict:
    """name -> (ruleset text, host name)."""
    out = {}
    for name, text in {**shared_rulesets(), **bench_rulesets()}.items():
        for host in HOSTS:
            out[f"{name} @{host}"] = (text, host)
    for seed in RANDOM_SEEDS:
        out[f"rulegen seed {seed}"] = (random_ruleset(seed), "receiver" if seed % 2 else "router")
    return out


def main() -> int:
    if sys.argv[1:] != ["--write"]:
        print(__doc__.strip().splitlines()[-4], file=sys.stderr)
        return 2
    golden = {name: fingerprint(text, host) for name, (text, host) in cases().items()}
    GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(golden)} fingerprints to {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
