# SPDX-License-Identifier: GPL-2.0-only
from ipt2xdp.cli import entry

entry()
