# The compiled P-256 multi-scalar multiplication (built by _p256_build.py from p256.c).
from typing import Any

import cffi

ffi: cffi.FFI
lib: Any
