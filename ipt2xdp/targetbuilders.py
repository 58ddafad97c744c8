# SPDX-License-Identifier: GPL-2.0-only
"""The target builders: the options collected for one -j target turned into its irtargets value,
with the checks iptables 1.8.9 makes (see optionvalues.py for the builder contract). TARGET_BUILDERS
maps a target name to its builder; a target without one is kept generically (ruleparse).

Separate from matchbuilders.py: matches and targets are distinct IR modules (irmatches, irtargets).
"""
from __future__ import annotations

from typing import Callable, Dict

from ipt2xdp import irtargets
from ipt2xdp.options import LOG_LEVELS, REJECT_TYPES
from ipt2xdp.optionvalues import OptionError, options_by_name, uint


def reject(given, proto, index):
    g = options_by_name(given).get("--reject-with")
    if g is None:
        return irtargets.Reject()
    name = REJECT_TYPES.get(g.args[0])
    if name is None:
        raise OptionError(g.index + 1, f"unknown reject type '{g.args[0]}'")
    if name == "tcp-reset" and proto != "tcp":
        raise OptionError(g.index + 1, "--reject-with tcp-reset needs -p tcp")
    return irtargets.Reject(name)


def log(given, proto, index):
    seen = options_by_name(given)
    # iptables 1.8.9 silently cuts a longer prefix to the 29 characters the kernel keeps
    prefix = seen["--log-prefix"].args[0][:29] if "--log-prefix" in seen else ""
    level = 4
    if "--log-level" in seen:
        g = seen["--log-level"]
        level = LOG_LEVELS.get(g.args[0])
        if level is None:
            level = uint(g.args[0], g.index + 1, "log level", 7)
    flags = frozenset(f for f in irtargets.LOG_FLAGS if f"--log-{f}" in seen)
    return irtargets.Log(prefix, level, flags)


def nflog(given, proto, index):
    seen = options_by_name(given)

    def num(name, maximum):
        g = seen.get(name)
        return None if g is None else uint(g.args[0], g.index + 1, name[2:], maximum)
    prefix = seen["--nflog-prefix"].args[0] if "--nflog-prefix" in seen else ""
    if len(prefix) > 63:
        raise OptionError(seen["--nflog-prefix"].index + 1, "maximum prefix length 63 for --nflog-prefix")
    threshold = num("--nflog-threshold", 0xFFFF)
    return irtargets.Nflog(group=num("--nflog-group", 0xFFFF) or 0, prefix=prefix, size=num("--nflog-size", 0xFFFFFFFF),
                    range=num("--nflog-range", 0xFFFFFFFF), threshold=1 if threshold is None else threshold)


TARGET_BUILDERS: Dict[str, Callable] = {
    "ACCEPT": lambda g, p, i: irtargets.Accept(), "DROP": lambda g, p, i: irtargets.Drop(),
    "RETURN": lambda g, p, i: irtargets.Return(), "REJECT": reject, "LOG": log, "NFLOG": nflog,
}
