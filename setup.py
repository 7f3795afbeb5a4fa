"""The one compiled part: the serving hot path (optional: without a C compiler the package
installs and serves through the same steps in Python and numpy)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("stratum1._hotpath", ["stratum1/_hotpath.c"], optional=True),
    ]
)
