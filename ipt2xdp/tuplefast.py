# SPDX-License-Identifier: GPL-2.0-only
"""The exact-tuple fast path: boxes of exact values every packet in which the classifier drops
with one rule.

A box is a source prefix, a destination prefix, a protocol, a source port and a destination port,
each either one value (one prefix) or any value, with every other field (device, ICMP type, TCP
flags, conntrack class) any value. Its *shape* says which of the five it fixes and the prefix
lengths: (IPT2XDP_K_* bits, source length, destination length). The program probes the shapes a
generation uses (gen_config.tuple_fast, at most abi.TUPLE_FAST_SHAPES) with the packet's values
masked to each, in one hash map (tuple_fast), right after the blocklist fast path (fastpath.py) and
before any class row. As there, a hit takes the DROP of one rule without classifying: its counter,
its ipset guard, the route check and nat_would_see after it. This module proves from the compiled
classifier that it is exact:

  the box B of rule r is an entry iff r is a DROP whose match is exactly B (it constrains only
  the fields of B's shape, each to B's one value or prefix), and no rule before r (any action,
  any constraint; guards, CONTINUE, jump-path copies, set-guarded drops alike) *meets* B: holds,
  in every field it constrains, some value of B in that field.

Rules on the destination alone are the exception (the planner's first rule defers every
destination that is not local): they are left out of the proof, and the fast path applies only to
destinations none of them before the last entry's rule holds (FastPath.dsts, shared with the
blocklist fast path and checked once before either probe).

Why that suffices: a packet in B to such a destination meets no rule before r (those that miss B
match none of its packets; a CONTINUE that never matches moves nothing), so first-match reaches r,
which matches every packet in B: the classifier drops it with r, as the fast path does. Why it is
needed: an earlier rule that meets B matches some packet in B, or may (the check is per field, so
it is conservative: an earlier rule whose fields each meet B but whose combination misses it still
excludes B). Entries never overlap: of two overlapping boxes the earlier rule's match is its box,
which meets the later one; so a packet hits at most one entry, whatever the probe order. A fixed
port needs a fixed protocol, TCP or UDP: the program reads ports (0 otherwise) for those alone.

The analysis indexes the earlier rules by one narrow field (a few single source addresses, else
destinations, else destination ports; else "loose"), so a box with a fixed /32 source looks up
only the rules naming that source, and it gives up (leaves B to the classifier) where more than
MAX_SCAN earlier rules would have to be looked at: linear in the ruleset for 100k-rule lists.
"""
from __future__ import annotations

import bisect
import itertools
import operator
import struct
from collections import Counter
from operator import itemgetter
from typing import List, Optional, Sequence, Tuple

from ipt2xdp import abi, identitymemo, matchmemo
from ipt2xdp.classifier import ClassifierRule, IntervalSet, Verdict

K_SRC, K_DST, K_PROTO, K_SPORT, K_DPORT = abi.K_SRC, abi.K_DST, abi.K_PROTO, abi.K_SPORT, abi.K_DPORT
MAX_SCAN = 256      # earlier rules looked at for one box beyond this: the box stays classified
MAX_ANCHORS = 16    # single values of a rule's narrow field it is indexed under
Shape = Tuple[int, int, int]   # (K_* bits, source prefix length, destination prefix length)
# (shape, src, dst, proto, sport, dport): host order, 0 where the shape leaves the field open
Box = Tuple[Shape, int, int, int, int, int]


def box_of(match) -> Optional[Box]:
    """The box a match is exactly, or None (another field, several values, a range, a port
    without TCP or UDP, or a shape that is the blocklist's or the destination exception's).
    Written out without loops: it runs per rule."""
    if match.iif is not None or match.icmp is not None or match.tcp_flags is not None or match.ct is not None:
        return None
    fields = src = dst = proto = sport = dport = src_plen = dst_plen = 0
    if match.src is not None:
        intervals = match.src.intervals
        if len(intervals) == 1 and intervals[0][0] == intervals[0][1]:  # the common case, kept cheap
            src, src_plen, fields = intervals[0][0], 32, K_SRC
        else:
            prefix = match.src.as_prefix()
            if prefix is None or not prefix[1]:
                return None
            (src, src_plen), fields = prefix, K_SRC
    if match.dst is not None:
        prefix = match.dst.as_prefix()
        if prefix is None or not prefix[1]:
            return None
        (dst, dst_plen), fields = prefix, fields | K_DST
    if match.proto is not None:
        if len(match.proto) != 1:
            return None
        for proto in match.proto:
            fields |= K_PROTO
    if match.sport is not None:
        intervals = match.sport.intervals
        if len(intervals) != 1 or intervals[0][0] != intervals[0][1] or proto not in (6, 17) or not fields & K_PROTO:
            return None
        sport, fields = intervals[0][0], fields | K_SPORT
    if match.dport is not None:
        intervals = match.dport.intervals
        if len(intervals) != 1 or intervals[0][0] != intervals[0][1] or proto not in (6, 17) or not fields & K_PROTO:
            return None
        dport, fields = intervals[0][0], fields | K_DPORT
    if fields == K_SRC or fields == K_DST:  # the blocklist fast path's, and the destination exception
        return None
    return (fields, src_plen, dst_plen), src, dst, proto, sport, dport


