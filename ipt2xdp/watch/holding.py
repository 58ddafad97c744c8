# SPDX-License-Identifier: GPL-2.0-only
"""When the kernel holds a wrapper command's predicted ruleset without reading it back.

A served sync reads the ruleset back after the caller's command (iptables-nft-save: 85 ms idle at
10k rules, two to four times that beside the plan being made) to check that the prediction
planned meanwhile (predict.py) is what the kernel holds. On nf_tables it can know that without the
read, from the generation (nftgen.py), when all of these hold:
  1. the ruleset predicted from was read back between two reads of the same generation G (nothing
     was committed while iptables-nft-save dumped it);
  2. the caller's command appends, inserts, replaces or deletes one rule (-A, -I, -R, -D), and it
     exited 0: iptables-nft committed it as exactly one transaction. A rule deleted by its
     specification is the first one iptables finds equal to it, structure against structure, and
     iptables-save prints equal structures alike: predict.py takes the first rule that renders as
     the specification does (only for a specification of modeled matches, 4, whose rendering is
     iptables-save's). A list of addresses (one rule per address, inserted in reverse order) and
     everything else (-F, -X, -N, -P, -E, -Z) are left to the read-back;
  3. the generation is G + 1 when the caller reports "done": that one transaction is the only one
     since the read, so the kernel holds the ruleset read at G with this command applied;
  4. the command's rule is read by the project's parser as iptables reads it: every match and the
     target are ones the parser models (options.py), not kept as words (a GenericMatch or
     GenericTarget, which iptables may print otherwise); the parser takes numeric addresses only
     (no name lookups), and the line is one rule. iptables reads a command's rule words and an
     iptables-restore line the same way (do_command), and those lines are what the parser is
     checked against (compat_tests/, tests/test_watch_predict_kernel.py: the predictions of the
     fail2ban, Docker and ufw sequences render as what the real binaries leave).
Then the sync plans nothing new and reads nothing: it flips to the predicted plan. Nothing but
iptables-nft's own tables changed (one transaction, ours), so the facts the host takes from
nf_tables (native chains, ct helpers) need no new read either. The legacy backend has no
generation: its syncs always read back.

What a mistake in 4 would cost is bounded: `ipt2xdp watch` reads the ruleset back once the burst
of calls is over (a "prediction" change, service.py); a ruleset that renders otherwise than the
prediction makes it plan and flip again, and say so, and read back after every later command.
"""
from __future__ import annotations

from typing import Optional

SOURCE = "prediction"  # the trigger-like source of the check after a sync that did not read back


def generation(backend: str) -> Optional[int]:
    if backend != "nft":
        return None
    from ipt2xdp import nftgen

    return nftgen.generation()


def read_between(backend: str, read):
    """(read(), the generation it was made in, or None if one changed meanwhile or none is known)."""
    before = generation(backend)
    result = read()
    after = generation(backend) if before is not None else None
    return result, (before if before is not None and before == after else None)


def trusted_command(command, base_ruleset) -> bool:
    """Conditions 2 and 4 for an iptables command (predict.Command) applied to base_ruleset."""
    from ipt2xdp import irmatches, irtargets
    from ipt2xdp.watch.predict import parsed_rule_line, rule_line

    if command.letter not in "AIRD":
        return False
    table = base_ruleset.table(command.table)
    if table is None or table.chain(command.chain) is None:
        return False
    if not command.spec:
        return command.letter == "D"  # by number: the rule at that place
    parsed = parsed_rule_line(base_ruleset, command.table, command.chain, rule_line(command.chain, command.spec))
    if parsed is None or len(parsed) != 1:
        return False
    rule = parsed[0]
    return (not any(isinstance(match, irmatches.GenericMatch) for match in rule.matches)
            and not isinstance(rule.target, irtargets.GenericTarget))


def expected_generation(backend: str, command, base_ruleset, base_generation: Optional[int]) -> Optional[int]:
    """The generation at which the kernel holds the prediction of command (condition 3), or None
    when the sync must read back."""
    if backend != "nft" or base_generation is None or command is None:
        return None
    return base_generation + 1 if trusted_command(command, base_ruleset) else None
