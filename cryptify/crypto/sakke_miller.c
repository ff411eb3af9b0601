/*
 * SAKKE decapsulation's heavy parts in C (mont.c's arithmetic, n = 16:
 * p has 1024 bits, RFC 6509's parameter set 1):
 *
 *  - sakke_miller: the pairing's Miller loop over precomputed lines.
 *    cryptify/crypto/sakke.py precomputes, for one Receiver Secret Key K,
 *    the line of every step of the loop (PairingPrecomputation);
 *    evaluating the pairing at a new point X = (qx, qy) then accumulates
 *
 *        v <- v^2 * (d_a*qx + d_b + i*qy)            every step
 *        v <- v   * (a_a*qx + a_b + i*qy)            steps with an addition
 *
 *    in F_p^2 = F_p[i]/(i^2 + 1), as PairingPrecomputation.accumulate does
 *    with gmpy2 (the two lines of a step with an addition are multiplied
 *    together first, which is cheaper: see sakke_miller).  The caller passes every number already in Montgomery
 *    form and gets v0, v1 back in it: the pairing's value is the ratio v1/v0
 *    (after the final squarings), which a common factor R does not change.
 *
 *  - sakke_check: the integrity check R == [r]([b]P + Z) with a fixed-base
 *    table of the receiver's [b]P + Z (odd multiples 1, 3, ..., 2^w - 1 of
 *    [2^(w*j)]([b]P + Z) for every window j), r recoded into odd signed
 *    digits so that every window adds exactly one table point.
 *
 * Side channels: the lines come from the receiver's secret key and r from
 * the SSV, so neither function branches on, or indexes memory by, a value
 * derived from them.  The Miller loop's only branch follows the public
 * digits of q - 1; the table lookup reads every entry of a window and keeps
 * the wanted one with masks; a negative digit negates y by a masked select.
 *
 * No global state, no allocation: safe to call from several threads at
 * once (cffi releases the GIL around the calls).
 */

#define SAKKE_N 16

/* use_adx: 1 to take the mulx/adcx/adox code when this processor has it
 * (sakke_cpu_adx), 0 for GMP's code (the tests compare the two). */
static void sakke_field(mont_field *f, const uint64_t *p64, uint64_t pinv, int use_adx)
{
    f->p = (const mp_limb_t *)p64;
    f->pinv = pinv;
    f->n = SAKKE_N;
    f->adx = use_adx && mont_cpu_adx();
}

/* 1 when the mulx/adcx/adox code was built and this processor runs it. */
int sakke_cpu_adx(void)
{
    return mont_cpu_adx();
}

/* v <- v * (re + i*im) (Karatsuba) */
static void mul_fp2(mp_limb_t *v0, mp_limb_t *v1, const mp_limb_t *re, const mp_limb_t *im,
                    const mont_field *f)
{
    mp_limb_t t0[SAKKE_N], t1[SAKKE_N], s0[SAKKE_N], s1[SAKKE_N];
    mont_mul(t0, v0, re, f);
    mont_mul(t1, v1, im, f);
    mont_add(s0, v0, v1, f);
    mont_add(s1, re, im, f);
    mont_mul(s0, s0, s1, f);
    mont_sub(s0, s0, t0, f);
    mont_sub(v1, s0, t1, f);
    mont_sub(v0, t0, t1, f);
}

/*
 * The loop.  steps holds, for each of the nsteps steps, the doubling line
 * (d_a, d_b: 2 numbers of N limbs) or, when adds[k] says the step also has
 * an addition line (a_a, a_b), the coefficients of the product of the two
 * lines instead (5 numbers):
 *
 *     (d_a x + d_b + i y)(a_a x + a_b + i y)
 *       = (alpha x^2 + beta x + gamma - y^2) + i (delta x y + epsilon y)
 *
 * with alpha = d_a a_a, beta = d_a a_b + d_b a_a, gamma = d_b a_b,
 * delta = d_a + a_a, epsilon = d_b + a_b: four products and two
 * reductions, where the two lines one after the other cost two products
 * and two reductions more.  one is 1 in Montgomery form (R mod p).
 * Returns 0, or -1 when the arguments cannot be right (no steps).
 */
