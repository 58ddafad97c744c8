# SPDX-License-Identifier: GPL-2.0-only
"""The iptables-save text a wrapper's iptables command should leave, for `ipt2xdp watch` to plan
while the real binary runs (warm.py).

A prediction is a head start and nothing more: its plan is flipped to only if the ruleset read
back after the command renders to the same canonical text, for the same host facts
(import_._Prepared.holds), exactly as `ipt2xdp import` uses the plan of its input. So what this
cannot foresee exactly (another writer in between, a rule spec iptables prints otherwise, a
command that fails) costs the head start, never correctness; and what it does not handle at all
(-E, a table not in the text yet, option clusters such as -vA) gives None.

The command is applied to the text of the last read-back: a rule spec becomes a rule line of its
chain (`-A CHAIN <words>`, parsed later by the project's own parser with the rest), at the
position iptables-save prints that rule.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

_COMMANDS = {
    "-A": "A", "--append": "A", "-I": "I", "--insert": "I", "-D": "D", "--delete": "D", "-R": "R",
    "--replace": "R", "-N": "N", "--new-chain": "N", "--new": "N", "-X": "X", "--delete-chain": "X",
    "-F": "F", "--flush": "F", "-P": "P", "--policy": "P",
}
# Options around the command that leave the ruleset as it is (the wrapper's cmdline.py reads the same).
_FLAGS = frozenset(("-v", "--verbose", "-n", "--numeric", "-x", "--exact", "--line-numbers", "-4", "--ipv4"))
_WITH_VALUE = frozenset(("-W", "--wait-interval", "--modprobe"))


class Command:
    """One iptables command line reduced to what it does to the ruleset."""

    def __init__(self, letter: str, table: str, chain: Optional[str], position: Optional[int],
                 spec: List[str], policy: Optional[str] = None):
        self.letter, self.table, self.chain, self.position = letter, table, chain, position
        self.spec, self.policy = spec, policy


def read_command(args: List[str]) -> Optional[Command]:
    """The command args ask for, or None where this module does not predict it."""
    letter = chain = position = policy = None
    table = "filter"
    spec: List[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("-w", "--wait"):
            if i < len(args) and args[i][:1].isdigit():
                i += 1
        elif arg.startswith("--wait=") or (arg.startswith("-w") and arg[2:].isdigit()):
            pass
        elif arg in _WITH_VALUE:
            i += 1
        elif arg.startswith(("--wait-interval=", "--modprobe=")):
            pass
        elif arg in ("-t", "--table"):
            if i >= len(args):
                return None
            table, i = args[i], i + 1
        elif arg.startswith("--table="):
            table = arg[len("--table="):]
        elif arg in _FLAGS:
            pass
        elif arg in _COMMANDS:
            if letter is not None:
                return None
            letter = _COMMANDS[arg]
            following = args[i] if i < len(args) else None
            if letter in "XF":  # the chain is optional
                if following is not None and not following.startswith("-"):
                    chain, i = following, i + 1
                continue
            if following is None:
                return None
            chain, i = following, i + 1
            if letter in "IDR" and i < len(args) and args[i].isdigit():
                position, i = int(args[i]), i + 1
            elif letter == "P":
                if i >= len(args):
                    return None
                policy, i = args[i], i + 1
        elif arg.startswith("-") and not arg.startswith("--") and len(arg) > 2 and arg[1].isalpha() \
                and any(c in "ADRINEPFXZLSCt" for c in arg[1:]):
            return None  # a cluster that may hold a command or the table (-vA, -tnat): not predicted
        else:
            spec.append(arg)
    if letter is None or not table:
        return None
    wants_spec = letter in "AIR" or (letter == "D" and position is None)
    if bool(spec) != wants_spec or (letter == "R" and position is None):
        return None
    return Command(letter, table, chain, position, spec, policy)


def _quoted(word: str) -> str:
    """A word as a save file line holds it: the parser splits at whitespace and unquotes "...";
    a word without either is read as it stands."""
    if word and not any(c.isspace() or c == '"' for c in word):
        return word
    return '"' + "".join("\\" + c if c in '"\\' else c for c in word) + '"'


def rule_line(chain: str, spec: List[str]) -> str:
    return " ".join(["-A", chain] + [_quoted(w) for w in spec])


class Layout:
    """The lines of one iptables-save text and, per table asked for, where its chains are declared
    and where their rules are: what every prediction made from that text needs first (a pass over
    every line: about 15 ms at 10k rules). `ipt2xdp watch` makes it for the text it read back once
    its caller has the answer (warm.py), so that the next caller's prediction starts without it."""

    def __init__(self, text: str):
        self.text = text
        self.lines = text.split("\n")
        self._tables: dict = {}

    def table(self, name: str) -> Optional[tuple]:
        """(start, end, declared, rules) of table name: the indices of its `*name` and COMMIT
        lines, {chain: index of its declaration}, {chain: indices of its rule lines, in order};
        None when the text has no such table or holds lines not expected in it."""
        if name not in self._tables:
            self._tables[name] = self._scan(name)
        return self._tables[name]

    def _scan(self, name: str) -> Optional[tuple]:
        lines = self.lines
        try:
            start = lines.index(f"*{name}")
            end = lines.index("COMMIT", start)
        except ValueError:
            return None  # a table the command would create: not predicted
        declared = {}  # chain -> the index of its declaration line
        rules = {}     # chain -> the indices of its rule lines, in order
        for index in range(start + 1, end):
            line = lines[index]
            if line.startswith(":"):
                declared[line[1:].split(" ", 1)[0]] = index
            elif line.startswith("-A "):
                rules.setdefault(line.split(" ", 2)[1], []).append(index)
            elif line and not line.startswith("#"):
                return None  # counters before rules, or anything else not expected here
        return start, end, declared, rules


