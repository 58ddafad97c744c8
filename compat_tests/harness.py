# SPDX-License-Identifier: GPL-2.0-only
"""Differential harness: the same probes through netfilter alone and through netfilter + an attached
XDP program (ipt2xdp), in throwaway namespaces, compared probe by probe.

    cmp = compare(ruleset_text, packets.generate(ruleset_text), attach=ipt2xdp_attach("native"))
    assert not cmp.disagreements, cmp.report()

Every run gets a fresh sender/receiver pair (ipt2xdp.netns.veth_pair), so no conntrack entry, recent
list or limit bucket carries over from one run to the next. Nothing here touches the host: commands run
through Namespace.run (nsenter --net=), sockets are opened inside the namespaces (observe.inside).
"""
from __future__ import annotations

import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from compat_tests.observe import Endpoints, Fate, Observation, bind_tcp_flows, listen, open_flows
from compat_tests.packets import FORWARDED, Corpus, Probe
from ipt2xdp import netns

BACKENDS = {"legacy": "iptables-legacy-restore", "nft": "iptables-nft-restore"}
RECEIVER_IF = "rcv0"
FORWARD_IF = "fwd0"  # the receiver's device towards the third namespace in forwarding runs
RERUNS = 2  # extra netfilter-alone runs when fates differ (compare)  # the receiver's veth is renamed to this, so rulesets can say -i rcv0
Attach = Callable[[netns.Namespace, str], None]
# Targets iptables knows; any other -j/-g name must be a chain, declared if the ruleset does not.
_TARGETS = set("""ACCEPT DROP RETURN QUEUE REJECT LOG NFLOG ULOG MARK CONNMARK DNAT SNAT MASQUERADE REDIRECT
TCPMSS CT NOTRACK TRACE SET AUDIT CHECKSUM CLASSIFY DSCP TOS TTL NFQUEUE TEE CONNSECMARK SECMARK IDLETIMER
LED NETMAP RATEEST SYNPROXY TPROXY HMARK CLUSTERIP ECN SAME MIRROR TARPIT""".split())
# Receiver settings that make replies deterministic: no ICMP rate limit, no IPv6 chatter.
_RECEIVER_SYSCTLS = {"net.ipv4.icmp_ratemask": "0", "net.ipv4.icmp_ratelimit": "0",
                     "net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}


class LoadError(RuntimeError):
    """iptables-restore refused the ruleset even after declaring the chains and ipsets it references."""


@dataclass
class Prepared:
    """A ruleset made loadable: chains and ipsets it references but does not declare are added."""

    text: str
    ipset_script: str = ""
    declared_chains: List[str] = field(default_factory=list)
    declared_sets: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def prepare(text: str) -> Prepared:
    """Declare missing user chains per table and create the ipsets that --match-set/--add-set name."""
    out, chains, table_start = [], [], None
    declared, referenced = set(), []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("*"):
            table_start, declared, referenced = len(out) + 1, set(), []
        elif stripped.startswith(":"):
            declared.add(stripped[1:].split()[0])
        elif stripped.startswith(("-A", "-I")):
            referenced += re.findall(r"\s(?:-j|-g|--jump|--goto)\s+(\S+)", " " + stripped)
        elif stripped == "COMMIT" and table_start is not None:
            missing = sorted({c for c in referenced if c not in declared and c not in _TARGETS})
            out[table_start:table_start] = [f":{c} - [0:0]" for c in missing]
            chains += missing
        out.append(line)
    sets: Dict[str, int] = {}
    for name, flags in re.findall(r"--match-set\s+(\S+)\s+(\S+)", text):
        sets[name] = max(sets.get(name, 1), len(flags.split(",")))
    for name, flags in re.findall(r"--(?:add|del)-set\s+(\S+)\s+(\S+)", text):
        sets[name] = max(sets.get(name, 1), len(flags.split(",")))
    types = {1: "hash:net", 2: "hash:net,port", 3: "hash:net,port,net"}
    script = "".join(f"create {n} {types[min(d, 3)]} -exist\n" for n, d in sorted(sets.items()))
    prepared = Prepared("\n".join(out) + "\n", script, chains, sorted(sets))
    if re.search(r"--(?:limit|hashlimit-upto|hashlimit-above|hashlimit) ", prepared.text):
        # A rate the run can refill (125/sec: a token every 8 ms) makes fates depend on how fast
        # packets go through, which XDP changes. One token a minute never refills during a run, so
        # only the burst counts, the same in every run. ipt2xdp defers these matches at any rate.
        prepared.text = re.sub(r"(--(?:limit|hashlimit-upto|hashlimit-above|hashlimit)) \S+", r"\1 1/minute",
                               prepared.text)
        prepared.text = re.sub(r"(--(?:limit|hashlimit)-burst) (\d+)",
                               lambda m: f"{m.group(1)} {min(int(m.group(2)), 1000)}", prepared.text)
        prepared.notes.append("rates of -m limit/hashlimit set to 1/minute, bursts to at most 1000 (determinism)")
    if "--nfacct-name" in text and shutil.which("nfacct") is None:
        # The nfacct match only counts (it always matches), but its object must exist and the nfacct
        # tool that creates one is not installed: dropping the match keeps every packet's fate.
        prepared.text = re.sub(r"\s-m nfacct --nfacct-name \S+", "", prepared.text)
        prepared.notes.append("removed -m nfacct (a counter that always matches; nfacct not installed)")
    return prepared


def has_nat_table(text: str) -> bool:
    return re.search(r"^\*nat\s*$", text, re.M) is not None


def guess_receiver_if(text: str) -> str:
    """The input device a real ruleset names most often (eth0, ppp0...), else RECEIVER_IF."""
    names = [n for n in re.findall(r"(?<!!)\s-i\s+(\S+)", text) if n != "lo" and not n.endswith("+")]
    names = [n for n in names if re.fullmatch(r"[\w.-]{1,15}", n)]
    return max(sorted(set(names)), key=names.count) if names else RECEIVER_IF


class Testbed:
    """A sender and a receiver namespace joined by veth, ready for one ruleset and one corpus.

    forwarding: the receiver forwards (ip_forward=1) and routes packets.FORWARDED over a second veth
    (FORWARD_IF) to a third namespace, `beyond`, where a tap sees the forwarded copies.
    """

    def __init__(self, local_addrs: Sequence[str] = (), receiver_if: str = RECEIVER_IF, forwarding: bool = False,
                 sysctls: Sequence[Tuple[str, str]] = ()):
        self.pair = netns.veth_pair()
        self.beyond: Optional[Tuple[str, str, str]] = None
        try:
            self.sender, self.receiver = self.pair.sender, self.pair.receiver
            self.sender_if, self.receiver_if = self.pair.sender_if, receiver_if
            self._setup(local_addrs, forwarding, sysctls)
            if forwarding:
                self._add_beyond()
        except Exception:
            self.pair.close()
            raise

    def _add_beyond(self) -> None:
        beyond = netns.create_namespace("fwd")
        self.pair._extra.append(beyond)  # deleted with the pair
        octet = int(self.pair.sender_ip.split(".")[2])
        near, far = f"10.99.{octet}.1", f"10.99.{octet}.2"
        peer = f"i2xf{self.pair.sender_if[4:]}"[:15]
        self.receiver.run(["ip", "link", "add", FORWARD_IF, "type", "veth", "peer", "name", peer,
                           "netns", beyond.name])
        beyond.sh(f"set -e\nip addr add {far}/24 dev {peer}\nip link set {peer} up\n"
                  "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
        far_mac = re.search(r"link/ether (\S+)", beyond.run(["ip", "-o", "link", "show", peer]).stdout).group(1)
        self.receiver.sh("set -e\n" + "\n".join([
            f"ip addr add {near}/24 dev {FORWARD_IF}", f"ip link set {FORWARD_IF} up",
            f"ip neigh replace {far} lladdr {far_mac} dev {FORWARD_IF} nud permanent",
            f"ip route add {FORWARDED} via {far} dev {FORWARD_IF}",
            # A packet routed back out the device it came in on would make the receiver send an
            # ICMP redirect, rate-limited per peer in a way no run can reset: off.
            *[f"sysctl -qw net/ipv4/conf/{d}/send_redirects=0" for d in ("all", "default", self.receiver_if,
                                                                          FORWARD_IF)]]))
        self.beyond = (beyond.path, peer, FORWARD_IF)

    def _setup(self, local_addrs: Sequence[str], forwarding: bool, sysctls: Sequence[Tuple[str, str]]) -> None:
        # /sys under nsenter still shows the host's devices, so ask ip for the sender's MAC.
        link = self.sender.run(["ip", "-o", "link", "show", self.sender_if]).stdout
        sender_mac = re.search(r"link/ether (\S+)", link).group(1)
        sysctls = {**_RECEIVER_SYSCTLS, "net.ipv4.ip_forward": "1" if forwarding else "0", **dict(sysctls)}
        self.receiver.sh("set -e\n" + "\n".join([
            f"ip link set {self.pair.receiver_if} down",
            f"ip link set {self.pair.receiver_if} name {self.receiver_if}",
            f"ip link set {self.receiver_if} up",
            *[f"ip addr replace {a}/32 dev lo" for a in local_addrs],
            # Replies to spoofed sources leave through the sender, whose MAC is known: no ARP delays.
            f"ip neigh replace {self.pair.sender_ip} lladdr {sender_mac} dev {self.receiver_if} nud permanent",
            f"ip route add default via {self.pair.sender_ip} dev {self.receiver_if}",
            *[f"sysctl -qw {k}={v}" for k, v in sysctls.items()]]))
        self.sender.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")

    def load(self, text: str, backend: str = "legacy") -> Prepared:
        """Load a ruleset into the receiver's netfilter with iptables-{legacy,nft}-restore."""
        prepared = prepare(text)
        for _ in range(20):  # declare what the errors name, as long as they name something new
            if prepared.ipset_script:
                self.receiver.run(["ipset", "restore"], input=prepared.ipset_script)
            result = self.receiver.run([BACKENDS[backend], "-w"], check=False, input=prepared.text)
            if result.returncode == 0:
                return prepared
            if not _declare_from_error(prepared, result.stderr):
                raise LoadError(f"{BACKENDS[backend]} refused the ruleset: {result.stderr.strip()}")
        raise LoadError(f"{BACKENDS[backend]}: too many missing chains or sets")

    def endpoints(self, protocols, ip_id_offset: int = 0, nat_dsts: Sequence[str] = ()) -> Endpoints:
        return Endpoints(self.sender.path, self.sender_if, self.receiver.path, self.receiver_if, protocols,
                         self.beyond, ip_id_offset, nat_dsts)

    def ip_id_offset(self, ruleset: str, corpus: Corpus) -> int:
        """What to add to the probes' IP ids on the wire: nothing on a fresh testbed."""
        return 0

    def close(self) -> None:
        self.pair.close()

    def __enter__(self) -> "Testbed":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _declare_from_error(prepared: Prepared, stderr: str) -> bool:
    chain = re.search(r"Couldn't load target `([^']+)'|Chain '([^']+)' does not exist", stderr)
    if chain:
        name = chain.group(1) or chain.group(2)
        line = re.search(r"Error occurred at line: (\d+)", stderr)
        if name in prepared.declared_chains or not line:
            return False
        lines = prepared.text.splitlines()
        header = max(i for i in range(int(line.group(1))) if lines[i].startswith("*"))
        lines.insert(header + 1, f":{name} - [0:0]")
        prepared.text, prepared.declared_chains = "\n".join(lines) + "\n", prepared.declared_chains + [name]
        return True
    missing_set = re.search(r"Set (\S+) doesn't exist", stderr)
    if missing_set and missing_set.group(1) not in prepared.declared_sets:
        prepared.ipset_script += f"create {missing_set.group(1)} hash:net -exist\n"
        prepared.declared_sets.append(missing_set.group(1))
        return True
    return False


@dataclass
class Run:
    backend: str
    attached: bool
    observation: Observation
    seconds: float

    @property
    def fates(self) -> Dict[int, Fate]:
        return self.observation.fates


def run_once(ruleset: str, corpus: Corpus, backend: str = "legacy", attach: Optional[Attach] = None,
             forwarding: bool = False, receiver_if: str = RECEIVER_IF) -> Run:
    """Load `ruleset`, optionally attach XDP, send `corpus`, return each probe's fate."""
    start = time.monotonic()
    mode = getattr(attach, "reuse_mode", None)
    if mode is not None:  # ipt2xdp: re-import onto a receiver kept with the program attached
        from compat_tests import reuse

        bed = reuse.bed(backend, mode, forwarding, receiver_if)
        bed.reset(corpus.local_addrs, corpus.sysctls)
        return _exchange(bed, ruleset, corpus, backend, attach, start)
    with Testbed(corpus.local_addrs, receiver_if=receiver_if, forwarding=forwarding, sysctls=corpus.sysctls) as bed:
        return _exchange(bed, ruleset, corpus, backend, attach, start)


def _exchange(bed: Testbed, ruleset: str, corpus: Corpus, backend: str, attach: Optional[Attach],
              start: float) -> Run:
    bed.load(ruleset, backend)
    if attach is not None:
        if getattr(attach, "takes_backend", False):
            attach(bed.receiver, bed.receiver_if, backend=backend)
        else:
            attach(bed.receiver, bed.receiver_if)
    # With a nat table, DNAT and REDIRECT may deliver a probe at another of the receiver's addresses
    # (REDIRECT: the veth's own, which differs from one pair to the next).
    nat_dsts = (*corpus.local_addrs, bed.pair.receiver_ip) if has_nat_table(ruleset) else ()
    ends = bed.endpoints(corpus.protocols, bed.ip_id_offset(ruleset, corpus), nat_dsts)
    socks = []
    try:
        socks += open_flows(bed.receiver.path, corpus.flows)
        socks += listen(bed.receiver.path, corpus.tcp_flows, corpus.listen_any)
        observation = _exchange_in_two_steps(ends, corpus.probes)
    finally:
        ends.close()
        for s in socks:
            s.close()
    return Run(backend, attach is not None, observation, time.monotonic() - start)


def _exchange_in_two_steps(ends: Endpoints, probes: Sequence[Probe]) -> Observation:
    """The TCP flows' SYNs first; their SYN-ACKs give the receiver's ISNs, which the flows' later
    segments need in their ack field; then every other probe, in corpus order."""
    syns = [p for p in probes if p.opens is not None]
    if not syns:
        return ends.exchange(list(probes))
    first = ends.exchange(syns)
    isn = {p.opens: first.server_isn[p.id] for p in syns if p.id in first.server_isn}
    rest = bind_tcp_flows([p for p in probes if p.opens is None], isn)
    return first.merge(ends.exchange(rest))


@dataclass
class Disagreement:
    backend: str
    probe: Probe
    alone: Fate
    attached: Fate

    def __str__(self) -> str:
        return (f"[{self.backend}] probe {self.probe.id}: {self.probe.description}\n"
                f"    netfilter alone:  {self.alone}\n    with attach:      {self.attached}")


@dataclass
class Comparison:
    ruleset: str
    corpus: Corpus
    runs: List[Tuple[Run, Run]]  # (alone, attached) per backend
    disagreements: List[Disagreement]
    receiver_if: str = RECEIVER_IF  # the receiver's device and forwarding, for report()'s explanations
    forwarding: bool = False

    def report(self, limit: int = 20) -> str:
        """The ruleset, then every disagreeing probe with both fates and what `ipt2xdp explain`
        says of it (deciding rule and reason; at most `limit` probes)."""
        if not self.disagreements and not any(r.observation.notes for pair in self.runs for r in pair):
            return "no disagreements"
        lines = ["ruleset:", *("    " + l for l in self.ruleset.strip().splitlines()), ""]
        for alone, attached in self.runs:
            for run in (alone, attached):
                kind = "attached" if run.attached else "alone"
                if run.observation.marker_lost:
                    lines.append(f"[{run.backend}/{kind}] end marker never reached the stack: the attached "
                                 "program must XDP_PASS non-IPv4 frames")
                lines += [f"[{run.backend}/{kind}] {n}" for n in run.observation.notes]
        from compat_tests.explained import explain_probe

        for d in self.disagreements[:limit]:
            lines.append(str(d))
            lines += explain_probe(self.ruleset, d.probe, self.receiver_if, self.corpus.local_addrs, self.forwarding)
        if len(self.disagreements) > limit:
            lines.append(f"... and {len(self.disagreements) - limit} more")
        return "\n".join(lines)


def compare(ruleset: str, corpus: Corpus, backends: Sequence[str] = ("legacy", "nft"),
            attach: Optional[Attach] = None, forwarding: bool = False,
            receiver_if: str = RECEIVER_IF) -> Comparison:
    """Fates through netfilter alone vs netfilter + attach (attach=None: alone twice, a self-check)."""
    runs, disagreements = [], []
    by_id = corpus.by_id()
    for backend in backends:
        alone = run_once(ruleset, corpus, backend, None, forwarding, receiver_if)
        attached = run_once(ruleset, corpus, backend, attach, forwarding, receiver_if)
        runs.append((alone, attached))
        differ = [pid for pid, fate in alone.fates.items() if fate.key != attached.fates[pid].key]
        # Rate matches (-m limit/hashlimit on replies, OUTPUT) make some fates depend on timing.
        # A fate netfilter alone also produces in a re-run is not evidence against the attached
        # side: such probes are noted, and only fates netfilter alone never gives stay disagreements.
        for _ in range(RERUNS if differ else 0):
            again = run_once(ruleset, corpus, backend, None, forwarding, receiver_if).fates
            for pid in [p for p in differ if again[p].key == attached.fates[p].key]:
                differ.remove(pid)
                alone.observation.notes.append(f"probe {pid}: netfilter alone is not deterministic here "
                                               f"({alone.fates[pid]} / {again[pid]}); not counted")
        disagreements += [Disagreement(backend, by_id[pid], alone.fates[pid], attached.fates[pid]) for pid in differ]
    return Comparison(ruleset, corpus, runs, disagreements, receiver_if, forwarding)


def ipt2xdp_attach(mode: str = "native", backend: Optional[str] = None, reuse: bool = True) -> Attach:
    """The ipt2xdp side: `ipt2xdp import --live --iface IF --mode MODE --backend B` in the receiver.

    mode is "native" or "generic" ("skb" is taken as "generic"). backend None means the backend the
    run loaded (run_once passes it): with both iptables backends installed "auto" would pick the
    system's alternative, which may not be the one holding the ruleset, and ipt2xdp would then plan
    an empty ruleset. reuse: keep the receiver (and the attached program) for the next ruleset
    and re-import there (compat_tests.reuse); False attaches to a fresh testbed every time.
    """
    mode = {"skb": "generic"}.get(mode, mode)

    def attach(receiver: netns.Namespace, receiver_if: str, backend: Optional[str] = backend) -> None:
        argv = [sys.executable, "-m", "ipt2xdp", "import", "--live", "--iface", receiver_if, "--mode", mode,
                "--backend", backend or "auto"]
        result = receiver.run(argv, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"ipt2xdp import failed (exit {result.returncode}): {result.stderr.strip()}")
    attach.takes_backend = True
    if reuse:
        attach.reuse_mode = mode
    return attach


def xdp_object_attach(obj: str, mode: str = "xdpdrv", section: str = "xdp") -> Attach:
    """Attach a plain XDP object with iproute2 (used to check that the harness sees XDP's effect)."""
    def attach(receiver: netns.Namespace, receiver_if: str) -> None:
        receiver.run(["ip", "link", "set", "dev", receiver_if, mode, "obj", obj, "sec", section])
    return attach
