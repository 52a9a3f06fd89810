// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * The floor under issue 12's kernel cost per connection: what the
 * primitives a connection's programs are built from cost on this kernel,
 * each measured alone (scripts/kernel-floor attaches one program at a time
 * to a fresh cgroup and runs socket+connect+close to a closed port there).
 * Not part of the daemon.
 *
 *  - the *_empty programs and s_state: an attach point with an empty
 *    program (what a run costs before it does anything, bpf_stats included);
 *  - p_storage_N, c_storage_8: a per-socket state in socket storage (one
 *    map, 8 or 112 bytes; two maps: what a second map adds), created at
 *    connect or at socket creation; p_storage_lookup: finding it again;
 *  - p_hash_...: the same state in a hash keyed by the socket cookie instead
 *    (insert at connect + delete, as a close would): preallocated (large or
 *    small) or BPF_F_NO_PREALLOC;
 *  - p_lookup3: three hash lookups (the scope/bypass/policy lookups);
 *  - p_ring: one 240-byte ring record (a flow end's size), no wake-up.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct val { __u64 a[14]; };	/* 112 bytes: sock_owner's size */
struct small { __u64 a; };
struct rec { __u64 a[30]; };	/* 240 bytes: flow_end_event's size */

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct val);
} st_big SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct small);
} st_small SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct small);
} st_small2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, __u64);
	__type(value, struct val);
} h_pre SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, struct val);
} h_pre_small SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144);
	__type(key, __u64);
	__type(value, struct val);
} h_nopre SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
} h_lookup SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} ring SEC(".maps");

SEC("cgroup/sock_create")
int c_empty(struct bpf_sock *sk)
{
	return 1;
}

SEC("cgroup/connect4")
int p_empty(struct bpf_sock_addr *ctx)
{
	return 1;
}

SEC("cgroup_skb/egress")
int e_empty(struct __sk_buff *skb)
{
	return 1;
}

SEC("cgroup_skb/ingress")
int i_empty(struct __sk_buff *skb)
{
	return 1;
}

SEC("cgroup/sock_release")
int r_empty(struct bpf_sock *sk)
{
	return 1;
}

/* The callbacks the kernel makes whether asked or not (4 for this loop). */
SEC("sockops")
int s_empty(struct bpf_sock_ops *ctx)
{
	return 1;
}

/* ... and the state callback the close needs (5). */
SEC("sockops")
int s_state(struct bpf_sock_ops *ctx)
{
	if (ctx->op == BPF_SOCK_OPS_TCP_CONNECT_CB)
		bpf_sock_ops_cb_flags_set(ctx, ctx->bpf_sock_ops_cb_flags |
						       BPF_SOCK_OPS_STATE_CB_FLAG);
	return 1;
}

SEC("cgroup/connect4")
int p_cookie(struct bpf_sock_addr *ctx)
{
	return bpf_get_socket_cookie(ctx) != 1;
}

SEC("cgroup/connect4")
int p_lookup3(struct bpf_sock_addr *ctx)
{
	__u64 k1 = 1, k2 = 2, k3 = 3;
	long n = 0;

	n += bpf_map_lookup_elem(&h_lookup, &k1) != 0;
	n += bpf_map_lookup_elem(&h_lookup, &k2) != 0;
	n += bpf_map_lookup_elem(&h_lookup, &k3) != 0;
	return n < 10;
}

SEC("cgroup/connect4")
int p_storage_lookup(struct bpf_sock_addr *ctx)
{
	return bpf_sk_storage_get(&st_small, ctx->sk, 0, 0) ? 1 : 1;
}

SEC("cgroup/connect4")
int p_storage_8(struct bpf_sock_addr *ctx)
{
	struct small *v = bpf_sk_storage_get(&st_small, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (v)
		v->a = 1;
	return 1;
}

SEC("cgroup/connect4")
int p_storage_112(struct bpf_sock_addr *ctx)
{
	struct val *v = bpf_sk_storage_get(&st_big, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (v) {
		v->a[0] = 1;
		v->a[13] = 2;
	}
	return 1;
}

SEC("cgroup/connect4")
int p_storage_2maps(struct bpf_sock_addr *ctx)
{
	struct small *v = bpf_sk_storage_get(&st_small, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	struct small *w = bpf_sk_storage_get(&st_small2, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (v)
		v->a = 1;
	if (w)
		w->a = 1;
	return 1;
}

SEC("cgroup/sock_create")
int c_storage_8(struct bpf_sock *sk)
{
	struct small *v = bpf_sk_storage_get(&st_small, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (v)
		v->a = 1;
	return 1;
}

static __always_inline int insert_delete(void *map, struct bpf_sock_addr *ctx)
{
	struct val v = {};
	__u64 k = bpf_get_socket_cookie(ctx);

	v.a[0] = k;
	bpf_map_update_elem(map, &k, &v, BPF_NOEXIST);
	bpf_map_delete_elem(map, &k);
	return 1;
}

SEC("cgroup/connect4")
int p_hash_prealloc(struct bpf_sock_addr *ctx)
{
	return insert_delete(&h_pre, ctx);
}

SEC("cgroup/connect4")
int p_hash_prealloc_1k(struct bpf_sock_addr *ctx)
{
	return insert_delete(&h_pre_small, ctx);
}

SEC("cgroup/connect4")
int p_hash_noprealloc(struct bpf_sock_addr *ctx)
{
	return insert_delete(&h_nopre, ctx);
}

SEC("cgroup/connect4")
int p_ring(struct bpf_sock_addr *ctx)
{
	struct rec *e = bpf_ringbuf_reserve(&ring, sizeof(*e), 0);

	if (!e)
		return 1;
	__builtin_memset(e, 0, sizeof(*e));
	e->a[0] = bpf_ktime_get_boot_ns();
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 1;
}