def predicted_text(text: str, command: Command, matching_rule=None, layout: Optional[Layout] = None) -> Optional[str]:
    """text (an iptables-save output) as command should leave it, or None. matching_rule(table,
    chain, line) -> the 1-based index of the first rule of chain equal to the rule line, or None:
    how a `-D CHAIN <spec>` finds the rule it deletes (warm.py compares parsed rules). layout:
    Layout(text), if made already (used only if it is of this very text)."""
    found = predicted_edits(text, command, matching_rule, layout)
    return edited_text(*found) if found is not None else None


def edited_text(layout: Layout, edits: list) -> str:
    return "\n".join(edited_lines(layout, edits))


def edited_lines(layout: Layout, edits: list) -> List[str]:
    """layout's lines with the edits (predicted_edits()) made, in a new list: the layout serves
    the next prediction too."""
    lines = list(layout.lines)
    for index, removed, inserted in sorted(edits, key=lambda e: e[0], reverse=True):
        lines[index:index + removed] = inserted
    return lines


def predicted_edits(text: str, command: Command, matching_rule=None, layout: Optional[Layout] = None):
    """(Layout(text), [(line index, lines removed there, lines inserted there)]) of what command
    does to text, or None (predicted_text())."""
    if layout is None or layout.text is not text:
        layout = Layout(text)
    found = layout.table(command.table)
    if found is None:
        return None
    start, end, declared, rules = found
    lines = layout.lines  # read only
    chain, letter = command.chain, command.letter
    if chain is not None and chain not in declared and letter != "N":
        return None  # the command fails; if another writer made the chain meanwhile, it is read back
    of_chain = rules.get(chain, [])
    edits = []  # (index, lines removed, lines inserted), applied from the last one backwards
    if letter in "AI":
        line = rule_line(chain, command.spec)
        position = (command.position or 1) if letter == "I" else len(of_chain) + 1
        if position == len(of_chain) + 1:
            edits.append(((of_chain[-1] + 1) if of_chain else end, 0, [line]))
        elif 1 <= position <= len(of_chain):
            edits.append((of_chain[position - 1], 0, [line]))
        else:
            return None
    elif letter == "R":
        if not 1 <= command.position <= len(of_chain):
            return None
        edits.append((of_chain[command.position - 1], 1, [rule_line(chain, command.spec)]))
    elif letter == "D":
        position = command.position
        if position is None:
            position = matching_rule(command.table, chain, rule_line(chain, command.spec)) if matching_rule else None
        if position is None or not 1 <= position <= len(of_chain):
            return None
        edits.append((of_chain[position - 1], 1, []))
    elif letter == "N":
        if chain in declared:
            return None
        edits.append((max(declared.values(), default=start) + 1, 0, [f":{chain} - [0:0]"]))
    elif letter == "X":
        user = [c for c, index in declared.items() if lines[index].split(" ")[1:2] == ["-"]]
        for name in [chain] if chain is not None else user:
            if name not in user or rules.get(name):
                return None  # a built-in chain, or one with rules: the command fails
            edits.append((declared[name], 1, []))
    elif letter == "F":
        for name in [chain] if chain is not None else list(rules):
            edits += [(index, 1, []) for index in rules.get(name, [])]
    elif letter == "P":
        words = lines[declared[chain]].split(" ")
        if len(words) != 3 or words[1] == "-" or command.policy not in ("ACCEPT", "DROP"):
            return None
        edits.append((declared[chain], 1, [" ".join([words[0], command.policy, words[2]])]))
    else:
        return None
    return layout, edits


