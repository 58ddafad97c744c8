# SPDX-License-Identifier: GPL-2.0-only
"""Build hook: compile the XDP object with clang and ship it, with the grammar and the wrapper's
native launcher, inside the package.

Metadata lives in setup.cfg; this file only adds the step setup.cfg cannot express.
"""
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithBpf(build_py):
    def run(self):
        subprocess.run(["make", "-s", "-C", str(ROOT / "bpf")], check=True)
        subprocess.run(["make", "-s", "-C", str(ROOT / "launcher")], check=True)
        super().run()
        data = Path(self.build_lib) / "ipt2xdp" / "_data"
        data.mkdir(parents=True, exist_ok=True)
        for source in sorted((ROOT / "grammar").glob("*.lark")):
            shutil.copy2(source, data / source.name)
        for source in sorted((ROOT / "bpf").glob("*.bpf.o")) + sorted((ROOT / "bpf").glob("*.h")):
            shutil.copy2(source, data / source.name)
        shutil.copy2(ROOT / "launcher" / "ipt2xdp-launch", data / "ipt2xdp-launch")


setup(cmdclass={"build_py": BuildWithBpf})
