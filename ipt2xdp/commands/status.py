# SPDX-License-Identifier: GPL-2.0-only
"""`ipt2xdp status [--json]`: devices, mode, program, generation, rule count, per-rule counters, and
whether the plan is still that of the ruleset in force (drift; exit 1 when it is not)."""
from __future__ import annotations

import json

HELP = "show what XDP enforces in this network namespace: devices, generation, per-rule counters"


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--all-counters", action="store_true", help="also list rules whose counters are zero")
    parser.add_argument("--no-drift", action="store_true",
                        help="skip comparing the plan with the live ruleset (reading it costs time at 10k rules)")


def run(args) -> int:
    from ipt2xdp import counters, drift, libbpf, loader, planstore

    libbpf.set_verbose(getattr(args, "verbose", False))
    info = loader.status()
    if info["loaded"]:
        plan = planstore.load_settled(info.get("ruleset", {}).get("source_digest"))
        info["rules"] = counters.rule_rows(info["counters"], plan)
        info["xdp_dropped_packets"], info["xdp_dropped_bytes"] = counters.dropped(info["counters"], plan)
        info["plan_summary"] = (plan or {}).get("summary")
        if not args.no_drift:
            info["drift"] = drift.check(info)
    info["watcher"] = _watcher(info["netns"])
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return _exit_code(info)
    if not info["loaded"]:
        print(f"ipt2xdp: not loaded in this network namespace (netns {info['netns']})")
        return 0
    rs = info.get("ruleset", {})
    state = "DEFERRING ALL to netfilter" if info["deferring_all"] else "enforcing"
    print(f"program id {info['program_id']}  generation {info['generation']}  {state}")
    print(f"ruleset: {rs.get('rules', '?')} rules in {rs.get('slots', '?')} slots ({rs.get('sets', 0)} sets), "
          f"digest {rs.get('digest', '?')}, source {rs.get('source_digest') or '-'}")
    if rs.get("overflowed_rules"):
        print(f"  {rs['overflowed_rules']} rules beyond capacity are left to netfilter")
    mirror = info.get("ipset_mirror") or {}
    if mirror.get("mirrored"):
        until = f", exact for {mirror['deadline_in_s']} s more (member timeouts)" if mirror.get("deadline_in_s") else ""
        print(f"ipset mirror: current{until}" if mirror["current"] else
              f"ipset mirror: STALE ({', '.join(mirror['changed'])}): XDP passes set drops to netfilter; "
              "`ipt2xdp import --live` mirrors the sets again")
    for line in drift.describe(info.get("drift", {})):
        print(line)
    watcher = info["watcher"]
    print(f"watcher: pid {watcher['pid']}, served {watcher['served']} wrapper change(s) over its socket "
          f"({watcher.get('launched', 0)} from the native launcher)" if watcher
          else "watcher: none answering in this namespace (wrapper calls re-plan in their own process)")
    if not info["devices"]:
        print("devices: none attached")
    for name, d in sorted(info["devices"].items()):
        live = d["live_mode"] or "NOT ATTACHED (removed outside ipt2xdp)"
        print(f"device {name} (ifindex {d['ifindex']}): {live}")
    stats = info["stats"]
    print("packets: " + ", ".join(f"{k} {v}" for k, v in stats.items() if v) if any(stats.values()) else "packets: none")
    print(f"XDP dropped {info['xdp_dropped_packets']} packets ({info['xdp_dropped_bytes']} bytes) in the driver")
    if info["rules"]:
        print(f"{'pkts':>10} {'bytes':>12}  rule (XDP's counts; netfilter counts the rest)")
        for row in info["rules"]:
            if row["packets"] or args.all_counters:
                where = "policy" if row["index"] == 0 else f"#{row['index']}"
                print(f"{row['packets']:>10} {row['bytes']:>12}  {row['table']}/{row['chain']} {where}: {row['text']}")
    else:
        print(f"{'rule':>10} {'packets':>12} {'bytes':>14}")
        for rule, c in info["counters"].items():
            if c["packets"] or args.all_counters:
                print(f"{rule:>10} {c['packets']:>12} {c['bytes']:>14}")
    return _exit_code(info)


def _watcher(netns: int):
    """`ipt2xdp watch`'s own status ({pid, served, last}) if one serves this namespace, else None."""
    from ipt2xdp.wrapper import client

    answer = client.ask_status(netns)
    return json.loads(answer) if answer else None


def _exit_code(info) -> int:
    """0 in step (or not loaded), 1 drift: scripts and monitoring can alert on it."""
    return 1 if info.get("loaded") and info.get("drift", {}).get("in_step") is False else 0
