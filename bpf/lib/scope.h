/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Who is in scope: enrolled containers, never the daemon itself. */
#ifndef CLAWKER_LIB_SCOPE_H
#define CLAWKER_LIB_SCOPE_H

#include "maps.h"
#include <bpf/bpf_core_read.h>

struct task_struct___ce {
	__u64 start_boottime;
	struct task_struct___ce *group_leader;
} __attribute__((preserve_access_index));

/*
 * Is the current task the daemon? Its tgid AND its start time (clock ticks
 * since boot, as /proc/<pid>/stat says): a process that later gets the same
 * pid is not exempt, and a stopped daemon clears self_tgid.
 */
static __always_inline bool is_self(const struct egress_config *cfg, __u32 tgid)
{
	struct task_struct___ce *task;
	__u64 start;

	if (cfg->self_tgid == 0 || cfg->self_tgid != tgid)
		return false;
	task = (void *)bpf_get_current_task();
	start = BPF_CORE_READ(task, group_leader, start_boottime);
	return start / EGRESS_CLOCK_TICK_NS == cfg->self_start_ticks;
}

/* A cgroup ancestor of the socket `sk`, or of the current task (NULL). */
static __always_inline __u64 ancestor_of(struct bpf_sock *sk, int level)
{
	return sk ? bpf_sk_ancestor_cgroup_id(sk, level) : bpf_get_current_ancestor_cgroup_id(level);
}

/*
 * The scope decision, one definition for a task (sk NULL) and a socket:
 * in SCOPE_ALL mode everything; in SCOPE_ENROLLED mode the outermost
 * enrolled ancestor (a container's own sub-cgroups are the container), or,
 * where every child of the attach cgroup is a container
 * (egress_config.children_in_scope), that child when nothing is enrolled
 * yet: user space enrols a container when it sees its cgroup made, and a
 * loaded host can run the container first (its policy: the default
 * section until its labels are known; attributed by its id).
 */
static __always_inline bool scope_of(const struct egress_config *cfg, struct bpf_sock *sk,
				     __u64 *scope_id)
{
	if (cfg->scope_mode == SCOPE_ALL)
		return true;
	for (int level = 1; level <= EGRESS_SCOPE_MAX_DEPTH; level++) {
		__u64 id = ancestor_of(sk, level);

		if (id == 0)
			break;
		if (bpf_map_lookup_elem(&scoped_cgroups, &id)) {
			*scope_id = id;
			return true;
		}
	}
	if (cfg->children_in_scope && ancestor_of(sk, cfg->attach_level) == cfg->attach_cgroup_id) {
		__u64 id = ancestor_of(sk, cfg->attach_level + 1);

		if (id) {
			*scope_id = id;
			return true;
		}
	}
	return false;
}

/*
 * Is the current task in scope? Never the daemon itself; otherwise as
 * scope_of() decides. *scope_id is 0 in SCOPE_ALL mode.
 */
static __always_inline bool in_scope(__u64 *scope_id)
{
	struct egress_config *cfg = config();
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	*scope_id = 0;
	if (!cfg || is_self(cfg, tgid))
		return false;
	return scope_of(cfg, NULL, scope_id);
}

/*
 * in_scope() for programs on global hooks (tracepoints), which also run for
 * tasks outside the attach cgroup: only its subtree counts.
 */
static __always_inline bool in_scope_global(__u64 *scope_id)
{
	struct egress_config *cfg = config();

	*scope_id = 0;
	if (!cfg || bpf_get_current_ancestor_cgroup_id(cfg->attach_level) != cfg->attach_cgroup_id)
		return false;
	return in_scope(scope_id);
}

/*
 * in_scope() for a socket, by the cgroup that made it (for programs that
 * run where the current task is not the socket's owner: softirq, another
 * socket's lookup): under the attach cgroup, then as scope_of() decides.
 */
static __always_inline bool sk_scope(struct bpf_sock *sk, __u64 *scope_id)
{
	struct egress_config *cfg = config();

	*scope_id = 0;
	if (!cfg || bpf_sk_ancestor_cgroup_id(sk, cfg->attach_level) != cfg->attach_cgroup_id)
		return false;
	return scope_of(cfg, sk, scope_id);
}

#endif /* CLAWKER_LIB_SCOPE_H */