def _span(value: int, plen: int) -> Tuple[int, int]:
    return value, value + (1 << (32 - plen)) - 1


def _holds(addresses: IntervalSet, lo: int, hi: int) -> bool:
    """Whether the set holds some address of lo..hi."""
    intervals = addresses.intervals
    i = bisect.bisect_right(intervals, (hi, 1 << 33)) - 1
    return i >= 0 and intervals[i][1] >= lo


def meets(match, box: Box) -> bool:
    """Whether a rule's match holds, in every field it constrains, some value of the box (so it
    may match a packet in it). Exact per field, per the classifier's contract: ports, ICMP and
    TCP flags match no packet of another protocol."""
    (fields, src_plen, dst_plen), src, dst, proto, sport, dport = box
    if match.src is not None and fields & K_SRC and not _holds(match.src, *_span(src, src_plen)):
        return False
    if match.dst is not None and fields & K_DST and not _holds(match.dst, *_span(dst, dst_plen)):
        return False
    if fields & K_PROTO:
        if match.proto is not None and proto not in match.proto:
            return False
        if (match.sport is not None or match.dport is not None) and proto not in (6, 17):
            return False
        if match.icmp is not None and proto != 1 or match.tcp_flags is not None and proto != 6:
            return False
    if match.sport is not None and fields & K_SPORT and sport not in match.sport:
        return False
    if match.dport is not None and fields & K_DPORT and dport not in match.dport:
        return False
    return True


def _points(values: Optional[IntervalSet]) -> Optional[List[int]]:
    """The single values of a set of a few single values, else None."""
    if values is None or len(values.intervals) > MAX_ANCHORS:
        return None
    if any(lo != hi for lo, hi in values.intervals):
        return None
    return [lo for lo, _ in values.intervals]


class _EarlierRules:
    """The rules seen so far, indexed by one narrow field, to find those that may meet a box
    without looking at all of them."""

    def __init__(self) -> None:
        self.by = {K_SRC: {}, K_DST: {}, K_DPORT: {}}   # anchor field -> value -> rule indices
        self.all = {K_SRC: [], K_DST: [], K_DPORT: [], 0: []}  # anchor field -> rule indices
        self.by_src, self.all_src = self.by[K_SRC], self.all[K_SRC]

    def add(self, index: int, match) -> None:
        src = match.src
        if src is not None and len(src.intervals) == 1 and src.intervals[0][0] == src.intervals[0][1]:
            # the common case, one source address: kept inline for 100k-rule lists
            self.by_src.setdefault(src.intervals[0][0], []).append(index)
            self.all_src.append(index)
            return
        for bit, values in ((K_SRC, src), (K_DST, match.dst), (K_DPORT, match.dport)):
            points = _points(values)
            if points is not None:
                for point in points:
                    self.by[bit].setdefault(point, []).append(index)
                self.all[bit].append(index)
                return
        self.all[0].append(index)

    def that_may_meet(self, box: Box) -> Optional[List[int]]:
        """The indices of the rules seen so far that may meet the box, or None: too many."""
        (fields, src_plen, dst_plen), src, dst, _, _, dport = box
        if fields & K_SRC and src_plen == 32 and not (self.all[K_DST] or self.all[K_DPORT] or self.all[0]):
            return self.by_src.get(src, [])  # the common case: every rule so far names single sources
        out: List[int] = []
        for bit, value, exact in ((K_SRC, src, src_plen == 32), (K_DST, dst, dst_plen == 32),
                                  (K_DPORT, dport, True), (0, 0, False)):
            listed = self.by[bit].get(value, ()) if bit and fields & bit and exact else self.all[bit]
            if len(out) + len(listed) > MAX_SCAN:
                return None
            out.extend(listed)
        return out