MODE_ENV = "IPT2XDP_WATCH_PREDICT"  # auto (default), always, never


def wanted() -> bool:
    """Whether to plan a prediction beside the real binary. It gains where the thread finds CPU
    time nobody else wants: on a machine whose CPUs are all busy it takes its CPU from the real
    binary and the read-back, which then take longer than the plan saves. bench/wrapper_bench.py at
    10k rules on 2 CPUs, steady served change, ms added to the real binary: at load 2.7 (the bench's
    own processes included) 507-557 predicting against 643-666 not; at load 3.5-4.5, 850 against 675
    (medians of alternating runs). auto: while the 1-minute load average is below the number of
    CPUs plus one (the wrapper calls being served count about one)."""
    mode = os.environ.get(MODE_ENV, "auto")
    if mode in ("always", "never"):
        return mode == "always"
    return os.getloadavg()[0] < (os.cpu_count() or 1) + 1


def parsed_rule_line(ruleset, table: str, chain: str, line: str) -> Optional[tuple]:
    """The rules the project's parser reads from one rule line of chain in ruleset's table (one
    per address of a list), or None when the table or chain is not there or the line does not
    parse. Every chain of the table is declared around it, so a jump to one of them parses."""
    from ipt2xdp.errors import ParseError
    from ipt2xdp.parse import parse

    known = ruleset.table(table)
    if known is None or known.chain(chain) is None:
        return None
    declared = "".join(f":{c.name} {c.policy or '-'} [0:0]\n" for c in known.chains)
    try:
        return parse(f"*{table}\n{declared}{line}\nCOMMIT\n", "<rule spec>").table(table).chain(chain).rules
    except ParseError:
        return None


# Rendered rule texts by the rule object (identitymemo): a read-back or prediction parsed through
# the watcher's ParseMemo hands back the very objects of the unchanged lines, so a chain's index is
# rendered anew only for its new rules (rendering 10k rules took 7-9 ms after every served change).
_RENDERED: dict = {}


def _rendered(rules, ruleset_size: int) -> list:
    from ipt2xdp import identitymemo
    from ipt2xdp.render import render_rule

    if len(_RENDERED) > 2 * ruleset_size + 10000:
        _RENDERED.clear()  # it keeps every rule it rendered (and the rule): most are gone by now
    return [text for _rule, text in identitymemo.kept(_RENDERED, rules, lambda rule: (rule, render_rule(rule)))]


