# SPDX-License-Identifier: GPL-2.0-only
"""Helpers for kernel tests: run Python code inside a test namespace, send and receive UDP, read
an iptables counter. Everything happens inside namespaces made by ipt2xdp.netns."""
import contextlib
import socket
import subprocess
import sys


def inside(ns):
    """Run the body with this thread in the namespace (sockets made here stay in it)."""
    return ns.entered()


@contextlib.contextmanager
def entered_namespace(prefix: str):
    """A fresh namespace with forwarding off, this thread inside it for the body; deleted after.

    BPF_PROG_TEST_RUN runs in the caller's network namespace, and before a DROP the program asks
    that namespace's routing (bpf_fib_lookup). With forwarding off every destination counts as
    delivered locally, so the tables do not depend on the host's routes and sysctls.
    """
    from ipt2xdp import netns

    ns = netns.create_namespace(prefix)
    try:
        ns.run(["sysctl", "-qw", "net.ipv4.ip_forward=0"])
        with inside(ns):
            yield ns
    finally:
        netns.delete_namespace(ns.name)


def unload(pair):
    """Detach ipt2xdp in the receiver and unpin its state."""
    from ipt2xdp import loader, pins

    with inside(pair.receiver):
        directory = pins.pin_dir()
        try:
            loader.detach(all_devices=True)
        finally:
            pins.remove_tree(directory)


def unload_and_close(pair):
    """unload(), then delete both namespaces."""
    unload(pair)
    pair.close()


def udp_receiver(ns, port):
    with inside(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
        s.settimeout(0.2)
    return s


def drain(sock):
    got = 0
    while True:
        try:
            sock.recv(2048)
            got += 1
        except (socket.timeout, BlockingIOError):
            return got


def send_udp(ns, dst, port, count=5, payload=b"x" * 32):
    with inside(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(count):
            s.sendto(payload, (dst, port))
    finally:
        s.close()


# filter/INPUT dropping everything from a Testbed's sender (format with sender=its address).
DROP_FROM_SENDER = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -s {sender}/32 -j DROP
COMMIT
"""


def send_udp_frames(testbed, port, count):
    """UDP frames from a compat_tests.harness.Testbed's sender to its receiver, checksums computed (a
    socket's would be CHECKSUM_PARTIAL on veth, which XDP cannot verify: with iptables-legacy's nat
    counting on it passes those to netfilter, tests/bpf/test_nat_new.py)."""
    from scapy.all import UDP

    send_frames(testbed, UDP(sport=1234, dport=port) / b"x", count)


def send_frames(testbed, layer4, count):
    """Frames carrying the scapy layer4 from a Testbed's sender to its receiver (checksums computed)."""
    import time

    from scapy.all import IP, Ether, raw

    link = testbed.receiver.run(["ip", "-o", "link", "show", testbed.receiver_if]).stdout
    mac = link.split("link/ether ")[1].split()[0]
    frame = raw(Ether(dst=mac) / IP(src=testbed.pair.sender_ip, dst=testbed.pair.receiver_ip) / layer4)
    with inside(testbed.sender):
        sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        sender.bind((testbed.sender_if, 0))
    try:
        for _ in range(count):
            sender.send(frame)
    finally:
        sender.close()
    time.sleep(0.2)


def iptables_count(ns, match: str) -> int:
    """Packets counted by the first INPUT rule whose listing contains match."""
    out = ns.run(["iptables", "-w", "-L", "INPUT", "-v", "-n", "-x"]).stdout
    for line in out.splitlines()[2:]:
        if match in line:
            return int(line.split()[0])
    raise AssertionError(f"no INPUT rule with {match!r}:\n{out}")


def python_in(ns, code: str, check=True) -> subprocess.CompletedProcess:
    """Run python code in the namespace with nsenter (a separate process, as the CLI would be)."""
    import sys
    return ns.run([sys.executable, "-c", code], check=check)


def start_watch(ns, ready=("serving wrapper calls on",), timeout=60.0):
    """`ipt2xdp watch` in ns, its log in a temporary file: (process, log) once the log shows one of
    `ready` (fails if the watcher exits first)."""
    import tempfile
    import time

    log = tempfile.NamedTemporaryFile("w+", prefix="ipt2xdp-watch-", suffix=".log")
    proc = subprocess.Popen(ns.argv([sys.executable, "-m", "ipt2xdp", "watch"]), stderr=log,
                            stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not any(word in read_log(log) for word in ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"ipt2xdp watch did not get ready: {read_log(log)}")
            time.sleep(0.1)
    except BaseException:
        stop_watch(proc, log)
        raise
    return proc, log


def read_log(log) -> str:
    log.flush()
    with open(log.name) as f:
        return f.read()


def stop_watch(proc, log) -> str:
    """Stop a watcher from start_watch (also a SIGSTOPped one); its whole log."""
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()  # it removes its socket file
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = read_log(log)
    log.close()
    return text
