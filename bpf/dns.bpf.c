// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * DNS answers seen by containers (issue 6). A cgroup_skb ingress program on
 * UDP datagrams and TCP segments from port 53 to sockets in scope parses
 * the answer before it is queued to the socket, so:
 *  - every A/AAAA address is recorded in `dns_cache` under the receiving
 *    scope cgroup with the name's suffix hashes: a connect issued right
 *    after the application reads the answer already gets the domain's
 *    verdict (no race), and one container's lookups never open doors for
 *    another (the key holds the scope cgroup);
 *  - one dns_event goes to user space: the DNS record (qname, qtype,
 *    rcode, answers, TTLs) and the names behind `dst_host`.
 *
 * The parsing loops run under bpf_loop(): the verifier checks each body
 * once instead of every iteration. Their state lives in a per-CPU scratch
 * map (a DNS message is too big for the BPF stack), so callbacks carry no
 * pointers.
 */
#include "common.bpf.h"
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/tcp.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

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
	__u16 ancount;
	__u64 hash;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} dns_scratch SEC(".maps");

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
static long qname_step(__u32 i, void *unused)
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
			s->state = 1;
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
 * value at each label start is the hash of that suffix.
 */
static long hash_step(__u32 k, void *unused)
{
	struct scratch *s = scratch();
	__u32 len, i, n;

	if (!s)
		return 1;
	len = s->ev.name_len;
	if (k >= len || len > DNS_NAME_LEN)
		return 1;
	i = len - 1 - k;
	s->hash = (__u64)(__u8)s->ev.qname[i & NAME_MASK] + DNS_HASH_PRIME * s->hash;
	if (i == 0 || s->ev.qname[(i - 1) & NAME_MASK] == '.') {
		n = s->value.n_suffix;
		if (n < DNS_MAX_SUFFIXES) {
			s->value.suffix[n & (DNS_MAX_SUFFIXES - 1)] = s->hash;
			s->value.n_suffix = n + 1;
		}
	}
	return 0;
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
		count_loss(u, DROP_DNS_CACHE_FULL, SCOPE_LOSS_DNS_QUOTA);
		return;
	}
	err = bpf_map_update_elem(&dns_cache, &k, &s->value, BPF_NOEXIST);
	if (err == 0) {
		if (u)
			__sync_fetch_and_add(&u->dns_entries, 1);
	} else if (err == -E2BIG) {
		count_loss(u, DROP_DNS_CACHE_FULL, SCOPE_LOSS_DNS_QUOTA);
	}
}

/* One answer record: A and AAAA addresses are remembered and reported. */
static long answer_step(__u32 i, void *unused)
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
	remember(s, a);
	s->ev.answer_count = n + 1;
	return 0;
}

/*
 * DNS over TCP: a segment from port 53 that starts with the 2-byte length
 * of a whole message (answers fit one segment; a message split across
 * segments is not parsed, and the record then has no name).
 */
static __always_inline int locate_tcp(struct __sk_buff *skb, struct scratch *s, __u32 l4_off,
				      __u32 l4_len, __u32 *payload)
{
	struct tcphdr tcp;
	__u32 hdr, len;
	__u8 prefix[2];

	if (bpf_skb_load_bytes(skb, l4_off, &tcp, sizeof(tcp)) || tcp.source != bpf_htons(DNS_PORT))
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
	s->ev.local_port = bpf_ntohs(tcp.dest);
	*payload = l4_off + hdr + 2;
	return 0;
}

static __always_inline int locate_udp(struct __sk_buff *skb, struct scratch *s, __u32 l4_off,
				      __u32 *payload)
{
	struct udphdr udp;
	__u32 len;

	if (bpf_skb_load_bytes(skb, l4_off, &udp, sizeof(udp)) || udp.source != bpf_htons(DNS_PORT))
		return -1;
	len = bpf_ntohs(udp.len);
	len = len > sizeof(udp) ? len - sizeof(udp) : 0;
	if (len > DNS_MAX_PACKET)
		len = DNS_MAX_PACKET;
	s->len = len;
	s->ev.protocol = IPPROTO_UDP;
	s->ev.local_port = bpf_ntohs(udp.dest);
	*payload = l4_off + sizeof(udp);
	return 0;
}

