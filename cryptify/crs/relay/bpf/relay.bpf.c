// SPDX-License-Identifier: GPL-2.0
/*
 * The CRS relay's fast path in the kernel (tc ingress, direct action).
 *
 * For every IPv4 UDP datagram to the relay's port this program looks the
 * first 8 payload bytes (the leg tag) up in the `legs` map, which crs_relay
 * fills once both legs of a relay session have latched.  A datagram from the
 * leg's latched address, of a relayed size, is counted on the leg (packets,
 * bytes, last seen, byte credit), checked against the peer's credit, has its
 * tag stripped and its addresses rewritten (from the relay's address and
 * port to the peer leg's destination), and goes on up the stack when the
 * destination is one of the host's own addresses, else is redirected out
 * of the device it came in on (bpf_redirect_neigh).
 *
 * Everything else is passed on (TC_ACT_UNSPEC: the next program or filter,
 * then the stack) to the userspace relay, which
 * applies the same rules as without this program: unknown tags, sources
 * that are not the latched one (NAT rebinding, theft attempts), sizes out
 * of range, IP options and fragments, GSO packets, and a local client's
 * packets for a peer elsewhere.  The only packets dropped here are those the peer is not
 * owed (the byte-credit rule), counted as ERRNODEST.
 *
 * Rules and numbers mirror cryptify/crs/relay/core.py (RelayCore.route).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define TAG_SIZE 8
#define MIN_PACKET 20   /* tag + RTP fixed header */
#define MAX_PACKET 1472 /* longest datagram relayed */
#define CREDIT_FACTOR 2
#define LOOPBACK_IFINDEX 1 /* in every network namespace */

struct leg {
	struct bpf_spin_lock lock;
	__u32 credit;   /* bytes the relay may still send to dest_ip:dest_port */
	__u32 cap;      /* most credit a leg may hold */
	__u32 src_ip;   /* latched source (network order) */
	__u32 dest_ip;  /* where this leg's packets go (addr-map applied) */
	__u16 src_port; /* network order */
	__u16 dest_port;
	__u32 pad;
	__u64 peer;     /* the other leg's tag */
	__u64 seen_ns;  /* bpf_ktime_get_ns() of the last packet from src */
	__u64 packets;  /* packets from src counted here */
	__u64 bytes;    /* their datagram bytes */
};

struct config {
	__u32 relay_ip;   /* 0: any local address */
	__u16 relay_port; /* network order */
	__u16 pad;
};

/* show relay's counters, as far as the kernel decides them */
enum { ST_RX, ST_TXB, ST_ERRNODEST, ST_TXERROR, ST_MAX };

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct leg);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} legs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

/* The host's own IPv4 addresses (besides 127/8), filled by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u8);
} locals SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&stats, &which);

	if (n)
		*n += 1;
}

static __always_inline __u16 ip_checksum(struct iphdr *ip)
{
	__u16 *p = (__u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += p[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

SEC("tc")
int relay_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct udphdr *udp;
	struct config *cfg;
	struct leg *leg, *peer;
	__u32 zero = 0, size, payload, relay_ip, dest_ip, ifindex = skb->ifindex;
	__u16 dport, cfg_port;
	__u64 tag, now;
	int local, loopback;

	barrier_var(ifindex); /* read the context once, not through a kept pointer */
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_UNSPEC;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->ihl != 5 || ip->protocol != IPPROTO_UDP ||
	    (ip->frag_off & bpf_htons(0x3fff)))
		return TC_ACT_UNSPEC;
	udp = (void *)(ip + 1);
	if ((void *)(udp + 1) + TAG_SIZE > data_end)
		return TC_ACT_UNSPEC;
	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || udp->dest != cfg->relay_port || cfg->relay_port == 0)
		return TC_ACT_UNSPEC;
	if (cfg->relay_ip && ip->daddr != cfg->relay_ip)
		return TC_ACT_UNSPEC;
	cfg_port = cfg->relay_port;
	if (skb->gso_segs > 1)
		return TC_ACT_UNSPEC;
	size = bpf_ntohs(udp->len);
	if (size < sizeof(*udp) + MIN_PACKET || size > sizeof(*udp) + MAX_PACKET ||
	    size != bpf_ntohs(ip->tot_len) - sizeof(*ip))
		return TC_ACT_UNSPEC;
	size -= sizeof(*udp);
	__builtin_memcpy(&tag, udp + 1, TAG_SIZE);
	leg = bpf_map_lookup_elem(&legs, &tag);
	if (!leg || leg->src_ip != ip->saddr || leg->src_port != udp->source)
		return TC_ACT_UNSPEC;
	peer = bpf_map_lookup_elem(&legs, &leg->peer);
	if (!peer || peer->dest_port == 0)
		return TC_ACT_UNSPEC;
	relay_ip = ip->daddr;

	/* Where the packet goes, decided before any state changes so that a
	 * packet passed on is counted once, by the userspace relay: to one of
	 * the host's addresses, the rewritten packet simply goes on up the
	 * stack (on loopback it keeps the local route it came with); to another
	 * host, out of the device the packet came in on, with the neighbour's
	 * MAC address (bpf_redirect_neigh routes and resolves it). */
	loopback = (peer->dest_ip & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000);
	local = loopback || bpf_map_lookup_elem(&locals, &peer->dest_ip) != NULL;
	/* Between loopback and another device (a local client's peer elsewhere,
	 * or a 127/8 peer of a packet from outside): the userspace relay. */
	if (ifindex == LOOPBACK_IFINDEX ? !local : loopback)
		return TC_ACT_UNSPEC;
	dport = peer->dest_port;
	dest_ip = peer->dest_ip;

	count(ST_RX);
	payload = size - TAG_SIZE;
	now = bpf_ktime_get_ns();
	bpf_spin_lock(&leg->lock);
	leg->seen_ns = now;
	leg->packets += 1;
	leg->bytes += size;
	leg->credit += size * CREDIT_FACTOR;
	if (leg->credit > leg->cap)
		leg->credit = leg->cap;
	bpf_spin_unlock(&leg->lock);
	bpf_spin_lock(&peer->lock);
	if (peer->credit < payload) {
		bpf_spin_unlock(&peer->lock);
		count(ST_ERRNODEST);
		return TC_ACT_SHOT;
	}
	peer->credit -= payload;
	bpf_spin_unlock(&peer->lock);

	/* Drop the first 8 bytes after the IP header (the old UDP header); the
	 * tag's place becomes the new UDP header. */
	if (bpf_skb_adjust_room(skb, -TAG_SIZE, BPF_ADJ_ROOM_NET, 0)) {
		count(ST_TXERROR);
		return TC_ACT_SHOT;
	}
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end) {
		count(ST_TXERROR);
		return TC_ACT_SHOT;
	}
	udp->source = cfg_port;
	udp->dest = dport;
	udp->len = bpf_htons(payload + sizeof(*udp));
	udp->check = 0; /* IPv4 allows none; SRTP authenticates the payload */
	ip->saddr = relay_ip;
	ip->daddr = dest_ip;
	ip->tot_len = bpf_htons(payload + sizeof(*udp) + sizeof(*ip));
	ip->ttl = 64;
	ip->check = 0;
	ip->check = ip_checksum(ip);
	count(ST_TXB);
	if (local)
		return TC_ACT_OK; /* on up the stack, now addressed to the peer */
	return bpf_redirect_neigh(ifindex, NULL, 0, 0);
}

char LICENSE[] SEC("license") = "GPL";
