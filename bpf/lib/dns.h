/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * DNS seen by containers (issue 6, issue 9): parsing and the DNS maps.
 * flow.bpf.c's cgroup_skb programs call dns_query()/dns_answer() for the
 * sockets in scope they already found (one program per hook, one owner
 * lookup per packet); dns.bpf.c notes where unconnected UDP sockets send.
 *
 * Queries: the cgroup_skb egress program parses every DNS query a socket in
 * scope sends (UDP or TCP to port 53, as the socket sees the server: NAT
 * such as Docker's embedded resolver rewrites the packet, not the socket):
 *  - one dns_event goes to user space when the query is sent, so a query
 *    that never gets an answer (or whose socket closed first) is recorded
 *    by its name, up to the 253-byte DNS limit;
 *  - the query is remembered in `dns_pending` {socket, id, type} ->
 *    {server address/port, protocol, question hash, time};
 *  - the socket is marked SOCK_F_DNS_ASKED: from now on its received
 *    datagrams may be answers.
 * A packet the kernel segments after this hook (UDP GSO, TSO) would carry
 * several messages of which only the first is parsed: it is dropped and
 * recorded (segmented_query).
 *
 * Answers: the cgroup_skb ingress program parses every answer from port 53
 * to a socket in scope, before it is queued to the socket. The answer
 * counts only when it answers a query of this socket (id, type, question,
 * server address/port and protocol) and was not sent by a socket in scope
 * (a container answering itself). Then:
 *  - every A/AAAA address is recorded in `dns_cache` under the receiving
 *    scope cgroup with the name (right-aligned) and its suffix hashes: a
 *    connect issued right after the application reads the answer already
 *    gets the domain's verdict (no race), and one container's lookups never
 *    open doors for another (the key holds the scope cgroup);
 *  - one dns_event goes to user space: the DNS record (qname, qtype,
 *    rcode, answers, TTLs) and the names behind `dst_host`.
 * An answer that does not count changes nothing, is counted by reason
 * (`egress_drops[DNS_REJECTED_FIRST + reason]`) and recorded, at most once
 * per socket per DNS_REJECTED_RECORD_NS (the rest: DNS_ANSWERS_UNRECORDED,
 * no record, nothing charged to the container's budget). Datagrams to a
 * socket that never sent a query are not parsed: anyone who can reach a
 * socket can send it datagrams from port 53.
 *
 * The parsing loops run under bpf_loop(): the verifier checks each body
 * once instead of every iteration. Their state lives in a per-CPU scratch
 * map (a DNS message is too big for the BPF stack), so callbacks carry no
 * pointers.
 */
#ifndef CLAWKER_LIB_DNS_H
#define CLAWKER_LIB_DNS_H

#include "maps.h"
#include "events.h"
#include "addr.h"
#include "scope.h"
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/tcp.h>


#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define DNS_PORT 53
#define DNS_TYPE_A 1
#define DNS_TYPE_AAAA 28
#define PKT_MASK (DNS_MAX_PACKET - 1)
#define NAME_MASK (DNS_NAME_LEN - 1)

struct scratch {
	__u8 pkt[DNS_MAX_PACKET];
	struct dns_event ev;
	struct dns_value value;
	__u32 len;   /* bytes of pkt in use */
	__u32 pos;   /* parse position */
	__u32 left;  /* bytes left in the current label */
	__u32 state; /* 0 parsing, 1 done, 2 failed */
	__u32 dotted; /* a label holds a '.': the name cannot be matched */
	__u32 file;  /* the answer counts: file its addresses */
	__u16 ancount;
	__u64 hash;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} dns_scratch SEC(".maps");

/* Queries waiting for their answer (see egress.h). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EGRESS_MAX_DNS_PENDING);
	__type(key, struct dns_pending_key);
	__type(value, struct dns_pending_value);
} dns_pending SEC(".maps");

/*
 * The server an unconnected UDP socket last sent to, as the application
 * addressed it (cgroup sendmsg sees it before NAT; the packet does not).
 */
struct dns_dst {
	__u8 addr[EGRESS_ADDR_LEN];
	__u8 family;
	__u8 _pad;
	__u16 port; /* host order; 0: the last send was not to port 53 */
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct dns_dst);
} dns_dsts SEC(".maps");

/*
 * Only a socket that sent a DNS query (SOCK_F_DNS_ASKED, set by dns_query)
 * has its received datagrams parsed as answers. Anyone who can reach a
 * socket can send it datagrams from port 53; those to a socket that never
 * asked are plain datagrams, and a socket that asked records at most one
 * rejected answer per DNS_REJECTED_RECORD_NS (this storage, made at its
 * first rejected answer).
 */
struct dns_sock {
	__u64 rejected_ns; /* its last rejected answer's record */
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct dns_sock);
} dns_socks SEC(".maps");

