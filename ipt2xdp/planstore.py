# SPDX-License-Identifier: GPL-2.0-only
"""What the planner decided for the generation in force, kept beside the pinned maps.

The maps say what XDP does per classifier rule; this record says which iptables rules those are
(the counter paths), what each rule's decision was, and the text of the rules, so that `status`,
the dry-run diff and the iptables wrapper can speak in iptables' terms. It lives in
/run/ipt2xdp/<netns inode>/, keyed by the digest the loader stores with the generation, so a crash
between writing it and flipping leaves at worst an unused file, never a wrong label.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from operator import is_
from typing import Optional, Tuple

from ipt2xdp import pins

STATE_ROOT = os.environ.get("IPT2XDP_STATE_DIR", "/run/ipt2xdp")
# The records last written or read, by path: a re-plan in `ipt2xdp watch` reads the record in force
# up to four times (its own check, the re-plan, the counts carry's old and new) and wrote one of them
# itself; each read of a 10k-rule record costs about 18 ms of JSON. An entry is used only while the
# file is the one it came from (inode, mtime, size: a save replaces the file). The records are
# shared, so read-only for every caller.
_RECENT: "OrderedDict[str, Tuple[tuple, dict]]" = OrderedDict()
RECENT_KEPT = 2


def _directory(netns: Optional[int] = None) -> str:
    """The state directory of a network namespace (default: the current one)."""
    return os.path.join(STATE_ROOT, str(netns if netns is not None else pins.netns_id()))


def digest(ruleset_text: str, devices) -> str:
    h = hashlib.sha256(ruleset_text.encode("utf-8", "surrogateescape"))  # a comment may hold any byte
    h.update(("\0" + ",".join(devices)).encode())
    return h.hexdigest()[:16]


def encoded(record: dict, kept: Optional[dict] = None) -> str:
    """The record's file text (save() writes it). kept: see _encoded_from."""
    if kept is not None:
        return _encoded_from(record, kept)
    # one C-encoder pass (json.dump() encodes piecewise in Python); the record is a tree of fresh
    # lists and dicts, so the encoder need not track each container against cycles
    return json.dumps(_stored(record), check_circular=False)


# Items per piece of a long list's JSON that _encoded_from keeps for the next record.
JSON_CHUNK = 512


def _encoded_from(record: dict, kept: dict) -> str:
    """json.dumps(_stored(record)), byte for byte, taking from the last call with this `kept` what
    the records have in common. A long-lived planner's record holds the very decision records and
    counter-path lists of its last one for the rules before a change (report.decision_records,
    planrecord.path_records; records are read-only): where this record's lists start with the same
    objects, their columns and the JSON of their whole JSON_CHUNK-item pieces are the last ones.
    (json.dumps of a list is "[" + ", ".join(each item's) + "]", so pieces join to the same text.)"""
    decisions, paths = record.get("decisions"), record.get("counter_paths")
    same_decisions = _same_start(kept.get("decisions"), decisions)
    same_paths = _same_start(kept.get("counter_paths"), paths)
    old_columns, old_pieces = kept.get("columns", {}), kept.get("pieces", {})
    columns, pieces, parts = {}, {}, []
    why = None
    if decisions:
        for name in _DECISION_COLUMNS + ("why",):
            columns[name] = old_columns[name][:same_decisions] if same_decisions else []
            columns[name] += [d[name] for d in decisions[same_decisions:]]
        why = dict(zip(columns["code"], columns["why"]))  # {d["code"]: d["why"] ...}: first met, last value
        # one sentence per code: the very str objects (decide shares them) tell it without hashing pairs
        if not all(map(is_, map(why.__getitem__, columns["code"]), columns["why"])) and \
                len(set(zip(columns["code"], columns["why"]))) != len(why):
            why = None  # a code with two sentences: kept as it is (_stored)
    for key, value in record.items():
        if key == "decisions" and why is not None:
            continue  # as columns, last (_stored)
        if key == "counter_paths" and isinstance(value, list):
            text, pieces[key] = _list_json(value, same_paths, old_pieces.get(key, ()))
        elif key == "actions" and isinstance(value, list):  # the verdicts' names, the same str objects
            text, pieces[key] = _list_json(value, _same_start(kept.get("actions"), value), old_pieces.get(key, ()))
        else:
            text = json.dumps(value, check_circular=False)
        parts.append(f"{json.dumps(key)}: {text}")
    if why is not None:
        texts = []
        for name in _DECISION_COLUMNS:
            text, pieces[name] = _list_json(columns[name], same_decisions, old_pieces.get(name, ()))
            texts.append(f"{json.dumps(name)}: {text}")
        parts.append('"decision_columns": {' + ", ".join(texts) + "}")
        parts.append(f'"decision_why": {json.dumps(why)}')
    kept.clear()
    kept.update(decisions=decisions, counter_paths=paths, actions=record.get("actions"), columns=columns, pieces=pieces)
    return "{" + ", ".join(parts) + "}"


