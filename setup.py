"""Build hook: setuptools compiles the cffi C core (csrc/) into lsvfs._core.

cffi builds the module against CPython's stable ABI (lsvfs/_core.abi3.so), so
the wheel is tagged cp310-abi3: one wheel for every CPython >= 3.10.
"""
from setuptools import setup

setup(cffi_modules=["csrc/build_core.py:ffibuilder"], options={"bdist_wheel": {"py_limited_api": "cp310"}})