static __always_inline struct scratch *scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&dns_scratch, &zero);
}

/*
 * A byte of the message at a computed offset. The mask keeps the verifier
 * sure of the bound; barrier_var() stops clang from proving the mask
 * redundant (from an earlier range check) and dropping it.
 */
static __always_inline __u8 byte_at(const struct scratch *s, __u32 pos)
{
	barrier_var(pos);
	return s->pkt[pos & PKT_MASK];
}

static __always_inline __u16 be16_at(const struct scratch *s, __u32 pos)
{
	return ((__u16)byte_at(s, pos) << 8) | byte_at(s, pos + 1);
}

/* One byte of the question name: lowercase, dotted, into ev.qname. */
static __attribute__((unused)) long qname_step(__u32 i, void *unused)
{
	struct scratch *s = scratch();
	__u32 out;
	__u8 c;

	if (!s)
		return 1;
	if (s->pos >= s->len || s->pos >= DNS_MAX_PACKET)
		goto fail;
	c = byte_at(s, s->pos);
	s->pos++;
	out = s->ev.name_len;
	if (s->left == 0) {
		if (c == 0) {
			s->state = out ? 1 : 2; /* the root name is no name */
			return 1;
		}
		if (c & 0xC0)
			goto fail; /* compression in a question: not ours to guess */
		if (out) {
			if (out >= DNS_NAME_LEN - 1)
				goto fail;
			s->ev.qname[out & NAME_MASK] = '.';
			s->ev.name_len = out + 1;
		}
		s->left = c;
		return 0;
	}
	if (out >= DNS_NAME_LEN - 1)
		goto fail;
	if (c >= 'A' && c <= 'Z')
		c += 'a' - 'A';
	if (c == '.')
		s->dotted = 1;
	s->ev.qname[out & NAME_MASK] = c;
	s->ev.name_len = out + 1;
	s->left--;
	return 0;
fail:
	s->state = 2;
	return 1;
}

/*
 * Suffix hashes (see DNS_HASH_PRIME), walking the name from its end; the
 * value at each label start is the hash of that suffix. The name is copied
 * right-aligned into value.name on the way.
 */
static __attribute__((unused)) long hash_step(__u32 k, void *unused)
{
	struct scratch *s = scratch();
	__u32 len, i, n;
	__u8 c;

	if (!s)
		return 1;
	len = s->ev.name_len;
	if (k >= len || len > DNS_NAME_LEN)
		return 1;
	i = len - 1 - k;
	c = s->ev.qname[i & NAME_MASK];
	s->value.name[(DNS_NAME_LEN - 1 - k) & NAME_MASK] = c;
	s->hash = (__u64)c + DNS_HASH_PRIME * s->hash;
	/* A proper suffix starts here: slots 1.., shortest first. */
	if (i > 0 && s->ev.qname[(i - 1) & NAME_MASK] == '.') {
		n = s->value.n_suffix;
		if (n < DNS_MAX_SUFFIXES) {
			s->value.suffix[n & (DNS_MAX_SUFFIXES - 1)] = s->hash;
			s->value.suffix_len[n & (DNS_MAX_SUFFIXES - 1)] = k + 1;
			s->value.n_suffix = n + 1;
		}
	}
	return 0;
}

