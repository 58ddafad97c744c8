# SPDX-License-Identifier: GPL-2.0-only
"""`ipt2xdp explain`: the verdict XDP gives one packet, the rule that decides it, and why.

FILE, - or --live plan that ruleset for this host (as `import --dry-run` does); --loaded takes the
plan in force and also runs the packet through the loaded program. A model/program disagreement
is a bug: it is printed loudly and the exit status is 1.
"""
from __future__ import annotations

import json
import sys

HELP = "show the verdict XDP gives one packet, the deciding rule and why"
EXAMPLE = 'tcp 198.51.100.7:4242 > 10.0.0.1:22 flags S iface eth0'


def add_arguments(parser):
    parser.add_argument("file", nargs="?", metavar="FILE|-", help="iptables-save file, or - for stdin")
    parser.add_argument("--live", action="store_true", help="take the ruleset netfilter holds now")
    parser.add_argument("--loaded", action="store_true",
                        help="take the plan loaded now and run the packet through the loaded program too")
    parser.add_argument("--packet", required=True, metavar="SPEC",
                        help=f'the packet, e.g. "{EXAMPLE}" (see README: explain)')
    parser.add_argument("--iface", action="append", default=[], metavar="IF",
                        help="device XDP is (taken to be) attached to (repeatable); default: the attached "
                             "devices, else the packet's iface")
    parser.add_argument("--backend", choices=("auto", "legacy", "nft"), default="auto",
                        help="with --live: the netfilter backend to read")
    parser.add_argument("--json", action="store_true", help="the explanation as JSON")


def _model_from_input(args, spec):
    from ipt2xdp.commands.import_ import _loaded, _read_input
    from ipt2xdp.errors import UsageError
    from ipt2xdp.hostinfo import read_host_context
    from ipt2xdp.parse import parse
    from ipt2xdp.plan import plan

    text, path = _read_input(args)
    ruleset = parse(text, path)
    if args.iface:
        devices = list(dict.fromkeys(args.iface))
    else:
        loaded = _loaded()
        devices = sorted(loaded["devices"]) if loaded and loaded.get("devices") else [spec.iface] if spec.iface else []
    from ipt2xdp import backend as backends

    host = read_host_context(attached=devices, backend=backends.resolve(getattr(args, "backend", None)),
                             planned_tables=[t.name for t in ruleset.tables])
    named = set(devices) | ({spec.iface} if spec.iface else set())
    missing = [name for name in named if host.device(name) is None]
    if missing:
        raise UsageError(f"no such device: {', '.join(sorted(missing))} (see `ip link`)")
    return ruleset, host, plan(ruleset, host)


def run(args) -> int:
    from ipt2xdp.errors import UsageError
    from ipt2xdp.explain import explain, render_text
    from ipt2xdp.packetspec import parse_packet

    spec = parse_packet(args.packet)
    if args.loaded and (args.file or args.live):
        raise UsageError("give one of FILE, --live or --loaded")
    if not args.loaded:
        ruleset, host, result = _model_from_input(args, spec)
        model = explain(result, spec, host, ruleset)
        print(json.dumps({"model": model.as_dict()}, indent=2) if args.json else "\n".join(render_text(model)))
        return 0
    return _run_loaded(args, spec)


def _run_loaded(args, spec) -> int:
    from dataclasses import replace

    from ipt2xdp import explain_loaded
    from ipt2xdp.errors import UsageError
    from ipt2xdp.explain import explain, render_text, why

    if args.iface:
        raise UsageError("--iface does not go with --loaded: the loaded plan's devices are the ones it was made for")
    loaded = explain_loaded.load()
    if not spec.iface and loaded.host.attached:
        spec = replace(spec, iface=loaded.host.attached[0])
    if spec.iface and loaded.host.device(spec.iface) is None:
        raise UsageError(f"{spec.iface} was not a device when the loaded plan was made")
    model = explain(loaded.plan, spec, loaded.host, loaded.ruleset)
    if loaded.deferring_all:
        model = replace(model, verdict="PASS", outcome="defer", code="packet.defer-all", why=why("packet.defer-all"),
                        rule=None, path=(), rule_id=None)
    document = {"model": model.as_dict()}
    lines = render_text(model)
    if model.code == "packet.not-attached":
        lines.append("program:  not run: XDP does not see packets on this device")
        document["program"] = None
        return _emit(args, document, lines, 0)
    kernel_ct = explain_loaded.kernel_ct_class(spec)
    compared = model
    if kernel_ct is not None and kernel_ct.name != model.ct_class:
        compared = explain(loaded.plan, spec, loaded.host, loaded.ruleset, ct=kernel_ct)
        lines.append(f"note:     conntrack holds {'an' if kernel_ct.name == 'FOUND' else 'no'} entry for this "
                     f"flow now, so the program's lookup gives {kernel_ct.name}; compared with the model "
                     f"under {kernel_ct.name}: {compared.verdict} ({compared.code})")
        document["model_under_kernel_conntrack"] = compared.as_dict()
    program = explain_loaded.run_program(spec, loaded.host.device(spec.iface).ifindex if spec.iface else 0)
    document["program"] = program.as_dict()
    problems = explain_loaded.disagreements(compared, program)
    document["agree"] = not problems
    where = program.counter if program.passed_before_classifying is None else program.passed_before_classifying
    lines.append(f"program:  {program.verdict} (BPF_PROG_TEST_RUN of the loaded program; counted: {where})")
    if problems:
        lines += ["", "!!! MODEL AND LOADED PROGRAM DISAGREE - this is a bug in ipt2xdp, please report it "
                      "with this output:"] + [f"!!!   {p}" for p in problems]
        print("ipt2xdp: explain: the loaded program disagrees with its plan", file=sys.stderr)
        return _emit(args, document, lines, 1)
    lines.append("          agrees with the model")
    return _emit(args, document, lines, 0)


def _emit(args, document, lines, status: int) -> int:
    print(json.dumps(document, indent=2) if args.json else "\n".join(lines))
    return status
