"""Build script for the compiled pieces: the record gate (runtime/_gate.c), the
scheduler's frame reader (runtime/_frames.c) and the scanner of columnar bulk arguments
(runtime/_columns.c).

Everything else is declared in setup.cfg. Both extensions are optional: if they cannot be
built (no compiler), Tidal falls back to a pure-Python gate that is about 90 ns per
record slower (`tidal bench suspend` reports which one is in use), and the scheduler
reads its socket with pyzmq (~4 us a frame instead of well under 1 us for an ignored one),
and a chunked map's arguments are scanned with msgpack's Unpacker (a Python call per item).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("tidal.runtime._cgate", sources=["runtime/_gate.c"], optional=True),
        Extension("tidal.runtime._cframes", sources=["runtime/_frames.c"], optional=True),
        Extension("tidal.runtime._ccolumns", sources=["runtime/_columns.c"], optional=True),
    ]
)