/* Parse the question at s->pos: name, hashes, qtype. True if it parsed. */
static __always_inline bool parse_question(struct scratch *s)
{
	s->left = 0;
	s->state = 0;
	s->dotted = 0;
	s->ev.name_len = 0;
	bpf_loop(DNS_NAME_LEN + 1, qname_step, NULL, 0);
	if (s->state != 1) {
		s->ev.name_len = 0;
		return false;
	}
	s->ev.qtype = be16_at(s, s->pos);
	s->pos += 4; /* qtype, qclass */
	s->hash = 0;
	s->value.n_suffix = 1; /* slot 0: the whole name, set below */
	s->value.name_len = s->ev.name_len;
	bpf_loop(DNS_NAME_LEN, hash_step, NULL, 0);
	s->value.suffix[0] = s->hash;
	s->value.suffix_len[0] = s->ev.name_len;
	if (s->dotted)
		s->value.n_suffix = 0; /* labels would not split where dots do */
	return true;
}

/* Skip an answer's owner name (a pointer, or labels ending in one or 0). */
static __always_inline __u32 skip_name(const struct scratch *s, __u32 pos)
{
	for (int i = 0; i < 8; i++) {
		__u8 c;

		if (pos >= s->len || pos >= DNS_MAX_PACKET)
			return 0;
		c = byte_at(s, pos);
		if (c == 0)
			return pos + 1;
		if ((c & 0xC0) == 0xC0)
			return pos + 2;
		pos += c + 1;
	}
	return 0;
}

static __always_inline void remember(struct scratch *s, struct dns_answer *a)
{
	__u64 scope_id = s->ev.scope_cgroup_id;
	struct scope_usage *u = usage_of(scope_id);
	struct scope_released *r = bpf_map_lookup_elem(&scope_released, &scope_id);
	struct egress_config *cfg = config();
	struct dns_key k = {};
	__u32 ttl = a->ttl;
	long err;

	if (ttl < DNS_TTL_FLOOR_S)
		ttl = DNS_TTL_FLOOR_S;
	if (ttl > DNS_TTL_CEILING_S)
		ttl = DNS_TTL_CEILING_S;
	k.scope_cgroup_id = scope_id;
	k.family = a->family;
	__builtin_memcpy(k.addr, a->addr, sizeof(k.addr));
	s->value.expires_ns = bpf_ktime_get_boot_ns() + (__u64)ttl * NSEC_PER_SEC;
	/* A refreshed answer replaces its entry; a new one needs room in the
	 * container's share of the cache. */
	if (bpf_map_update_elem(&dns_cache, &k, &s->value, BPF_EXIST) == 0)
		return;
	if (u && cfg &&
	    !within_quota(u->dns_entries, r ? r->dns_entries : 0, cfg->max_dns_per_scope)) {
		count_full(u, MAP_FULL_DNS_CACHE, SCOPE_FULL_DNS);
		return;
	}
	err = bpf_map_update_elem(&dns_cache, &k, &s->value, BPF_NOEXIST);
	if (err == 0) {
		if (u)
			__sync_fetch_and_add(&u->dns_entries, 1);
	} else if (err == -E2BIG) {
		count_full(u, MAP_FULL_DNS_CACHE, SCOPE_FULL_DNS);
	}
}

/* One answer record: A and AAAA addresses are reported (and remembered
 * when the answer counts). */
