"""Which job failures are *known*: errors a stage raises on purpose, reported in one line.

A job that dies reaches the driver as the text of its traceback (submitit pickles it, SLURM or not).
When the exception it ends in is of a known kind, the driver reports ``stage, message, log`` instead
of the traceback, which stays in the job's log and in ``runs.error``. Known kinds are listed by name,
as a traceback's last line writes them (``package.module.Class``; builtins bare): the platform's
``ConfigError`` plus the app's ``App.known_errors``. A name, not a base class, because the traceback
text is all a driver has (a restarted driver reattached to SLURM jobs included), and because the
app's errors live in modules the platform does not import. Any other exception, a bare
``ValueError`` with a message included, is a bug until proven otherwise and keeps its traceback.
"""

from __future__ import annotations

import re
from typing import Optional

PLATFORM_KNOWN = ("platform.validate.ConfigError",)

_HEAD = re.compile(r"^([A-Za-z_][\w.]*)(?:: ?(.*))?$")


def known_error_names() -> frozenset[str]:
    names = set(PLATFORM_KNOWN)
    try:
        from platform.app import load_app

        names |= set(load_app().known_errors)
    except Exception:  # noqa: BLE001 - an app that does not import still gets the platform's names
        pass
    return frozenset(n.removeprefix("builtins.") for n in names)


def final_exception(traceback_text: str) -> Optional[tuple[str, str]]:
    """(type name, message) of the exception a Python traceback text ends in; None if it has none.

    The exception part is what follows the last frame (``  File "...", line N, in f`` and its
    indented source lines); a message may span lines (``ConfigError`` lists its problems).
    """
    lines = traceback_text.rstrip("\n").splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith('  File "')]
    if not frames:
        return None
    i = frames[-1] + 1
    while i < len(lines) and lines[i].startswith("    "):
        i += 1
    if i >= len(lines):
        return None
    m = _HEAD.match(lines[i])
    if not m:
        return None
    message = "\n".join([m.group(2) or "", *lines[i + 1:]]).strip()
    return m.group(1), message


def known_error(traceback_text: str, names: Optional[frozenset[str]] = None) -> Optional[tuple[str, str]]:
    """(type name, message) when the traceback ends in an exception of a known kind, else None."""
    found = final_exception(traceback_text or "")
    if found is None:
        return None
    return found if found[0] in (known_error_names() if names is None else names) else None
