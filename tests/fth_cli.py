"""`fth` run in the test's own process: `run("heads", "fit", ...)` -> (exit code, stdout, stderr)."""

from __future__ import annotations

import contextlib
import io

from fth.cli import main


def run(*argv: str, level: str = "WARNING") -> tuple[int, str, str]:
    """`fth --log-level <level> <argv>` with stdout and stderr captured (ERROR keeps expected warnings out)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["--log-level", level, *argv])
    return rc, out.getvalue(), err.getvalue()
