"""cffi (API mode) build of :mod:`cryptify.cig.relay._cbridge`: the CIG
bridge's per-packet path in C.  ``setup.py`` names it in ``cffi_modules``,
so it is compiled when the package is built or installed (it needs only
gcc and the Python headers); :mod:`cryptify.cig.relay.cpath` is the Python
side and says "unavailable" when the extension is absent (the bridge then
stays on its Python path).

libsrtp is called directly from C, but it is pylibsrtp's copy (bundled,
built with OpenSSL's AES-NI and SHA-1): its ``srtp_protect`` and
``srtp_unprotect`` are bound once by address (``cb_bind``), and each call's
sessions are pylibsrtp ``Session`` objects the Python side keeps alive.
Debian's libsrtp2 (2.5, ``libsrtp2-dev``) was measured first: it does its
cryptography through NSS and costs 7-11 µs per protect of a 172-octet
packet against pylibsrtp's 2.7 µs from Python (``docs/bridge.md``).  One
library also means the C and Python paths cannot differ in SRTP.

One ``cb_call`` per call holds the four session pointers (secure rx/tx,
PBX rx/tx when the PBX leg is SRTP) and a ``cb_state`` Python reads and
writes directly: the fast path's stream state (client SSRC, offsets, the
last sequence number and timestamp sent), the payload types, the G.711
translation table, and counters the Python side folds into its own in
batches (read and zeroed by ``snapshot``).

``cb_secure_to_pbx`` is the secure -> PBX direction of one packet: unprotect,
and for audio of the current client stream with a plain fixed header the
header rewrite, the G.711 translation and the PBX leg's SRTP, exactly as
``CallBridge._secure_to_pbx``'s fast path does; anything else (a new SSRC,
a telephone-event, a CSRC list) comes back unprotected for the Python path.
``cb_drain_secure`` reads a secure leg's socket with ``recvmmsg`` and sends
what the fast path made with one ``sendmmsg``.
"""

from __future__ import annotations

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

