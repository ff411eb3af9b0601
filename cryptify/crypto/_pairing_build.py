"""cffi (API mode) build of :mod:`cryptify.crypto._pairing`, the C Miller
loop of SAKKE decapsulation (``sakke_miller.c``).  ``setup.py`` names it in
``cffi_modules``, so it is compiled when the package is built or
installed; :mod:`cryptify.crypto.sakke` falls back to its gmpy2 loop when
the extension is absent."""

from __future__ import annotations

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

ffibuilder = FFI()
ffibuilder.cdef(
    """
    int sakke_miller(const uint64_t *p, uint64_t pinv, const uint64_t *one,
                     const uint64_t *steps, const uint8_t *adds, size_t nsteps,
                     const uint64_t *qx, const uint64_t *qy,
                     uint64_t *v0_out, uint64_t *v1_out);
    """
)
with open(os.path.join(HERE, "sakke_miller.c"), encoding="ascii") as _source:
    ffibuilder.set_source(
        "cryptify.crypto._pairing",
        _source.read(),
        libraries=["gmp"],
        extra_compile_args=["-O2", "-std=c99"],
    )

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(HERE, "..", ".."), verbose=True)
