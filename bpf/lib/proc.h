/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * Which process: the current task's process start time and parent, the
 * `proc_ident` every record carries beside its tgid (issue 15). With the
 * boot id they make the process key that joins a flow to its exec record.
 */
#ifndef CLAWKER_LIB_PROC_H
#define CLAWKER_LIB_PROC_H

#include "egress.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

struct task_struct___pi {
	int tgid;
	__u64 start_boottime;
	struct task_struct___pi *group_leader;
	struct task_struct___pi *real_parent;
	__u64 self_exec_id;
} __attribute__((preserve_access_index));

/* The identity of `task`'s process (its thread group leader). */
static __always_inline void proc_of(void *task, struct proc_ident *p)
{
	struct task_struct___pi *t = task;

	p->start_ns = BPF_CORE_READ(t, group_leader, start_boottime);
	p->ppid = BPF_CORE_READ(t, group_leader, real_parent, tgid);
	p->exec_id = (__u32)BPF_CORE_READ(t, group_leader, self_exec_id);
}

/*
 * The identity of the current task's process. The task as a BTF pointer:
 * plain loads instead of a probe-read helper call per field (issue 12).
 */
static __always_inline void fill_proc(struct proc_ident *p)
{
	struct task_struct___pi *t = (void *)bpf_get_current_task_btf();
	struct task_struct___pi *leader = t->group_leader;

	p->start_ns = leader->start_boottime;
	p->ppid = leader->real_parent->tgid;
	p->exec_id = (__u32)leader->self_exec_id;
}

#endif /* CLAWKER_LIB_PROC_H */
