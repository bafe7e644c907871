"""Files that appear whole or not at all: written beside their target, then renamed over it.

A reader (another job, the ingester, a resumed run) sees the old file or the new one, never half a
file; a crash mid-write leaves only ``<name>.tmp<pid>`` behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable


def write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` writes the content to a temporary path next to ``path``; it then replaces ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON (values JSON cannot hold as their ``str``), written atomically."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1, default=str), encoding="utf-8"))
