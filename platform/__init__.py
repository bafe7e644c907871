"""The experiment platform's generic machinery.

This package shadows the standard library's ``platform`` module, which torch, uuid, pandas and
most libraries import. To keep them working we execute the stdlib module's code in this
package's namespace, so ``platform.system()`` & co. behave exactly as usual, and our own
submodules (``platform.sweep``, ``platform.store``, ...) live beside them.
Never add a submodule whose name is an attribute of the stdlib module (``version``, ``system``,
``node``, ``machine``, ``release``, ``processor``, ``uname``, ``architecture``, ...).
"""

import os as _os
import sysconfig as _sysconfig

_STDLIB_PLATFORM = _os.path.join(_sysconfig.get_paths()["stdlib"], "platform.py")
with open(_STDLIB_PLATFORM, encoding="utf-8") as _f:
    exec(compile(_f.read(), _STDLIB_PLATFORM, "exec"), globals())  # noqa: S102

__path__ = [_os.path.dirname(__file__)]
