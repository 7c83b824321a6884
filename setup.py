"""The C part of flowtrace: optional extensions, each a fast path of a pure-Python one.

Everything else is in pyproject.toml.  `optional=True`: without a C compiler or the
Python headers the install still succeeds and flowtrace runs the Python paths
(flowtrace.native loads what was built; a bulk capture says once that it runs Python).
"""

from setuptools import Extension, setup

#: (import name, source): keep in step with flowtrace.native.MODULES.
C_MODULES = (
    ("flowtrace.capture._ringpcap", "flowtrace/capture/_ringpcap.c"),
    ("flowtrace.pcap._pcapscan", "flowtrace/pcap/_pcapscan.c"),
    ("flowtrace.correlate._grouper", "flowtrace/correlate/_grouper.c"),
    ("flowtrace.correlate._framedecode", "flowtrace/correlate/_framedecode.c"),
)

setup(
    ext_modules=[
        Extension(
            name,
            [source],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            optional=True,
        )
        for name, source in C_MODULES
    ]
)
