# SPDX-License-Identifier: GPL-2.0-only
"""`ipt2xdp detach [--iface IF ... | --all]`: leave netfilter alone in charge."""
from __future__ import annotations

from ipt2xdp.errors import UsageError

HELP = "detach XDP from devices (--all also removes the pinned program and maps)"


def add_arguments(parser):
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--iface", action="append", metavar="IF", help="device to detach from (repeatable)")
    group.add_argument("--all", action="store_true", help="every device, then unpin everything")


def run(args) -> int:
    from ipt2xdp import libbpf, loader, planstore

    libbpf.set_verbose(getattr(args, "verbose", False))
    if not args.all and not args.iface:
        raise UsageError("give --iface IF or --all")
    done = loader.detach(args.iface or (), all_devices=args.all)
    for name in done:
        print(f"ipt2xdp: detached from {name}")
    if args.all:
        planstore.remove_all()
        print("ipt2xdp: removed the pinned program and maps; netfilter alone decides")
    return 0
