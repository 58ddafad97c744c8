# SPDX-License-Identifier: GPL-2.0-only
"""The blocklist fast path: source prefixes whose packets the classifier drops whatever else they hold.

The program probes these prefixes (map src_fast) right after parsing and, on a hit, takes the DROP
without classifying: the same rule's counter, the same ipset guard, the same route check before the
drop. That is exact only if, for *every* IPv4 packet from the prefix (any protocol, ports, device,
conntrack class, destination), first-match evaluation of the classifier ends at that one DROP rule.
This module proves it from the compiled classifier (the plan after guards, deferrals, inlined user
chains and ipset expansion), never from ruleset text:

  a prefix P of rule r qualifies iff r is a DROP whose only constraint is its source, r's source
  covers P, and no rule before r (any action, any other constraints) has a source that meets P
  (r's source minus the earlier rules' sources, cut into CIDR blocks).

Rules that constrain the destination alone (the planner's first rule defers every destination that
is not local) are the exception: the fast path applies only to destinations none of them (before
the last entry's rule) holds, a few ranges the program checks before probing (gen_config).

Why that suffices: a rule before r whose source misses P matches no packet from P, so it neither
decides nor jumps (a CONTINUE that never matches moves nothing); r then matches every packet from P.
Why it is needed: any earlier rule whose source meets P (an ACCEPT, a ct-state rule, a per-device
rule, a DEFER guard from raw/mangle/nat, a CONTINUE, a `-p tcp` DROP with another counter) decides
some packet from P differently, or may; a rule with no source constraint meets every prefix. The
check looks only at sources, so it is conservative: an earlier rule that could never match packets
from P for another reason still excludes P. Qualifying prefixes never overlap (of two overlapping
ones, the later rule's meets the earlier rule's source), so at most one entry holds a packet.

The packet-level checks before any classification (non-IPv4, fragments, IP options, truncated L4
headers, no generation in force) stay before the probe in the program, so what reaches it is what
reaches classification.

The exact-tuple fast path (tuplefast.py: boxes of exact source, destination, protocol and ports)
is proven the same way beside it, shares the destination exception, and is held here too (FastPath.tuples).

What the fast path decides then leaves the classifier (reduce_classifier, fastreduce.py): a probed
prefix is cut from its rule's source where no packet from it that is still classified could reach
that rule, so a source not on the list is classified against the rest of the ruleset only, not the
whole list.
"""
from __future__ import annotations

import bisect
import heapq
import operator
import struct
from collections import Counter
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import itemgetter
from typing import Dict, List, Optional, Sequence, Tuple

from ipt2xdp import abi, matchmemo, tuplefast
from ipt2xdp.classifier import ClassifierRule, IntervalSet, Verdict

U32_MAX = 0xFFFFFFFF
MAX_PREFIXES_PER_INTERVAL = 64  # a source range that splits into more CIDR blocks is left to the classifier
MAX_WIDE_SCAN = 4096            # earlier sources inside one wide candidate beyond this: leave it out
_OTHER_FIELDS = ("dst", "proto", "sport", "dport", "iif", "icmp", "tcp_flags", "ct")


@dataclass
class FastPath:
    """Qualifying prefixes, and the ones the program will probe (at most abi.SRC_FAST_PLENS lengths)."""

    entries: List[Tuple[int, int, int, int]] = field(default_factory=list)  # (network, plen, rule_id, action code)
    rule_index: List[int] = field(default_factory=list)  # per entry: the classifier index of its rule
    plens: Tuple[int, ...] = ()          # probed prefix lengths, most entries first (none: no fast path)
    left_out: int = 0                    # qualifying prefixes that are not probed
    dsts: IntervalSet = IntervalSet(((0, U32_MAX),))  # destinations the fast paths apply to
    # the exact-tuple fast path (tuplefast.py): (box, rule_id, action code) per entry, its rule's
    # classifier index, the shapes probed (none: no such fast path), entries of other shapes
    tuples: List[Tuple[tuplefast.Box, int, int]] = field(default_factory=list)
    tuple_index: List[int] = field(default_factory=list)
    shapes: Tuple[tuplefast.Shape, ...] = ()
    tuple_left_out: int = 0
    # the classifier indices of the rules on the destination alone (None: unknown, fastreduce looks)
    destination_only: Optional[List[int]] = None

    def probe(self, address: int, dst: Optional[int] = None):
        """(rule_id, action code) of the probed entry holding the host-order source address (for a
        packet to dst: None if dst is outside self.dsts), or None; what the program answers."""
        if dst is not None and dst not in self.dsts:
            return None
        index = getattr(self, "_index", None)
        if index is None:
            index = self._index = {(net, plen): (rule_id, code) for net, plen, rule_id, code in self.entries
                                   if plen in self.plens}
        for plen in self.plens:
            net = address & (U32_MAX ^ (U32_MAX >> plen))
            if (net, plen) in index:
                return index[(net, plen)]
        return None

    def probe_packet(self, src: int, dst: int, proto: int, sport: Optional[int], dport: Optional[int]):
        """(rule_id, action code) the program's fast paths answer for a packet (host order; ports
        None without them), or None: src_fast first, then each probed shape of tuple_fast."""
        if dst not in self.dsts:
            return None
        hit = self.probe(src)
        if hit is not None:
            return hit
        index = getattr(self, "_tuple_index", None)
        if index is None:
            index = self._tuple_index = {box: (rule_id, code) for box, rule_id, code in self.tuples
                                         if box[0] in self.shapes}
        ports = (sport or 0, dport or 0) if proto in (6, 17) else (0, 0)
        for shape in self.shapes:
            key = (shape,) + tuplefast.key_of(shape, src, dst, proto, *ports)
            if key in index:
                return index[key]
        return None


