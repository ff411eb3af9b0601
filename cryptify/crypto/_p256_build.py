"""cffi (API mode) build of :mod:`cryptify.crypto._p256`, the P-256
multi-scalar multiplication of ECCSI verification (``p256.c``).
``setup.py`` names it in ``cffi_modules``, so it is compiled when the
package is built or installed; :mod:`cryptify.crypto.eccsi` falls back to
OpenSSL and fastecdsa when the extension is absent."""

from __future__ import annotations

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

ffibuilder = FFI()
ffibuilder.cdef(
    """
    int p256_lincomb(size_t count, const uint64_t *scalars, const uint64_t *points,
                     uint64_t *out);
    size_t p256_fixed_table_limbs(void);
    void p256_fixed_table(const uint64_t *point, uint64_t *table);
    int p256_lincomb_fixed(const uint64_t *a, const uint64_t *ta, const uint64_t *b,
                           const uint64_t *tb, size_t count, const uint64_t *scalars,
                           const uint64_t *points, uint64_t *out);
    """
)
with open(os.path.join(HERE, "p256.c"), encoding="ascii") as _source:
    ffibuilder.set_source(
        "cryptify.crypto._p256",
        _source.read(),
        # The limb loops are short and fixed: unrolled they run twice as fast.
        extra_compile_args=["-O2", "-funroll-loops", "-std=c99", "-Wall"],
    )

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(HERE, "..", ".."), verbose=True)
