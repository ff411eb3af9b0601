/*
 * P-256 multi-scalar multiplication for ECCSI verification (RFC 6507
 * 5.2.2): [k1]P1 + ... + [kn]Pn, n <= 4, by Straus's method over width-5
 * NAF digits (one shared chain of 256 doublings; each point adds about one
 * time in six).  cryptify/crypto/eccsi.py computes Y = [HS]PVT + KPAK and
 * J = [s*HE]G + [s*r]Y with it.
 *
 * Field elements are four little-endian 64-bit limbs in Montgomery form
 * (x*2^256 mod p); points are Jacobian (X, Y, Z), Z == 0 the point at
 * infinity.  Verification only handles public values, so this code is NOT
 * constant-time (it branches on the scalars' digits and on special cases
 * of the addition); it must not be given a secret.
 *
 * No global state, no allocation: safe from several threads at once.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef unsigned __int128 p256_u128;
typedef uint64_t p256_fe[4];

static const uint64_t P256_P[4] = {
    0xffffffffffffffffULL, 0x00000000ffffffffULL, 0x0000000000000000ULL, 0xffffffff00000001ULL};
/* R^2 mod p, R = 2^256: multiplying by it enters the Montgomery form. */
static const uint64_t P256_R2[4] = {
    0x0000000000000003ULL, 0xfffffffbffffffffULL, 0xfffffffffffffffeULL, 0x00000004fffffffdULL};
/* R mod p: 1 in Montgomery form. */
static const uint64_t P256_ONE[4] = {
    0x0000000000000001ULL, 0xffffffff00000000ULL, 0xffffffffffffffffULL, 0x00000000fffffffeULL};

/* r = t - p when t (with the carry limb hi) is at least p, else t. */
static void p256_reduce_once(uint64_t *r, const uint64_t *t, uint64_t hi)
{
    uint64_t d[4], borrow = 0;
    for (int i = 0; i < 4; i++) {
        p256_u128 v = (p256_u128)t[i] - P256_P[i] - borrow;
        d[i] = (uint64_t)v;
        borrow = (uint64_t)(v >> 64) & 1;
    }
    /* keep t only when it was below p: no high limb and a borrow */
    uint64_t keep = -(borrow & (hi ^ 1));
    for (int i = 0; i < 4; i++)
        r[i] = (t[i] & keep) | (d[i] & ~keep);
}

/*
 * r = a*b/R mod p (CIOS).  -p^-1 mod 2^64 is 1 for this p, so each
 * step's multiplier m is the lowest limb itself, and t + m*p =
 * t - m + m*(p + 1) where p + 1 = 2^96 + 0xffffffff00000001 * 2^192: the
 * lowest limb cancels and the rest takes one shift and one limb product
 * instead of three products.
 */
static void p256_mul(uint64_t *r, const uint64_t *a, const uint64_t *b)
{
    uint64_t t[6] = {0};
    for (int i = 0; i < 4; i++) {
        p256_u128 c = 0;
        for (int j = 0; j < 4; j++) {
            c += (p256_u128)a[j] * b[i] + t[j];
            t[j] = (uint64_t)c;
            c >>= 64;
        }
        c += t[4];
        t[4] = (uint64_t)c;
        t[5] = (uint64_t)(c >> 64);
        uint64_t m = t[0];
        p256_u128 mm = (p256_u128)m * 0xffffffff00000001ULL;
        c = (p256_u128)t[1] + (m << 32);
        t[0] = (uint64_t)c;
        c = (c >> 64) + t[2] + (m >> 32);
        t[1] = (uint64_t)c;
        c = (c >> 64) + t[3] + (uint64_t)mm;
        t[2] = (uint64_t)c;
        c = (c >> 64) + t[4] + (uint64_t)(mm >> 64);
        t[3] = (uint64_t)c;
        t[4] = t[5] + (uint64_t)(c >> 64);
    }
    p256_reduce_once(r, t, t[4]);
}

static void p256_add(uint64_t *r, const uint64_t *a, const uint64_t *b)
{
    uint64_t t[4];
    p256_u128 c = 0;
    for (int i = 0; i < 4; i++) {
        c += (p256_u128)a[i] + b[i];
        t[i] = (uint64_t)c;
        c >>= 64;
    }
    p256_reduce_once(r, t, (uint64_t)c);
}

