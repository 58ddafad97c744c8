# SPDX-License-Identifier: GPL-2.0-only
"""Values kept by the identity of the (frozen) object they were derived from, between the plans or
compiles of a long-lived planner (matchmemo.py, splitmemo.py).

An entry is keyed by id(obj) and holds obj itself as its first item: while the entry lives no other
object can have that id, and a lookup serves it only for the very object asked about. An equal
object that is another one is derived anew (to the same value). Hashing the objects instead would
hash every field, about as slow as deriving the value."""
from __future__ import annotations

import itertools
import operator
from typing import Callable, Dict, List, Sequence

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
