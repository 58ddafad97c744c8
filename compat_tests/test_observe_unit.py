# SPDX-License-Identifier: GPL-2.0-only
"""Frame rewriting of the harness, without the kernel."""
import random

from scapy.layers.inet import IP, UDP

from compat_tests.observe import _checksum, with_ip_id


def test_new_ip_id_keeps_a_good_checksum_good_and_a_bad_one_equally_bad():
    rng = random.Random(7)
    for _ in range(500):
        good = bytes(IP(id=rng.randrange(65536), src="192.0.2.1", dst="10.0.0.1", ttl=rng.randrange(1, 256)) / UDP())
        bad = bytearray(good)
        bad[10] ^= rng.randrange(1, 256)
        new_id = rng.randrange(65536)
        assert with_ip_id(good, new_id)[4:6] == new_id.to_bytes(2, "big")
        assert _checksum(with_ip_id(good, new_id)[:20]) == 0
        # the probe "bad ip checksum" must reach the receiver as wrong as it was built
        assert _checksum(with_ip_id(bytes(bad), new_id)[:20]) == _checksum(bytes(bad[:20])) != 0
