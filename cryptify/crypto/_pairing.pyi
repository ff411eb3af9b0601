# SAKKE decapsulation in C (built by _pairing_build.py from mont.c and sakke_miller.c).
from typing import Any

import cffi

ffi: cffi.FFI
lib: Any