static __attribute__((unused)) long answer_step(__u32 i, void *unused)
{
	struct scratch *s = scratch();
	struct dns_answer *a;
	__u16 type, rdlen;
	__u32 pos, at, n;

	if (!s || i >= s->ancount)
		return 1;
	n = s->ev.answer_count;
	if (n >= DNS_MAX_ANSWERS)
		return 1;
	pos = skip_name(s, s->pos);
	if (!pos || pos + 10 > s->len)
		return 1;
	type = be16_at(s, pos);
	rdlen = be16_at(s, pos + 8);
	at = pos + 10;
	s->pos = at + rdlen;
	if (!((type == DNS_TYPE_A && rdlen == 4) || (type == DNS_TYPE_AAAA && rdlen == 16)))
		return 0; /* CNAME and friends: skipped */
	if (at + rdlen > s->len)
		return 1;
	a = &s->ev.answers[n & (DNS_MAX_ANSWERS - 1)];
	a->family = type == DNS_TYPE_A ? AF_INET : AF_INET6;
	a->ttl = ((__u32)be16_at(s, pos + 4) << 16) | be16_at(s, pos + 6);
	for (int j = 0; j < EGRESS_ADDR_LEN; j++)
		a->addr[j] = j < rdlen ? byte_at(s, at + j) : 0;
	if (s->file && s->value.n_suffix)
		remember(s, a);
	s->ev.answer_count = n + 1;
	return 0;
}

/*
 * DNS over TCP: a segment that starts with the 2-byte length of a whole
 * message (queries and answers fit one segment; a message split across
 * segments is not parsed, and an answer's record then has no name).
 */
static __always_inline int locate_tcp(struct __sk_buff *skb, struct scratch *s, __u32 l4_off,
				      __u32 l4_len, bool egress, __u32 *payload)
{
	struct tcphdr tcp;
	__u32 hdr, len;
	__u8 prefix[2];

	if (bpf_skb_load_bytes(skb, l4_off, &tcp, sizeof(tcp)))
		return -1;
	if (!egress && tcp.source != bpf_htons(DNS_PORT))
		return -1;
	hdr = tcp.doff * 4;
	if (l4_len < hdr + 2 + 12 || bpf_skb_load_bytes(skb, l4_off + hdr, prefix, 2))
		return -1;
	len = ((__u32)prefix[0] << 8) | prefix[1];
	if (len > l4_len - hdr - 2)
		return -1; /* not a whole message in this segment */
	if (len > DNS_MAX_PACKET)
		len = DNS_MAX_PACKET;
	s->len = len;
	s->ev.protocol = IPPROTO_TCP;
	s->ev.local_port = bpf_ntohs(egress ? tcp.source : tcp.dest);
	if (!egress)
		s->ev.resolver_port = bpf_ntohs(tcp.source);
	*payload = l4_off + hdr + 2;
	return 0;
}

static __always_inline int locate_udp(struct __sk_buff *skb, struct scratch *s, __u32 l4_off,
				      bool egress, __u32 *payload)
{
	struct udphdr udp;
	__u32 len;

	if (bpf_skb_load_bytes(skb, l4_off, &udp, sizeof(udp)))
		return -1;
	if (!egress && udp.source != bpf_htons(DNS_PORT))
		return -1;
	len = bpf_ntohs(udp.len);
	len = len > sizeof(udp) ? len - sizeof(udp) : 0;
	if (len > DNS_MAX_PACKET)
		len = DNS_MAX_PACKET;
	s->len = len;
	s->ev.protocol = IPPROTO_UDP;
	s->ev.local_port = bpf_ntohs(egress ? udp.source : udp.dest);
	if (!egress)
		s->ev.resolver_port = bpf_ntohs(udp.source);
	*payload = l4_off + sizeof(udp);
	return 0;
}

/*
 * Our port and the DNS message offset, or -1; on ingress also the server
 * (the packet's source: the socket's view, NAT undone by then). Also fills `tuple` with the
 * 4-tuple as a datagram *to* the remote end would carry it.
 */
