# SPDX-License-Identifier: GPL-2.0-only
"""The matches whose meaning depends on the host: `-i` (the name netfilter sees for an attached
device: a bond slave's bond; bridge ports and devices under macvlan/ipvlan/vlan are ambiguous) and
`-m addrtype` (address types from the routes read at import, as disjoint alternatives, unknown
where a route change could alter them). Used by translate.py.
"""
from __future__ import annotations

from typing import Dict, FrozenSet, List, Optional, Tuple

from ipt2xdp import addrtype, ir, irmatches
from ipt2xdp.classifier import U32_MAX, IntervalSet, Match
from ipt2xdp.hostinfo import HostContext


UPPER_KINDS = ("macvlan", "macvtap", "ipvlan", "ipvtap", "vlan")


def _bonds_of(host: HostContext, device) -> Tuple[list, tuple]:
    """(the device, then the bonds it is in, innermost first: netfilter sees its packets on the
    last; the masters above the outer bond, nearest first, None for one not known)."""
    masters = host.masters(device)
    seen_as = [device]
    for master in masters:
        if master is None or master.kind != "bond":
            break
        seen_as.append(master)
    return seen_as, masters[len(seen_as) - 1:]


def nf_interface_names(host: HostContext) -> Tuple[Dict[int, str], FrozenSet[int]]:
    """For each attached device: the name netfilter's -i compares against, and the ambiguous ones.

    A bond slave's packets reach netfilter on the bond (on the outer bond of nested bonds); a
    bridge port's on the bridge, unless br_netfilter sees them as bridged, and the same holds for a
    bond that is itself a bridge port (or a VRF slave: netfilter sees the VRF device). A device
    under macvlan/ipvlan may hand packets to its upper device, and one under a vlan device hands it
    every frame of that VLAN: with the NIC stripping the tag (rx VLAN offload, the default on most),
    XDP sees such a frame untagged, as if it were the device's own; the uppers of the bond a slave
    is in do the same to the slave's frames. The first is exact; the others are ambiguous, so -i
    rules defer for those devices.
    """
    names, ambiguous = {}, set()
    for name in host.attached:
        device = host.device(name)
        if device is None:
            continue
        seen_as, above = _bonds_of(host, device)
        names[device.ifindex] = seen_as[-1].name
        if above:  # a master other than a bond above them, or one not known
            ambiguous.add(device.ifindex)
        lowers = {d.ifindex for d in seen_as}
        if any(d.link in lowers and d.kind in UPPER_KINDS for d in host.devices):
            ambiguous.add(device.ifindex)
    return names, frozenset(ambiguous)


def interface_match(iface: ir.Interface, names: Dict[int, str]) -> FrozenSet[int]:
    def hit(name: str) -> bool:
        return name.startswith(iface.prefix) if iface.wildcard else name == iface.name

    return frozenset(ifindex for ifindex, name in names.items() if hit(name) != iface.negated)


def _nf_ifindex(host: HostContext, ifindex: int) -> Optional[int]:
    """The input device netfilter (and inet_dev_addr_type) sees for an attached one: a bond slave's
    bond (the outer one of nested bonds); None for a slave of a VRF (its addresses live in the
    VRF's table) or of a master not known."""
    device = next((d for d in host.devices if d.ifindex == ifindex), None)
    if device is None:
        return ifindex
    seen_as, above = _bonds_of(host, device)
    if above and (above[0] is None or above[0].kind == "vrf"):
        return None
    return seen_as[-1].ifindex


def addrtype_alternatives(match: irmatches.AddrtypeMatch, host: HostContext,
                           interfaces: Tuple[Dict[int, str], FrozenSet[int]]) -> List[Tuple[Match, Optional[str]]]:
    """-m addrtype as disjoint alternatives. A destination's type comes from the routes read at
    import: only destinations local then are decided in XDP (the planner's guard), and a DROP is
    taken only while the kernel still delivers locally (bpf_fib_lookup), so a removed address is
    never judged by its old type. A source has no such guard (an address moved to another host
    keeps sending): outside the ranges whose type no route changes, it is unknown."""
    unknown = "match.addrtype"
    out: List[Tuple[Match, Optional[str]]] = []
    if match.limit_iface_out or (match.dst is not None and host.route_types is None):
        return [(Match(), unknown)]
    names, ambiguous = interfaces
    if match.dst is not None and match.limit_iface_in:
        devices: List[Tuple[Optional[FrozenSet[int]], Optional[int]]] = []
        for ifindex in names:
            nf = None if ifindex in ambiguous else _nf_ifindex(host, ifindex)
            if nf is None:
                out.append((Match(iif=frozenset({ifindex})), unknown))
            else:
                devices.append((frozenset({ifindex}), nf))
    else:
        devices = [(None, None)]
    for iif, nf in devices:
        dst_alts: List[Tuple[Optional[IntervalSet], Optional[str]]] = [(None, None)]
        if match.dst is not None:
            types, uncertain = addrtype.address_types(host.route_types, nf)
            dst_alts = [(addrtype.selected(types, match.dst.types, match.dst.negated), None), (uncertain, unknown)]
        for dst, reason in dst_alts:
            if dst is not None and not dst:
                continue
            for src, src_reason in src_type_alternatives(match.src):
                out.append((Match(src=src, dst=dst, iif=iif), reason or src_reason))
    return [(m, r) for m, r in out if all(v is None or v for v in (m.src, m.dst, m.iif))]


def src_type_alternatives(types: Optional[irmatches.AddrTypes]) -> List[Tuple[Optional[IntervalSet], Optional[str]]]:
    if types is None:
        return [(None, None)]
    intrinsic = IntervalSet()
    for kind, addresses in addrtype.INTRINSIC:
        if (kind in types.types) != types.negated:
            intrinsic = intrinsic.union(addresses)
    routed = frozenset(t for t in addrtype.ROUTED_TYPES if (t in types.types) != types.negated)
    rest = addrtype.INTRINSIC_ALL.complement(U32_MAX)
    if routed == addrtype.ROUTED_TYPES:
        return [(intrinsic.union(rest), None)]
    return [(intrinsic, None)] + ([(rest, "match.addrtype")] if routed else [])