/* The resolver's address and the DNS message offset, or -1. */
static __always_inline int locate(struct __sk_buff *skb, struct scratch *s, __u32 *payload)
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
		s->ev.family = AF_INET;
		__builtin_memcpy(s->ev.resolver_ip, &ip.saddr, 4);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return -1;
		l4_off = sizeof(ip6);
		l4_len = bpf_ntohs(ip6.payload_len);
		proto = ip6.nexthdr;
		s->ev.family = AF_INET6;
		__builtin_memcpy(s->ev.resolver_ip, &ip6.saddr, 16);
	} else {
		return -1;
	}
	if (proto == IPPROTO_UDP)
		return locate_udp(skb, s, l4_off, payload);
	if (proto == IPPROTO_TCP)
		return locate_tcp(skb, s, l4_off, l4_len, payload);
	return -1;
}

SEC("cgroup_skb/ingress")
int dns_ingress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	struct sock_owner *owner;
	struct scratch *s;
	__u32 payload, len;

	if (!sk)
		return SK_PASS;
	sk = bpf_sk_fullsock(sk);
	if (!sk || (sk->protocol != IPPROTO_UDP && sk->protocol != IPPROTO_TCP))
		return SK_PASS;
	/* A TCP connection to anything but port 53 carries no DNS: the cheap
	 * common exit for every packet of a bulk transfer. */
	if (sk->protocol == IPPROTO_TCP && sk->dst_port != bpf_htons(DNS_PORT))
		return SK_PASS;
	owner = bpf_sk_storage_get(&sock_owners, sk, 0, 0);
	if (!owner)
		return SK_PASS; /* not a socket in scope */
	s = scratch();
	if (!s)
		return SK_PASS;
	__builtin_memset(&s->ev, 0, sizeof(s->ev));
	if (locate(skb, s, &payload))
		return SK_PASS;
	len = s->len;
	if (len < 12 || len > DNS_MAX_PACKET || bpf_skb_load_bytes(skb, payload, s->pkt, len))
		return SK_PASS;
	if (!(s->pkt[2] & 0x80))
		return SK_PASS; /* a query, not an answer */

	fill_header(&s->ev.hdr, EVENT_KIND_DNS, sizeof(s->ev), HOOK_DNS);
	s->ev.cgroup_id = owner->cgroup_id;
	s->ev.scope_cgroup_id = owner->scope_cgroup_id;
	s->ev.sock_cookie = bpf_get_socket_cookie(skb);
	s->ev.pid = owner->tgid;
	__builtin_memcpy(s->ev.comm, owner->comm, sizeof(s->ev.comm));
	s->ev.rcode = s->pkt[3] & 0x0f;
	s->ev.resolver_port = DNS_PORT;
	s->ancount = be16_at(s, 6);
	s->pos = 12;
	s->left = 0;
	s->state = 0;
	bpf_loop(DNS_NAME_LEN + DNS_MAX_SUFFIXES + 1, qname_step, NULL, 0);
	if (s->state == 1) {
		s->ev.qtype = be16_at(s, s->pos);
		s->pos += 4; /* qtype, qclass */
		s->hash = 0;
		s->value.n_suffix = 0;
		bpf_loop(DNS_NAME_LEN, hash_step, NULL, 0);
		/* Collected from the end: put the whole name first. */
		if (s->value.n_suffix > 0) {
			__u32 last = (s->value.n_suffix - 1) & (DNS_MAX_SUFFIXES - 1);

			s->value.suffix[last] = s->value.suffix[0];
			s->value.suffix[0] = s->hash;
		}
		bpf_loop(DNS_MAX_ANSWERS * 2, answer_step, NULL, 0);
	} else {
		s->ev.name_len = 0;
	}
	output_event(&s->ev, sizeof(s->ev), HOOK_DNS, s->ev.scope_cgroup_id);
	return SK_PASS;
}
