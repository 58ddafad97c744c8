# SPDX-License-Identifier: GPL-2.0-only
"""`ipt2xdp watch`: a small long-running service that keeps XDP in step with changes made behind
the wrapper's back, in the current network namespace (so `ip netns exec NAME ipt2xdp watch` works).

Serves the wrapper's syncs on a root-only unix socket (watch/server.py). Logs one line per event to stderr (journald under systemd). Exit codes: 0 stopped by SIGTERM or
SIGINT, 1 could not start (e.g. no permission for the netlink sockets), 2 bad arguments.
"""
from __future__ import annotations

HELP = "keep XDP in step with changes made around the wrapper (nft, iptables-legacy, addresses); runs until SIGTERM"


def add_arguments(parser):
    parser.add_argument("--backend", choices=("legacy", "nft"),
                        help="backend to re-import from (default: the one the loaded plan was imported from)")
    parser.add_argument("--debounce", type=float, default=0.2, metavar="SECONDS",
                        help="re-import once changes have stopped for this long (default 0.2; XDP defers at once)")
    parser.add_argument("--legacy-interval", type=float, metavar="SECONDS",
                        help="how often to poll the legacy tables' digest (default 1.0)")
    parser.add_argument("--no-socket", action="store_true",
                        help="do not serve wrapper calls on /run/ipt2xdp/<netns>/watch.sock (they sync in "
                             "their own process then)")
    parser.add_argument("--trigger", action="append", metavar="NAME",
                        help="use only these triggers (repeatable; default: all, e.g. nftables, legacy, host)")


def run(args) -> int:
    from ipt2xdp.errors import UsageError
    from ipt2xdp.watch import service, triggers

    if args.debounce < 0 or (args.legacy_interval is not None and args.legacy_interval <= 0):
        raise UsageError("--debounce must be >= 0 and --legacy-interval > 0")
    if args.legacy_interval is not None:
        triggers.LEGACY_POLL_SECONDS = args.legacy_interval
    try:
        built = triggers.build(args.trigger)
    except OSError as error:
        service.log(f"cannot start: {error.strerror or error} (needs root / CAP_NET_ADMIN)")
        return service.EXIT_FAILED
    if not built:
        raise UsageError(f"no such trigger: {', '.join(args.trigger or [])}")
    return service.Watcher(built, backend=args.backend, debounce=args.debounce,
                           serve_wrapper=not args.no_socket).run()