ffibuilder = FFI()
ffibuilder.cdef(
    """
    typedef struct cb_call cb_call;
    typedef struct {
        uint32_t client_ssrc;
        int client_known;
        uint32_t seq_offset;
        uint32_t ts_offset;
        uint32_t last_out_seq;
        uint32_t last_out_ts;
        uint32_t pbx_ssrc;
        int secure_pt;
        int pbx_pt;
        int pbx_known;
        int pbx_sends;
        int translate;
        unsigned char to_pbx[256];
        uint64_t secure_rx;
        uint64_t pbx_tx;
        uint64_t transcoded;
        uint64_t srtp_errors;
        uint64_t held;
        uint64_t pbx_tx_octets;
        uint64_t tx_errors;
    } cb_state;

    #define CB_SEND 0
    #define CB_DROP 1
    #define CB_SLOW 2
    #define CB_ROOM ...
    #define CB_BATCH ...

    int cb_bind(void *protect, void *unprotect);
    cb_call *cb_new(void);
    void cb_free(cb_call *call);
    void cb_set_sessions(cb_call *call, void *rx, void *tx, void *pbx_rx, void *pbx_tx);
    cb_state *cb_state_of(cb_call *call);

    int cb_protect(cb_call *call, int which, const unsigned char *in, int len,
                   unsigned char *out, int *out_len);
    int cb_unprotect(cb_call *call, int which, const unsigned char *in, int len,
                     unsigned char *out, int *out_len);
    int cb_secure_to_pbx(cb_call *call, const unsigned char *in, int len,
                         unsigned char *out, int *out_len);
    int cb_drain_secure(cb_call *call, int fd_in, int fd_out,
                        const unsigned char *addr, int addr_len, int max,
                        unsigned char *slow, int *slow_len, int slow_max);
    """
)
ffibuilder.set_source(
    "cryptify.cig.relay._cbridge",
    r"""
    #ifndef _GNU_SOURCE
    #define _GNU_SOURCE
    #endif
    #include <stdint.h>
    #include <string.h>
    #include <stdlib.h>
    #include <errno.h>
    #include <sys/socket.h>
    #include <netinet/in.h>

    /* SRTP_MAX_TAG_LEN + SRTP_MAX_MKI_LEN, as pylibsrtp reserves them. */
    #define SRTP_MAX_TRAILER_LEN (16 + 128)

    #define CB_SEND 0
    #define CB_DROP 1
    #define CB_SLOW 2
    /* The longest datagram we read, and the longest packet we protect or
       unprotect: pylibsrtp's (a 1500-octet buffer less the trailer's room),
       so that both paths take and refuse the same packets. */
    #define CB_READ 2048
    #define CB_MAX_IN (1500 - SRTP_MAX_TRAILER_LEN)
    #define CB_ROOM (CB_READ + SRTP_MAX_TRAILER_LEN + 16)
    /* Datagrams one drain reads at most. */
    #define CB_BATCH 32

    /* Which session cb_protect/cb_unprotect use. */
    enum { CB_SECURE = 0, CB_PBX = 1 };

    typedef struct {
        uint32_t client_ssrc;
        int client_known;
        uint32_t seq_offset;
        uint32_t ts_offset;
        uint32_t last_out_seq;
        uint32_t last_out_ts;
        uint32_t pbx_ssrc;
        int secure_pt;
        int pbx_pt;
        int pbx_known;
        int pbx_sends;
        int translate;
        unsigned char to_pbx[256];
        uint64_t secure_rx;
        uint64_t pbx_tx;
        uint64_t transcoded;
        uint64_t srtp_errors;
        uint64_t held;
        uint64_t pbx_tx_octets;
        uint64_t tx_errors;
    } cb_state;

    typedef struct cb_call {
        cb_state st;
        void *rx, *tx, *pbx_rx, *pbx_tx;  /* libsrtp sessions (srtp_t), pylibsrtp's */
    } cb_call;

    /* libsrtp's srtp_protect and srtp_unprotect: pylibsrtp's copy (see the
       module's docstring), bound once by cb_bind. */
    typedef int (*cb_srtp_fn)(void *ctx, void *packet, int *len);
    static cb_srtp_fn cb_fn_protect = NULL, cb_fn_unprotect = NULL;

    int cb_bind(void *protect, void *unprotect)
    {
        cb_fn_protect = (cb_srtp_fn)protect;
        cb_fn_unprotect = (cb_srtp_fn)unprotect;
        return cb_fn_protect && cb_fn_unprotect ? 0 : -1;
    }

    cb_call *cb_new(void) { return calloc(1, sizeof(cb_call)); }

    static cb_call *cb_owner;
    static int cb_next, cb_got;

    void cb_free(cb_call *call)
    {
        if (cb_owner == call) {  /* what its last read left is dropped with it */
            cb_owner = NULL;
            cb_next = cb_got = 0;
        }
        free(call);
    }

    void cb_set_sessions(cb_call *call, void *rx, void *tx, void *pbx_rx, void *pbx_tx)
    {
        call->rx = rx;
        call->tx = tx;
        call->pbx_rx = pbx_rx;
        call->pbx_tx = pbx_tx;
    }

    cb_state *cb_state_of(cb_call *call) { return &call->st; }

    int cb_protect(cb_call *call, int which, const unsigned char *in, int len,
                   unsigned char *out, int *out_len)
    {
        void *s = which == CB_PBX ? call->pbx_tx : call->tx;
        if (s == NULL || len < 0 || len > CB_MAX_IN) return -1;
        memmove(out, in, len);
        *out_len = len;
        return cb_fn_protect(s, out, out_len);
    }

    int cb_unprotect(cb_call *call, int which, const unsigned char *in, int len,
                     unsigned char *out, int *out_len)
    {
        void *s = which == CB_PBX ? call->pbx_rx : call->rx;
        if (s == NULL || len < 0 || len > CB_MAX_IN) return -1;
        memmove(out, in, len);
        *out_len = len;
        return cb_fn_unprotect(s, out, out_len);
    }

    static inline uint32_t rd32(const unsigned char *p)
    {
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    }

    static inline void wr32(unsigned char *p, uint32_t v)
    {
        p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
    }

    /* CallBridge.from_secure for one packet, in place in out (CB_ROOM bytes). */
    int cb_secure_to_pbx(cb_call *call, const unsigned char *in, int len,
                         unsigned char *out, int *out_len)
    {
        cb_state *st = &call->st;
        int n = len, i;
        uint32_t seq, ts;
        st->secure_rx++;
        if (len < 0 || len > CB_MAX_IN) {
            st->srtp_errors++;
            return CB_DROP;
        }
        memcpy(out, in, len);
        if (cb_fn_unprotect(call->rx, out, &n) != 0) {
            st->srtp_errors++;
            return CB_DROP;
        }
        *out_len = n;
        if (!(n > 12 && out[0] == 0x80 && (out[1] & 0x7F) == st->secure_pt
              && st->client_known && rd32(out + 8) == st->client_ssrc && st->pbx_known))
            return CB_SLOW;
        seq = ((uint32_t)out[2] << 8 | out[3]) + st->seq_offset;
        ts = rd32(out + 4) + st->ts_offset;
        st->last_out_seq = seq & 0xFFFF;
        st->last_out_ts = ts;
        if (st->translate) {
            const unsigned char *t = st->to_pbx;
            for (i = 12; i < n; i++) out[i] = t[out[i]];
            st->transcoded++;
        }
        if (!st->pbx_sends) {
            /* Unprotected all the same, so the SRTP rollover count keeps up. */
            st->held++;
            return CB_DROP;
        }
        out[1] = (out[1] & 0x80) | st->pbx_pt;
        out[2] = seq >> 8;
        out[3] = seq;
        wr32(out + 4, ts);
        wr32(out + 8, st->pbx_ssrc);
        st->pbx_tx++;
        /* libsrtp refuses an index it has protected before (a client stream
           that steps back after a new SSRC): counted as sent, as the Python
           path does before its protect raises. */
        if (call->pbx_tx != NULL && cb_fn_protect(call->pbx_tx, out, &n) != 0)
            return -1;
        st->pbx_tx_octets += n;
        *out_len = n;
        return CB_SEND;
    }

    /* What the last recvmmsg read and the fast path has not handled yet:
       a packet for the Python path stops a batch (so that order is kept),
       and the rest waits here until the same call's next drain. */
    static unsigned char cb_inbuf[CB_BATCH][CB_READ];
    static unsigned int cb_inlen[CB_BATCH];

    /* Read up to max datagrams (at most CB_BATCH) from the secure leg's
       socket, or go on with what the call's last read left, and send what
       the fast path makes to addr through fd_out in one sendmmsg.  Answers
       the number of datagrams handled (-1: none waited).  When the last one
       needs the Python path it is left unprotected in slow (*slow_len > 0);
       the caller finishes it and calls again (before any other call's
       drain) for the rest of the batch. */
    int cb_drain_secure(cb_call *call, int fd_in, int fd_out,
                        const unsigned char *addr, int addr_len, int max,
                        unsigned char *slow, int *slow_len, int slow_max)
    {
        static unsigned char outbuf[CB_BATCH][CB_ROOM];
        struct mmsghdr rmsg[CB_BATCH], smsg[CB_BATCH];
        struct iovec riov[CB_BATCH], siov[CB_BATCH];
        int i, first, nsend = 0, out_len = 0, rc, sent;
        *slow_len = 0;
        if (cb_owner != call || cb_next >= cb_got) {
            if (max > CB_BATCH) max = CB_BATCH;
            if (max < 1) max = 1;
            cb_owner = NULL;
            cb_next = cb_got = 0;
            memset(rmsg, 0, sizeof(struct mmsghdr) * max);
            for (i = 0; i < max; i++) {
                riov[i].iov_base = cb_inbuf[i];
                riov[i].iov_len = CB_READ;
                rmsg[i].msg_hdr.msg_iov = &riov[i];
                rmsg[i].msg_hdr.msg_iovlen = 1;
            }
            rc = recvmmsg(fd_in, rmsg, max, MSG_DONTWAIT, NULL);
            if (rc <= 0) return -1;
            for (i = 0; i < rc; i++) cb_inlen[i] = rmsg[i].msg_len;
            cb_owner = call;
            cb_got = rc;
        }
        first = cb_next;
        while (cb_next < cb_got) {
            i = cb_next++;
            rc = cb_secure_to_pbx(call, cb_inbuf[i], (int)cb_inlen[i], outbuf[nsend], &out_len);
            if (rc == CB_SEND) {
                memset(&smsg[nsend], 0, sizeof smsg[nsend]);
                siov[nsend].iov_base = outbuf[nsend];
                siov[nsend].iov_len = out_len;
                smsg[nsend].msg_hdr.msg_iov = &siov[nsend];
                smsg[nsend].msg_hdr.msg_iovlen = 1;
                smsg[nsend].msg_hdr.msg_name = (void *)addr;
                smsg[nsend].msg_hdr.msg_namelen = addr_len;
                nsend++;
            } else if (rc == CB_SLOW) {
                if (out_len <= slow_max) {
                    memcpy(slow, outbuf[nsend], out_len);
                    *slow_len = out_len;
                }
                break;
            }
        }
        for (i = 0; i < nsend; i += sent) {
            sent = sendmmsg(fd_out, smsg + i, nsend - i, MSG_DONTWAIT);
            if (sent <= 0) {  /* this one refused: count it, go on with the rest */
                call->st.tx_errors++;
                sent = 1;
            }
        }
        return cb_next - first;
    }
    """,
    extra_compile_args=["-O2", "-std=c99"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(HERE, "..", "..", ".."), verbose=True)