def analyse(rules: Sequence[ClassifierRule], action_code, destination_only: Sequence[int], facts=None):
    """(entries, rule indices) of the classifier's exact-tuple fast path: per entry (box, rule_id,
    action code), and the classifier index of its rule. destination_only: the indices of the
    rules on the destination alone, left out of the proof (FastPath.dsts covers them). facts:
    matchmemo.facts_of(rules), if the caller has them."""
    if facts is None:
        facts = matchmemo.facts_of(rules)
    if all(map(operator.is_, map(itemgetter(4), facts), itertools.repeat(None))):
        return [], []  # no rule can be a box (a plain blocklist): no index to build
    drop = Verdict.DROP
    skip = set(destination_only)
    earlier = _EarlierRules()
    entries, rule_index, stop = tuplestretch.leading_single_sources(rules, facts, skip, action_code, earlier)
    by_src, all_src, add = earlier.by_src, earlier.all_src, earlier.add
    # while no earlier rule is indexed but under a single source, a /32 source's box meets only
    # the rules naming that source (that_may_meet's common case, inline)
    others_listed, only_sources = (earlier.all[K_DST], earlier.all[K_DPORT], earlier.all[0]), True
    # while no earlier rule is indexed but under a single source or destination port (a jump on a
    # port, fail2ban's, and its chain's RETURN), that_may_meet's answer for a /32 source, inline
    by_dport, all_dport, all_dst, all_loose = earlier.by[K_DPORT], earlier.all[K_DPORT], earlier.all[K_DST], earlier.all[0]
    ports_only = not (all_dst or all_loose)
    last_action, code = None, 0
    positions = iter(range(stop, len(rules)))
    for index in positions:
        if index in skip:
            continue
        rule = rules[index]
        _, _, point, _, box = facts[index]
        if point is not None and ports_only and not only_sources:
            end = tuplestretch.port_stretch(rules, facts, index, skip, action_code, earlier, entries, rule_index)
            next(itertools.islice(positions, end - index - 1, end - index - 1), None)  # on from end
            continue
        if point is not None and only_sources:
            # the common case (a box's source then is this /32): that_may_meet and the index's
            # add inline, one lookup of the address for both, for 100k-rule lists
            listed = by_src.get(point)
            if box is not None and rule.action.verdict is drop and (
                    listed is None or not any(meets(rules[i].match, box) for i in listed)):
                if rule.action is not last_action:
                    last_action, code = rule.action, action_code(rule.action)
                entries.append((box, rule.rule_id, code))
                rule_index.append(index)
            if listed is None:
                by_src[point] = [index]
            else:
                listed.append(index)
            all_src.append(index)
            continue
        if box is not None and rule.action.verdict is drop:
            shape = box[0]
            if only_sources and shape[0] & K_SRC and shape[1] == 32:
                others = by_src.get(box[1])
                clear = others is None or not any(meets(rules[i].match, box) for i in others)
            elif ports_only and shape[0] & K_SRC and shape[1] == 32:
                named = by_src.get(box[1], ())
                ports = by_dport.get(box[5], ()) if shape[0] & K_DPORT else all_dport
                clear = (len(named) <= MAX_SCAN and len(named) + len(ports) <= MAX_SCAN
                         and not any(meets(rules[i].match, box) for i in itertools.chain(named, ports)))
            else:
                others = earlier.that_may_meet(box)
                clear = others is not None and not any(meets(rules[i].match, box) for i in others)
            if clear:
                if rule.action is not last_action:  # the planner shares Action objects
                    last_action, code = rule.action, action_code(rule.action)
                entries.append((box, rule.rule_id, code))
                rule_index.append(index)
        if point is not None:
            # the common case, one source address: _EarlierRules.add inline for 100k-rule lists
            by_src.setdefault(point, []).append(index)
            all_src.append(index)
        else:
            add(index, rule.match)
            only_sources, ports_only = not any(others_listed), not (all_dst or all_loose)
    return entries, rule_index


def choose_shapes(entries, by_shape: Optional[Counter] = None) -> Tuple[Shape, ...]:
    """The shapes the program probes: most entries first, at most abi.TUPLE_FAST_SHAPES (by_shape:
    the entries per shape, if counted already)."""
    if by_shape is None:
        by_shape = Counter([entry[0][0] for entry in entries])
    return tuple(sorted(by_shape, key=lambda s: (-by_shape[s], s))[:abi.TUPLE_FAST_SHAPES])


def holds(box: Box, src: int, dst: int, proto: int, sport: int, dport: int) -> bool:
    """Whether a packet's values are in the box (the program's masked key equals the box's)."""
    return key_of(box[0], src, dst, proto, sport, dport) == box[1:]