int sakke_miller(const uint64_t *p64, uint64_t pinv, int use_adx, const uint64_t *one64,
                 const uint64_t *steps64, const uint8_t *adds, size_t nsteps,
                 const uint64_t *qx64, const uint64_t *qy64,
                 uint64_t *v0_out, uint64_t *v1_out)
{
    mont_field f;
    sakke_field(&f, p64, pinv, use_adx);
    const mp_limb_t *step = (const mp_limb_t *)steps64;
    const mp_limb_t *qx = (const mp_limb_t *)qx64, *qy = (const mp_limb_t *)qy64;
    if (nsteps == 0)
        return -1;
    mp_limb_t v0[SAKKE_N], v1[SAKKE_N], t[SAKKE_N], s0[SAKKE_N], s1[SAKKE_N];
    mp_limb_t qx2[SAKKE_N], qy2[SAKKE_N], qxy[SAKKE_N], re[SAKKE_N], im[SAKKE_N];
    mont_sqr(qx2, qx, &f);
    mont_sqr(qy2, qy, &f);
    mont_mul(qxy, qx, qy, &f);
    memcpy(v0, one64, sizeof v0);
    memset(v1, 0, sizeof v1);
    for (size_t k = 0; k < nsteps; k++) {
        /* v <- v^2 */
        mont_mul(t, v0, v1, &f);
        mont_add(s0, v0, v1, &f);
        mont_sub(s1, v0, v1, &f);
        mont_mul(v0, s0, s1, &f);
        mont_add(v1, t, t, &f);
        if (adds[k]) { /* a public digit of q - 1 */
            const mp_limb_t *alpha = step, *beta = step + SAKKE_N, *gamma = step + 2 * SAKKE_N,
                            *delta = step + 3 * SAKKE_N, *epsilon = step + 4 * SAKKE_N;
            mont_mul_sum(re, alpha, qx2, beta, qx, &f);
            mont_add(re, re, gamma, &f);
            mont_sub(re, re, qy2, &f);
            mont_mul_sum(im, delta, qxy, epsilon, qy, &f);
            step += 5 * SAKKE_N;
        } else {
            mont_mul(re, step, qx, &f);
            mont_add(re, re, step + SAKKE_N, &f);
            memcpy(im, qy, sizeof im);
            step += 2 * SAKKE_N;
        }
        mul_fp2(v0, v1, re, im, &f);
    }
    memcpy(v0_out, v0, sizeof v0);
    memcpy(v1_out, v1, sizeof v1);
    return 0;
}

/* 1 when GMP's side-channel silent products fit the scratch space that
 * mont.c gives them (they need none in the GMP versions known). */
int sakke_native_ok(void)
{
    return mpn_sec_mul_itch(SAKKE_N, SAKKE_N) <= 2 * MONT_MAXN
           && mpn_sec_sqr_itch(SAKKE_N) <= 2 * MONT_MAXN;
}

/* count (<= 63) bits of the n-limb k from bit pos on; positions are public. */
static mp_limb_t bits_at(const mp_limb_t *k, size_t n, size_t pos, unsigned count)
{
    size_t limb = pos / 64;
    unsigned shift = pos % 64;
    mp_limb_t value = 0;
    if (limb < n) {
        value = k[limb] >> shift;
        if (shift && shift + count > 64 && limb + 1 < n)
            value |= k[limb + 1] << (64 - shift);
    }
    return value & (((mp_limb_t)1 << count) - 1);
}

/* (x, y) = sign * table[(|digit| - 1) / 2] of one window, reading every
 * entry; digit is odd. */
static void lookup(mp_limb_t *x, mp_limb_t *y, const mp_limb_t *window, size_t entries,
                   int64_t digit, const mont_field *f)
{
    mp_limb_t negative = (mp_limb_t)digit >> 63;
    mp_limb_t magnitude = ((mp_limb_t)digit ^ -negative) + negative;
    mp_limb_t index = (magnitude - 1) >> 1;
    memset(x, 0, SAKKE_N * sizeof(mp_limb_t));
    memset(y, 0, SAKKE_N * sizeof(mp_limb_t));
    for (size_t e = 0; e < entries; e++) {
        mp_limb_t hit = (((mp_limb_t)e ^ index) - 1) >> 63; /* e == index */
        mp_limb_t mask = -hit;
        const mp_limb_t *entry = window + e * 2 * SAKKE_N;
        for (int i = 0; i < SAKKE_N; i++) {
            x[i] |= entry[i] & mask;
            y[i] |= entry[SAKKE_N + i] & mask;
        }
    }
    mp_limb_t minus_y[SAKKE_N];
    mont_neg(minus_y, y, f);
    mont_select(y, minus_y, negative, SAKKE_N);
}

/* (x1, y1, z1) += affine (x2, y2) in Jacobian coordinates (madd-2007-bl);
 * the points must differ and neither be infinity (see sakke_check). */