def rule_matcher(ruleset):
    """predicted_text()'s matching_rule for the ruleset parsed from the text: the first rule of the
    chain that renders as the rule line parsed does (what `-D CHAIN <spec>` deletes, as far as the
    project's parser and renderer tell; a mistake shows in the read-back). Each chain's rules are
    rendered once, the first time they are looked in (index()), for every later look."""
    by_text: dict = {}  # (table, chain) -> {rendered rule: its first 1-based index}

    def index(table: str, chain: str) -> Optional[dict]:
        key = (table, chain)
        if key not in by_text:
            known = ruleset.table(table)
            rules = known.chain(chain).rules if known is not None and known.chain(chain) is not None else None
            texts = None
            if rules is not None:
                size = sum(len(c.rules) for t in ruleset.tables for c in t.chains)
                rendered = _rendered(rules, size)
                # reversed: the first position of a text is the one left in the dict
                texts = dict(zip(reversed(rendered), range(len(rendered), 0, -1)))
            by_text[key] = texts
        return by_text[key]

    def matching_rule(table: str, chain: str, line: str) -> Optional[int]:
        from ipt2xdp.render import render_rule

        texts = index(table, chain)
        if texts is None:
            return None
        parsed = parsed_rule_line(ruleset, table, chain, line)
        if parsed is None or len(parsed) != 1:
            return None
        return texts.get(render_rule(parsed[0]))
    matching_rule.index = index
    return matching_rule


PLANNING_SWITCH_INTERVAL = 0.0005  # seconds (sys.setswitchinterval)


class Planning:
    """The plan of a predicted ruleset (import_._Prepared) and its plan record, made in a thread
    while the watcher's loop goes on: answering the caller's "done", reading the ruleset back (the
    save process runs beside it) and parsing it. result() waits for it: the _Prepared, or None if
    planning failed.

    Only planning runs in the thread; it shares with the loop nothing that either writes except
    plan.TERM_MEMO and the rules' derived values, whose entries are functions of the rule (and host)
    alone, and the loop plans nothing itself before it has waited here (warm.py)."""

    def __init__(self, ruleset, host, ipsets: str, backend: str, devices: List[str]):
        import threading

        self.host, self.ipsets, self.backend, self.devices = host, ipsets, backend, devices
        self.ruleset, self.text = ruleset, None  # the predicted ruleset and its text (warm.py sets it)
        # The nf_tables generation at which the kernel holds this ruleset (watch/holding.py), or None.
        self.expected_generation = None
        self.target = None  # warm.Warm._target()'s answer it was planned for
        self._prepared = None
        # Set once the sync waits for the plan: the record is then made after the answer, if the
        # sync leaves it for later (a native launcher's), not while the caller waits.
        self._awaited = threading.Event()
        self._thread = threading.Thread(target=self._plan, args=(ruleset,), name="ipt2xdp-predicted-plan",
                                        daemon=True)
        # While the plan is made, the loop gets the interpreter within half a millisecond of asking
        # (the default 5 ms, once per syscall of reading the caller's "done", kept the plan going
        # on into the record the answer does not wait for): restored when the plan is made.
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(PLANNING_SWITCH_INTERVAL)
        self._thread.start()

    def _plan(self, ruleset) -> None:
        import types

        from ipt2xdp.commands.import_ import _Prepared

        try:
            prepared = _Prepared(ruleset, self.host, types.SimpleNamespace(ipsets=self.ipsets), self.backend,
                                 hold_notices=True)
            prepared.tables.digest  # noqa: B018 - made here, kept for the flip's metadata
            if not self._awaited.is_set():  # the caller's command still runs: its record too (10-15 ms at 10k rules)
                prepared.plan_record(self.backend, self.devices, ruleset)
            self._prepared = prepared
        except Exception:  # noqa: BLE001 - only a head start: the sync plans what it reads back itself
            self._prepared = None
        finally:
            sys.setswitchinterval(self._switch_interval)

    def running(self) -> bool:
        return self._thread.is_alive()

    def hurry(self) -> None:
        """The caller's command has ended: what the sync does not need first is left for after."""
        self._awaited.set()

    def result(self):
        self._awaited.set()
        self._thread.join()
        return self._prepared
