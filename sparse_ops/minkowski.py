"""Import MinkowskiEngine 0.5.4 on Python 3.10+.

MinkowskiEngine 0.5.4 (the last release on PyPI) still imports ``Sequence`` and friends from
``collections``; those aliases were removed in Python 3.10. They are restored, once, before the
import. The engine is a required dependency: a missing build is an ImportError that says how to
build it, never a silent fallback.
"""

from __future__ import annotations

import collections
import collections.abc
import functools
import os
import warnings
from types import ModuleType

_ALIASES = ("Sequence", "Mapping", "MutableMapping", "Iterable", "Callable")
_INSTALL_HINT = (
    "MinkowskiEngine is not importable ({err}); build it with `make install` "
    "(needs libopenblas-dev and torch in the environment; see README)"
)


@functools.cache
def import_minkowski() -> ModuleType:
    """Return the ``MinkowskiEngine`` module, or raise an ImportError naming the fix."""
    for name in _ALIASES:
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    # MinkowskiEngine warns at import when OMP_NUM_THREADS is unset; that says nothing useful.
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import MinkowskiEngine as ME
        except ImportError as err:
            raise ImportError(_INSTALL_HINT.format(err=err)) from err
    return ME
