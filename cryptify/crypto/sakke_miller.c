/*
 * The SAKKE pairing's Miller loop over precomputed lines, in C.
 *
 * cryptify/crypto/sakke.py precomputes, for one Receiver Secret Key K, the
 * line of every step of the loop (PairingPrecomputation); evaluating the
 * pairing at a new point X = (qx, qy) then accumulates
 *
 *     v <- v^2 * (d_a*qx + d_b + i*qy)            every step
 *     v <- v   * (a_a*qx + a_b + i*qy)            steps with an addition
 *
 * in F_p^2 = F_p[i]/(i^2 + 1), exactly as PairingPrecomputation.evaluate
 * does with gmpy2.  Here the arithmetic is Montgomery multiplication on
 * sixteen 64-bit limbs, with GMP's low-level (mpn) functions (p has 1024 bits, RFC 6509's parameter set 1): the
 * caller passes every number already in Montgomery form (x*R mod p,
 * R = 2^1024) and gets v0, v1 back in it.  The pairing's value is the ratio
 * v1/v0 (after the final squarings), which a common factor R does not
 * change, so the caller need not convert back.
 *
 * No global state, no allocation: the function is safe to call from
 * several threads at once (cffi releases the GIL around it).  Like the
 * gmpy2 path it replaces, it is not constant-time.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <gmp.h>

#define N 16

#if GMP_LIMB_BITS != 64 || GMP_NAIL_BITS != 0
#error "the C Miller loop needs 64-bit GMP limbs without nails"
#endif

/* r = a*b*R^-1 mod p (Montgomery REDC on GMP's limb functions, which use
 * the processor's best multiply instructions); a, b < p; r may alias. */
static void mont_mul(mp_limb_t *r, const mp_limb_t *a, const mp_limb_t *b,
                     const mp_limb_t *p, mp_limb_t pinv)
{
    mp_limb_t t[2 * N];
    if (a == b)
        mpn_sqr(t, a, N);
    else
        mpn_mul_n(t, a, b, N);
    mp_limb_t hi = 0;
    for (int i = 0; i < N; i++) {
        mp_limb_t m = t[i] * pinv;
        mp_limb_t c = mpn_addmul_1(t + i, p, N, m);
        hi += mpn_add_1(t + i + N, t + i + N, N - i, c);
    }
    /* t[N..2N) + hi*2^(64N) < 2p: subtract p once if it is >= p. */
    if (hi || mpn_cmp(t + N, p, N) >= 0)
        mpn_sub_n(r, t + N, p, N);
    else
        mpn_copyi(r, t + N, N);
}

/* r = a + b mod p; a, b < p. */
static void add_mod(mp_limb_t *r, const mp_limb_t *a, const mp_limb_t *b, const mp_limb_t *p)
{
    mp_limb_t carry = mpn_add_n(r, a, b, N);
    if (carry || mpn_cmp(r, p, N) >= 0)
        mpn_sub_n(r, r, p, N);
}

/* r = a - b mod p; a, b < p. */
static void sub_mod(mp_limb_t *r, const mp_limb_t *a, const mp_limb_t *b, const mp_limb_t *p)
{
    if (mpn_sub_n(r, a, b, N))
        mpn_add_n(r, r, p, N);
}

/* v <- v * ((la*qx + lb) + i*qy) */
static void line(mp_limb_t *v0, mp_limb_t *v1, const mp_limb_t *la, const mp_limb_t *lb,
                 const mp_limb_t *qx, const mp_limb_t *qy, const mp_limb_t *p, mp_limb_t pinv)
{
    mp_limb_t lr[N], t0[N], t1[N], s0[N], s1[N];
    mont_mul(lr, la, qx, p, pinv);
    add_mod(lr, lr, lb, p);
    mont_mul(t0, v0, lr, p, pinv);
    mont_mul(t1, v1, qy, p, pinv);
    add_mod(s0, v0, v1, p);
    add_mod(s1, lr, qy, p);
    mont_mul(s0, s0, s1, p, pinv);
    sub_mod(s0, s0, t0, p);
    sub_mod(v1, s0, t1, p);
    sub_mod(v0, t0, t1, p);
}

/*
 * The loop.  steps holds nsteps records of 4*N limbs (d_a, d_b, a_a, a_b);
 * adds[k] says whether step k has an addition line (a_a, a_b; otherwise
 * those limbs are unused).  one is 1 in Montgomery form (R mod p).
 * Returns 0, or -1 when the arguments cannot be right (no steps).
 */
int sakke_miller(const uint64_t *p64, uint64_t pinv, const uint64_t *one64,
                 const uint64_t *steps64, const uint8_t *adds, size_t nsteps,
                 const uint64_t *qx64, const uint64_t *qy64,
                 uint64_t *v0_out, uint64_t *v1_out)
{
    const mp_limb_t *p = (const mp_limb_t *)p64, *one = (const mp_limb_t *)one64;
    const mp_limb_t *steps = (const mp_limb_t *)steps64;
    const mp_limb_t *qx = (const mp_limb_t *)qx64, *qy = (const mp_limb_t *)qy64;
    if (nsteps == 0)
        return -1;
    mp_limb_t v0[N], v1[N], t[N], s0[N], s1[N];
    memcpy(v0, one, sizeof v0);
    memset(v1, 0, sizeof v1);
    for (size_t k = 0; k < nsteps; k++) {
        const mp_limb_t *step = steps + k * 4 * N;
        /* v <- v^2 */
        mont_mul(t, v0, v1, p, pinv);
        add_mod(s0, v0, v1, p);
        sub_mod(s1, v0, v1, p);
        mont_mul(v0, s0, s1, p, pinv);
        add_mod(v1, t, t, p);
        line(v0, v1, step, step + N, qx, qy, p, pinv);
        if (adds[k])
            line(v0, v1, step + 2 * N, step + 3 * N, qx, qy, p, pinv);
    }
    memcpy(v0_out, v0, sizeof v0);
    memcpy(v1_out, v1, sizeof v1);
    return 0;
}