static void p256_sub(uint64_t *r, const uint64_t *a, const uint64_t *b)
{
    uint64_t t[4], borrow = 0;
    for (int i = 0; i < 4; i++) {
        p256_u128 v = (p256_u128)a[i] - b[i] - borrow;
        t[i] = (uint64_t)v;
        borrow = (uint64_t)(v >> 64) & 1;
    }
    uint64_t mask = -borrow, carry = 0;
    for (int i = 0; i < 4; i++) {
        p256_u128 v = (p256_u128)t[i] + (P256_P[i] & mask) + carry;
        r[i] = (uint64_t)v;
        carry = (uint64_t)(v >> 64);
    }
}

static int p256_is_zero(const uint64_t *a)
{
    return (a[0] | a[1] | a[2] | a[3]) == 0;
}

typedef struct {
    p256_fe x, y, z;
} p256_point;

/* r = 2a (dbl-2001-b, a = -3); r may be a. */
static void p256_double(p256_point *r, const p256_point *a)
{
    if (p256_is_zero(a->z) || p256_is_zero(a->y)) {
        memset(r, 0, sizeof *r);
        return;
    }
    p256_fe delta, gamma, beta, alpha, t, u;
    p256_mul(delta, a->z, a->z);
    p256_mul(gamma, a->y, a->y);
    p256_mul(beta, a->x, gamma);
    p256_sub(t, a->x, delta);
    p256_add(u, a->x, delta);
    p256_mul(alpha, t, u);
    p256_add(t, alpha, alpha);
    p256_add(alpha, t, alpha);
    /* Z3 = (Y1 + Z1)^2 - gamma - delta (before Y1 and Z1 are overwritten) */
    p256_add(t, a->y, a->z);
    p256_mul(t, t, t);
    p256_sub(t, t, gamma);
    p256_sub(r->z, t, delta);
    /* X3 = alpha^2 - 8 beta */
    p256_add(beta, beta, beta);
    p256_add(beta, beta, beta); /* 4 beta */
    p256_mul(t, alpha, alpha);
    p256_sub(t, t, beta);
    p256_sub(r->x, t, beta);
    /* Y3 = alpha (4 beta - X3) - 8 gamma^2 */
    p256_sub(u, beta, r->x);
    p256_mul(u, alpha, u);
    p256_mul(gamma, gamma, gamma);
    p256_add(gamma, gamma, gamma);
    p256_add(gamma, gamma, gamma);
    p256_add(gamma, gamma, gamma);
    p256_sub(r->y, u, gamma);
}

/* r = a + b (add-2007-bl with its special cases); r may be a or b. */
static void p256_add_points(p256_point *r, const p256_point *a, const p256_point *b)
{
    if (p256_is_zero(a->z)) {
        *r = *b;
        return;
    }
    if (p256_is_zero(b->z)) {
        *r = *a;
        return;
    }
    p256_fe z1z1, z2z2, u1, u2, s1, s2, h, i, j, rr, v, t;
    p256_mul(z1z1, a->z, a->z);
    p256_mul(z2z2, b->z, b->z);
    p256_mul(u1, a->x, z2z2);
    p256_mul(u2, b->x, z1z1);
    p256_mul(s1, a->y, b->z);
    p256_mul(s1, s1, z2z2);
    p256_mul(s2, b->y, a->z);
    p256_mul(s2, s2, z1z1);
    p256_sub(h, u2, u1);
    p256_sub(rr, s2, s1);
    if (p256_is_zero(h)) {
        if (p256_is_zero(rr)) {
            p256_double(r, a);
        } else {
            memset(r, 0, sizeof *r);
        }
        return;
    }
    p256_add(rr, rr, rr);
    p256_add(i, h, h);
    p256_mul(i, i, i);
    p256_mul(j, h, i);
    p256_mul(v, u1, i);
    /* Z3 = ((Z1 + Z2)^2 - Z1Z1 - Z2Z2) H */
    p256_add(t, a->z, b->z);
    p256_mul(t, t, t);
    p256_sub(t, t, z1z1);
    p256_sub(t, t, z2z2);
    p256_mul(r->z, t, h);
    /* X3 = rr^2 - J - 2V */
    p256_mul(t, rr, rr);
    p256_sub(t, t, j);
    p256_sub(t, t, v);
    p256_sub(r->x, t, v);
    /* Y3 = rr (V - X3) - 2 S1 J */
    p256_sub(v, v, r->x);
    p256_mul(v, rr, v);
    p256_mul(s1, s1, j);
    p256_add(s1, s1, s1);
    p256_sub(r->y, v, s1);
}

