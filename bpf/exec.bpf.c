// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * Process context (issue 15): which program, started by what, made a
 * flow. BTF tracepoints (no kprobes or trampolines needed), each with the
 * cheap in-scope check first (in_scope_global: the attach cgroup's
 * subtree, an enrolled container, never the daemon), every record charged
 * to the container's record budget (lib/events.h) and every loss counted:
 *  - sched_process_exec: one exec_event per successful execve(): the path
 *    it was given, the first EXEC_ARGS_LEN bytes of argv (read from the new
 *    process's stack, which execve() has just written: resident), ids,
 *    parent; user space masks secrets in argv before anything leaves;
 *  - sched_process_fork: one fork_event per new process (threads are not
 *    processes): user space's process cache learns that the child runs
 *    its parent's program until it execs;
 *  - sched_process_exit: one exit_event when a process's last thread ends.
 */
#include "common.bpf.h"
#include "lib/scope.h"
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct kuid___ex {
	__u32 val;
} __attribute__((preserve_access_index));

struct cred___ex {
	struct kuid___ex uid;
	struct kuid___ex gid;
	struct kuid___ex euid;
} __attribute__((preserve_access_index));

struct mm_struct___ex {
	unsigned long arg_start;
	unsigned long arg_end;
} __attribute__((preserve_access_index));

struct fs_struct___ex;

struct task_struct___ex {
	int pid;
	int tgid;
	int exit_code;
	__u64 start_boottime;
	char comm[EGRESS_COMM_LEN];
	struct task_struct___ex *group_leader;
	struct task_struct___ex *real_parent;
	struct mm_struct___ex *mm;
	const struct cred___ex *real_cred;
	struct fs_struct___ex *fs;
	__u64 self_exec_id;
} __attribute__((preserve_access_index));

struct qstr___ex {
	const unsigned char *name;
} __attribute__((preserve_access_index));

struct dentry___ex {
	struct qstr___ex d_name;
	struct dentry___ex *d_parent;
} __attribute__((preserve_access_index));

struct vfsmount___ex {
	struct dentry___ex *mnt_root;
} __attribute__((preserve_access_index));

struct mount___ex {
	struct mount___ex *mnt_parent;
	struct dentry___ex *mnt_mountpoint;
	struct vfsmount___ex mnt;
} __attribute__((preserve_access_index));

struct path___ex {
	struct vfsmount___ex *mnt;
	struct dentry___ex *dentry;
} __attribute__((preserve_access_index));

struct file___ex {
	struct path___ex f_path;
} __attribute__((preserve_access_index));

struct fs_struct___ex {
	struct path___ex pwd;
} __attribute__((preserve_access_index));

struct linux_binprm___ex {
	const char *filename;
	struct file___ex *file;
} __attribute__((preserve_access_index));

/* Steps of the path walk: components plus mount crossings. */
#define EXE_WALK_STEPS (EXEC_EXE_DEPTH + 4)

/* How a path walk ended. */
enum walk_end { WALK_ROOT, WALK_TRUNCATED, WALK_LOST };

/*
 * A path as d_path() would walk it: dentry names up to each mount's root,
 * then on from the mount point in the parent mount, until the root of the
 * namespace (a mount that is its own parent). Leaf first into parts;
 * *depth = the components written.
 */
static __always_inline enum walk_end walk_path(struct path___ex *path,
					       char parts[EXEC_EXE_DEPTH][EXEC_EXE_PART],
					       __u8 *depth)
{
	struct dentry___ex *d = BPF_CORE_READ(path, dentry), *parent;
	struct vfsmount___ex *vfs = BPF_CORE_READ(path, mnt);
	struct mount___ex *mnt = (void *)vfs - bpf_core_field_offset(struct mount___ex, mnt);
	enum walk_end end = WALK_LOST;
	__u32 n = 0;

	for (int i = 0; i < EXE_WALK_STEPS; i++) {
		if (d == BPF_CORE_READ(vfs, mnt_root)) {
			struct mount___ex *up = BPF_CORE_READ(mnt, mnt_parent);

			if (up == mnt) {
				end = WALK_ROOT; /* the namespace's root */
				break;
			}
			d = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = up;
			vfs = (void *)up + bpf_core_field_offset(struct mount___ex, mnt);
			continue;
		}
		parent = BPF_CORE_READ(d, d_parent);
		if (parent == d) {
			/*
			 * A dentry that is its own parent but no mount's root: a
			 * pseudo file (memfd_create), run through /proc/self/fd or
			 * a symlink to it. Its own name ("memfd:NAME", as
			 * /proc/<pid>/exe shows it), never the path execve() was
			 * given: that is whatever symlink name the caller chose.
			 */
			if (n == 0) {
				bpf_probe_read_kernel_str(parts[0], EXEC_EXE_PART,
							  BPF_CORE_READ(d, d_name.name));
				n = 1;
			}
			break;
		}
		if (n >= EXEC_EXE_DEPTH) {
			end = WALK_TRUNCATED;
			break;
		}
		bpf_probe_read_kernel_str(parts[n], EXEC_EXE_PART, BPF_CORE_READ(d, d_name.name));
		n++;
		d = parent;
	}
	*depth = n;
	return end;
}

/* The executed file's path (exe_depth 0: unknown, the filename stands). */
static __always_inline void exe_path(struct exec_event *ev, struct file___ex *file)
{
	struct path___ex *path = (void *)file + bpf_core_field_offset(struct file___ex, f_path);
	enum walk_end end = walk_path(path, ev->exe_parts, &ev->exe_depth);

	if (end == WALK_TRUNCATED)
		ev->flags |= EXEC_F_EXE_TRUNCATED;
}

/* The working directory, as the new program starts in it. */
static __always_inline void cwd_path(struct exec_event *ev, struct task_struct___ex *task)
{
	struct fs_struct___ex *fs = BPF_CORE_READ(task, fs);
	struct path___ex *pwd = (void *)fs + bpf_core_field_offset(struct fs_struct___ex, pwd);
	enum walk_end end;

	ev->cwd_depth = 0;
	if (!fs)
		return;
	end = walk_path(pwd, ev->cwd_parts, &ev->cwd_depth);
	if (end == WALK_TRUNCATED)
		ev->flags |= EXEC_F_CWD_TRUNCATED | EXEC_F_CWD_KNOWN;
	else if (end == WALK_ROOT)
		ev->flags |= EXEC_F_CWD_KNOWN;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(process_exec, struct task_struct___ex *task, int old_pid, struct linux_binprm___ex *bprm)
{
	struct task_struct___ex *parent;
	struct exec_event *ev;
	unsigned long start, end;
	__u64 scope_id, size;
	__u32 n;
	long len;

	if (!in_scope_global(&scope_id))
		return 0;
	ev = reserve_event(sizeof(*ev), HOOK_EXEC, scope_id);
	if (!ev)
		return 0;
	fill_header(&ev->hdr, EVENT_KIND_EXEC, sizeof(*ev), HOOK_EXEC);
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->scope_cgroup_id = scope_id;
	proc_of(task, &ev->process);
	/*
	 * The parent process: the leader of the thread that forked us (a
	 * child forked by a non-main thread has that thread as real_parent,
	 * whose start time is not its process's).
	 */
	parent = BPF_CORE_READ(task, group_leader, real_parent, group_leader);
	ev->parent_start_ns = BPF_CORE_READ(parent, start_boottime);
	BPF_CORE_READ_STR_INTO(&ev->parent_comm, parent, comm);
	ev->tgid = BPF_CORE_READ(task, tgid);
	ev->tid = BPF_CORE_READ(task, pid);
	ev->uid = BPF_CORE_READ(task, real_cred, uid.val);
	ev->gid = BPF_CORE_READ(task, real_cred, gid.val);
	ev->euid = BPF_CORE_READ(task, real_cred, euid.val);
	ev->flags = 0;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));

	len = bpf_probe_read_kernel_str(ev->filename, sizeof(ev->filename),
					BPF_CORE_READ(bprm, filename));
	ev->filename_len = len > 0 ? len - 1 : 0;
	ev->_pad = 0;
	exe_path(ev, BPF_CORE_READ(bprm, file));
	cwd_path(ev, task);

	start = BPF_CORE_READ(task, mm, arg_start);
	end = BPF_CORE_READ(task, mm, arg_end);
	size = end > start ? end - start : 0;
	ev->args_size = size > 0xffffffff ? 0xffffffff : size;
	n = size > EXEC_ARGS_LEN ? EXEC_ARGS_LEN : size;
	if (size > EXEC_ARGS_LEN)
		ev->flags |= EXEC_F_ARGS_TRUNCATED;
	ev->args_len = 0;
	if (n > 0 && n <= EXEC_ARGS_LEN) {
		if (bpf_probe_read_user(ev->args, n, (void *)start) == 0)
			ev->args_len = n;
		else
			ev->flags |= EXEC_F_ARGS_UNREAD;
	}
	submit_event(ev, sizeof(*ev));
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(process_fork, struct task_struct___ex *parent, struct task_struct___ex *child)
{
	struct fork_event *ev;
	__u64 scope_id;
	int pid = BPF_CORE_READ(child, pid), tgid = BPF_CORE_READ(child, tgid);

	/* A thread is not a process: same program, same process key. */
	if (pid != tgid)
		return 0;
	if (!in_scope_global(&scope_id))
		return 0;
	ev = reserve_event(sizeof(*ev), HOOK_FORK, scope_id);
	if (!ev)
		return 0;
	fill_header(&ev->hdr, EVENT_KIND_FORK, sizeof(*ev), HOOK_FORK);
	ev->scope_cgroup_id = scope_id;
	ev->process.start_ns = BPF_CORE_READ(child, start_boottime);
	ev->process.ppid = BPF_CORE_READ(child, real_parent, tgid);
	/* fork copies the program image id: the child runs its parent's */
	ev->process.exec_id = (__u32)BPF_CORE_READ(child, self_exec_id);
	/* The parent process's start, also when a non-main thread forked. */
	ev->parent_start_ns = BPF_CORE_READ(child, real_parent, group_leader, start_boottime);
	ev->tgid = tgid;
	ev->_pad = 0;
	submit_event(ev, sizeof(*ev));
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(process_exit, struct task_struct___ex *task, bool group_dead)
{
	struct exit_event *ev;
	__u64 scope_id;

	/* One record per process: when its last thread ends. */
	if (!group_dead)
		return 0;
	if (!in_scope_global(&scope_id))
		return 0;
	ev = reserve_event(sizeof(*ev), HOOK_EXIT, scope_id);
	if (!ev)
		return 0;
	fill_header(&ev->hdr, EVENT_KIND_EXIT, sizeof(*ev), HOOK_EXIT);
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->scope_cgroup_id = scope_id;
	proc_of(task, &ev->process);
	ev->tgid = BPF_CORE_READ(task, tgid);
	ev->exit_code = BPF_CORE_READ(task, exit_code);
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	submit_event(ev, sizeof(*ev));
	return 0;
}