static void madd(mp_limb_t *x1, mp_limb_t *y1, mp_limb_t *z1, const mp_limb_t *x2,
                 const mp_limb_t *y2, const mont_field *f)
{
    mp_limb_t z1z1[SAKKE_N], u2[SAKKE_N], s2[SAKKE_N], h[SAKKE_N], hh[SAKKE_N], i4[SAKKE_N],
        j[SAKKE_N], rr[SAKKE_N], v[SAKKE_N], t[SAKKE_N];
    mont_sqr(z1z1, z1, f);
    mont_mul(u2, x2, z1z1, f);
    mont_mul(s2, y2, z1, f);
    mont_mul(s2, s2, z1z1, f);
    mont_sub(h, u2, x1, f);
    mont_sqr(hh, h, f);
    mont_add(i4, hh, hh, f);
    mont_add(i4, i4, i4, f);
    mont_mul(j, h, i4, f);
    mont_sub(rr, s2, y1, f);
    mont_add(rr, rr, rr, f);
    mont_mul(v, x1, i4, f);
    /* X3 = rr^2 - J - 2V */
    mont_sqr(t, rr, f);
    mont_sub(t, t, j, f);
    mont_sub(t, t, v, f);
    mont_sub(t, t, v, f);
    /* Y3 = rr*(V - X3) - 2*Y1*J */
    mont_sub(v, v, t, f);
    mont_mul(v, rr, v, f);
    mont_mul(j, y1, j, f);
    mont_add(j, j, j, f);
    mont_sub(y1, v, j, f);
    memcpy(x1, t, sizeof t);
    /* Z3 = (Z1 + H)^2 - Z1Z1 - HH */
    mont_add(t, z1, h, f);
    mont_sqr(t, t, f);
    mont_sub(t, t, z1z1, f);
    mont_sub(z1, t, hh, f);
}

/*
 * Whether [r]B == (rx, ry) for the fixed point B of the table (RFC 6508
 * 6.2.2 step 5).  r < q (16 limbs); q the (odd) order of B; rx, ry affine,
 * NOT in Montgomery form; r2 = R^2 mod p and one = R mod p.  The table has
 * `windows` windows of 2^(w-1) entries (x, y), each [d * 2^(w*j)]B for odd
 * d, in Montgomery form.  windows * w must cover the bits of r + q.
 *
 * r is made odd (r + q when r is even: the same point), then written as
 * sum d_j 2^(w*j) with every d_j odd: d_j = (bits w*j .. w*j+w of r, with
 * the lowest forced to 1) - 2^w, the last digit the remaining top bits.
 * The partial sums stay below 2^(w*j) in size while the next addend is at
 * least that, so the addition never meets its exceptional cases (equal or
 * opposite points) unless r is 0 or a multiple of q gets hit by chance,
 * about 2^-1000; the result is then wrong and the check fails, as the RFC's
 * TEST = O != R would.
 *
 * Returns 1 when equal, 0 when not, -1 for impossible arguments.
 */
int sakke_check(const uint64_t *p64, uint64_t pinv, int use_adx, const uint64_t *r2_64,
                const uint64_t *one64, const uint64_t *q64, const uint64_t *table64,
                size_t windows, unsigned w, const uint64_t *r64, const uint64_t *rx64,
                const uint64_t *ry64)
{
    mont_field f;
    sakke_field(&f, p64, pinv, use_adx);
    if (windows < 2 || w < 2 || w > 8 || windows * w < 64 * SAKKE_N - 1
        || windows * w > 64 * SAKKE_N + w)
        return -1;
    const mp_limb_t *table = (const mp_limb_t *)table64;
    size_t entries = (size_t)1 << (w - 1);
    mp_limb_t k[SAKKE_N], odd[SAKKE_N];
    memcpy(k, r64, sizeof k);
    mpn_add_n(odd, k, (const mp_limb_t *)q64, SAKKE_N); /* < 2q < 2^1023: no carry */
    mont_select(k, odd, (k[0] & 1) ^ 1, SAKKE_N);

    mp_limb_t x[SAKKE_N], y[SAKKE_N], z[SAKKE_N], ax[SAKKE_N], ay[SAKKE_N];
    int64_t top = (int64_t)1 << w;
    for (size_t j = 0; j < windows; j++) {
        mp_limb_t raw = bits_at(k, SAKKE_N, j * w, w + 1) | 1;
        int64_t digit = j + 1 < windows ? (int64_t)raw - top : (int64_t)raw;
        const mp_limb_t *window = table + j * entries * 2 * SAKKE_N;
        if (j == 0) {
            lookup(x, y, window, entries, digit, &f);
            memcpy(z, one64, sizeof z);
        } else {
            lookup(ax, ay, window, entries, digit, &f);
            madd(x, y, z, ax, ay, &f);
        }
    }
    /* (X, Y, Z) == (rx, ry): X == rx*Z^2 and Y == ry*Z^3, Z != 0. */
    mp_limb_t zero[SAKKE_N] = {0}, ex[SAKKE_N], ey[SAKKE_N], zz[SAKKE_N];
    mont_mul(ex, (const mp_limb_t *)rx64, (const mp_limb_t *)r2_64, &f);
    mont_mul(ey, (const mp_limb_t *)ry64, (const mp_limb_t *)r2_64, &f);
    mont_sqr(zz, z, &f);
    mont_mul(ex, ex, zz, &f);
    mont_mul(zz, zz, z, &f);
    mont_mul(ey, ey, zz, &f);
    return (int)(mont_equal(ex, x, SAKKE_N) & mont_equal(ey, y, SAKKE_N)
                 & (mont_equal(z, zero, SAKKE_N) ^ 1));
}
