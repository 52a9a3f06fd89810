// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * DNS seen by containers (issue 6, issue 9): lib/dns.h parses queries and
 * answers for flow.bpf.c's cgroup_skb programs; this object notes where
 * unconnected UDP sockets send (cgroup sendmsg, before any NAT), which the
 * query parser needs to know the server.
 */
#include "common.bpf.h"
#include "lib/dns.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/*
 * Where an unconnected UDP socket sends: sendmsg sees the address the
 * application gave, before any NAT. Only sends to port 53 make an entry;
 * a later send elsewhere clears it.
 */
static __always_inline int note_dst(struct bpf_sock_addr *ctx, bool v6)
{
	struct dns_dst *d;

	if (ctx->protocol != IPPROTO_UDP || !ctx->sk)
		return SK_PASS;
	if (ctx->user_port != bpf_htons(DNS_PORT)) {
		d = bpf_sk_storage_get(&dns_dsts, ctx->sk, 0, 0);
		if (d)
			d->port = 0;
		return SK_PASS;
	}
	d = bpf_sk_storage_get(&dns_dsts, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!d)
		return SK_PASS;
	{
		__u32 d6[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2],
				ctx->user_ip6[3] };

		set_addr(d->addr, &d->family, v6 ? AF_INET6 : AF_INET, d6, ctx->user_ip4);
	}
	normalize_dst(d->addr, d->family);
	d->port = DNS_PORT;
	return SK_PASS;
}

SEC("cgroup/sendmsg4")
int dns_sendmsg4(struct bpf_sock_addr *ctx)
{
	return note_dst(ctx, false);
}

SEC("cgroup/sendmsg6")
int dns_sendmsg6(struct bpf_sock_addr *ctx)
{
	return note_dst(ctx, true);
}
