/* The CIG bridge's per-packet path in C (cffi API mode, built by
 * _cbridge_build.py, which says what is here and why).  Every function
 * mirrors a Python one of bridge_core.py / playout.py exactly: the
 * differential test (tests/test_bridge_cpath.py) compares them datagram
 * for datagram and counter for counter.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <errno.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

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
/* The playout buffer (playout.py's Playout; bridge_spec.py's constants). */
#define CB_FRAME 160
#define CB_PLAYOUT_DELAY (2 * CB_FRAME)
#define CB_PLAYOUT_MAX_AHEAD (10 * CB_FRAME)
#define CB_PLAYOUT_MAX_PACKETS 32
/* Re-sequencing of what goes to the PBX (bridge_spec.py's SEQ_*). */
#define CB_SEQ_MAX_DROPOUT 3000
#define CB_SEQ_MAX_MISORDER 100
/* The relay's leg tag before each datagram we send it. */
#define CB_TAG 8
/* epoll events one poll round takes. */
#define CB_EVENTS 1024

/* Which session cb_protect/cb_unprotect use, and which leg a drain reads. */
enum { CB_SECURE = 0, CB_PBX = 1 };

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
    unsigned char tag[CB_TAG];
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

/* One frame of the playout buffer: its unwrapped timestamp and where its
   octets are (a slot's buffer, from off on). */
typedef struct {
    int64_t t;
    int len;
    int off;
    int slot;
} cb_frame;

typedef struct {
    unsigned char *buf;
    int cap;
} cb_slot;

/* playout.py's Playout: the frames in the dict's insertion order (the
   Python code's _forget and resync depend on it), the slots that hold them. */
#define CB_SLOTS (CB_PLAYOUT_MAX_PACKETS + 2)
typedef struct {
    cb_frame frames[CB_SLOTS];
    int count;
    cb_slot slots[CB_SLOTS];
    int free_slots[CB_SLOTS];
    int nfree;
    int has_cursor;
    int64_t cursor;
    int64_t newest_end;
    int64_t last_ts;
    int started;
} cb_playout;

typedef struct cb_call {
    cb_state st;
    void *rx, *tx, *pbx_rx, *pbx_tx;  /* libsrtp sessions (srtp_t), pylibsrtp's */
    cb_playout po;
    /* The service's clock sends each tick here (cb_set_io). */
    int secure_fd;
    struct sockaddr_in relay;
    int id;
    int table_index;
    /* The service's poller reads the PBX leg here and sends to pbx_addr. */
    int pbx_fd;
    unsigned char pbx_addr[16];
    int pbx_addr_len;
} cb_call;

/* The service's C calls: the clock's list, and one epoll set of both legs
   of each (the reactor sees it as one reader), with where a poll that
   stopped for a packet for Python goes on. */
typedef struct cb_table {
    cb_call **calls;
    int n, cap;
    int epfd;
    struct epoll_event evs[CB_EVENTS];
    int nev, iev, rounds, max, resumed;
} cb_table;

/* libsrtp's srtp_protect and srtp_unprotect: pylibsrtp's copy (see the
   build module's docstring), bound once by cb_bind. */
typedef int (*cb_srtp_fn)(void *ctx, void *packet, int *len);
static cb_srtp_fn cb_fn_protect = NULL, cb_fn_unprotect = NULL;

int cb_bind(void *protect, void *unprotect)
{
    cb_fn_protect = (cb_srtp_fn)protect;
    cb_fn_unprotect = (cb_srtp_fn)unprotect;
    return cb_fn_protect && cb_fn_unprotect ? 0 : -1;
}

cb_call *cb_new(void)
{
    cb_call *call = calloc(1, sizeof(cb_call));
    int i;
    if (call == NULL) return NULL;
    for (i = 0; i < CB_SLOTS; i++) call->po.free_slots[i] = CB_SLOTS - 1 - i;
    call->po.nfree = CB_SLOTS;
    call->secure_fd = -1;
    call->pbx_fd = -1;
    call->table_index = -1;
    call->st.marker_next = 1;
    return call;
}

static cb_call *cb_owner;
static int cb_owner_leg, cb_next, cb_got;

