# SPDX-License-Identifier: GPL-2.0-only
"""identitymemo.Positional: entries by the very object, whatever moved, was replaced or was added."""
from ipt2xdp import identitymemo


class Thing:
    def __init__(self, value):
        self.value = value


def test_positional_serves_each_object_its_own_entry():
    table, memo, made = {}, identitymemo.Positional(), []

    def make(obj):
        made.append(obj)
        return obj, obj.value * 10

    def check(objects):
        entries = memo.kept(table, objects, make)
        assert [entry[0] for entry in entries] == objects
        assert all(entry[0] is obj for entry, obj in zip(entries, objects))
        assert [entry[1] for entry in entries] == [obj.value * 10 for obj in objects]

    first = [Thing(i) for i in range(100)]
    check(first)
    assert len(made) == 100
    replaced = first[:3] + [Thing(1003)] + first[4:] + [Thing(2000), Thing(2001)]  # one replaced, two added
    made.clear()
    check(replaced)
    assert [t.value for t in made] == [1003, 2000, 2001]  # the rest taken by position
    check(replaced[:50])  # shorter
    check([Thing(-1)] + replaced)  # everything moved by one: looked up by identity
    check(first)  # back to objects seen before, at other places than last time
    made.clear()
    check(first[::-1])
    assert made == []  # every one of them kept in the table
