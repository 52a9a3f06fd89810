/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * Putting records on the ring buffer, fairly (P14), and counting every loss:
 *  - globally per reason in the per-CPU `egress_drops` array (Prometheus);
 *  - per container in `scope_usage.lost[]` (the in-band `records_lost`
 *    records and the per-agent series).
 * Each container has its own record budget (a GCRA token bucket in
 * `scope_usage.tat_ns`), charged by size in record units (one unit per
 * EGRESS_RECORD_UNIT_BYTES of ring a record takes): a flooding container
 * spends only its own budget, and a flood of big records (exec, ~2 KiB)
 * takes no more of the ring than the same budget of flow records would.
 */
#ifndef CLAWKER_LIB_EVENTS_H
#define CLAWKER_LIB_EVENTS_H

#include "maps.h"

static __always_inline void count_drop(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&egress_drops, &slot);

	if (n)
		__sync_fetch_and_add(n, 1);
}

/* The container's fairness/loss entry, made on first use. */
static __always_inline struct scope_usage *usage_of(__u64 scope_id)
{
	struct scope_usage *u = bpf_map_lookup_elem(&scope_usage, &scope_id);

	if (!u) {
		struct scope_usage fresh = {};

		bpf_map_update_elem(&scope_usage, &scope_id, &fresh, BPF_NOEXIST);
		u = bpf_map_lookup_elem(&scope_usage, &scope_id);
	}
	return u;
}

/* A lost record, counted globally (`drop`, enum egress_drop) and for the
 * container (`loss`, enum scope_loss). */
static __always_inline void count_loss(struct scope_usage *u, __u32 drop, __u32 loss)
{
	count_drop(drop);
	if (u && loss < SCOPE_LOSS_MAX)
		__sync_fetch_and_add(&u->lost[loss], 1);
}

/* A full map (or the container's share of it): no record lost, detail
 * missing. Counted globally (`map_slot`, MAP_FULL_*) and for the container
 * (`full`, enum scope_full). */
static __always_inline void count_full(struct scope_usage *u, __u32 map_slot, __u32 full)
{
	count_drop(map_slot);
	if (u && full < SCOPE_FULL_MAX)
		__sync_fetch_and_add(&u->full[full], 1);
}

/* The record units a record of `size` bytes costs (at least one). */
static __always_inline __u64 record_units(__u32 size)
{
	return (size + EGRESS_RECORD_UNIT_BYTES - 1) / EGRESS_RECORD_UNIT_BYTES;
}

/*
 * May this container put a record of `size` bytes on the ring? GCRA: tat_ns
 * is when its budget would be back to full; a record may go while that is
 * at most `record_burst_ns` ahead of now, and pushes it on by one interval
 * per record unit. Racy across CPUs by design (a few records either way
 * under contention), never blocking.
 */
static __always_inline bool admit_at(struct scope_usage *u, __u32 size, __u64 now)
{
	struct egress_config *cfg = config();
	__u64 tat;

	if (!u || !cfg || !cfg->record_interval_ns)
		return true;
	tat = u->tat_ns;
	if (tat < now)
		tat = now;
	if (tat - now > cfg->record_burst_ns)
		return false;
	u->tat_ns = tat + cfg->record_interval_ns * record_units(size);
	return true;
}

/* admit_at(), reading the clock only when a budget applies. */
static __always_inline bool admit(struct scope_usage *u, __u32 size)
{
	struct egress_config *cfg = config();

	if (!u || !cfg || !cfg->record_interval_ns)
		return true;
	return admit_at(u, size, bpf_ktime_get_boot_ns());
}

/*
 * Wake the reader only when the ring's fill passes a mark (every eighth of
 * its size), not at every record: a wake-up is an IPI (irq_work), which on a
 * VM costs more than the rest of a connection's programs together. Below
 * the first mark the drain thread's periodic consume picks records up (at
 * most its poll interval, 20 ms, later). Above it the kernel's default
 * holds (wake only a reader that had caught up), so a reader that lags is
 * never stormed with wake-ups. Records reserved on two CPUs at once can
 * both miss a mark: the periodic consume bounds what that costs.
 */