static __always_inline int locate(struct __sk_buff *skb, struct scratch *s, bool egress,
				  __u32 *payload, struct bpf_sock_tuple *tuple)
{
	__u32 l4_off, l4_len;
	__u8 proto;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			return -1;
		l4_off = ip.ihl * 4;
		l4_len = bpf_ntohs(ip.tot_len) > l4_off ? bpf_ntohs(ip.tot_len) - l4_off : 0;
		proto = ip.protocol;
		if (!egress) {
			s->ev.family = AF_INET;
			__builtin_memcpy(s->ev.resolver_ip, &ip.saddr, 4);
		}
		tuple->ipv4.saddr = egress ? ip.saddr : ip.daddr;
		tuple->ipv4.daddr = egress ? ip.daddr : ip.saddr;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return -1;
		l4_off = sizeof(ip6);
		l4_len = bpf_ntohs(ip6.payload_len);
		proto = ip6.nexthdr;
		if (!egress) {
			s->ev.family = AF_INET6;
			__builtin_memcpy(s->ev.resolver_ip, &ip6.saddr, 16);
		}
		__builtin_memcpy(tuple->ipv6.saddr, egress ? &ip6.saddr : &ip6.daddr, 16);
		__builtin_memcpy(tuple->ipv6.daddr, egress ? &ip6.daddr : &ip6.saddr, 16);
	} else {
		return -1;
	}
	if (proto == IPPROTO_UDP)
		return locate_udp(skb, s, l4_off, egress, payload);
	if (proto == IPPROTO_TCP)
		return locate_tcp(skb, s, l4_off, l4_len, egress, payload);
	return -1;
}

/* The header and the owner of a DNS event in scratch. */
static __always_inline void fill_owner(struct __sk_buff *skb, struct scratch *s,
				       struct sock_owner *owner, __u8 message, enum egress_hook hook)
{
	fill_header(&s->ev.hdr, EVENT_KIND_DNS, sizeof(s->ev), hook);
	s->ev.cgroup_id = owner->cgroup_id;
	s->ev.scope_cgroup_id = owner->scope_cgroup_id;
	s->ev.sock_cookie = bpf_get_socket_cookie(skb);
	s->ev.pid = owner->tgid;
	__builtin_memcpy(s->ev.comm, owner->comm, sizeof(s->ev.comm));
	s->ev.process = owner->process;
	s->ev.message = message;
}

/* The header, the owner and the message of a DNS event in scratch. */
static __always_inline bool load_message(struct __sk_buff *skb, struct scratch *s,
					 struct sock_owner *owner, __u32 payload, __u8 message,
					 enum egress_hook hook)
{
	__u32 len = s->len;

	if (len < 12 || len > DNS_MAX_PACKET || bpf_skb_load_bytes(skb, payload, s->pkt, len))
		return false;
	fill_owner(skb, s, owner, message, hook);
	s->ev.txid = be16_at(s, 0);
	s->pos = 12;
	return true;
}

static __always_inline void pending_key(const struct scratch *s, struct dns_pending_key *k)
{
	k->sock_cookie = s->ev.sock_cookie;
	k->txid = s->ev.txid;
	k->qtype = s->ev.qtype;
}

static __always_inline bool same_addr(const __u8 *x, const __u8 *y)
{
	__u64 a[2], b[2];

	__builtin_memcpy(a, x, sizeof(a));
	__builtin_memcpy(b, y, sizeof(b));
	return a[0] == b[0] && a[1] == b[1];
}

/* Is `srv` the server of this message (the event's resolver)? */
static __always_inline bool is_server(const struct dns_server *srv, const struct scratch *s)
{
	return srv->family == s->ev.family && srv->port == s->ev.resolver_port &&
	       same_addr(srv->ip, s->ev.resolver_ip);
}

