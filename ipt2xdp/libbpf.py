# SPDX-License-Identifier: GPL-2.0-only
"""A thin ctypes binding to the system libbpf (libbpf1, 1.1): only what the loader needs.

Every call that fails raises LoadError naming the operation, the errno and the next step; libbpf
1.x returns -errno from int functions and NULL + errno from pointer functions. libbpf's own
messages are silenced unless set_verbose(True) (the CLI's -v), in the style of xdp-tools'
silence_libbpf_logging().
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_names
import os
import struct
from typing import Optional

from ipt2xdp.errors import EXIT_VERSION, LoadError

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2

_lib = None
_verbose = False


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = "libbpf.so.1"
        try:
            _lib = ctypes.CDLL(name, use_errno=True)
        except OSError as error:
            raise LoadError(f"loading {name}: {error}", errno_names.ENOENT,
                            "install it with: apt-get install libbpf1", exit_code=EXIT_VERSION) from None
        _declare(_lib)
        _install_print(_lib)
    return _lib


# --- option structs (bpf/bpf.h and libbpf.h of libbpf 1.1) ---------------------------------------
class MapCreateOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("btf_fd", ctypes.c_uint32), ("btf_key_type_id", ctypes.c_uint32),
                ("btf_value_type_id", ctypes.c_uint32), ("btf_vmlinux_value_type_id", ctypes.c_uint32),
                ("inner_map_fd", ctypes.c_uint32), ("map_flags", ctypes.c_uint32), ("map_extra", ctypes.c_uint64),
                ("numa_node", ctypes.c_uint32), ("map_ifindex", ctypes.c_uint32)]


class BatchOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class TestRunOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p), ("data_out", ctypes.c_void_p),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_void_p), ("ctx_out", ctypes.c_void_p),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("retval", ctypes.c_uint32), ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32), ("batch_size", ctypes.c_uint32)]


class XdpAttachOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("old_prog_fd", ctypes.c_int)]


class XdpQueryOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("prog_id", ctypes.c_uint32), ("drv_prog_id", ctypes.c_uint32),
                ("hw_prog_id", ctypes.c_uint32), ("skb_prog_id", ctypes.c_uint32), ("attach_mode", ctypes.c_uint8)]


class MapInfo(ctypes.Structure):
    """The leading members of struct bpf_map_info (the kernel accepts a shorter info_len)."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16)]


