"""Make sure ``import platform`` gives this repository's package, not the stdlib module.

pytest (through its plugins) may import the stdlib ``platform`` before collecting; our package
re-executes the stdlib code, so swapping it in keeps every attribute those importers use.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
import launchers  # noqa: E402,F401  (importing it swaps in our package: launchers.jobs.ensure_repo_platform)
from platform.cli import restore_default_sigint  # noqa: E402

# the tests start local submitit jobs from this process, which a background shell may have started
# with SIGINT ignored: those jobs could then not be cancelled
restore_default_sigint()
