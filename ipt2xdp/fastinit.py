# SPDX-License-Identifier: GPL-2.0-only
"""Building many small immutable objects fast: a parse of 100,000 rules makes millions of them.

`fast_constructor(cls)` is a frozen dataclass's constructor without the per-field
object.__setattr__; `make_network(value, bits)` is IPv4Network((value, bits)) without
re-validating a value that has no host bits. Each falls back to the real constructor where it
cannot give the same object.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import itertools


def fast_constructor(cls):
    """A constructor for a frozen dataclass that fills the instance dict in one step.

    The dataclass __init__ sets each field through object.__setattr__ (frozen), which is most of
    the cost of building 100,000 rules. Same fields, same defaults, same resulting object; classes
    with slots, default factories or __post_init__ keep their own constructor.
    """
    fs = dataclasses.fields(cls)
    if (hasattr(cls, "__slots__") or hasattr(cls, "__post_init__")
            or any(f.default_factory is not dataclasses.MISSING or not f.init for f in fs)):
        return cls
    names = [f.name for f in fs]
    defaults = {f"_d_{f.name}": f.default for f in fs if f.default is not dataclasses.MISSING}
    params = ", ".join(f"{n}=_d_{n}" if f"_d_{n}" in defaults else n for n in names)
    body = ", ".join(f"{n!r}: {n}" for n in names)
    namespace = {"_cls": cls, "_new": object.__new__, "_set": object.__setattr__, **defaults}
    exec(f"def make({params}):\n    o = _new(_cls)\n    _set(o, '__dict__', {{{body}}})\n    return o\n", namespace)
    return namespace["make"]




def _slow_network(value: int, bits: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network((value, bits))


_NETMASKS = {bits: ipaddress.IPv4Network._make_netmask(bits) for bits in range(33)}


def _quick_network(value: int, bits: int) -> ipaddress.IPv4Network:
    """IPv4Network((value, bits)) for a value with no host bits, without re-validating it."""
    address = object.__new__(ipaddress.IPv4Address)
    address._ip = value
    net = object.__new__(ipaddress.IPv4Network)
    d = net.__dict__
    d["network_address"] = address
    d["netmask"], d["_prefixlen"] = _NETMASKS[bits]
    if bits == 31:
        d["hosts"] = net.__iter__
    elif bits == 32:
        d["hosts"] = lambda: [ipaddress.IPv4Address(value)]
    return net


def _check_quick_network() -> bool:
    """_quick_network builds what this Python's ipaddress builds (else the slow one is used)."""
    try:
        for value, bits in ((0x0A000001, 32), (0x0A000000, 31), (0x0A000000, 24), (0, 0)):
            fast, real = _quick_network(value, bits), _slow_network(value, bits)
            if (sorted(vars(fast)) != sorted(vars(real)) or fast != real or hash(fast) != hash(real)
                    or str(fast) != str(real) or fast.netmask != real.netmask
                    or fast.prefixlen != real.prefixlen
                    or list(itertools.islice(fast.hosts(), 3)) != list(itertools.islice(real.hosts(), 3))):
                return False
        return True
    except Exception:  # noqa: BLE001 - any surprise means: use the real constructor
        return False


make_network = _quick_network if _check_quick_network() else _slow_network
