"""Make sure ``import platform`` gives this repository's package, not the stdlib module.

pytest (through its plugins) may import the stdlib ``platform`` before collecting; our package
re-executes the stdlib code, so swapping it in keeps every attribute those importers use.
"""

import importlib
import os
import signal
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
_mod = sys.modules.get("platform")
if _mod is not None and not hasattr(_mod, "__path__"):
    del sys.modules["platform"]
    importlib.import_module("platform")

# A shell started in the background (nohup, `&`, some CI runners) starts us with SIGINT ignored, and
# children inherit that: local submitit jobs could then not be cancelled (submitit sends SIGINT).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
