# The CIG bridge's C per-packet path (built by _cbridge_build.py).
from typing import Any

import cffi

ffi: cffi.FFI
lib: Any