def _same_start(old, new) -> int:
    """How many leading items of the list new are the very objects of the list old."""
    from ipt2xdp.identitymemo import identical_prefix

    return identical_prefix(old or (), new or ())


def _list_json(items: list, same: int, old_pieces) -> Tuple[str, list]:
    """(json.dumps(items), its pieces): a piece wholly within items[:same] is the old one."""
    pieces = []
    for start in range(0, len(items), JSON_CHUNK):
        end = start + JSON_CHUNK
        if end <= same and start // JSON_CHUNK < len(old_pieces):
            pieces.append(old_pieces[start // JSON_CHUNK])
        else:
            pieces.append(json.dumps(items[start:end], check_circular=False)[1:-1])
    return "[" + ", ".join(pieces) + "]", pieces


def save(key: str, record: dict, text: Optional[str] = None) -> str:
    """text: encoded(record), if made already (ahead of the flip, beside the plan)."""
    directory = _directory()
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"plan-{key}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text if text is not None else encoded(record))
    os.replace(tmp, path)
    _remember(path, record)
    # Keep the last few plans only: the one in force and its predecessors for diffs.
    plans = sorted((os.path.join(directory, n) for n in os.listdir(directory) if n.startswith("plan-")),
                   key=os.path.getmtime)
    for old in plans[:-4]:
        os.unlink(old)
    return path


def _signature(path: str) -> tuple:
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size


def _remember(path: str, record: dict) -> None:
    try:
        _RECENT[path] = (_signature(path), record)
    except OSError:
        return
    _RECENT.move_to_end(path)
    while len(_RECENT) > RECENT_KEPT:
        _RECENT.popitem(last=False)


def load(key: Optional[str]) -> Optional[dict]:
    """The record saved under key (shared: read-only), or None."""
    if not key:
        return None
    path = os.path.join(_directory(), f"plan-{key}.json")
    recent = _RECENT.get(path)
    try:
        if recent is not None and recent[0] == _signature(path):
            return recent[1]
        with open(path) as f:
            record = from_json(f.read())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    _remember(path, record)
    return record


# How long a reader without the wrapper's lock waits for a flip's plan record (load_settled()).
SETTLE_WAIT = 5.0


def load_settled(key: Optional[str]) -> Optional[dict]:
    """load() of the generation in force, for a reader that does not hold the wrapper's lock
    (status, explain --loaded, a dry run's diff). `ipt2xdp watch`, serving a native launcher, flips
    first and saves the record after its answer, under the wrapper's lock it holds for the
    launcher: a record not there yet is read again once that lock is free (up to SETTLE_WAIT s).
    Not for a holder of the lock: it would wait for itself."""
    record = load(key)
    if record is not None or not key:
        return record
    from ipt2xdp.wrapper import sync

    try:
        with sync.wrapper_lock(SETTLE_WAIT):
            pass
    except sync.LockTimeout:
        return None
    return load(key)


# A decision record's fields but "why", which is a function of "code" (decisions.why): stored as one
# list per field, each "why" once. A 10k-rule record as a list of dicts is 2 MB of JSON, 15-35 ms to
# write before the flip and about as long to read in each listing with counts; as columns about
# half the bytes and a third of the time each way.
_DECISION_COLUMNS = ("table", "chain", "index", "kind", "code", "text")


def _stored(record: dict) -> dict:
    """The record as written: its decisions as columns (from_json() gives them back)."""
    decisions = record.get("decisions")
    if not decisions:
        return record
    why = {d["code"]: d["why"] for d in decisions}
    if len({(d["code"], d["why"]) for d in decisions}) != len(why):
        return record  # a code with two sentences: kept as it is
    columns = {name: [d[name] for d in decisions] for name in _DECISION_COLUMNS}
    return {**{k: v for k, v in record.items() if k != "decisions"}, "decision_columns": columns,
            "decision_why": why}


def from_json(text: str) -> dict:
    """A record from its file's text, decisions as save() was given them."""
    record = json.loads(text)
    columns = record.pop("decision_columns", None)
    if columns is not None:
        why = record.pop("decision_why")
        lists = [columns[name] for name in _DECISION_COLUMNS]
        if len({len(column) for column in lists}) != 1:
            raise ValueError("plan record: decision columns of different lengths")
        record["decisions"] = [{"table": table, "chain": chain, "index": index, "kind": kind, "code": code,
                                "why": why[code], "text": rule_text}
                               for table, chain, index, kind, code, rule_text in zip(*lists)]
    return record


def remove_all() -> None:
    """Forget the plan records and the counts carried for the generations `detach --all` removed.
    Left in place: a running watcher's socket (removing it would leave the watcher listening where no
    wrapper finds it) and the stale mark, which only ever counts up (a re-plan that read it before
    must still see it move: wrapper/sync.py)."""
    from ipt2xdp.wrapper.client import SOCKET_NAME
    from ipt2xdp.wrapper.sync import STALE_NAME

    directory = _directory()
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if name not in (SOCKET_NAME, STALE_NAME):
                os.unlink(os.path.join(directory, name))
        if not os.listdir(directory):
            os.rmdir(directory)


def host_record(host) -> dict:
    """A HostContext as JSON, stored with the plan so that `explain --loaded` can plan it again."""
    return {"devices": [[d.name, d.ifindex, d.kind, d.master, d.link] for d in host.devices],
            "local_destinations": [str(n) for n in host.local_destinations],
            "forwarding": host.forwarding, "attached": list(host.attached),
            "ct_checksum": host.ct_checksum, "ct_tcp_loose": host.ct_tcp_loose,
            "ct_external_helpers": host.ct_external_helpers,
            "route_types": None if host.route_types is None else
            [[str(r.network), r.kind, r.oif, r.table] for r in host.route_types],
            "foreign": None if host.foreign is None else foreign_record(host.foreign)}


def foreign_record(foreign) -> dict:
    """As JSON reads it back (lists, not asdict's tuples): a saved record is also load()'s answer."""
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(foreign)))


