# The compiled C Miller loop (built by _pairing_build.py from sakke_miller.c).
from typing import Any

import cffi

ffi: cffi.FFI
lib: Any