def _cidr_blocks(lo: int, hi: int, limit: int) -> List[Tuple[int, int]]:
    """The CIDR blocks that tile lo..hi (largest first from lo), or [] beyond limit blocks."""
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 32
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, 33 - size.bit_length()))
        if len(out) > limit:
            return []
        lo += size
    return out


def _only_destination(match) -> bool:
    """Whether the match constrains the destination and nothing else (the source is checked apart)."""
    return (match.dst is not None and match.proto is None and match.sport is None and match.dport is None
            and match.iif is None and match.icmp is None and match.tcp_flags is None and match.ct is None)


def _only_source(match) -> bool:
    """Whether the match constrains nothing but the source (written out: it runs per rule)."""
    return (match.dst is None and match.proto is None and match.sport is None and match.dport is None
            and match.iif is None and match.icmp is None and match.tcp_flags is None and match.ct is None)


def _positions(values: List[int], value: int, start: int, stop: int) -> List[int]:
    """The indices in start..stop-1 where values holds value (list.index: a few are expected)."""
    out = []
    try:
        while True:
            start = values.index(value, start, stop)
            out.append(start)
            start += 1
    except ValueError:
        return out


def _wide_first(wide: List[Tuple[int, int, int]]) -> Tuple[List[int], List[int]]:
    """Cut the address space at the wide intervals' ends; per piece, the lowest rule index whose
    interval covers it (len(rules) = none): (piece starts, lowest index)."""
    events: Dict[int, List[Tuple[int, int]]] = {}
    for lo, hi, index in wide:
        events.setdefault(lo, []).append((1, index))
        events.setdefault(hi + 1, []).append((-1, index))
    starts, lowest = [0], [None]
    heap: List[int] = []
    removed: Counter = Counter()
    for point in sorted(events):
        for kind, index in events[point]:
            if kind > 0:
                heapq.heappush(heap, index)
            else:
                removed[index] += 1
        while heap and removed[heap[0]]:
            removed[heapq.heappop(heap)] -= 1
        if point > U32_MAX:
            break
        first = heap[0] if heap else None
        if starts[-1] == point:
            lowest[-1] = first
        else:
            starts.append(point)
            lowest.append(first)
    return starts, lowest