def foreign_from_record(record):
    from ipt2xdp.foreign import Foreign
    from ipt2xdp.nftchains import Effect, NativeChain

    if record is None:
        return None

    def bound(pairs):  # JSON lists back to the tuples the plan was made from
        return tuple((name, tuple(v if isinstance(v, int) else tuple(v) for v in values)) for name, values in pairs)

    native = tuple(NativeChain(**dict(c, devices=tuple(c["devices"]),
                                      effects=tuple(Effect(e["where"], bound(e["bound"])) for e in c["effects"])))
                   for c in record["native"])
    return Foreign(record["planned"], native, record["other_text"], tuple(record["other_tables"]),
                   tuple(record["unreadable"]), tuple(record.get("nat_hooks", ())))


def host_from_record(record: dict):
    import ipaddress

    from ipt2xdp.hostinfo import Device, HostContext, RouteType

    routes = record.get("route_types")
    return HostContext(tuple(Device(*d) for d in record["devices"]),
                       tuple(ipaddress.IPv4Network(n) for n in record["local_destinations"]),
                       record["forwarding"], tuple(record["attached"]), record["ct_checksum"],
                       record["ct_tcp_loose"], record["ct_external_helpers"],
                       route_types=None if routes is None else
                       tuple(RouteType(ipaddress.IPv4Network(n), k, o, t) for n, k, o, t in routes),
                       foreign=foreign_from_record(record.get("foreign")))
