/* SPDX-License-Identifier: GPL-2.0 */
/*
 * cnlab.ko internals shared between its compilation units.
 */
#ifndef _CNLAB_INT_H
#define _CNLAB_INT_H

#include <linux/types.h>
#include <linux/connector.h>
#include <linux/netlink.h>

#include "include/uapi/cnlab.h"

#define CNLAB_NAME "cnlab"

/* main.c */
extern int cnlab_fail_init;
int cnlab_init_fault(int step);

/* cbus.c */
extern const unsigned int cnlab_hz;	/* HZ, for a debugger reading a vmcore */
struct dentry;
struct sock;
int cnlab_cbus_init(struct dentry *dbg);
void cnlab_cbus_exit(void);
void cnlab_cbus_read(int cpu, struct cnlab_cbus_stats *s);	/* -1: total */
void cnlab_cbus_reset_hwm(void);
u32 cnlab_cbus_limit(void);
u32 cnlab_cbus_qbytes(void);
u32 cnlab_cbus_set_limit(u32 limit);
u32 cnlab_cbus_alloc_fail_nth(void);
u32 cnlab_cbus_set_alloc_fail_nth(u32 nth);
u32 cnlab_cbus_stall_ms(void);
u32 cnlab_cbus_stall(u32 ms);
bool cnlab_cbus_idle(int cpu);
void cnlab_cbus_set_cn_sock(struct sock *sk);
bool cnlab_cbus_has_listeners(u32 group);
bool cnlab_cbus_cn_sock_known(void);

/* A control request being handled (ctl.c). */
struct cnlab_req {
	const struct cn_msg *msg;
	struct netlink_skb_parms *nsp;
	u16 type;
	const u8 *body;		/* not aligned: copy out with memcpy */
	u32 len;		/* body bytes */
	u64 rx_ns;
	bool replied;
};

/* ctl.c */
int cnlab_ctl_init(void);
void cnlab_ctl_exit(void);
void *cnlab_reply_alloc(u32 body_len, struct cn_msg **cn);
int cnlab_reply_send(struct cnlab_req *rq, struct cn_msg *cn, u32 body_len);
int cnlab_reply_to(u32 portid, u32 seq, u32 ack, u16 type, int status,
		   const void *body, u32 body_len);
void cnlab_ctl_counters(u64 *requests, u64 *errors, u64 *reply_fail);

/* gen.c */
int cnlab_gen_init(void);
void cnlab_gen_exit(void);
int cnlab_gen_do_start(struct cnlab_req *rq);
int cnlab_gen_do_stop(struct cnlab_req *rq);
int cnlab_gen_do_stats(struct cnlab_req *rq);

/* bench.c */
int cnlab_bench_init(void);
void cnlab_bench_exit(void);
int cnlab_bench_do_start(struct cnlab_req *rq);
int cnlab_bench_do_result(struct cnlab_req *rq);

#endif /* _CNLAB_INT_H */