/* Remember a query until its answer, within the container's share. */
static __always_inline void expect_answer(struct scratch *s)
{
	__u64 scope_id = s->ev.scope_cgroup_id;
	struct scope_usage *u = usage_of(scope_id);
	struct scope_released *r = bpf_map_lookup_elem(&scope_released, &scope_id);
	struct egress_config *cfg = config();
	struct dns_pending_key k = {};
	struct dns_pending_value v = {}, *p;
	long err;

	pending_key(s, &k);
	p = bpf_map_lookup_elem(&dns_pending, &k);
	if (p && p->qhash == s->value.suffix[0] && p->name_len == s->ev.name_len &&
	    p->protocol == s->ev.protocol) {
		/* The same query again: one more server it may come from. */
		__u8 n = p->n_servers;
		bool known = false;

		for (int i = 0; i < DNS_PENDING_SERVERS; i++)
			if (i < n && is_server(&p->servers[i], s))
				known = true;
		if (!known && n < DNS_PENDING_SERVERS) {
			struct dns_server *srv = &p->servers[n < DNS_PENDING_SERVERS ? n : 0];

			__builtin_memcpy(srv->ip, s->ev.resolver_ip, sizeof(srv->ip));
			srv->port = s->ev.resolver_port;
			srv->family = s->ev.family;
			p->n_servers = n + 1;
		}
		p->sent_ns = bpf_ktime_get_boot_ns();
		return;
	}
	v.sent_ns = bpf_ktime_get_boot_ns();
	v.scope_cgroup_id = scope_id;
	v.qhash = s->value.suffix[0];
	v.name_len = s->ev.name_len;
	v.protocol = s->ev.protocol;
	v.n_servers = 1;
	v.servers[0].family = s->ev.family;
	v.servers[0].port = s->ev.resolver_port;
	__builtin_memcpy(v.servers[0].ip, s->ev.resolver_ip, sizeof(v.servers[0].ip));
	/* Another query under the same id and type replaces the old one. */
	if (p) {
		bpf_map_update_elem(&dns_pending, &k, &v, BPF_EXIST);
		return;
	}
	if (u && cfg &&
	    !within_quota(u->dns_pending, r ? r->dns_pending : 0, cfg->max_dns_pending_per_scope)) {
		count_full(u, MAP_FULL_DNS_PENDING, SCOPE_FULL_DNS);
		return;
	}
	err = bpf_map_update_elem(&dns_pending, &k, &v, BPF_NOEXIST);
	if (err == 0) {
		if (u)
			__sync_fetch_and_add(&u->dns_pending, 1);
	} else if (err == -E2BIG) {
		count_full(u, MAP_FULL_DNS_PENDING, SCOPE_FULL_DNS);
	}
}

/*
 * The server as the socket addressed it: a connected socket's peer, else
 * the destination of its last sendmsg (dns_dsts). Port 0: not DNS.
 */
static __always_inline __u16 server_of(struct bpf_sock *sk, struct scratch *s)
{
	struct dns_dst *d;

	if (sk->dst_port) {
		__u32 d6[4] = { sk->dst_ip6[0], sk->dst_ip6[1], sk->dst_ip6[2], sk->dst_ip6[3] };

		if (sk->dst_port != bpf_htons(DNS_PORT))
			return 0;
		set_addr(s->ev.resolver_ip, &s->ev.family, sk->family, d6, sk->dst_ip4);
		return DNS_PORT;
	}
	if (sk->protocol != IPPROTO_UDP)
		return 0;
	d = bpf_sk_storage_get(&dns_dsts, sk, 0, 0);
	if (!d || d->port != DNS_PORT)
		return 0;
	__builtin_memcpy(s->ev.resolver_ip, d->addr, sizeof(d->addr));
	s->ev.family = d->family;
	return DNS_PORT;
}

/*
 * One send to a DNS server that the kernel splits into several packets
 * after this hook (UDP_SEGMENT, TSO: skb->gso_segs > 1) carries several
 * messages, and only the first would be parsed: the others would reach the
 * server unrecorded. No DNS client needs it, so the packet is dropped
 * (the send fails with EPERM) and recorded with the first message's name,
 * if it parses, as a query rejected DNS_REJECT_SEGMENTED (counted).
 */