void cb_free(cb_call *call)
{
    int i;
    if (cb_owner == call) {  /* what its last read left is dropped with it */
        cb_owner = NULL;
        cb_next = cb_got = 0;
    }
    for (i = 0; i < CB_SLOTS; i++) free(call->po.slots[i].buf);
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

/* -- the playout buffer (playout.py) -------------------------------------- */

static int po_find(cb_playout *po, int64_t t)
{
    int i;
    for (i = 0; i < po->count; i++)
        if (po->frames[i].t == t) return i;
    return -1;
}

/* Remove entry i (keeping the order of the rest); answers the frame. */
static cb_frame po_take(cb_playout *po, int i)
{
    cb_frame f = po->frames[i];
    memmove(&po->frames[i], &po->frames[i + 1], sizeof(cb_frame) * (po->count - i - 1));
    po->count--;
    return f;
}

static void po_release(cb_playout *po, int slot) { po->free_slots[po->nfree++] = slot; }

/* frames[t] = f: an existing key keeps its place (its old frame is freed),
   a new one goes last, as a dict does. */
static void po_set(cb_playout *po, cb_frame f)
{
    int i = po_find(po, f.t);
    if (i >= 0) {
        if (po->frames[i].slot != f.slot) po_release(po, po->frames[i].slot);
        po->frames[i] = f;
        return;
    }
    po->frames[po->count++] = f;
}

void cb_playout_restart(cb_call *call)
{
    cb_playout *po = &call->po;
    while (po->count > 0) po_release(po, po_take(po, po->count - 1).slot);
    po->has_cursor = 0;
    po->cursor = 0;
    po->newest_end = 0;
    po->last_ts = 0;
    call->st.resyncs++;
}

static int64_t po_unwrap(cb_playout *po, uint32_t timestamp)
{
    int64_t delta, extended;
    if (!po->has_cursor) {
        po->last_ts = timestamp;
        return timestamp;
    }
    delta = (int64_t)(uint32_t)(timestamp - (uint32_t)po->last_ts);
    if (delta >= ((int64_t)1 << 31)) delta -= (int64_t)1 << 32;
    extended = po->last_ts + delta;
    if (delta > 0) po->last_ts = extended;
    return extended;
}

/* Playout.push; -1 when out of memory (the frame is then dropped). */
int cb_playout_push(cb_call *call, uint32_t timestamp, const unsigned char *frame, int len)
{
    cb_playout *po = &call->po;
    int64_t at, end;
    int i, j, slot;
    cb_frame f;
    if (len <= 0) return 0;
    at = po_unwrap(po, timestamp);
    end = at + len;
    if (!po->has_cursor) {
        po->cursor = at - CB_PLAYOUT_DELAY;
        po->has_cursor = 1;
    } else if (at - po->cursor > CB_PLAYOUT_MAX_AHEAD) {
        po->cursor = at - CB_PLAYOUT_DELAY;
        call->st.resyncs++;
        for (i = j = 0; i < po->count; i++) {
            f = po->frames[i];
            if (f.t + f.len > po->cursor) po->frames[j++] = f;
            else po_release(po, f.slot);
        }
        po->count = j;
    } else if (end <= po->cursor) {
        call->st.late++;
        return 0;
    }
    if (po->count >= CB_PLAYOUT_MAX_PACKETS) {
        for (i = 0, j = 1; j < po->count; j++)
            if (po->frames[j].t < po->frames[i].t) i = j;
        po_release(po, po_take(po, i).slot);
    }
    slot = po->free_slots[po->nfree - 1];
    if (po->slots[slot].cap < len) {
        int cap = len < CB_FRAME ? CB_FRAME : len;
        unsigned char *buf = realloc(po->slots[slot].buf, cap);
        if (buf == NULL) return -1;
        po->slots[slot].buf = buf;
        po->slots[slot].cap = cap;
    }
    po->nfree--;
    memcpy(po->slots[slot].buf, frame, len);
    f.t = at;
    f.len = len;
    f.off = 0;
    f.slot = slot;
    po_set(po, f);
    if (end > po->newest_end) po->newest_end = end;
    return 0;
}

/* Playout._forget: drop what lies before `before`, keep split frames' rest. */
static void po_forget(cb_playout *po, int64_t before)
{
    cb_frame todo[CB_SLOTS], f;
    int n = 0, i, k;
    for (i = 0; i < po->count; i++)
        if (po->frames[i].t < before) todo[n++] = po->frames[i];
    for (k = 0; k < n; k++) {
        i = po_find(po, todo[k].t);
        f = po_take(po, i);
        if (f.t + f.len > before) {
            int cut = (int)(before - f.t);
            f.off += cut;
            f.len -= cut;
            f.t = before;
            po_set(po, f);
        } else {
            po_release(po, f.slot);
        }
    }
}

/* Playout.pull of n samples into out: n, or -1 for None (no audio yet, or
   an underrun). */
int cb_playout_pull(cb_call *call, unsigned char *out, int n)
{
    cb_playout *po = &call->po;
    int64_t cursor, stop;
    int i, j, k, nwanted = 0, covered = 0;
    cb_frame wanted[CB_SLOTS], f;
    if (!po->has_cursor) return -1;
    cursor = po->cursor;
    i = po_find(po, cursor);
    if (i >= 0) {
        f = po_take(po, i);
        if (f.len == n) {
            memcpy(out, po->slots[f.slot].buf + f.off, n);
            po_release(po, f.slot);
            po->cursor = cursor + n;
            po->started = 1;
            return n;
        }
        po->frames[po->count++] = f;  /* back in, last */
    }
    stop = cursor + n;
    for (i = 0; i < po->count; i++) {
        f = po->frames[i];
        if (f.t < stop && f.t + f.len > cursor) {
            for (j = nwanted; j > 0 && wanted[j - 1].t > f.t; j--) wanted[j] = wanted[j - 1];
            wanted[j] = f;
            nwanted++;
        }
    }
    memset(out, call->st.silence, n);
    if (nwanted == 0) {
        if (po->newest_end <= cursor) {
            call->st.underruns++;
            return -1;
        }
        call->st.concealed += po->started;
        po->cursor = stop;
        po_forget(po, stop);
        return n;
    }
    for (k = 0; k < nwanted; k++) {
        int64_t lo, hi;
        f = wanted[k];
        lo = f.t > cursor ? f.t : cursor;
        hi = f.t + f.len < stop ? f.t + f.len : stop;
        memcpy(out + (lo - cursor), po->slots[f.slot].buf + f.off + (lo - f.t), hi - lo);
        covered += (int)(hi - lo);
    }
    if (covered < n && po->started) call->st.concealed++;
    po->started = 1;
    po->cursor = stop;
    po_forget(po, stop);
    return n;
}

/* What Python's Playout fields would say (for the tests and snapshots). */
int cb_playout_frames(cb_call *call) { return call->po.count; }

/* -- secure -> PBX ---------------------------------------------------------- */

/* CallBridge._out_seq: the sequence number towards the PBX of a packet of
   the current client stream.  Our stream is our own: small steps (loss,
   reordering) pass as they were, a jump beyond them continues ours by one,
   so its SRTP index never leaps 2^15 (RFC 3711 3.3.1). */
static uint32_t cb_out_seq(cb_state *st, uint32_t seq)
{
    int32_t d = (int32_t)((seq - st->client_high) & 0xFFFF);
    if (d >= 0x8000) d -= 0x10000;
    if (d > CB_SEQ_MAX_DROPOUT || d < -CB_SEQ_MAX_MISORDER) {
        st->seq_offset = (st->client_high + st->seq_offset + 1 - seq) & 0xFFFF;
        st->client_high = seq;
    } else if (d > 0) {
        st->client_high = seq;
    }
    return (seq + st->seq_offset) & 0xFFFF;
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
    seq = cb_out_seq(st, (uint32_t)out[2] << 8 | out[3]);
    ts = rd32(out + 4) + st->ts_offset;
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
    /* libsrtp refuses an index it has protected before: counted as sent,
       as the Python path does before its protect raises. */
    if (call->pbx_tx != NULL && cb_fn_protect(call->pbx_tx, out, &n) != 0)
        return -1;
    st->pbx_tx_octets += n;
    *out_len = n;
    return CB_SEND;
}

/* -- PBX -> secure ---------------------------------------------------------- */

/* CallBridge.from_pbx for one packet: audio with a plain fixed header goes
   into the playout buffer here (CB_DROP: nothing more to do); anything else
   comes back unprotected in out (CB_SLOW) for the Python path.  out has
   room for len octets and at least CB_ROOM. */
int cb_pbx_in(cb_call *call, const unsigned char *in, int len,
              unsigned char *out, int *out_len)
{
    cb_state *st = &call->st;
    int n = len, i, pt;
    st->pbx_rx++;
    st->pbx_rx_octets += len;
    if (len < 0) return CB_DROP;
    memcpy(out, in, len);
    if (call->pbx_rx != NULL) {
        if (len > CB_MAX_IN || cb_fn_unprotect(call->pbx_rx, out, &n) != 0) {
            st->pbx_srtp_errors++;
            return CB_DROP;
        }
    }
    *out_len = n;
    if (!st->pbx_receives) {  /* unprotected all the same: the rollover count keeps up */
        st->held++;
        return CB_DROP;
    }
    if (n >= 12) {
        uint32_t ssrc = rd32(out + 8);
        pt = out[1] & 0x7F;
        if ((!st->pbx_rx_known || ssrc != st->pbx_rx_ssrc) && (out[0] & 0xC0) == 0x80
            && !(pt >= 72 && pt <= 76)) {
            /* Another stream: its timestamps have nothing to do with the last one's. */
            if (st->pbx_rx_known) cb_playout_restart(call);
            st->pbx_rx_ssrc = ssrc;
            st->pbx_rx_known = 1;
        }
    }
    if (!(n > 12 && out[0] == 0x80 && (out[1] & 0x7F) == st->pbx_pt)) return CB_SLOW;
    if (st->translate_secure) {
        const unsigned char *t = st->to_secure;
        for (i = 12; i < n; i++) out[i] = t[out[i]];
        st->transcoded++;
    }
    if (cb_playout_push(call, rd32(out + 4), out + 12, n - 12) != 0) return -1;
    return CB_DROP;
}

/* CallBridge.tick without a telephone-event (CB_SLOW: the call has one,
   Python ticks it): tag || SRTP of one frame of the playout buffer. */
int cb_tick(cb_call *call, unsigned char *out, int *out_len)
{
    cb_state *st = &call->st;
    unsigned char *rtp = out + CB_TAG;
    int n = 12 + CB_FRAME, marker;
    uint32_t ts;
    if (st->py_tick) return CB_SLOW;
    if (cb_playout_pull(call, rtp + 12, CB_FRAME) < 0)  /* None: silence */
        memset(rtp + 12, st->silence, CB_FRAME);
    ts = st->secure_ts;
    marker = st->marker_next;
    st->marker_next = 0;
    rtp[0] = 0x80;
    rtp[1] = st->secure_pt | (marker ? 0x80 : 0);
    rtp[2] = st->secure_seq >> 8;
    rtp[3] = st->secure_seq;
    wr32(rtp + 4, ts);
    wr32(rtp + 8, st->secure_ssrc);
    st->secure_seq = (st->secure_seq + 1) & 0xFFFF;
    st->secure_ts = ts + CB_FRAME;
    st->secure_tx++;
    if (call->tx == NULL || cb_fn_protect(call->tx, rtp, &n) != 0) return -1;
    memcpy(out, st->tag, CB_TAG);
    *out_len = CB_TAG + n;
    return CB_SEND;
}

/* -- the service's calls: one clock for all ------------------------------- */

void cb_set_io(cb_call *call, int id, int secure_fd, const unsigned char *relay, int relay_len)
{
    call->id = id;
    call->secure_fd = secure_fd;
    memset(&call->relay, 0, sizeof call->relay);
    if (relay_len > (int)sizeof call->relay) relay_len = sizeof call->relay;
    memcpy(&call->relay, relay, relay_len);
}

cb_table *cb_table_new(void)
{
    cb_table *table = calloc(1, sizeof(cb_table));
    if (table == NULL) return NULL;
    table->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (table->epfd < 0) {
        free(table);
        return NULL;
    }
    return table;
}

void cb_table_free(cb_table *table)
{
    int i;
    for (i = 0; i < table->n; i++) table->calls[i]->table_index = -1;
    close(table->epfd);
    free(table->calls);
    free(table);
}

int cb_table_fileno(cb_table *table) { return table->epfd; }

void cb_set_pbx_addr(cb_call *call, const unsigned char *addr, int len)
{
    if (len < 0 || len > (int)sizeof call->pbx_addr) len = 0;
    memcpy(call->pbx_addr, addr, len);
    call->pbx_addr_len = len;
}

/* A call of the table: on the clock, and both its legs in the epoll set
   (pbx_fd < 0: on the clock only). */
int cb_table_add(cb_table *table, cb_call *call, int pbx_fd)
{
    struct epoll_event ev;
    if (call->table_index >= 0) return 0;
    if (pbx_fd >= 0) {
        memset(&ev, 0, sizeof ev);
        ev.events = EPOLLIN;
        ev.data.u64 = (uint64_t)(uintptr_t)call | CB_SECURE;
        if (epoll_ctl(table->epfd, EPOLL_CTL_ADD, call->secure_fd, &ev) != 0) return -1;
        ev.data.u64 = (uint64_t)(uintptr_t)call | CB_PBX;
        if (epoll_ctl(table->epfd, EPOLL_CTL_ADD, pbx_fd, &ev) != 0) {
            epoll_ctl(table->epfd, EPOLL_CTL_DEL, call->secure_fd, NULL);
            return -1;
        }
        call->pbx_fd = pbx_fd;
    }
    if (table->n == table->cap) {
        int cap = table->cap ? 2 * table->cap : 64;
        cb_call **calls = realloc(table->calls, sizeof(cb_call *) * cap);
        if (calls == NULL) return -1;
        table->calls = calls;
        table->cap = cap;
    }
    call->table_index = table->n;
    table->calls[table->n++] = call;
    return 0;
}

void cb_table_remove(cb_table *table, cb_call *call)
{
    int i = call->table_index;
    if (i < 0 || i >= table->n || table->calls[i] != call) return;
    if (call->pbx_fd >= 0) {
        epoll_ctl(table->epfd, EPOLL_CTL_DEL, call->secure_fd, NULL);
        epoll_ctl(table->epfd, EPOLL_CTL_DEL, call->pbx_fd, NULL);
        call->pbx_fd = -1;
    }
    table->nev = table->iev = 0;  /* no event of a poll under way may name it */
    table->calls[i] = table->calls[--table->n];
    table->calls[i]->table_index = i;
    call->table_index = -1;
}

/* One tick of every call in the table: each sends its datagram to the
   relay from its secure leg.  The ids of calls Python must tick (a
   telephone-event) go into slow (at most slow_max; answers how many). */
int cb_tick_all(cb_table *table, int *slow, int slow_max)
{
    static unsigned char out[CB_ROOM];
    int i, n, nslow = 0, rc;
    for (i = 0; i < table->n; i++) {
        cb_call *call = table->calls[i];
        rc = cb_tick(call, out, &n);
        if (rc == CB_SEND) {
            if (sendto(call->secure_fd, out, n, MSG_DONTWAIT, (struct sockaddr *)&call->relay,
                       sizeof call->relay) < 0)
                call->st.tx_errors++;
        } else if (rc == CB_SLOW) {
            if (nslow < slow_max) slow[nslow++] = call->id;
        } else {
            call->st.tx_errors++;
        }
    }
    return nslow;
}

/* -- reading the legs --------------------------------------------------------- */

/* What the last recvmmsg read and the fast path has not handled yet:
   a packet for the Python path stops a batch (so that order is kept),
   and the rest waits here until the same call's next drain of that leg. */
static unsigned char cb_inbuf[CB_BATCH][CB_READ];
static unsigned int cb_inlen[CB_BATCH];

static int cb_read(cb_call *call, int leg, int fd_in, int max)
{
    struct mmsghdr rmsg[CB_BATCH];
    struct iovec riov[CB_BATCH];
    int i, rc;
    if (cb_owner == call && cb_owner_leg == leg && cb_next < cb_got) return 0;
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
    cb_owner_leg = leg;
    cb_got = rc;
    return 0;
}

/* How many datagrams of the call's last read are still to be handled. */
int cb_left(cb_call *call)
{
    return cb_owner == call ? cb_got - cb_next : 0;
}

/* Read up to max datagrams (at most CB_BATCH) from the secure leg's
   socket, or go on with what the call's last read left, and send what
   the fast path makes to addr through fd_out in one sendmmsg.  Answers
   the number of datagrams handled (-1: none waited).  When the last one
   needs the Python path it is left unprotected in slow (*slow_len > 0);
   the caller finishes it and calls again (before any other drain) for
   the rest of the batch. */
int cb_drain_secure(cb_call *call, int fd_in, int fd_out,
                    const unsigned char *addr, int addr_len, int max,
                    unsigned char *slow, int *slow_len, int slow_max)
{
    static unsigned char outbuf[CB_BATCH][CB_ROOM];
    struct mmsghdr smsg[CB_BATCH];
    struct iovec siov[CB_BATCH];
    int i, first, nsend = 0, out_len = 0, rc, sent;
    *slow_len = 0;
    if (cb_read(call, CB_SECURE, fd_in, max) < 0) return -1;
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

/* The same for the PBX leg: up to max datagrams into the playout buffer;
   one the fast path leaves comes back unprotected in slow, as above. */
int cb_drain_pbx(cb_call *call, int fd_in, int max,
                 unsigned char *slow, int *slow_len, int slow_max)
{
    static unsigned char out[CB_ROOM];
    int i, first, out_len = 0, rc;
    *slow_len = 0;
    if (cb_read(call, CB_PBX, fd_in, max) < 0) return -1;
    first = cb_next;
    while (cb_next < cb_got) {
        i = cb_next++;
        rc = cb_pbx_in(call, cb_inbuf[i], (int)cb_inlen[i], out, &out_len);
        if (rc == CB_SLOW) {
            if (out_len <= slow_max) {
                memcpy(slow, out, out_len);
                *slow_len = out_len;
            }
            break;
        }
    }
    return cb_next - first;
}

/* -- the service's poller ----------------------------------------------------- */

/* A poll of the table's legs: up to `rounds` rounds of epoll (without
   waiting), each ready leg drained of up to max datagrams a round. */
void cb_poll_start(cb_table *table, int rounds, int max)
{
    table->rounds = rounds;
    table->max = max;
    table->nev = table->iev = 0;
    table->resumed = 0;
}

/* Go on with the poll: 0 when it is done, 1 when a packet needs the Python
   path (unprotected in slow; *ident and *leg say whose), after which the
   caller calls again (before anything else reads a leg). */
int cb_poll_next(cb_table *table, int *ident, int *leg,
                 unsigned char *slow, int *slow_len, int slow_max)
{
    cb_call *call;
    int which;
    *slow_len = 0;
    for (;;) {
        if (table->iev >= table->nev) {
            if (table->rounds <= 0) return 0;
            table->rounds--;
            table->iev = 0;
            table->nev = epoll_wait(table->epfd, table->evs, CB_EVENTS, 0);
            if (table->nev <= 0) {
                table->nev = table->rounds = 0;
                return 0;
            }
        }
        call = (cb_call *)(uintptr_t)(table->evs[table->iev].data.u64 & ~(uint64_t)1);
        which = (int)(table->evs[table->iev].data.u64 & 1);
        if (table->resumed && cb_left(call) == 0) {
            table->resumed = 0;
            table->iev++;
            continue;
        }
        table->resumed = 0;
        if (which == CB_SECURE)
            cb_drain_secure(call, call->secure_fd, call->pbx_fd, call->pbx_addr,
                            call->pbx_addr_len, table->max, slow, slow_len, slow_max);
        else
            cb_drain_pbx(call, call->pbx_fd, table->max, slow, slow_len, slow_max);
        if (*slow_len > 0) {
            *ident = call->id;
            *leg = which;
            table->resumed = 1;
            return 1;
        }
        table->iev++;
    }
}
