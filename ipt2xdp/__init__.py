# SPDX-License-Identifier: GPL-2.0-only
"""ipt2xdp: decide in XDP what an iptables ruleset decides exactly, leave the rest to netfilter."""

__version__ = "0.1.0"
