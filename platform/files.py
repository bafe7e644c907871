"""Files that appear whole or not at all: written beside their target, then renamed over it.

A reader (another job, the ingester, a resumed run) sees the old file or the new one, never half a
file; a crash mid-write leaves only ``<name>.tmp<pid>-<thread>`` behind.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Callable


def write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` writes the content to a temporary path next to ``path``; it then replaces ``path``."""
    path = Path(path)
    # pid and thread: two threads (or two drivers on one filesystem) writing one file at once
    # each rename their own whole file over it
    tmp = path.with_name(path.name + f".tmp{os.getpid()}-{threading.get_ident()}")
    write(tmp)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON (values JSON cannot hold as their ``str``), written atomically."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1, default=str), encoding="utf-8"))
