"""cffi (API mode) build of :mod:`cryptify.protocols._opus`, our binding to
libopus (Debian ``libopus0``; ``libopus-dev`` to build).  ``setup.py`` names
it in ``cffi_modules`` beside the SAKKE Miller loop, so it is compiled when
the package is built or installed; :mod:`cryptify.protocols.opus` is the
Python side and says "unavailable" when the extension is absent.

Besides the few libopus calls we use, three small C helpers: the encoder's
settings (``opus_encoder_ctl`` is variadic, which cffi cannot call in API
mode), and an encode and a decode that go straight between G.711 codes and
Opus through 256- and 65536-entry tables, so the CIG bridge's hot path never
handles linear samples in Python.
"""

from __future__ import annotations

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

ffibuilder = FFI()
ffibuilder.cdef(
    """
    typedef struct OpusEncoder OpusEncoder;
    typedef struct OpusDecoder OpusDecoder;
    typedef int16_t opus_int16;
    OpusEncoder *opus_encoder_create(int32_t fs, int channels, int application, int *error);
    void opus_encoder_destroy(OpusEncoder *st);
    int32_t opus_encode(OpusEncoder *st, const opus_int16 *pcm, int frame_size,
                        unsigned char *data, int32_t max_data_bytes);
    OpusDecoder *opus_decoder_create(int32_t fs, int channels, int *error);
    void opus_decoder_destroy(OpusDecoder *st);
    int opus_decode(OpusDecoder *st, const unsigned char *data, int32_t len,
                    opus_int16 *pcm, int frame_size, int decode_fec);
    const char *opus_strerror(int error);
    const char *opus_get_version_string(void);

    int cryptify_opus_setup(OpusEncoder *st, int bitrate, int complexity, int max_bandwidth);
    int32_t cryptify_opus_encode_law(OpusEncoder *st, const unsigned char *codes, int n,
                                     const int16_t *to_linear,
                                     unsigned char *data, int32_t max_data_bytes);
    int cryptify_opus_decode_law(OpusDecoder *st, const unsigned char *data, int32_t len,
                                 unsigned char *codes, int max_samples,
                                 const unsigned char *from_linear);
    """
)
ffibuilder.set_source(
    "cryptify.protocols._opus",
    r"""
    #include <stdint.h>
    #include <opus/opus.h>

    /* The most samples one call handles: 120 ms at 48 kHz (RFC 6716). */
    #define CRYPTIFY_OPUS_MAX 5760

    int cryptify_opus_setup(OpusEncoder *st, int bitrate, int complexity, int max_bandwidth)
    {
        int rc = opus_encoder_ctl(st, OPUS_SET_BITRATE(bitrate));
        if (rc == OPUS_OK) rc = opus_encoder_ctl(st, OPUS_SET_COMPLEXITY(complexity));
        if (rc == OPUS_OK) rc = opus_encoder_ctl(st, OPUS_SET_SIGNAL(OPUS_SIGNAL_VOICE));
        if (rc == OPUS_OK && max_bandwidth)
            rc = opus_encoder_ctl(st, OPUS_SET_MAX_BANDWIDTH(max_bandwidth));
        return rc;
    }

    int32_t cryptify_opus_encode_law(OpusEncoder *st, const unsigned char *codes, int n,
                                     const int16_t *to_linear,
                                     unsigned char *data, int32_t max_data_bytes)
    {
        opus_int16 pcm[CRYPTIFY_OPUS_MAX];
        int i;
        if (n <= 0 || n > CRYPTIFY_OPUS_MAX) return OPUS_BAD_ARG;
        for (i = 0; i < n; i++) pcm[i] = to_linear[codes[i]];
        return opus_encode(st, pcm, n, data, max_data_bytes);
    }

    int cryptify_opus_decode_law(OpusDecoder *st, const unsigned char *data, int32_t len,
                                 unsigned char *codes, int max_samples,
                                 const unsigned char *from_linear)
    {
        opus_int16 pcm[CRYPTIFY_OPUS_MAX];
        int i, n;
        if (max_samples <= 0 || max_samples > CRYPTIFY_OPUS_MAX) return OPUS_BAD_ARG;
        n = opus_decode(st, len ? data : NULL, len, pcm, max_samples, 0);
        for (i = 0; i < n; i++) codes[i] = from_linear[(uint16_t)pcm[i]];
        return n;
    }
    """,
    libraries=["opus"],
    extra_compile_args=["-O2", "-std=c99"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(HERE, "..", ".."), verbose=True)