class ProgInfo(ctypes.Structure):
    """The leading members of struct bpf_prog_info, up to the id."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32)]


class XdpMd(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint32), ("data_end", ctypes.c_uint32), ("data_meta", ctypes.c_uint32),
                ("ingress_ifindex", ctypes.c_uint32), ("rx_queue_index", ctypes.c_uint32),
                ("egress_ifindex", ctypes.c_uint32)]


_P, _I, _U32, _S = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_char_p


def _declare(l: ctypes.CDLL) -> None:
    sigs = {
        "bpf_object__open_file": (_P, [_S, _P]),
        "bpf_object__load": (_I, [_P]),
        "bpf_object__close": (None, [_P]),
        "bpf_object__find_map_by_name": (_P, [_P, _S]),
        "bpf_object__find_program_by_name": (_P, [_P, _S]),
        "bpf_program__fd": (_I, [_P]),
        "bpf_map__fd": (_I, [_P]),
        "bpf_map__inner_map": (_P, [_P]),
        "bpf_map__key_size": (_U32, [_P]),
        "bpf_map__value_size": (_U32, [_P]),
        "bpf_map__max_entries": (_U32, [_P]),
        "bpf_map__map_flags": (_U32, [_P]),
        "bpf_map__type": (_I, [_P]),
        "bpf_map_create": (_I, [_I, _S, _U32, _U32, _U32, _P]),
        "bpf_map_update_elem": (_I, [_I, _P, _P, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (_I, [_I, _P, _P]),
        "bpf_map_delete_elem": (_I, [_I, _P]),
        "bpf_map_get_next_key": (_I, [_I, _P, _P]),
        "bpf_map_update_batch": (_I, [_I, _P, _P, ctypes.POINTER(_U32), _P]),
        "bpf_map_lookup_batch": (_I, [_I, _P, _P, _P, _P, ctypes.POINTER(_U32), _P]),
        "bpf_obj_pin": (_I, [_I, _S]),
        "bpf_obj_get": (_I, [_S]),
        "bpf_obj_get_info_by_fd": (_I, [_I, _P, ctypes.POINTER(_U32)]),
        "bpf_map_get_fd_by_id": (_I, [_U32]),
        "bpf_prog_get_fd_by_id": (_I, [_U32]),
        "bpf_xdp_attach": (_I, [_I, _I, _U32, _P]),
        "bpf_xdp_detach": (_I, [_I, _U32, _P]),
        "bpf_xdp_query": (_I, [_I, _I, _P]),
        "bpf_prog_test_run_opts": (_I, [_I, _P]),
        "bpf_prog_query": (_I, [_I, _I, _U32, ctypes.POINTER(_U32), _P, ctypes.POINTER(_U32)]),
        "bpf_prog_load": (_I, [_I, _S, _S, _S, ctypes.c_size_t, _P]),
        "bpf_link_create": (_I, [_I, _I, _I, _P]),
        "libbpf_num_possible_cpus": (_I, []),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(l, name)
        fn.restype, fn.argtypes = restype, argtypes


# libbpf_set_print takes a vararg printer; we format nothing ourselves, we only forward or drop.
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_vsnprintf = ctypes.CDLL(None).vsnprintf
_vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]


@_PRINT_FN
def _printer(level, fmt, args):
    if not _verbose:
        return 0
    buf = ctypes.create_string_buffer(4096)
    _vsnprintf(buf, len(buf), fmt, args)
    os.write(2, b"libbpf: " + buf.value if not buf.value.startswith(b"libbpf") else buf.value)
    return 0


def _install_print(l: ctypes.CDLL) -> None:
    l.libbpf_set_print.restype = ctypes.c_void_p
    l.libbpf_set_print.argtypes = [_PRINT_FN]
    l.libbpf_set_print(_printer)


def set_verbose(verbose: bool) -> None:
    global _verbose
    _verbose = verbose


def _errno_of(ret: int) -> int:
    return -ret if ret < 0 else (ctypes.get_errno() or errno_names.EIO)


def check(ret: int, what: str, next_step: str = "") -> int:
    """Raise LoadError if a libbpf int call failed (ret < 0), else return ret."""
    if ret < 0:
        err = _errno_of(ret)
        raise LoadError(what, err, next_step or _default_next_step(err))
    return ret


def _default_next_step(err: int) -> str:
    if err == errno_names.EPERM:
        return "run as root (CAP_BPF and CAP_NET_ADMIN are needed)"
    if err in (errno_names.ENOMEM, errno_names.E2BIG):
        return "the kernel is short of memory for BPF maps; shorten the ruleset or free memory"
    return "rerun with -v for libbpf's messages"


# --- wrappers ------------------------------------------------------------------------------------
def map_create(map_type: int, name: str, key_size: int, value_size: int, max_entries: int,
               map_flags: int = 0, inner_map_fd: int = 0) -> int:
    opts = MapCreateOpts(sz=ctypes.sizeof(MapCreateOpts), map_flags=map_flags, inner_map_fd=inner_map_fd)
    return check(lib().bpf_map_create(map_type, name.encode()[:15], key_size, value_size, max_entries,
                                      ctypes.byref(opts)), f"creating map {name} ({max_entries} entries)")


def update_elem(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY, what: str = "updating a map") -> None:
    check(lib().bpf_map_update_elem(fd, key, value, flags), what)


def lookup_elem(fd: int, key: bytes, value_size: int) -> Optional[bytes]:
    buf = ctypes.create_string_buffer(value_size)
    ret = lib().bpf_map_lookup_elem(fd, key, buf)
    if ret < 0:
        if _errno_of(ret) == errno_names.ENOENT:
            return None
        check(ret, "reading a map")
    return buf.raw


def delete_elem(fd: int, key: bytes) -> bool:
    ret = lib().bpf_map_delete_elem(fd, key)
    if ret < 0 and _errno_of(ret) == errno_names.ENOENT:
        return False
    check(ret, "deleting a map entry")
    return True


def keys(fd: int, key_size: int):
    """All keys of a hash map."""
    prev, key = None, ctypes.create_string_buffer(key_size)
    while True:
        ret = lib().bpf_map_get_next_key(fd, prev, key)
        if ret < 0:
            if _errno_of(ret) == errno_names.ENOENT:
                return
            check(ret, "iterating a map")
        yield key.raw
        prev = ctypes.create_string_buffer(key.raw, key_size)


def update_batch(fd: int, keys_blob: bytes, values_blob: bytes, count: int, what: str) -> None:
    """Write count entries at once (falls back to one by one where the map lacks batch support)."""
    if count == 0:
        return
    opts = BatchOpts(sz=ctypes.sizeof(BatchOpts))
    n = ctypes.c_uint32(count)
    ret = lib().bpf_map_update_batch(fd, keys_blob, values_blob, ctypes.byref(n), ctypes.byref(opts))
    if ret < 0 and _errno_of(ret) in (errno_names.EINVAL, errno_names.ENOTSUPP if hasattr(errno_names, "ENOTSUPP") else 524, 524):
        ks, vs = len(keys_blob) // count, len(values_blob) // count
        for i in range(count):
            update_elem(fd, keys_blob[i * ks:(i + 1) * ks], values_blob[i * vs:(i + 1) * vs], what=what)
        return
    check(ret, what)


def read_array(fd: int, value_size: int, max_entries: int) -> bytes:
    """All values of an ARRAY map, in index order (batch lookup, one syscall per 64k entries)."""
    out = bytearray()
    in_batch = None
    out_batch = ctypes.c_uint32()
    opts = BatchOpts(sz=ctypes.sizeof(BatchOpts))
    while len(out) < value_size * max_entries:
        n = min(65536, max_entries - len(out) // value_size)
        keys_buf = ctypes.create_string_buffer(4 * n)
        values_buf = ctypes.create_string_buffer(value_size * n)
        count = ctypes.c_uint32(n)
        ret = lib().bpf_map_lookup_batch(fd, in_batch, ctypes.byref(out_batch), keys_buf, values_buf,
                                         ctypes.byref(count), ctypes.byref(opts))
        out += values_buf.raw[:value_size * count.value]
        if ret < 0:
            if _errno_of(ret) == errno_names.ENOENT:  # reached the end
                break
            check(ret, "reading an array map")
        in_batch = ctypes.byref(ctypes.c_uint32(out_batch.value))
    return bytes(out)


def obj_pin(fd: int, path: str) -> None:
    check(lib().bpf_obj_pin(fd, path.encode()), f"pinning {path}", "check that bpffs is mounted at /sys/fs/bpf")


def obj_get(path: str) -> int:
    return check(lib().bpf_obj_get(path.encode()), f"opening pinned {path}")


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    n = ctypes.c_uint32(ctypes.sizeof(info))
    check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(n)), "reading map info")
    return info


def prog_id(fd: int) -> int:
    info = ProgInfo()
    n = ctypes.c_uint32(ctypes.sizeof(info))
    check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(n)), "reading program info")
    return info.id


def map_fd_by_id(map_id: int) -> int:
    return check(lib().bpf_map_get_fd_by_id(map_id), f"opening map id {map_id}")


def num_possible_cpus() -> int:
    return check(lib().libbpf_num_possible_cpus(), "counting possible CPUs")


def xdp_attach(ifindex: int, prog_fd: int, flags: int, old_prog_fd: int = -1) -> int:
    """Returns 0 or -errno (the caller words the message: it knows the device and the mode)."""
    opts = XdpAttachOpts(sz=ctypes.sizeof(XdpAttachOpts), old_prog_fd=old_prog_fd)
    return lib().bpf_xdp_attach(ifindex, prog_fd, flags, ctypes.byref(opts) if old_prog_fd >= 0 else None)


def xdp_detach(ifindex: int, flags: int, old_prog_fd: int = -1) -> int:
    opts = XdpAttachOpts(sz=ctypes.sizeof(XdpAttachOpts), old_prog_fd=old_prog_fd)
    return lib().bpf_xdp_detach(ifindex, flags, ctypes.byref(opts) if old_prog_fd >= 0 else None)


def xdp_query(ifindex: int) -> XdpQueryOpts:
    opts = XdpQueryOpts(sz=ctypes.sizeof(XdpQueryOpts))
    check(lib().bpf_xdp_query(ifindex, 0, ctypes.byref(opts)), f"querying XDP on ifindex {ifindex}")
    return opts


def load_constant_program(prog_type: int, value: int, name: str) -> int:
    """The fd of a two-instruction program of prog_type that returns value (r0 = value; exit),
    loaded without an object file: the bench generator's XDP_TX, tests' stand-in programs."""
    insns = struct.pack("<BBhi", 0xB7, 0, 0, value) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    return check(lib().bpf_prog_load(prog_type, name.encode(), b"GPL", insns, 2, None), f"loading the program {name}")


BPF_TCX_INGRESS = 46  # enum bpf_attach_type (Linux 6.6)


def tcx_ingress_count(ifindex: int) -> int:
    """How many BPF programs are attached to the device's tcx ingress hook (0 on kernels without tcx)."""
    count = _U32(0)
    ret = lib().bpf_prog_query(ifindex, BPF_TCX_INGRESS, 0, None, None, ctypes.byref(count))
    if ret < 0 and _errno_of(ret) == errno_names.EINVAL:
        return 0  # an attach type this kernel does not know: nothing can be attached there
    check(ret, f"querying the tcx ingress programs of ifindex {ifindex}")
    return count.value