def analyse(rules: Sequence[ClassifierRule], action_code) -> FastPath:
    """The fast path of a classifier (the rules the program holds, in first-match order).

    action_code(Action) -> the slot action byte (mapencode.action_code), so a guarded DROP keeps
    its guard on the fast path."""
    # Rules that look at the destination alone stay out of the source analysis: the fast path
    # applies only to destinations none of them holds. Only rules up to the first other rule
    # without a source constraint can matter: it meets every prefix. What is asked of each rule's
    # match is kept with it (matchmemo) and read in C-level passes: 10k-rule lists are re-analysed
    # after every change by `ipt2xdp watch`.
    facts = matchmemo.facts_of(rules)
    kinds = list(map(itemgetter(1), facts))
    end = kinds.index(matchmemo.UNSOURCED) if matchmemo.UNSOURCED in kinds else len(rules)
    destination_only = _positions(kinds, matchmemo.DESTINATION, 0, end)
    # the rules on the source alone: none in a list of exact tuples, which needs no index below
    sourced = list(compress(range(end), map(itemgetter(3), facts)))
    single = list(compress(range(end), map(operator.eq, kinds, repeat(matchmemo.SINGLE)))) if sourced else []
    # single address -> lowest rule index with it (reversed: the first index is written last)
    points: Dict[int, int] = dict(zip(map(itemgetter(2), map(facts.__getitem__, reversed(single))), reversed(single)))
    wide: List[Tuple[int, int, int]] = []       # (lo, hi, rule index) of longer source intervals
    for index in (_positions(kinds, matchmemo.SOURCE, 0, end) if sourced else ()):
        for lo, hi in rules[index].match.src.intervals:
            if lo != hi:
                wide.append((lo, hi, index))
            elif points.setdefault(lo, index) > index:
                points[lo] = index
    starts, lowest = _wide_first(wide)
    sorted_points: List[int] = []

    def free_parts(lo: int, hi: int, index: int) -> Optional[IntervalSet]:
        """The addresses of lo..hi that no source of a rule before `index` holds (None: too many
        earlier sources inside to look at; the interval is left to the classifier)."""
        blocked = []
        i = bisect.bisect_right(starts, lo) - 1
        for i in range(i, min(len(starts), i + MAX_WIDE_SCAN)):
            if starts[i] > hi:
                break
            if lowest[i] is not None and lowest[i] < index:
                piece_end = starts[i + 1] - 1 if i + 1 < len(starts) else U32_MAX
                blocked.append((max(lo, starts[i]), min(hi, piece_end)))
        else:
            if i + 1 < len(starts) and starts[i + 1] <= hi:
                return None
        if not sorted_points:
            sorted_points.extend(sorted(points))
        a, b = bisect.bisect_left(sorted_points, lo), bisect.bisect_right(sorted_points, hi)
        if b - a > MAX_WIDE_SCAN:
            return None
        blocked.extend((p, p) for p in sorted_points[a:b] if points[p] < index)
        return IntervalSet.range(lo, hi).intersection(IntervalSet.of(blocked).complement(U32_MAX))

    entries, rule_index = [], []
    add, at = entries.append, rule_index.append
    last_index = 0  # of the last rule with an entry
    last_action, code = None, 0
    drop = Verdict.DROP
    for index in sourced:
        rule = rules[index]
        action = rule.action
        if action.verdict is not drop:
            continue
        if action is not last_action:  # the planner shares Action objects: no hashing per rule
            last_action, code = action, action_code(action)
        point = facts[index][2]
        if point is not None and not wide:
            # the common case, a /32 among /32s: kept inline for 100k-address blocklists
            if points[point] == index:
                add((point, 32, rule.rule_id, code))
                at(index)
                last_index = index
            continue
        intervals = rule.match.src.intervals
        rule_id = rule.rule_id
        count = len(entries)
        for lo, hi in intervals:
            if lo == hi and not wide:
                if points[lo] == index:
                    add((lo, 32, rule_id, code))
                    at(index)
                continue
            free = free_parts(lo, hi, index)
            for part_lo, part_hi in free or ():
                for net, plen in _cidr_blocks(part_lo, part_hi, MAX_PREFIXES_PER_INTERVAL):
                    if plen:
                        add((net, plen, rule_id, code))
                        at(index)
        if len(entries) > count:
            last_index = index
    by_length = Counter(map(itemgetter(1), entries))
    plens = tuple(sorted(by_length, key=lambda p: (-by_length[p], -p))[:abi.SRC_FAST_PLENS])
    left_out = sum(n for p, n in by_length.items() if p not in plens)
    every_destination_only = destination_only + _positions(kinds, matchmemo.DESTINATION, end, len(rules))
    tuples, tuple_index = tuplefast.analyse(rules, action_code, every_destination_only, facts)
    by_shape = Counter(map(itemgetter(0), map(itemgetter(0), tuples)))
    shapes = tuplefast.choose_shapes(tuples, by_shape)
    tuple_left_out = sum(n for shape, n in by_shape.items() if shape not in shapes)
    if tuples:
        last_index = max(last_index, tuple_index[-1])
    # destinations no destination-only rule before the last entry's rule holds
    guarded = IntervalSet.of(iv for i in every_destination_only if i < last_index
                             for iv in rules[i].match.dst.intervals)
    dsts = guarded.complement(U32_MAX)
    if not (entries or tuples) or not dsts or len(dsts.intervals) > abi.SRC_FAST_DSTS:
        return FastPath(entries=entries, rule_index=rule_index, left_out=len(entries), dsts=dsts,
                        tuples=tuples, tuple_index=tuple_index, tuple_left_out=len(tuples),
                        destination_only=every_destination_only)
    return FastPath(entries=entries, rule_index=rule_index, plens=plens, left_out=left_out, dsts=dsts,
                    tuples=tuples, tuple_index=tuple_index, shapes=shapes, tuple_left_out=tuple_left_out,
                    destination_only=every_destination_only)


def reduce_classifier(rules: Sequence[ClassifierRule], fast: FastPath) -> Optional[List[ClassifierRule]]:
    """fastreduce.reduce_classifier (kept under this name: compile and tests call it here)."""
    from ipt2xdp.fastreduce import reduce_classifier as reduce

    return reduce(rules, fast)


def encode(fast: FastPath) -> Tuple[bytes, bytes, int]:
    """(keys, values, count) of the src_fast map: only the probed lengths. Packed in a few bulk
    calls (100k-entry blocklists): the network in network byte order, the rest host order."""
    chosen = [e for e in fast.entries if e[1] in fast.plens]
    n = len(chosen)
    nets = struct.pack(f"!{n}I", *(e[0] for e in chosen))
    plens = struct.pack(f"={n}I", *(e[1] for e in chosen))
    counters = struct.pack(f"={n}I", *(e[2] for e in chosen))
    codes = struct.pack(f"={n}I", *(e[3] for e in chosen))
    return _pairs(nets, plens), _pairs(counters, codes), n


def _pairs(first: bytes, second: bytes) -> bytes:
    """Interleave two arrays of 4-byte values: first[0], second[0], first[1], ..."""
    out = bytearray(2 * len(first))
    for byte in range(4):
        out[byte::8] = first[byte::4]
        out[4 + byte::8] = second[byte::4]
    return bytes(out)
