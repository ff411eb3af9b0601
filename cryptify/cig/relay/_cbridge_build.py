"""cffi (API mode) build of :mod:`cryptify.cig.relay._cbridge`: the CIG
bridge's per-packet path in C, calling libsrtp (Debian ``libsrtp2-1``;
``libsrtp2-dev`` to build) directly.  ``setup.py`` names it in
``cffi_modules``, so it is compiled when the package is built or installed;
:mod:`cryptify.cig.relay.cpath` is the Python side and says "unavailable"
when the extension is absent (the bridge then stays on its Python path).

One ``cb_call`` per call holds the four SRTP sessions (secure rx/tx, PBX
rx/tx when the PBX leg is SRTP) and a ``cb_state`` Python reads and writes
directly: the fast path's stream state (client SSRC, offsets, the last
sequence number and timestamp sent), the payload types, the G.711
translation tables, and counters the Python side folds into its own in
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

    int cb_init(void);
    cb_call *cb_new(int profile, const unsigned char *rx_key, const unsigned char *tx_key);
    int cb_set_pbx_srtp(cb_call *call, int profile,
                        const unsigned char *tx_key, const unsigned char *rx_key);
    void cb_free(cb_call *call);
    cb_state *cb_state_of(cb_call *call);
    int cb_profile(const char *name);

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
    #include <srtp2/srtp.h>

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
        srtp_t rx, tx, pbx_rx, pbx_tx;
    } cb_call;

    static int cb_ready = 0;

    int cb_init(void)
    {
        if (!cb_ready) {
            if (srtp_init() != srtp_err_status_ok) return -1;
            cb_ready = 1;
        }
        return 0;
    }

    int cb_profile(const char *name)
    {
        if (strcmp(name, "AES_CM_128_HMAC_SHA1_80") == 0) return srtp_profile_aes128_cm_sha1_80;
        if (strcmp(name, "AES_CM_128_HMAC_SHA1_32") == 0) return srtp_profile_aes128_cm_sha1_32;
        return -1;
    }

    static srtp_t cb_session(int profile, const unsigned char *key, int outbound)
    {
        srtp_policy_t policy;
        srtp_t session = NULL;
        unsigned char copy[64];
        memset(&policy, 0, sizeof policy);
        if (srtp_crypto_policy_set_from_profile_for_rtp(&policy.rtp, profile)
                != srtp_err_status_ok
            || srtp_crypto_policy_set_from_profile_for_rtcp(&policy.rtcp, profile)
                != srtp_err_status_ok)
            return NULL;
        memcpy(copy, key, 30);
        policy.key = copy;
        policy.ssrc.type = outbound ? ssrc_any_outbound : ssrc_any_inbound;
        policy.next = NULL;
        if (srtp_create(&session, &policy) != srtp_err_status_ok) session = NULL;
        memset(copy, 0, sizeof copy);
        return session;
    }

    void cb_free(cb_call *call)
    {
        if (call == NULL) return;
        if (call->rx) srtp_dealloc(call->rx);
        if (call->tx) srtp_dealloc(call->tx);
        if (call->pbx_rx) srtp_dealloc(call->pbx_rx);
        if (call->pbx_tx) srtp_dealloc(call->pbx_tx);
        free(call);
    }

    cb_call *cb_new(int profile, const unsigned char *rx_key, const unsigned char *tx_key)
    {
        cb_call *call;
        if (cb_init() != 0) return NULL;
        call = calloc(1, sizeof *call);
        if (call == NULL) return NULL;
        call->rx = cb_session(profile, rx_key, 0);
        call->tx = cb_session(profile, tx_key, 1);
        if (call->rx == NULL || call->tx == NULL) {
            cb_free(call);
            return NULL;
        }
        return call;
    }

    int cb_set_pbx_srtp(cb_call *call, int profile,
                        const unsigned char *tx_key, const unsigned char *rx_key)
    {
        if (call->pbx_rx) srtp_dealloc(call->pbx_rx);
        if (call->pbx_tx) srtp_dealloc(call->pbx_tx);
        call->pbx_rx = call->pbx_tx = NULL;
        if (profile < 0) return 0;
        call->pbx_tx = cb_session(profile, tx_key, 1);
        call->pbx_rx = cb_session(profile, rx_key, 0);
        return call->pbx_tx && call->pbx_rx ? 0 : -1;
    }

    cb_state *cb_state_of(cb_call *call) { return &call->st; }

    int cb_protect(cb_call *call, int which, const unsigned char *in, int len,
                   unsigned char *out, int *out_len)
    {
        srtp_t s = which == CB_PBX ? call->pbx_tx : call->tx;
        if (s == NULL || len < 0 || len > CB_MAX_IN) return -1;
        memmove(out, in, len);
        *out_len = len;
        return srtp_protect(s, out, out_len);
    }

    int cb_unprotect(cb_call *call, int which, const unsigned char *in, int len,
                     unsigned char *out, int *out_len)
    {
        srtp_t s = which == CB_PBX ? call->pbx_rx : call->rx;
        if (s == NULL || len < 0 || len > CB_MAX_IN) return -1;
        memmove(out, in, len);
        *out_len = len;
        return srtp_unprotect(s, out, out_len);
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
        if (srtp_unprotect(call->rx, out, &n) != srtp_err_status_ok) {
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
        if (call->pbx_tx != NULL && srtp_protect(call->pbx_tx, out, &n) != srtp_err_status_ok)
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
    static int cb_next = 0, cb_got = 0;
    static cb_call *cb_owner = NULL;

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
    libraries=["srtp2"],
    extra_compile_args=["-O2", "-std=c99"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(HERE, "..", "..", ".."), verbose=True)
