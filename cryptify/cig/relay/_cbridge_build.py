"""cffi (API mode) build of :mod:`cryptify.cig.relay._cbridge`: the CIG
bridge's per-packet path in C (the source is ``cbridge.c`` beside this).
``setup.py`` names it in ``cffi_modules``, so it is compiled when the
package is built or installed (it needs only gcc and the Python headers);
:mod:`cryptify.cig.relay.cpath` is the Python side and says "unavailable"
when the extension is absent (the bridge then stays on its Python path).

libsrtp is called directly from C, but it is pylibsrtp's copy (bundled,
built with OpenSSL's AES-NI and SHA-1): its ``srtp_protect`` and
``srtp_unprotect`` are bound once by address (``cb_bind``), and each call's
sessions are pylibsrtp ``Session`` objects the Python side keeps alive.
Debian's libsrtp2 (2.5, ``libsrtp2-dev``) was measured first: it does its
cryptography through NSS and costs 7-11 µs per protect of a 172-octet
packet against pylibsrtp's 2.7 µs from Python (``docs/bridge.md``).  One
library also means the C and Python paths cannot differ in SRTP.

One ``cb_call`` per call holds the four session pointers (secure rx/tx,
PBX rx/tx when the PBX leg is SRTP), the call's playout buffer
(``playout.py``'s, frame for frame) and a ``cb_state`` Python reads and
writes directly: the stream state both ways (client SSRC, offsets and
re-sequencing, the secure stream's SSRC, sequence and timestamp), the
payload types, the two G.711 translation tables, and counters the Python
side folds into its own in batches.

- ``cb_secure_to_pbx``: one packet secure -> PBX (unprotect, header
  rewrite, G.711, the PBX leg's SRTP), as ``CallBridge._secure_to_pbx``'s
  fast path; a new SSRC, a telephone-event, a CSRC list come back
  unprotected for the Python path.
- ``cb_pbx_in``: one packet from the PBX (its SRTP, hold, a new PBX
  stream, G.711) into the playout buffer; telephone-events and anything
  unusual come back unprotected for the Python path.
- ``cb_tick``: one tick of a call (playout frame, header, SRTP, the tag);
  a call with a telephone-event under way is ticked by Python.
- ``cb_tick_all``: the service's 20 ms clock, every call of a
  ``cb_table`` ticked and sent from its secure leg (``sendto``).
- ``cb_drain_secure``/``cb_drain_pbx``: a leg's socket read with
  ``recvmmsg``, what goes to the PBX sent with one ``sendmmsg``.
- ``cb_poll_start``/``cb_poll_next``: the service's poller, both legs of
  every call of a ``cb_table`` in one epoll set read by the reactor as one
  descriptor; it stops for each packet Python must finish and goes on.
"""

from __future__ import annotations

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

ffibuilder = FFI()
ffibuilder.cdef(
    """
    typedef struct cb_call cb_call;
    typedef struct cb_table cb_table;
    typedef struct {
        uint32_t client_ssrc;
        int client_known;
        uint32_t client_high;
        uint32_t seq_offset;
        uint32_t ts_offset;
        uint32_t last_out_ts;
        uint32_t pbx_ssrc;
        int secure_pt;
        int pbx_pt;
        int pbx_known;
        int pbx_sends;
        int pbx_receives;
        int translate;
        int translate_secure;
        unsigned char to_pbx[256];
        unsigned char to_secure[256];
        uint32_t pbx_rx_ssrc;
        int pbx_rx_known;
        uint32_t secure_ssrc;
        uint32_t secure_seq;
        uint32_t secure_ts;
        int marker_next;
        int silence;
        int py_tick;
        unsigned char tag[8];
        uint64_t secure_rx;
        uint64_t secure_tx;
        uint64_t pbx_rx;
        uint64_t pbx_tx;
        uint64_t transcoded;
        uint64_t srtp_errors;
        uint64_t pbx_srtp_errors;
        uint64_t held;
        uint64_t pbx_rx_octets;
        uint64_t pbx_tx_octets;
        uint64_t tx_errors;
        uint64_t late;
        uint64_t concealed;
        uint64_t underruns;
        uint64_t resyncs;
    } cb_state;

    #define CB_SEND 0
    #define CB_DROP 1
    #define CB_SLOW 2
    #define CB_ROOM ...
    #define CB_BATCH ...
    #define CB_FRAME ...
    #define CB_PLAYOUT_DELAY ...
    #define CB_PLAYOUT_MAX_AHEAD ...
    #define CB_PLAYOUT_MAX_PACKETS ...
    #define CB_SEQ_MAX_DROPOUT ...
    #define CB_SEQ_MAX_MISORDER ...

    int cb_bind(void *protect, void *unprotect);
    cb_call *cb_new(void);
    void cb_free(cb_call *call);
    void cb_set_sessions(cb_call *call, void *rx, void *tx, void *pbx_rx, void *pbx_tx);
    cb_state *cb_state_of(cb_call *call);

    int cb_protect(cb_call *call, int which, const unsigned char *in, int len,
                   unsigned char *out, int *out_len);
    int cb_unprotect(cb_call *call, int which, const unsigned char *in, int len,
                     unsigned char *out, int *out_len);

    void cb_playout_restart(cb_call *call);
    int cb_playout_push(cb_call *call, uint32_t timestamp, const unsigned char *frame, int len);
    int cb_playout_pull(cb_call *call, unsigned char *out, int n);
    int cb_playout_frames(cb_call *call);

    int cb_secure_to_pbx(cb_call *call, const unsigned char *in, int len,
                         unsigned char *out, int *out_len);
    int cb_pbx_in(cb_call *call, const unsigned char *in, int len,
                  unsigned char *out, int *out_len);
    int cb_tick(cb_call *call, unsigned char *out, int *out_len);

    void cb_set_io(cb_call *call, int id, int secure_fd, const unsigned char *relay,
                   int relay_len);
    cb_table *cb_table_new(void);
    void cb_table_free(cb_table *table);
    int cb_table_add(cb_table *table, cb_call *call, int pbx_fd);
    int cb_table_fileno(cb_table *table);
    void cb_set_pbx_addr(cb_call *call, const unsigned char *addr, int len);
    void cb_poll_start(cb_table *table, int rounds, int max);
    int cb_poll_next(cb_table *table, int *ident, int *leg,
                     unsigned char *slow, int *slow_len, int slow_max);
    void cb_table_remove(cb_table *table, cb_call *call);
    int cb_tick_all(cb_table *table, int *slow, int slow_max);

    int cb_drain_secure(cb_call *call, int fd_in, int fd_out,
                        const unsigned char *addr, int addr_len, int max,
                        unsigned char *slow, int *slow_len, int slow_max);
    int cb_left(cb_call *call);
    int cb_drain_pbx(cb_call *call, int fd_in, int max,
                     unsigned char *slow, int *slow_len, int slow_max);
    """
)
with open(os.path.join(HERE, "cbridge.c"), encoding="utf-8") as source:
    ffibuilder.set_source(
        "cryptify.cig.relay._cbridge",
        source.read(),
        extra_compile_args=["-O2", "-std=c99", "-Wall"],
    )

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(HERE, "..", "..", ".."), verbose=True)