static __always_inline void segmented_query(struct __sk_buff *skb, struct bpf_sock *sk,
					    struct scratch *s, struct sock_owner *owner,
					    bool loaded)
{
	if (!loaded) {
		fill_owner(skb, s, owner, DNS_MSG_QUERY, HOOK_DNS);
		s->ev.protocol = sk->protocol;
		s->ev.local_port = sk->src_port;
	} else if (!parse_question(s)) {
		s->ev.name_len = 0;
	}
	s->ev.rejected = DNS_REJECT_SEGMENTED;
	count_drop(DNS_REJECTED_FIRST + DNS_REJECT_SEGMENTED);
	output_event(&s->ev, sizeof(s->ev), HOOK_DNS, s->ev.scope_cgroup_id);
}

/*
 * A packet a socket in scope sends (flow.bpf.c's cgroup_skb egress program
 * found its owner): a DNS query is recorded and remembered. True: drop the
 * packet (segmented_query).
 */
static __always_inline bool dns_query(struct __sk_buff *skb, struct bpf_sock *sk,
				      struct sock_owner *owner)
{
	struct bpf_sock_tuple tuple = {};
	struct scratch *s;
	__u32 payload;
	bool segmented, loaded;

	/* Only sockets talking to port 53 (the common exit for bulk TCP). */
	if (sk->dst_port && sk->dst_port != bpf_htons(DNS_PORT))
		return false;
	s = scratch();
	if (!s)
		return false;
	__builtin_memset(&s->ev, 0, sizeof(s->ev));
	/* The packet's destination may be NATed: the socket's view counts. */
	if (!server_of(sk, s))
		return false;
	s->ev.resolver_port = DNS_PORT;
	segmented = skb->gso_segs > 1;
	loaded = !locate(skb, s, true, &payload, &tuple) &&
		 load_message(skb, s, owner, payload, DNS_MSG_QUERY, HOOK_DNS);
	if (segmented) {
		segmented_query(skb, sk, s, owner, loaded);
		return true;
	}
	if (!loaded)
		return false;
	if (s->pkt[2] & 0x80)
		return false; /* an answer: a server in scope, not a query */
	/* From now on its received datagrams may be answers. */
	if (!(owner->flags & SOCK_F_DNS_ASKED))
		__sync_fetch_and_or(&owner->flags, SOCK_F_DNS_ASKED);
	if (parse_question(s))
		expect_answer(s);
	output_event(&s->ev, sizeof(s->ev), HOOK_DNS, s->ev.scope_cgroup_id);
	return false;
}

/*
 * Was this answer sent by a socket in scope? The socket that owns the
 * server's address and port here (the one a datagram or segment to the
 * server would reach). On the same host a container can bind the server's
 * address (Docker's embedded resolver 127.0.0.11:53 is only a NAT rule; the
 * port is free in the container) or run its own resolver, and answer
 * itself: such answers are the container's own word and do not count.
 */
static __always_inline bool from_scope(struct __sk_buff *skb, struct scratch *s,
				       struct bpf_sock_tuple *tuple)
{
	__u32 size = s->ev.family == AF_INET ? sizeof(tuple->ipv4) : sizeof(tuple->ipv6);
	struct bpf_sock *peer;
	bool ours;

	if (s->ev.family == AF_INET) {
		tuple->ipv4.sport = bpf_htons(s->ev.local_port);
		tuple->ipv4.dport = bpf_htons(s->ev.resolver_port);
	} else {
		tuple->ipv6.sport = bpf_htons(s->ev.local_port);
		tuple->ipv6.dport = bpf_htons(s->ev.resolver_port);
	}
	if (s->ev.protocol == IPPROTO_UDP)
		peer = bpf_sk_lookup_udp(skb, tuple, size, BPF_F_CURRENT_NETNS, 0);
	else
		peer = bpf_skc_lookup_tcp(skb, tuple, size, BPF_F_CURRENT_NETNS, 0);
	if (!peer)
		return false;
	{
		__u64 peer_scope;

		ours = sk_scope(peer, &peer_scope);
	}
	bpf_sk_release(peer);
	return ours;
}

