/*
 * Montgomery arithmetic modulo an odd prime of n 64-bit limbs (n <= 16),
 * on GMP's low-level (mpn) functions, shared by the SAKKE (sakke_miller.c,
 * n = 16) and the P-256 (p256.c, n = 4) C code.  The cffi build scripts
 * put this file in front of theirs, so everything here is static.
 *
 * Numbers are arrays of n little-endian limbs, in Montgomery form (x*R mod
 * p, R = 2^(64n)) and fully reduced (< p) between operations.
 *
 * Side channels: no branch and no memory index here depends on the values.
 * Products are mpn_sec_mul / mpn_sec_sqr (GMP's documented side-channel
 * silent multiplication), the reduction is a fixed sequence of
 * mpn_addmul_1 and mpn_add_n, and conditional corrections are
 * mpn_cnd_add_n / mpn_cnd_sub_n, which do the same work either way.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <gmp.h>

#define MONT_MAXN 16

#if GMP_LIMB_BITS != 64 || GMP_NAIL_BITS != 0
#error "the C arithmetic needs 64-bit GMP limbs without nails"
#endif

typedef struct {
    const mp_limb_t *p; /* the modulus, n limbs */
    mp_limb_t pinv;     /* -p^-1 mod 2^64 */
    mp_size_t n;
} mont_field;

/*
 * r = t * R^-1 mod p, for t < p*R (2n limbs; t is destroyed).  GMP's
 * redc_1 scheme: each step's carry is parked in the limb it just cleared
 * and all of them are added once at the end.
 */
static void mont_redc(mp_limb_t *r, mp_limb_t *t, const mont_field *f)
{
    mp_size_t n = f->n;
    for (mp_size_t i = 0; i < n; i++)
        t[i] = mpn_addmul_1(t + i, f->p, n, t[i] * f->pinv);
    /* hi:t[n..2n) = (t + m*p) / R < 2p */
    mp_limb_t hi = mpn_add_n(t + n, t + n, t, n);
    mp_limb_t borrow = mpn_sub_n(r, t + n, f->p, n);
    /* r = value - p, unless the value was below p (no high limb, a borrow). */
    mpn_cnd_add_n(borrow & (hi ^ 1), r, r, f->p, n);
}

static void mont_mul(mp_limb_t *r, const mp_limb_t *a, const mp_limb_t *b, const mont_field *f)
{
    mp_limb_t t[2 * MONT_MAXN], scratch[2 * MONT_MAXN];
    mpn_sec_mul(t, a, f->n, b, f->n, scratch);
    mont_redc(r, t, f);
}

static void mont_sqr(mp_limb_t *r, const mp_limb_t *a, const mont_field *f)
{
    mp_limb_t t[2 * MONT_MAXN], scratch[2 * MONT_MAXN];
    mpn_sec_sqr(t, a, f->n, scratch);
    mont_redc(r, t, f);
}

/*
 * r = (a*b + c*d) * R^-1 mod p with one reduction instead of two.  Needs
 * 2p^2 < R^2 (p < R/sqrt(2); true of SAKKE's p, about 0.6 R) so that the
 * sum fits 2n limbs; p*R is taken off once when the sum is at least that.
 */
static void mont_mul_sum(mp_limb_t *r, const mp_limb_t *a, const mp_limb_t *b,
                         const mp_limb_t *c, const mp_limb_t *d, const mont_field *f)
{
    mp_size_t n = f->n;
    mp_limb_t t[2 * MONT_MAXN], u[2 * MONT_MAXN], scratch[2 * MONT_MAXN], tmp[MONT_MAXN];
    mpn_sec_mul(t, a, n, b, n, scratch);
    mpn_sec_mul(u, c, n, d, n, scratch);
    mpn_add_n(t, t, u, 2 * n);
    mp_limb_t borrow = mpn_sub_n(tmp, t + n, f->p, n);
    mpn_cnd_sub_n(borrow ^ 1, t + n, t + n, f->p, n);
    mont_redc(r, t, f);
}

static void mont_add(mp_limb_t *r, const mp_limb_t *a, const mp_limb_t *b, const mont_field *f)
{
    mp_size_t n = f->n;
    mp_limb_t carry = mpn_add_n(r, a, b, n);
    mp_limb_t borrow = mpn_sub_n(r, r, f->p, n);
    /* a + b - p went below zero (and a + b had no carry): add p back. */
    mpn_cnd_add_n(borrow & (carry ^ 1), r, r, f->p, n);
}

static void mont_sub(mp_limb_t *r, const mp_limb_t *a, const mp_limb_t *b, const mont_field *f)
{
    mp_limb_t borrow = mpn_sub_n(r, a, b, f->n);
    mpn_cnd_add_n(borrow, r, r, f->p, f->n);
}

/* r = -a mod p */
static void mont_neg(mp_limb_t *r, const mp_limb_t *a, const mont_field *f)
{
    mp_limb_t zero[MONT_MAXN] = {0};
    mont_sub(r, zero, a, f);
}

/* r = a when cnd (0 or 1), else r unchanged; the same work either way. */
static void mont_select(mp_limb_t *r, const mp_limb_t *a, mp_limb_t cnd, mp_size_t n)
{
    mp_limb_t mask = -cnd;
    for (mp_size_t i = 0; i < n; i++)
        r[i] ^= (r[i] ^ a[i]) & mask;
}

/* 1 when a == b (n limbs), else 0; reads every limb. */
static mp_limb_t mont_equal(const mp_limb_t *a, const mp_limb_t *b, mp_size_t n)
{
    mp_limb_t diff = 0;
    for (mp_size_t i = 0; i < n; i++)
        diff |= a[i] ^ b[i];
    return ((diff | -diff) >> 63) ^ 1;
}
