"""Build hook: setuptools compiles the cffi C core (csrc/) into lsvfs._core."""
from setuptools import setup

setup(cffi_modules=["csrc/build_core.py:ffibuilder"])
