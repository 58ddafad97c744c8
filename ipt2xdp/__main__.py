# SPDX-License-Identifier: GPL-2.0-only
import sys

from ipt2xdp.cli import main

sys.exit(main())
