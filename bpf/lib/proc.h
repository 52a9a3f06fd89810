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
} __attribute__((preserve_access_index));

/* The identity of `task`'s process (its thread group leader). */
static __always_inline void proc_of(void *task, struct proc_ident *p)
{
	struct task_struct___pi *t = task;

	p->start_ns = BPF_CORE_READ(t, group_leader, start_boottime);
	p->ppid = BPF_CORE_READ(t, group_leader, real_parent, tgid);
	p->_pad = 0;
}

/* The identity of the current task's process. */
static __always_inline void fill_proc(struct proc_ident *p)
{
	proc_of((void *)bpf_get_current_task(), p);
}

#endif /* CLAWKER_LIB_PROC_H */
