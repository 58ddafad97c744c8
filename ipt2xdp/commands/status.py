# SPDX-License-Identifier: GPL-2.0-only
from ipt2xdp.errors import Ipt2xdpError

HELP = "status (not built yet)"


def add_arguments(parser):
    pass


def run(args):
    raise Ipt2xdpError("'status' is not built yet")
