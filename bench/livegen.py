# SPDX-License-Identifier: GPL-2.0-only
"""The project's own live-frames traffic generator: BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES.

Run inside the generator namespace (bench/e2e.py does this through nsenter):

    nsenter --net=/var/run/netns/SND -- python -m bench.livegen --iface IF --dst-mac MAC \
        --src 198.18.0.1 --dst 10.77.1.2 --dport 9 --seconds 1 --cpu 1

A two-instruction XDP program (`r0 = XDP_TX; exit`) is loaded with libbpf's bpf_prog_load (no
object file: nothing to build, nothing that differs between the measured trees) and run by the
kernel `repeat` times per call on one 60-byte UDP frame template (64 on the wire, checksums
valid, bench/pktgen.py's udp_frame). In live-frames mode (Linux >= 5.18) the kernel honours the
verdict: XDP_TX becomes a redirect out of the ingress interface named in the context, here the
generator's veth, so each run puts one frame into the receiver veth's XDP ring. The frames are
flushed after every `batch_size` runs and the receiver's NAPI poll (XDP, GRO, IP, netfilter) runs
in the softirq raised when the call re-enables bottom halves: on the same CPU as the generator.

Calls are repeated until --seconds have passed; `repeat` starts at 256 and doubles while the
kernel times a call under 50 ms, so slow receivers (netfilter at 10k rules) do not stretch a sample
and fast ones are not dominated by each call's fixed cost (setting up and tearing down the
kernel's page pool, tens of ms of wall time on this VM, none of it counted as busy). Prints one JSON
line: {"sent": N, "seconds": S, "busy_seconds": B, "calls": C}: `seconds` is wall time around the
calls; `busy_seconds` the kernel's own timing of the runs (the `duration` it reports times
`repeat`), which covers the generator program, the redirect into the veth and the receiver's softirq
run when each batch re-enables bottom halves, but not the time the task was scheduled out for other
processes on this shared CPU; `sent` is the number of program runs (frames handed to the veth, not
necessarily accepted: the receiver's counters say what arrived).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import sys
import time

from bench.pktgen import add_frame_arguments, frame_from_arguments

BPF_PROG_TYPE_XDP = 6
XDP_TX = 3
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
BATCH_SIZE = 64  # one NAPI budget: the receiver polls each batch in full before the next one
CALL_TARGET_S = 0.05


def load_tx_program() -> int:
    from ipt2xdp import libbpf
    return libbpf.load_constant_program(BPF_PROG_TYPE_XDP, XDP_TX, "bench_livegen")


class LiveFrames:
    """BPF_PROG_RUN of the XDP_TX program in live-frames mode on one frame, out of ifindex."""

    def __init__(self, ifindex: int, frame: bytes, batch_size: int = BATCH_SIZE):
        from ipt2xdp import libbpf
        self.libbpf = libbpf
        self.prog_fd = load_tx_program()
        self.frame = ctypes.create_string_buffer(frame, len(frame))
        self.ctx = libbpf.XdpMd(data=0, data_end=len(frame), ingress_ifindex=ifindex)
        self.opts = libbpf.TestRunOpts(
            sz=ctypes.sizeof(libbpf.TestRunOpts), data_in=ctypes.cast(self.frame, ctypes.c_void_p),
            data_size_in=len(frame), ctx_in=ctypes.cast(ctypes.pointer(self.ctx), ctypes.c_void_p),
            ctx_size_in=ctypes.sizeof(self.ctx), flags=BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=batch_size)

    def run(self, repeat: int) -> int:
        """One call: `repeat` frames; returns the kernel's ns per frame."""
        self.opts.repeat = repeat
        self.libbpf.check(self.libbpf.lib().bpf_prog_test_run_opts(self.prog_fd, ctypes.byref(self.opts)),
                          "BPF_PROG_RUN in live-frames mode", "needs Linux >= 5.18 and an XDP-capable peer "
                          "(the receiver veth needs an XDP program or GRO on)")
        return self.opts.duration

    def close(self) -> None:
        os.close(self.prog_fd)


def send(gen: LiveFrames, seconds: float = 0, frames: int = 0) -> dict:
    """Run until `seconds` have passed, or exactly `frames` frames if given."""
    repeat, sent, calls, kernel_ns = 256, 0, 0, 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        if frames:
            repeat = min(repeat, frames - sent)
            if repeat <= 0:
                break
        busy_ns = gen.run(repeat) * repeat
        kernel_ns += busy_ns
        sent += repeat
        calls += 1
        if not frames and time.perf_counter() >= deadline:
            break
        if busy_ns < CALL_TARGET_S * 1e9:
            repeat *= 2
    elapsed = time.perf_counter() - start
    return {"sent": sent, "seconds": elapsed, "busy_seconds": kernel_ns / 1e9, "calls": calls}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_frame_arguments(p)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--frames", type=int, default=0, help="send exactly this many frames instead of --seconds")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--cpu", type=int, help="pin to this CPU (the receiver's softirq then runs there too)")
    a = p.parse_args()
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    gen = LiveFrames(socket.if_nametoindex(a.iface), frame_from_arguments(a), a.batch_size)
    try:
        result = send(gen, a.seconds, a.frames)
    finally:
        gen.close()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