static __always_inline __u64 wake_flags(__u64 avail_before, __u64 avail_after)
{
	__u64 mark = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE) / 8;

	if (mark == 0 || avail_after / mark != avail_before / mark)
		return BPF_RB_FORCE_WAKEUP;
	return avail_before < mark ? BPF_RB_NO_WAKEUP : 0;
}

/* Commit a reserved record (its bytes already count in the ring's data). */
static __always_inline void submit_event(void *ev, __u32 size)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 rec = size + 8; /* the ring's own record header */

	bpf_ringbuf_submit(ev, wake_flags(avail > rec ? avail - rec : 0, avail));
}

/* Reserve a record the budget decided on (`admitted`), counting a loss. */
static __always_inline void *reserve_admitted(struct scope_usage *u, bool admitted, __u32 size,
					      enum egress_hook hook)
{
	void *ev;

	if (!admitted) {
		count_loss(u, DROP_RATE_LIMITED, SCOPE_LOSS_RATE_LIMITED);
		return NULL;
	}
	ev = bpf_ringbuf_reserve(&events, size, 0);
	if (!ev)
		count_loss(u, DROP_RINGBUF_FIRST + hook, SCOPE_LOSS_RINGBUF_FULL);
	return ev;
}

/* Reserve a ring buffer record for `scope_id`'s container, counting a loss. */
static __always_inline void *reserve_event(__u32 size, enum egress_hook hook, __u64 scope_id)
{
	struct scope_usage *u = usage_of(scope_id);

	return reserve_admitted(u, admit(u, size), size, hook);
}

/*
 * reserve_event() for a caller that needs the time anyway: one clock read
 * for the budget and the record (fill_header_at()).
 */
static __always_inline void *reserve_event_at(__u32 size, enum egress_hook hook, __u64 scope_id,
					      __u64 now)
{
	struct scope_usage *u = usage_of(scope_id);

	return reserve_admitted(u, admit_at(u, size, now), size, hook);
}

/* Copy a record built elsewhere (a scratch map) onto the ring, fairly. */
static __always_inline void output_event(void *data, __u32 size, enum egress_hook hook,
					 __u64 scope_id)
{
	struct scope_usage *u = usage_of(scope_id);

	if (!admit(u, size)) {
		count_loss(u, DROP_RATE_LIMITED, SCOPE_LOSS_RATE_LIMITED);
		return;
	}
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);

	if (bpf_ringbuf_output(&events, data, size, wake_flags(avail, avail + size + 8)))
		count_loss(u, DROP_RINGBUF_FIRST + hook, SCOPE_LOSS_RINGBUF_FULL);
}

static __always_inline void fill_header_at(struct event_header *h, __u16 kind, __u16 size,
					   enum egress_hook hook, __u64 now)
{
	h->kind = kind;
	h->size = size;
	h->version = EGRESS_ABI_VERSION;
	h->hook = hook;
	h->_pad = 0;
	h->ts_ns = now;
}

static __always_inline void fill_header(struct event_header *h, __u16 kind, __u16 size,
					enum egress_hook hook)
{
	fill_header_at(h, kind, size, hook, bpf_ktime_get_boot_ns());
}

/*
 * May this container add one more entry to a shared table? `made` counts
 * the entries it added (kernel), `released` those user space removed: each
 * counter has a single writer. 0 = no quota.
 */
static __always_inline bool within_quota(__u64 made, __u64 released, __u32 quota)
{
	/* released > made (counters restarted for a scope): within, never a
	 * wrapped difference that locks the container out. */
	return quota == 0 || made <= released || made - released < quota;
}

#endif /* CLAWKER_LIB_EVENTS_H */