/* Does this answer answer a query this socket sent? DNS_REJECT_*. */
static __always_inline __u8 check_answer(struct __sk_buff *skb, struct scratch *s, bool parsed,
					 struct bpf_sock_tuple *tuple)
{
	struct dns_pending_key k = {};
	struct dns_pending_value *p;
	struct scope_usage *u;
	bool asked = false;

	if (!parsed)
		return DNS_REJECT_MISMATCH; /* no question to match */
	pending_key(s, &k);
	p = bpf_map_lookup_elem(&dns_pending, &k);
	if (!p || p->sent_ns + DNS_PENDING_TIMEOUT_S * NSEC_PER_SEC < bpf_ktime_get_boot_ns())
		return DNS_REJECT_UNSOLICITED;
	if (p->protocol != s->ev.protocol || p->qhash != s->value.suffix[0] ||
	    p->name_len != s->ev.name_len)
		return DNS_REJECT_MISMATCH;
	for (int i = 0; i < DNS_PENDING_SERVERS; i++)
		if (i < p->n_servers && is_server(&p->servers[i], s))
			asked = true;
	if (!asked)
		return DNS_REJECT_MISMATCH; /* not from a server the query went to */
	if (from_scope(skb, s, tuple))
		return DNS_REJECT_LOCAL_SENDER;
	/* Answered: the query is no longer pending. */
	u = bpf_map_lookup_elem(&scope_usage, &p->scope_cgroup_id);
	if (bpf_map_delete_elem(&dns_pending, &k) == 0 && u)
		__sync_fetch_and_add(&u->dns_pending, -1);
	return DNS_REJECT_NONE;
}

/*
 * A packet a socket in scope receives (flow.bpf.c's cgroup_skb ingress
 * program found its owner): a DNS answer is checked, filed and recorded.
 */
static __always_inline void dns_answer(struct __sk_buff *skb, struct bpf_sock *sk,
				       struct sock_owner *owner)
{
	struct bpf_sock_tuple tuple = {};
	struct dns_sock *rej;
	struct scratch *s;
	__u32 payload;
	bool parsed;
	__u64 now;

	/* A TCP connection to anything but port 53 carries no DNS: the cheap
	 * common exit for every packet of a bulk transfer. */
	if (sk->protocol == IPPROTO_TCP && sk->dst_port != bpf_htons(DNS_PORT))
		return;
	/* A socket that never sent a query gets no answers: its datagrams
	 * from port 53 are anyone's (another container's) to send. */
	if (!(owner->flags & SOCK_F_DNS_ASKED))
		return;
	s = scratch();
	if (!s)
		return;
	__builtin_memset(&s->ev, 0, sizeof(s->ev));
	if (locate(skb, s, false, &payload, &tuple))
		return;
	if (!load_message(skb, s, owner, payload, DNS_MSG_ANSWER, HOOK_DNS))
		return;
	if (!(s->pkt[2] & 0x80))
		return; /* a query, not an answer */
	s->ev.rcode = s->pkt[3] & 0x0f;
	s->ancount = be16_at(s, 6);
	parsed = parse_question(s);
	s->ev.rejected = check_answer(skb, s, parsed, &tuple);
	s->file = s->ev.rejected == DNS_REJECT_NONE;
	if (!s->file) {
		count_drop(DNS_REJECTED_FIRST + s->ev.rejected);
		/* At most one record per socket per interval (as for a SYN to
		 * a listener): forged answers must not spend the container's
		 * record budget. The rest are counted, not charged. */
		rej = bpf_sk_storage_get(&dns_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		now = bpf_ktime_get_boot_ns();
		if (!rej || now - rej->rejected_ns < DNS_REJECTED_RECORD_NS) {
			count_drop(DNS_ANSWERS_UNRECORDED);
			return;
		}
		rej->rejected_ns = now;
	}
	if (parsed)
		bpf_loop(DNS_MAX_ANSWERS * 2, answer_step, NULL, 0);
	output_event(&s->ev, sizeof(s->ev), HOOK_DNS, s->ev.scope_cgroup_id);
}

#endif /* CLAWKER_LIB_DNS_H */
