# SPDX-License-Identifier: GPL-2.0-only
"""The subcommands of `ipt2xdp` (one module each, cli.py), and what more than one of them does."""


def read_ruleset_file(path: str) -> str:
    """A ruleset file's text; a comment may hold any byte, kept as a surrogate (cli.py prints it
    back as it was). UsageError (exit 2) when it cannot be read."""
    from ipt2xdp.errors import UsageError

    try:
        with open(path, errors="surrogateescape") as f:
            return f.read()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
