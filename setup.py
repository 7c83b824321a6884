"""The C part of flowtrace: one optional extension, the bulk capture's ring-to-pcapng copy.

Everything else is in pyproject.toml.  `optional=True`: without a C compiler or the
Python headers the install still succeeds, and flowtrace.capture.native says once, at
the first bulk capture, that it is using the pure-Python path instead.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "flowtrace.capture._ringpcap",
            ["flowtrace/capture/_ringpcap.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            optional=True,
        )
    ]
)