#define P256_WINDOW 5
#define P256_ODD (1 << (P256_WINDOW - 2)) /* odd multiples 1, 3, ..., 15 */
#define P256_DIGITS 258

/* The width-5 NAF of k (four limbs), least significant digit first;
 * returns the number of digits. */
static int p256_wnaf(int8_t *digits, const uint64_t *k4)
{
    uint64_t k[5] = {k4[0], k4[1], k4[2], k4[3], 0};
    int length = 0;
    while ((k[0] | k[1] | k[2] | k[3] | k[4]) && length < P256_DIGITS) {
        int digit = 0;
        if (k[0] & 1) {
            digit = (int)(k[0] & ((1 << P256_WINDOW) - 1));
            if (digit >= 1 << (P256_WINDOW - 1))
                digit -= 1 << P256_WINDOW;
            /* k -= digit */
            if (digit > 0) {
                uint64_t borrow = (uint64_t)digit;
                for (int i = 0; i < 5 && borrow; i++) {
                    uint64_t before = k[i];
                    k[i] -= borrow;
                    borrow = k[i] > before;
                }
            } else {
                uint64_t carry = (uint64_t)(-digit);
                for (int i = 0; i < 5 && carry; i++) {
                    k[i] += carry;
                    carry = k[i] < carry;
                }
            }
        }
        digits[length++] = (int8_t)digit;
        for (int i = 0; i < 4; i++)
            k[i] = (k[i] >> 1) | (k[i + 1] << 63);
        k[4] >>= 1;
    }
    return length;
}

/*
 * acc = [k_1]P_1 + ... + [k_count]P_count, Montgomery Jacobian; count
 * 0..4 (0: the point at infinity).  scalars: count * 4 limbs, each below
 * 2^256; points: count * 8 limbs, affine plain (x, y) on the curve.
 */
static void p256_straus(p256_point *acc, size_t count, const uint64_t *scalars,
                        const uint64_t *points)
{
    p256_point table[4][P256_ODD];
    int8_t digits[4][P256_DIGITS];
    int lengths[4], longest = 0;
    for (size_t t = 0; t < count; t++) {
        p256_point *row = table[t];
        p256_mul(row[0].x, points + 8 * t, P256_R2);
        p256_mul(row[0].y, points + 8 * t + 4, P256_R2);
        memcpy(row[0].z, P256_ONE, sizeof row[0].z);
        p256_point twice;
        p256_double(&twice, &row[0]);
        for (int e = 1; e < P256_ODD; e++)
            p256_add_points(&row[e], &row[e - 1], &twice);
        lengths[t] = p256_wnaf(digits[t], scalars + 4 * t);
        if (lengths[t] > longest)
            longest = lengths[t];
    }
    p256_point addend;
    memset(acc, 0, sizeof *acc);
    for (int i = longest - 1; i >= 0; i--) {
        p256_double(acc, acc);
        for (size_t t = 0; t < count; t++) {
            if (i >= lengths[t] || digits[t][i] == 0)
                continue;
            int digit = digits[t][i];
            addend = table[t][(digit < 0 ? -digit : digit) >> 1];
            if (digit < 0) {
                static const uint64_t zero[4] = {0, 0, 0, 0};
                p256_sub(addend.y, zero, addend.y);
            }
            p256_add_points(acc, acc, &addend);
        }
    }
}

/* out (twelve limbs, plain) = acc (Montgomery Jacobian). */
static void p256_export(uint64_t *out, const p256_point *acc)
{
    static const uint64_t plain_one[4] = {1, 0, 0, 0};
    p256_mul(out, acc->x, plain_one);
    p256_mul(out + 4, acc->y, plain_one);
    p256_mul(out + 8, acc->z, plain_one);
}

