"""Build script for the one compiled piece: the record gate (runtime/_gate.c).

Everything else is declared in setup.cfg. The extension is optional: if it cannot be
built (no compiler), Tidal falls back to a pure-Python gate that is about 90 ns per
record slower, and `tidal bench suspend` reports which one is in use.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("tidal.runtime._cgate", sources=["runtime/_gate.c"], optional=True),
    ]
)
