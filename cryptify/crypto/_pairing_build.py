"""cffi (API mode) build of :mod:`cryptify.crypto._pairing`, SAKKE
decapsulation's Miller loop and integrity check in C (``mont.c`` followed by
``sakke_miller.c``).  ``setup.py`` names it in ``cffi_modules``, so it is
compiled when the package is built or installed; :mod:`cryptify.crypto.sakke`
falls back to gmpy2 when the extension is absent."""

from __future__ import annotations

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


def c_source(*names: str) -> str:
    """The C files of this directory, concatenated."""
    parts = []
    for name in names:
        with open(os.path.join(HERE, name), encoding="ascii") as source:
            parts.append(source.read())
    return "\n".join(parts)


ffibuilder = FFI()
ffibuilder.cdef(
    """
    int sakke_miller(const uint64_t *p, uint64_t pinv, const uint64_t *one,
                     const uint64_t *steps, const uint8_t *adds, size_t nsteps,
                     const uint64_t *qx, const uint64_t *qy,
                     uint64_t *v0_out, uint64_t *v1_out);
    int sakke_native_ok(void);
    int sakke_check(const uint64_t *p, uint64_t pinv, const uint64_t *r2,
                    const uint64_t *one, const uint64_t *q, const uint64_t *table,
                    size_t windows, unsigned w, const uint64_t *r,
                    const uint64_t *rx, const uint64_t *ry);
    """
)
ffibuilder.set_source(
    "cryptify.crypto._pairing",
    c_source("mont.c", "sakke_miller.c"),
    libraries=["gmp"],
    extra_compile_args=["-O2", "-std=c99", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(HERE, "..", ".."), verbose=True)