/*
 * out = [k_1]P_1 + ... + [k_count]P_count as Jacobian (X, Y, Z), twelve
 * limbs, NOT in Montgomery form (Z == 0: the point at infinity).  scalars:
 * count * 4 limbs, each scalar below 2^256; points: count * 8 limbs,
 * affine (x, y), each on the curve (the caller checks).  Returns 0, or -1
 * for a count outside 1..4.
 */
int p256_lincomb(size_t count, const uint64_t *scalars, const uint64_t *points, uint64_t *out)
{
    if (count < 1 || count > 4)
        return -1;
    p256_point acc;
    p256_straus(&acc, count, scalars, points);
    p256_export(out, &acc);
    return 0;
}

/*
 * Fixed-base multiplication (a KMS's KPAK, the generator G): a table of
 * [j * 32^i]P for j = 1..16 and i = 0..51, affine, Montgomery form, 8
 * limbs per point (53,248 octets), and signed radix-32 digits of the
 * scalar (-15..16): [k]P is then at most 52 mixed additions and no
 * doubling, where the Straus chain spends 256 doublings.
 */
#define P256_FB_WINDOWS 52
#define P256_FB_ENTRIES 16
#define P256_FB_LIMBS (P256_FB_WINDOWS * P256_FB_ENTRIES * 8)

size_t p256_fixed_table_limbs(void)
{
    return P256_FB_LIMBS;
}

/* r = a^(p-2) = 1/a (Montgomery form in and out; a != 0). */
static void p256_invert(uint64_t *r, const uint64_t *a)
{
    static const uint64_t e[4] = {
        0xfffffffffffffffdULL, 0x00000000ffffffffULL, 0x0000000000000000ULL,
        0xffffffff00000001ULL};
    p256_fe acc;
    memcpy(acc, P256_ONE, sizeof acc);
    for (int bit = 255; bit >= 0; bit--) {
        p256_mul(acc, acc, acc);
        if ((e[bit / 64] >> (bit % 64)) & 1)
            p256_mul(acc, acc, a);
    }
    memcpy(r, acc, sizeof acc);
}

/* r = a + b, b affine (Z = 1) in Montgomery form (madd-2007-bl); r may be a. */
static void p256_add_affine(p256_point *r, const p256_point *a, const uint64_t *bx,
                            const uint64_t *by)
{
    if (p256_is_zero(a->z)) {
        memcpy(r->x, bx, sizeof r->x);
        memcpy(r->y, by, sizeof r->y);
        memcpy(r->z, P256_ONE, sizeof r->z);
        return;
    }
    p256_fe z1z1, u2, s2, h, hh, i, j, rr, v, t, x3, y3, z3;
    p256_mul(z1z1, a->z, a->z);
    p256_mul(u2, bx, z1z1);
    p256_mul(s2, by, a->z);
    p256_mul(s2, s2, z1z1);
    p256_sub(h, u2, a->x);
    p256_sub(rr, s2, a->y);
    if (p256_is_zero(h)) {
        if (p256_is_zero(rr))
            p256_double(r, a);
        else
            memset(r, 0, sizeof *r);
        return;
    }
    p256_mul(hh, h, h);
    p256_add(i, hh, hh);
    p256_add(i, i, i); /* I = 4 HH */
    p256_mul(j, h, i);
    p256_add(rr, rr, rr);
    p256_mul(v, a->x, i);
    /* X3 = rr^2 - J - 2V */
    p256_mul(t, rr, rr);
    p256_sub(t, t, j);
    p256_sub(t, t, v);
    p256_sub(x3, t, v);
    /* Y3 = rr (V - X3) - 2 Y1 J */
    p256_sub(t, v, x3);
    p256_mul(t, rr, t);
    p256_mul(y3, a->y, j);
    p256_add(y3, y3, y3);
    p256_sub(y3, t, y3);
    /* Z3 = (Z1 + H)^2 - Z1Z1 - HH */
    p256_add(t, a->z, h);
    p256_mul(t, t, t);
    p256_sub(t, t, z1z1);
    p256_sub(z3, t, hh);
    memcpy(r->x, x3, sizeof x3);
    memcpy(r->y, y3, sizeof y3);
    memcpy(r->z, z3, sizeof z3);
}

