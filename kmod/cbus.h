/* SPDX-License-Identifier: GPL-2.0 */
/*
 * CBUS: per-CPU deferred sending through the netlink connector.
 *
 * cbus_insert() copies a cn_msg onto the current CPU's queue and returns;
 * a per-CPU drain thread sends queued messages with cn_netlink_send() later,
 * in per-CPU FIFO order. Callable from process, softirq, timer and hard-IRQ
 * context (not NMI). Return codes:
 *
 *   0            queued; it will be sent or counted as dropped
 *   -ENOBUFS     the CPU's queue is at its limit; dropped and counted
 *   -ENOMEM      allocating the queue entry failed; dropped and counted
 *   -EINVAL      bad group or flags (counted as rejected)
 *   -EMSGSIZE    msg->len > CBUS_MAX_DATA (counted as rejected)
 *   -ESHUTDOWN   CBUS is being unloaded (counted as rejected)
 *
 * Only 0, -ENOBUFS and -ENOMEM count as inserted; see docs/kmod.md.
 */
#ifndef _CNLAB_CBUS_H
#define _CNLAB_CBUS_H

#include <linux/connector.h>
#include <linux/gfp.h>
#include <linux/types.h>

#define CBUS_MAX_DATA	(CONNECTOR_MAX_MSG_SIZE - sizeof(struct cn_msg))

/* cbus_insert_group() flags */
#define CBUS_F_BUNDLE	0x0001	/* may share a netlink message (bundle) */
#define CBUS_F_ALL	CBUS_F_BUNDLE

/* Group resolved like cn_netlink_send(msg, 0, 0, gfp): by msg->id. */
int cbus_insert(struct cn_msg *msg, gfp_t gfp);
/* Explicit destination group (1..32) and CBUS_F_* flags. */
int cbus_insert_group(struct cn_msg *msg, u32 group, u32 flags, gfp_t gfp);

#endif /* _CNLAB_CBUS_H */
