/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * What every BPF object of clawker-egress includes: the shared maps
 * (lib/maps.h), records and losses (lib/events.h), addresses
 * (lib/addr.h) and the process identity (lib/proc.h). Deciding objects add lib/scope.h and lib/policy.h.
 */
#ifndef CLAWKER_COMMON_BPF_H
#define CLAWKER_COMMON_BPF_H

#include "lib/maps.h"
#include "lib/events.h"
#include "lib/addr.h"
#include "lib/proc.h"

#endif /* CLAWKER_COMMON_BPF_H */
