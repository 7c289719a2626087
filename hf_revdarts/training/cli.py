"""How the scripts end and what their errors say.

A checked error (a flag, a file, a folder, a diverged run: raised by this project with a message that names the
problem and the fix) ends a script with that message on one line and exit status 1, not a Python traceback
whose last line is the only part that matters. Anything else (a bug, or an error from deep inside a library)
keeps its full traceback. ``REVDARTS_TRACEBACK=1`` shows the traceback of every error.

Where a message names a flag the user did not give, ``explain_flags`` adds where its value came from (a config
file, or the script's default): the user sees why a flag they never typed is in the way.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..utils.guards import NonFiniteError
from ..utils.integrity import CheckpointError

__all__ = ["CHECKED_ERRORS", "explain_flags", "record_flag_sources", "run_script"]

PACKAGE = Path(__file__).resolve().parent
# What a checked error is: the kinds of error the project raises for bad input or a failed run.
CHECKED_ERRORS = (ValueError, OSError, NonFiniteError, CheckpointError)


def _raised_by_project(error: BaseException, script: Path) -> bool:
    """Whether ``error`` was raised in this package or in the running script (not inside a library)."""
    tb = error.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    if last is None:
        return False
    path = Path(last).resolve()
    return path.is_relative_to(PACKAGE) or path == script or path.parent == script.parent


# Where the flags of this process's script came from (``record_flag_sources``), for ``run_script``'s messages.
_SOURCES: dict[str, Any] = {}


def record_flag_sources(argv: Iterable[str], file_values: Mapping[str, Any], config_file: str | None,
                        defaults: Mapping[str, Any]) -> None:
    """Remember how the script's arguments were given (called by ``arguments.parse_args``)."""
    _SOURCES.update(argv=list(argv), file_values=dict(file_values), config_file=config_file, defaults=dict(defaults))


def run_script(main: Callable[[], int | None]) -> None:
    """``sys.exit(main())``, with a checked error as ``<script>: error: <message>`` on stderr and status 1."""
    script = Path(sys.argv[0]).resolve()
    try:
        code = main()
    except CHECKED_ERRORS as e:
        if os.environ.get("REVDARTS_TRACEBACK") or not _raised_by_project(e, script):
            raise
        message = explain_flags(str(e), **_SOURCES) if _SOURCES else str(e)
        print(f"{script.name}: error: {message}", file=sys.stderr)
        print(f"{script.name}: (REVDARTS_TRACEBACK=1 shows where it was raised)", file=sys.stderr)
        sys.stderr.flush()
        sys.exit(1)
    sys.exit(code or 0)


_FLAG = re.compile(r"--([a-z][a-z0-9_]*)")


def explain_flags(
    message: str, argv: Iterable[str], file_values: Mapping[str, Any], config_file: str | None,
    defaults: Mapping[str, Any],
) -> str:
    """``message`` with, for each flag it names that is not on the command line, where its value came from."""
    given = {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}
    notes = []
    for name in dict.fromkeys(_FLAG.findall(message)):
        if name in given or name not in defaults:
            continue
        if config_file is not None and name in file_values:
            notes.append(f"--{name} {file_values[name]} comes from {config_file}")
        else:
            notes.append(f"--{name} is at its default, {defaults[name]}")
    return f"{message} ({'; '.join(notes)})" if notes else message