def test_run(prog_fd: int, packet: bytes, repeat: int = 1, ingress_ifindex: int = 0):
    """BPF_PROG_TEST_RUN: (retval, average ns per run, output packet)."""
    out = ctypes.create_string_buffer(max(len(packet), 64) + 256)
    opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts), data_in=ctypes.cast(ctypes.c_char_p(packet), ctypes.c_void_p),
                       data_out=ctypes.cast(out, ctypes.c_void_p), data_size_in=len(packet),
                       data_size_out=len(out), repeat=repeat)
    ctx = None
    if ingress_ifindex:
        ctx = XdpMd(data=0, data_end=len(packet), ingress_ifindex=ingress_ifindex)
        opts.ctx_in = ctypes.cast(ctypes.pointer(ctx), ctypes.c_void_p)
        opts.ctx_size_in = ctypes.sizeof(ctx)
    check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return opts.retval, opts.duration, out.raw[:opts.data_size_out]


class BpfObject:
    """An opened (and, after load(), loaded) BPF object file."""

    def __init__(self, path: str):
        self.path = path
        ctypes.set_errno(0)
        self.ptr = lib().bpf_object__open_file(path.encode(), None)
        if not self.ptr:
            err = ctypes.get_errno() or errno_names.EINVAL
            raise LoadError(f"opening BPF object {path}", err, "reinstall ipt2xdp or rebuild it with `make bpf`",
                            exit_code=EXIT_VERSION)

    def map(self, name: str):
        ptr = lib().bpf_object__find_map_by_name(self.ptr, name.encode())
        if not ptr:
            raise LoadError(f"map {name} missing from {self.path}", errno_names.ENOENT,
                            "the object does not match this ipt2xdp; rebuild it with `make bpf`", exit_code=EXIT_VERSION)
        return ptr

    def load(self) -> None:
        ret = lib().bpf_object__load(self.ptr)
        if ret < 0:
            err = _errno_of(ret)
            step = ("the verifier or kernel rejected the program; rerun with -v for the verifier log "
                    "(needs a recent kernel with BTF: bpf_cast_to_kern_ctx (6.3), 16-byte bpf_ct_opts)"
                    if err in (errno_names.EINVAL, errno_names.EACCES, errno_names.E2BIG)
                    else _default_next_step(err))
            raise LoadError(f"loading {os.path.basename(self.path)} into the kernel", err, step)

    def program_fd(self, name: str) -> int:
        ptr = lib().bpf_object__find_program_by_name(self.ptr, name.encode())
        if not ptr:
            raise LoadError(f"program {name} missing from {self.path}", errno_names.ENOENT, "rebuild with `make bpf`",
                            exit_code=EXIT_VERSION)
        return check(lib().bpf_program__fd(ptr), f"program {name} fd")

    def close(self) -> None:
        if self.ptr:
            lib().bpf_object__close(self.ptr)
            self.ptr = None
