# SPDX-License-Identifier: GPL-2.0-only
"""Values kept by the identity of the (frozen) object they were derived from, between the plans or
compiles of a long-lived planner (matchmemo.py, splitmemo.py).

An entry is keyed by id(obj) and holds obj itself as its first item: while the entry lives no other
object can have that id, and a lookup serves it only for the very object asked about. An equal
object that is another one is derived anew (to the same value). Hashing the objects instead would
hash every field, about as slow as deriving the value. And where a re-plan's lists start with the
very objects of the last one's: identical_prefix, common_prefix."""
from __future__ import annotations

import itertools
import operator
from typing import Callable, Dict, List, Optional, Sequence

_MISSING = (None,)


def kept(table: Dict[int, tuple], objects: Sequence, make: Callable[[object], tuple]) -> List[tuple]:
    """table's entry of each object, in order: looked up in C-level passes, and made by make(obj)
    (a tuple whose first item is obj) and kept for the objects not seen before."""
    found = list(map(table.get, map(id, objects), itertools.repeat(_MISSING)))
    served = list(map(operator.is_, map(operator.itemgetter(0), found), objects))
    if not all(served):
        for index in itertools.compress(range(len(served)), map(operator.not_, served)):
            obj = objects[index]
            found[index] = table[id(obj)] = make(obj)
    return found


class Positional:
    """kept() for lists that hold, at most places, the very objects the last list asked about
    held there (a re-plan's: most rules keep their position): those entries are taken from the
    last answer after pointer compares in C, without a lookup (10k dict lookups cost about 2 ms,
    most of it reading entries from memory no pass touched since); the others from kept()."""

    def __init__(self) -> None:
        self.objects: list = []   # held: their ids stay theirs while the entries are served
        self.entries: list = []

    def kept(self, table: Dict[int, tuple], objects: Sequence, make: Callable[[object], tuple]) -> List[tuple]:
        last = self.objects
        fresh = other_positions(last, objects)
        if not last or len(fresh) > len(objects) // 4:
            entries = kept(table, objects, make)
        else:
            entries = self.entries[:len(objects)] + [None] * (len(objects) - len(last))
            for index, entry in zip(fresh, kept(table, [objects[i] for i in fresh], make)):
                entries[index] = entry
        self.objects, self.entries = list(objects), entries
        return entries


def other_positions(old: Sequence, new: Sequence) -> List[int]:
    """The positions in new that do not hold the very object old holds there (pointer compares in
    C: no item is read), those past old's end included."""
    return (list(itertools.compress(range(len(new)), map(operator.is_not, old, new)))
            + list(range(len(old), len(new))))


def identical_prefix(old: Sequence, new: Sequence, limit: Optional[int] = None) -> int:
    """How many leading items of new (at most limit) are the very objects of old."""
    most = min(len(old), len(new)) if limit is None else max(min(len(old), len(new), limit), 0)
    return next(itertools.compress(itertools.count(), map(operator.is_not, itertools.islice(old, most),
                                                           itertools.islice(new, most))), most)


# common_prefix compares at most this many items that are other objects by value (Python-level,
# like building their records): a longer prefix of equal copies is not worth taking.
MAX_EQUAL_COPIES = 64


def common_prefix(old: Sequence, new: Sequence) -> int:
    """How many leading items of new equal those of old (a shorter answer is never wrong, only
    takes less): the very objects, scanned for in C, and up to MAX_EQUAL_COPIES other objects
    of equal value (a re-plan makes some again, such as the policy's decision)."""
    limit = min(len(old), len(new))
    others = itertools.compress(itertools.count(), map(operator.is_not, old, new))  # other objects' positions
    for index in itertools.islice(others, MAX_EQUAL_COPIES):
        if new[index] != old[index]:
            return index
    return next(others, limit)
