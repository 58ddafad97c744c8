# SPDX-License-Identifier: GPL-2.0-only
"""Errors and diagnostics shared by every stage.

Exit codes follow iptables (include/xtables.h): 1 other problem, 2 parameter problem,
3 version problem, 4 resource problem. `cli.main()` is the only place that turns these into exits.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

EXIT_OK = 0
EXIT_OTHER = 1
EXIT_PARAMETER = 2
EXIT_VERSION = 3
EXIT_RESOURCE = 4

MAX_RENDERED_DIAGNOSTICS = 20


@dataclass(frozen=True)
class SourceSpan:
    """A position in an input file; line and col are 1-based, end_col exclusive."""

    path: str
    line: int
    col: int
    end_col: Optional[int] = None


@dataclass(frozen=True)
class Diagnostic:
    severity: str  # "error" | "warning" | "note"
    code: str
    message: str
    span: Optional[SourceSpan] = None
    hint: Optional[str] = None


class Ipt2xdpError(Exception):
    """Base of every error ipt2xdp reports to a user."""

    exit_code = EXIT_OTHER


class UsageError(Ipt2xdpError):
    exit_code = EXIT_PARAMETER


class ParseError(Ipt2xdpError):
    """One or more diagnostics collected over a whole input."""

    exit_code = EXIT_PARAMETER

    def __init__(self, diagnostics: Sequence[Diagnostic], source_lines: Optional[dict] = None):
        self.diagnostics = list(diagnostics)
        # path -> list of source lines, for rendering the offending line with a caret
        self.source_lines = source_lines or {}
        first = self.diagnostics[0].message if self.diagnostics else "parse error"
        super().__init__(first)


class CapacityError(Ipt2xdpError):
    exit_code = EXIT_RESOURCE


class LoadError(Ipt2xdpError):
    """A kernel or libbpf operation failed; the message names it, the errno and the next step."""

    exit_code = EXIT_RESOURCE

    def __init__(self, what: str, errno_value: int = 0, next_step: str = "", exit_code: Optional[int] = None):
        self.what = what
        self.errno_value = abs(errno_value)
        self.next_step = next_step
        if exit_code is not None:
            self.exit_code = exit_code
        parts = [what]
        if self.errno_value:
            import errno as errno_names

            name = errno_names.errorcode.get(self.errno_value, str(self.errno_value))
            parts.append(f"{name} ({os.strerror(self.errno_value)})")
        message = ": ".join(parts)
        if next_step:
            message += f"; {next_step}"
        super().__init__(message)


class AbiMismatch(LoadError):
    exit_code = EXIT_VERSION

    def __init__(self, differences: Sequence[str]):
        self.differences = list(differences)
        Ipt2xdpError.__init__(self, "BPF object does not match ipt2xdp's structures: " + "; ".join(differences)
                              + "; rebuild the package (make bpf) so the object and the Python side agree")
        self.what, self.errno_value, self.next_step = "abi check", 0, "rebuild"


class UnsupportedFeature(Ipt2xdpError):
    exit_code = EXIT_VERSION

    def __init__(self, feature: str, min_kernel: str = ""):
        self.feature = feature
        self.min_kernel = min_kernel
        needs = f" (requires Linux >= {min_kernel})" if min_kernel else ""
        super().__init__(f"{feature} is not supported by this kernel{needs}")


def _use_colour(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty() and os.environ.get("NO_COLOR") is None


def render_diagnostic(diag: Diagnostic, source_lines: Optional[dict] = None, colour: bool = False) -> str:
    """Render one diagnostic compiler-style: `FILE:LINE:COL: error: message`, the line, a caret."""
    red, bold, reset = ("\033[31m", "\033[1m", "\033[0m") if colour else ("", "", "")
    where = ""
    out = []
    if diag.span is not None:
        where = f"{diag.span.path}:{diag.span.line}:{diag.span.col}: "
    out.append(f"{bold}{where}{reset}{red}{diag.severity}:{reset} {diag.message}")
    lines = (source_lines or {}).get(diag.span.path) if diag.span else None
    if lines and 1 <= diag.span.line <= len(lines):
        text = lines[diag.span.line - 1].rstrip("\n")
        width = max(1, (diag.span.end_col or diag.span.col + 1) - diag.span.col)
        out.append(f"  {text}")
        out.append("  " + " " * (diag.span.col - 1) + "^" + "~" * (width - 1))
    if diag.hint:
        out.append(f"  hint: {diag.hint}")
    return "\n".join(out)


def render_diagnostics(diagnostics: Sequence[Diagnostic], source_lines: Optional[dict] = None,
                       stream=None, limit: int = MAX_RENDERED_DIAGNOSTICS) -> str:
    stream = stream or sys.stderr
    colour = _use_colour(stream)
    shown = [render_diagnostic(d, source_lines, colour) for d in diagnostics[:limit]]
    if len(diagnostics) > limit:
        shown.append(f"... and {len(diagnostics) - limit} more")
    return "\n".join(shown)
