"""Everything about the package is in setup.cfg and pyproject.toml; this
file only names the C extension cffi builds (the SAKKE Miller loop)."""

from setuptools import setup

setup(cffi_modules=["cryptify/crypto/_pairing_build.py:ffibuilder"])
