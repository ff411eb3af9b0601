"""Everything about the package is in setup.cfg and pyproject.toml; this
file only names the C extensions cffi builds (SAKKE decapsulation, the
P-256 multi-scalar multiplication of ECCSI verification, our libopus
binding)."""

from setuptools import setup

setup(
    cffi_modules=[
        "cryptify/crypto/_pairing_build.py:ffibuilder",
        "cryptify/crypto/_p256_build.py:ffibuilder",
        "cryptify/protocols/_opus_build.py:ffibuilder",
    ]
)
