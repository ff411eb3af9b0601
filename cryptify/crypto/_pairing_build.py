"""cffi (API mode) build of :mod:`cryptify.crypto._pairing`, SAKKE
decapsulation's Miller loop and integrity check in C (the x86-64 routines
of L{adx16_source}, then ``mont.c`` and ``sakke_miller.c``).  ``setup.py``
names it in ``cffi_modules``, so it is compiled when the package is built
or installed; :mod:`cryptify.crypto.sakke` falls back to gmpy2 when the
extension is absent."""

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


def adx16_source() -> str:
    """
    C for x86-64 (gcc or clang) defining MONT_HAVE_ADX16 and mont.c's two
    straight-line routines for sixteen limbs: C{t[0..32) = a*b}, and the
    sixteen rows of Montgomery reduction (C{m = t[i]*pinv},
    C{t[i..i+16) += m*p}, the row's carry parked in C{t[i]}).  Each row
    runs two carry chains at once, CF (adcx) for the low halves of the
    products and OF (adox) for the high halves; t lives in memory.  The
    instruction sequence never depends on the values.
    """

    def row(source: str, dest_offset: int, park: int | None) -> list[str]:
        lines = ["xor %%r8d, %%r8d"]  # clears CF and OF
        previous = None
        for j in range(16):
            low, high = ("%%rax", "%%rbx") if j % 2 == 0 else ("%%rcx", "%%rsi")
            lines.append(f"mulx {8 * j}(%[{source}]), {low}, {high}")
            lines.append(f"movq {8 * (dest_offset + j)}(%[t]), %%r9")
            lines.append(f"adcx {low}, %%r9")
            if previous is not None:
                lines.append(f"adox {previous}, %%r9")
            lines.append(f"movq %%r9, {8 * (dest_offset + j)}(%[t])")
            previous = high
        # The row's top limb: the last high half and both carries.
        lines += ["movq $0, %%r9", "adcx %%r8, %%r9", f"adox {previous}, %%r9"]
        top = dest_offset + 16 if park is None else park
        lines.append(f"movq %%r9, {8 * top}(%[t])")
        return lines

    product = ["xor %%r8d, %%r8d"] + [f"movq %%r8, {8 * k}(%[t])" for k in range(32)]
    for i in range(16):
        product.append(f"movq {8 * i}(%[b]), %%rdx")
        product += row("a", i, None)
    reduction: list[str] = []
    for i in range(16):
        reduction += [f"movq {8 * i}(%[t]), %%rdx", "imulq %[pinv], %%rdx"]
        reduction += row("p", i, i)
    clobbers = '"rax", "rbx", "rcx", "rdx", "rsi", "r8", "r9", "cc", "memory"'

    def function(signature: str, body: list[str], operands: str) -> str:
        text = "\n".join(f'        "{line}\\n\\t"' for line in body)
        return (
            f"static void {signature}\n{{\n    __asm__ volatile(\n{text}\n"
            f"        :\n        : {operands}\n        : {clobbers});\n}}\n"
        )

    return "\n".join(
        [
            "#if defined(__x86_64__) && defined(__GNUC__)",
            "#include <cpuid.h>",
            "#include <gmp.h>",
            "#define MONT_HAVE_ADX16 1",
            function(
                "mont_adx_mul16(mp_limb_t *t, const mp_limb_t *a, const mp_limb_t *b)",
                product,
                '[t] "r"(t), [a] "r"(a), [b] "r"(b)',
            ),
            function(
                "mont_adx_redc16_rows(mp_limb_t *t, const mp_limb_t *p, mp_limb_t pinv)",
                reduction,
                '[t] "r"(t), [p] "r"(p), [pinv] "r"(pinv)',
            ),
            "#endif",
        ]
    )


ffibuilder = FFI()
ffibuilder.cdef(
    """
    int sakke_cpu_adx(void);
    int sakke_miller(const uint64_t *p, uint64_t pinv, int use_adx, const uint64_t *one,
                     const uint64_t *steps, const uint8_t *adds, size_t nsteps,
                     const uint64_t *qx, const uint64_t *qy,
                     uint64_t *v0_out, uint64_t *v1_out);
    int sakke_native_ok(void);
    int sakke_check(const uint64_t *p, uint64_t pinv, int use_adx, const uint64_t *r2,
                    const uint64_t *one, const uint64_t *q, const uint64_t *table,
                    size_t windows, unsigned w, const uint64_t *r,
                    const uint64_t *rx, const uint64_t *ry);
    """
)
ffibuilder.set_source(
    "cryptify.crypto._pairing",
    adx16_source() + "\n" + c_source("mont.c", "sakke_miller.c"),
    libraries=["gmp"],
    extra_compile_args=["-O2", "-std=c99", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(HERE, "..", ".."), verbose=True)
