# Our libopus binding (built by _opus_build.py).
from typing import Any

import cffi

ffi: cffi.FFI
lib: Any
