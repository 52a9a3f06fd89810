/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* Addresses as records and flow keys hold them: 16 bytes, IPv4 in the first 4. */
#ifndef CLAWKER_LIB_ADDR_H
#define CLAWKER_LIB_ADDR_H

#include "maps.h"

/* IPv4-mapped IPv6 (::ffff:a.b.c.d) as the IPv4 address it is on the wire. */
static __always_inline bool v4_mapped(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

static __always_inline void set_addr(__u8 *dst, __u8 *family, __u32 fam, const __u32 *a6,
				     __u32 a4)
{
	__u32 w[4] = {};

	if (fam == AF_INET6 && !v4_mapped(a6)) {
		w[0] = a6[0];
		w[1] = a6[1];
		w[2] = a6[2];
		w[3] = a6[3];
		*family = AF_INET6;
	} else {
		w[0] = fam == AF_INET6 ? a6[3] : a4;
		*family = AF_INET;
	}
	__builtin_memcpy(dst, w, 16);
}

/*
 * The destination the kernel will really use. connect()/sendto() to the
 * unspecified address (0.0.0.0, ::, ::ffff:0.0.0.0) is delivered to the
 * loopback address of that family: decide and key it as loopback, or a
 * `deny 127.0.0.0/8` is passed through the back door.
 */
static __always_inline void normalize_dst(__u8 *addr, __u8 family)
{
	__u32 w[4];

	__builtin_memcpy(w, addr, sizeof(w));
	if (family == AF_INET) {
		if (w[0] == 0)
			w[0] = bpf_htonl(0x7f000001);
	} else if ((w[0] | w[1] | w[2] | w[3]) == 0) {
		w[3] = bpf_htonl(1);
	}
	__builtin_memcpy(addr, w, sizeof(w));
}

#endif /* CLAWKER_LIB_ADDR_H */