def key_of(shape: Shape, src: int, dst: int, proto: int, sport: int, dport: int) -> Tuple[int, ...]:
    """A packet's values masked to a shape, as the program builds the key (ports 0 without them)."""
    fields, src_plen, dst_plen = shape

    def masked(address, plen):
        return address & (0xFFFFFFFF ^ (0xFFFFFFFF >> plen))
    return (masked(src, src_plen) if fields & K_SRC else 0, masked(dst, dst_plen) if fields & K_DST else 0,
            proto if fields & K_PROTO else 0, sport if fields & K_SPORT else 0, dport if fields & K_DPORT else 0)


def masks(shape: Shape) -> Tuple[int, int, int, int]:
    """What the program ANDs a packet's values with to make a shape's key (gen_config.tuple_fast_*
    masks): source and destination as u32 in memory (network byte order), the ports as the u32
    holding sport then dport in memory, the protocol."""
    fields, src_plen, dst_plen = shape

    def address(bit, plen):
        mask = 0xFFFFFFFF ^ (0xFFFFFFFF >> plen) if fields & bit else 0
        return struct.unpack("=I", struct.pack("!I", mask))[0]
    ports = struct.pack("=HH", 0xFFFF if fields & K_SPORT else 0, 0xFFFF if fields & K_DPORT else 0)
    return (address(K_SRC, src_plen), address(K_DST, dst_plen), struct.unpack("=I", ports)[0],
            0xFF if fields & K_PROTO else 0)


# struct ipt2xdp_exact_key in one pack: addresses and ports in network byte order, then set_id in
# host order (given here byte-swapped where that differs), the protocol and a zero pad
_KEY = struct.Struct("!IIHHHBB")


def _host_u16(value: int) -> int:
    """The u16 whose network-order bytes are value's host-order bytes."""
    return struct.unpack("!H", struct.pack("=H", value))[0]


# (boxes, shape -> set id, their keys) of the last encode(): held, so the boxes keep their ids.
_LAST_KEYS: list = [[], None, b""]


def encode(entries, shapes: Sequence[Shape]) -> Tuple[bytes, bytes, int]:
    """(keys, values, count) of the tuple_fast map: the entries of probed shapes, keyed as
    struct ipt2xdp_exact_key with set_id = the shape's index in gen_config.tuple_fast. Packed
    column by column in C-level passes (10k-entry lists on every re-plan)."""
    index = {shape: _host_u16(i) for i, shape in enumerate(shapes)}
    chosen = [entry for entry in entries if entry[0][0] in index]
    boxes = list(map(itemgetter(0), chosen))
    # a key is a function of its box and the shapes: the keys of the boxes the last call began with
    # (the very objects: matchmemo keeps a match's box) are its bytes, packed again only after them
    last_boxes, last_index, last_keys = _LAST_KEYS
    same = identitymemo.identical_prefix(last_boxes, boxes) if last_index == index else 0
    fresh = boxes[same:]
    keys = last_keys[:same * _KEY.size] + b"".join(
        map(_KEY.pack, map(itemgetter(1), fresh), map(itemgetter(2), fresh), map(itemgetter(4), fresh),
            map(itemgetter(5), fresh), map(index.__getitem__, map(itemgetter(0), fresh)),
            map(itemgetter(3), fresh), itertools.repeat(0, len(fresh))))
    _LAST_KEYS[:] = [boxes, index, keys]
    n = len(chosen)
    rule_ids = struct.pack(f"={n}I", *map(itemgetter(1), chosen))
    codes = struct.pack(f"={n}I", *map(itemgetter(2), chosen))
    values = bytearray(8 * n)  # rule_id, code: the two u32 arrays interleaved
    for byte in range(4):
        values[byte::8] = rule_ids[byte::4]
        values[4 + byte::8] = codes[byte::4]
    return keys, bytes(values), n


def describe(box: Box) -> str:
    """The box as iptables-like text (mapencode dumps, mapdiff)."""
    (fields, src_plen, dst_plen), src, dst, proto, sport, dport = box

    def address(value, plen):
        return ".".join(str(value >> s & 255) for s in (24, 16, 8, 0)) + f"/{plen}"
    parts = []
    if fields & K_SRC:
        parts.append("-s " + address(src, src_plen))
    if fields & K_DST:
        parts.append("-d " + address(dst, dst_plen))
    if fields & K_PROTO:
        parts.append(f"-p {proto}")
    if fields & K_SPORT:
        parts.append(f"--sport {sport}")
    if fields & K_DPORT:
        parts.append(f"--dport {dport}")
    return " ".join(parts)


from ipt2xdp import tuplestretch  # noqa: E402 - it reads this module's meets and MAX_SCAN when called