/*
 * table (p256_fixed_table_limbs() limbs) for the affine plain point (x, y)
 * on the curve.  Every entry is a multiple [j * 32^i]P with 0 < j * 32^i
 * and no prime factor of q (P-256's points other than infinity all have
 * order q), so none is the point at infinity.
 */
void p256_fixed_table(const uint64_t *point, uint64_t *table)
{
    p256_point base, row[P256_FB_ENTRIES];
    p256_fe prefix[P256_FB_ENTRIES], inverse, t;
    p256_mul(base.x, point, P256_R2);
    p256_mul(base.y, point + 4, P256_R2);
    memcpy(base.z, P256_ONE, sizeof base.z);
    for (int w = 0; w < P256_FB_WINDOWS; w++) {
        row[0] = base;
        for (int e = 1; e < P256_FB_ENTRIES; e++)
            p256_add_points(&row[e], &row[e - 1], &base);
        /* one inversion per window (Montgomery's trick) */
        memcpy(prefix[0], row[0].z, sizeof prefix[0]);
        for (int e = 1; e < P256_FB_ENTRIES; e++)
            p256_mul(prefix[e], prefix[e - 1], row[e].z);
        p256_invert(inverse, prefix[P256_FB_ENTRIES - 1]);
        for (int e = P256_FB_ENTRIES - 1; e >= 0; e--) {
            p256_fe zi, zi2;
            if (e > 0) {
                p256_mul(zi, inverse, prefix[e - 1]);
                p256_mul(inverse, inverse, row[e].z);
            } else {
                memcpy(zi, inverse, sizeof zi);
            }
            uint64_t *entry = table + (size_t)(w * P256_FB_ENTRIES + e) * 8;
            p256_mul(zi2, zi, zi);
            p256_mul(entry, row[e].x, zi2);
            p256_mul(t, zi2, zi);
            p256_mul(entry + 4, row[e].y, t);
        }
        /* next window's base: [32]P = 2 * [16]P */
        p256_double(&base, &row[P256_FB_ENTRIES - 1]);
    }
}

/* acc += [k]P with P's fixed-base table; k four limbs below 2^256. */
static void p256_fixed_add(p256_point *acc, const uint64_t *k, const uint64_t *table)
{
    static const uint64_t zero[4] = {0, 0, 0, 0};
    int carry = 0;
    for (int w = 0; w < P256_FB_WINDOWS; w++) {
        int bit = 5 * w, digit;
        uint64_t bits = k[bit / 64] >> (bit % 64);
        if (bit % 64 > 59 && bit / 64 < 3)
            bits |= k[bit / 64 + 1] << (64 - bit % 64);
        digit = (int)(bits & 31) + carry;
        carry = digit > 16;
        if (carry)
            digit -= 32;
        if (digit == 0)
            continue;
        int index = w * P256_FB_ENTRIES + (digit < 0 ? -digit : digit) - 1;
        const uint64_t *entry = table + (size_t)index * 8;
        if (digit > 0) {
            p256_add_affine(acc, acc, entry, entry + 4);
        } else {
            p256_fe y;
            p256_sub(y, zero, entry + 4);
            p256_add_affine(acc, acc, entry, y);
        }
    }
}

/*
 * out = [a]A + [b]B + [k_1]P_1 + ... + [k_count]P_count: A and B by their
 * fixed-base tables (tb NULL: no B term), the P_i (count 0..2) by the
 * Straus chain.  Scalars are four limbs below 2^256; out as p256_lincomb.
 * ECCSI verification: J = [s*HE]G + [s*r]KPAK + [s*r*HS]PVT.  Returns 0,
 * or -1 for a count outside 0..2.
 */
int p256_lincomb_fixed(const uint64_t *a, const uint64_t *ta, const uint64_t *b,
                       const uint64_t *tb, size_t count, const uint64_t *scalars,
                       const uint64_t *points, uint64_t *out)
{
    if (count > 2)
        return -1;
    p256_point acc;
    p256_straus(&acc, count, scalars, points);
    p256_fixed_add(&acc, a, ta);
    if (tb != NULL)
        p256_fixed_add(&acc, b, tb);
    p256_export(out, &acc);
    return 0;
}
