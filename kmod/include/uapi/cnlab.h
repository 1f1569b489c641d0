/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * cnlab control ABI: the one header shared by cnlab.ko, kmod/tools/abi_dump.c
 * and (mirrored by hand) lab/kabi.py.
 *
 * Transport: NETLINK_CONNECTOR (11). A request is one netlink message whose
 * payload is a struct cn_msg addressed to {CNLAB_CTL_IDX, CNLAB_CTL_VAL}
 * whose data is struct cnlab_hdr followed by a type-specific body. The reply
 * is unicast to the sender's port id: same cn_msg id and seq, ack + 1,
 * cnlab_hdr with CNLAB_F_REPLY set, status 0 or a negative errno, then the
 * reply body. All integers are host-endian; all structs have explicit
 * padding, which is zero in replies and must be zero in requests.
 */
#ifndef _UAPI_CNLAB_H
#define _UAPI_CNLAB_H

#include <linux/types.h>

#define CNLAB_ABI_VERSION	1

/* Control connector id. idx is even on purpose (connector.md section 3). */
#define CNLAB_CTL_IDX		0x10
#define CNLAB_CTL_VAL		0x1

/* cn_msg.flags of a CBUS bundle (several cn_msg in one netlink message). */
#define CNLAB_CN_F_BUNDLE	0x0001

/* Limits */
#define CNLAB_MAX_GENS		16	/* generator ids 0..15 */
#define CNLAB_MAX_CPUS		64	/* cpu_mask width, stats entries */
#define CNLAB_GROUP_MIN		1
#define CNLAB_GROUP_MAX		32
#define CNLAB_PAYLOAD_MAX	8192	/* generated cn_msg data bytes */
#define CNLAB_ECHO_MAX_DATA	1024
#define CNLAB_RATE_MAX		10000000U	/* msgs/s per CPU */
#define CNLAB_DURATION_MAX_NS	(600ULL * 1000000000ULL)
#define CNLAB_COUNT_MAX		1099511627776ULL	/* 2^40 */
#define CNLAB_BURST_MAX		4096
/* Burst mode (CNLAB_GEN_F_BURSTS), per CPU instance; beyond them -EINVAL */
#define CNLAB_BURST_RATE_MAX	50000	/* bursts/s: one every 20 us at most */
#define CNLAB_BURST_MSGS_PER_S_MAX 1000000	/* burst x rate */
#define CNLAB_BURST_BYTES_MAX	1048576U	/* 1 MiB: burst x size_max */
#define CNLAB_BURST_BYTES_PER_S_MAX 268435456ULL	/* 256 MiB: x rate */
#define CNLAB_QLIMIT_MAX	1048576U	/* 2^20 */
/* CBUS bytes queued per CPU (cn_msg header + data), module parameter queue_bytes */
#define CNLAB_QBYTES_MIN	65536U	/* 64 KiB */
#define CNLAB_QBYTES_DEFAULT	67108864U	/* 64 MiB */
#define CNLAB_QBYTES_MAX	1073741824U	/* 1 GiB */
#define CNLAB_STALL_MAX_MS	60000
#define CNLAB_BENCH_ITER_MAX	10000000U
#define CNLAB_BENCH_CHUNK_MAX	4096	/* calls with preemption off */
#define CNLAB_BENCH_CHUNK_BYTES_MAX 1048576U	/* 1 MiB: chunk x payload */
#define CNLAB_BENCH_PAUSE_MAX_US 100000
#define CNLAB_GEN_ALL		0xffffffffU	/* GEN_STOP: every generator */
#define CNLAB_WARN_MAGIC	0x5741524eULL	/* "WARN" */
#define CNLAB_PANIC_MAGIC	0x50414e43ULL	/* "PANC" */

/* cnlab_hdr.type */
enum cnlab_msg_type {
	CNLAB_MSG_ECHO		= 1,
	CNLAB_MSG_GEN_START	= 2,
	CNLAB_MSG_GEN_STOP	= 3,
	CNLAB_MSG_STATS		= 4,
	CNLAB_MSG_GEN_STATS	= 5,
	CNLAB_MSG_SET_FAULT	= 6,
	CNLAB_MSG_BENCH		= 7,
	CNLAB_MSG_BENCH_RESULT	= 8,
	CNLAB_MSG_MAX		= 8,
};

/* cnlab_hdr.flags */
#define CNLAB_F_REPLY		0x01

struct cnlab_hdr {
	__u8	version;	/* CNLAB_ABI_VERSION */
	__u8	flags;		/* 0 in requests, CNLAB_F_REPLY in replies */
	__u16	type;		/* enum cnlab_msg_type; 0 if unparseable */
	__s32	status;		/* replies: 0 or -errno; requests: 0 */
	__u32	len;		/* body bytes following this header */
	__u32	reserved;	/* 0 */
};

/*
 * ECHO (unprivileged). Request: cnlab_echo with all kernel fields 0, then
 * data_len bytes (<= CNLAB_ECHO_MAX_DATA). Reply: the same with
 * rx_ns/tx_ns (CLOCK_MONOTONIC, ktime_get_ns()) and cpu filled in and the
 * data echoed back.
 */
struct cnlab_echo {
	__u64	user_ns;	/* opaque to the kernel, returned unchanged */
	__u64	rx_ns;		/* kernel: callback entry */
	__u64	tx_ns;		/* kernel: just before the reply is sent */
	__u32	cpu;		/* kernel: CPU that ran the callback */
	__u32	data_len;
};

/* GEN_START: context */
enum cnlab_ctx {
	CNLAB_CTX_KTHREAD	= 0,	/* process context, one kthread per CPU */
	CNLAB_CTX_SOFTIRQ	= 1,	/* tasklet */
	CNLAB_CTX_TIMER		= 2,	/* timer_list, once per jiffy */
	CNLAB_CTX_HARDIRQ	= 3,	/* hrtimer in hard-IRQ mode */
	CNLAB_CTX_MAX		= 3,
};

/* GEN_START: path */
enum cnlab_path {
	CNLAB_PATH_DIRECT	= 0,	/* cn_netlink_send() */
	CNLAB_PATH_CBUS		= 1,	/* cbus_insert() */
	CNLAB_PATH_MAX		= 1,
};

/* GEN_START: flags */
#define CNLAB_GEN_F_BUNDLE	0x0001	/* CBUS may bundle (opt-in consumers) */
#define CNLAB_GEN_F_BURSTS	0x0002	/* rate = bursts/s, burst = msgs in each */
#define CNLAB_GEN_F_ALL		(CNLAB_GEN_F_BUNDLE | CNLAB_GEN_F_BURSTS)

/*
 * GEN_START (CAP_NET_ADMIN). Starts generator gen_id on every CPU of
 * cpu_mask that is online. Each CPU instance stops after count messages
 * (0: no count limit) or duration_ns (0: CNLAB_DURATION_MAX_NS), whichever
 * comes first; at least one of them must be non-zero.
 */
struct cnlab_gen_start {
	__u32	gen_id;		/* 0..CNLAB_MAX_GENS-1 */
	__u32	idx;		/* cn_msg id of generated messages */
	__u32	val;		/* (must differ from the control id) */
	__u32	group;		/* CNLAB_GROUP_MIN..CNLAB_GROUP_MAX */
	__u64	count;		/* messages per CPU, <= CNLAB_COUNT_MAX */
	__u64	duration_ns;	/* <= CNLAB_DURATION_MAX_NS */
	__u64	cpu_mask;	/* bit n = CPU n; non-zero */
	__u32	rate;		/* msgs/s per CPU, 0 = as fast as possible;
				 * CNLAB_GEN_F_BURSTS: bursts/s per CPU, >= 1
				 */
	__u32	size_min;	/* cn_msg data bytes, >= sizeof(cnlab_event) */
	__u32	size_max;	/* size_min..CNLAB_PAYLOAD_MAX, uniform */
	__u16	context;	/* enum cnlab_ctx */
	__u16	path;		/* enum cnlab_path; DIRECT+HARDIRQ: -EINVAL */
	__u32	flags;		/* CNLAB_GEN_F_* */
	__u32	burst;		/* max msgs per wakeup/firing, 0 = default;
				 * CNLAB_GEN_F_BURSTS: msgs in each burst, >= 1
				 */
};

/* GEN_STOP (CAP_NET_ADMIN). Reply body: the same struct. */
struct cnlab_gen_stop {
	__u32	gen_id;		/* 0..CNLAB_MAX_GENS-1 or CNLAB_GEN_ALL */
	__u32	reserved;
};

/*
 * Every generated message: cn_msg{idx, val, seq = low 32 bits of the
 * per-(generator, CPU) sequence, ack 0, len, flags 0} whose data starts
 * with this header, followed by filler bytes equal to (seq & 0xff).
 */
struct cnlab_event {
	__u32	gen_id;
	__u32	cpu;		/* CPU that generated it (smp_processor_id) */
	__u64	seq;		/* per (gen_id, cpu), from 0, no gaps */
	__u64	ts_ns;		/* ktime_get_ns() when generated */
	__u32	len;		/* cn_msg data length, header included */
	__u32	flags;		/* CNLAB_EV_F_* */
};

#define CNLAB_EV_F_CBUS		0x0001	/* sent via cbus_insert */

/* STATS request body (unprivileged, but for CNLAB_STATS_F_RESET_HWM) */
struct cnlab_stats_req {
	__u32	flags;		/* CNLAB_STATS_F_* */
	__u32	reserved;
};

/*
 * Restart every CPU's high-water mark from its depth now (CAP_NET_ADMIN);
 * the reply is read after it.
 */
#define CNLAB_STATS_F_RESET_HWM	0x0001
#define CNLAB_STATS_F_ALL	CNLAB_STATS_F_RESET_HWM

#define CNLAB_BATCH_BUCKETS	8	/* 1, 2-3, 4-7, ..., 64-127, >=128 */

/*
 * CBUS counters of one CPU (cpu = CPU number) or of all (cpu = ~0).
 * Invariant: inserted == sent + drop_full + drop_nomem + drop_nolistener
 *            + drop_overrun + drop_nlerr + queued (exact when quiescent).
 */
struct cnlab_cbus_stats {
	__u64	inserted;	/* cbus_insert calls accepted for accounting */
	__u64	sent;		/* delivered to >= 1 listener */
	__u64	drop_full;	/* queue at its limit (-ENOBUFS to caller) */
	__u64	drop_nomem;	/* event allocation failed (-ENOMEM) */
	__u64	drop_nolistener; /* cn_netlink_send -ESRCH: nobody listening */
	__u64	drop_overrun;	/* -ESRCH with listeners: all of them full */
	__u64	drop_nlerr;	/* any other cn_netlink_send error */
	__u64	rejected;	/* refused (-EINVAL/-EMSGSIZE/-ESHUTDOWN) */
	__u64	queued;		/* accepted, not yet sent or dropped */
	__u64	hwm;		/* queue depth high-water mark */
	__u64	kicks;		/* worker kicks by inserts */
	__u64	batches;	/* non-empty drain batches */
	__u64	batch_max;	/* largest batch */
	__u64	nl_msgs;	/* netlink messages sent (bundle = 1) */
	__u64	bundles;	/* of which bundles */
	__u64	enqueued;	/* put on the queue (counted by the producer) */
	__u64	dequeued;	/* taken off the queue (counted by the drain) */
	__u64	batch_hist[CNLAB_BATCH_BUCKETS];
	__u32	cpu;
	__u32	online;
};

/* STATS reply body: this, then nr_cpus struct cnlab_cbus_stats */
struct cnlab_stats_rep {
	__u32	nr_cpus;	/* per-CPU entries that follow */
	__u32	queue_limit;	/* messages per CPU */
	__u32	alloc_fail_nth;	/* fault knob, 0 = off */
	__u32	stall_ms;	/* last stall request, 0 = none */
	__u32	queue_bytes;	/* bytes per CPU (module parameter) */
	__u32	reserved;
	__u64	ctl_requests;	/* control requests received */
	__u64	ctl_errors;	/* requests answered with an error */
	__u64	ctl_reply_fail;	/* replies that could not be sent */
	struct cnlab_cbus_stats total;
};

/* GEN_STATS request body (unprivileged) */
struct cnlab_gen_stats_req {
	__u32	gen_id;
	__u32	reserved;
};

enum cnlab_gen_state {
	CNLAB_GEN_IDLE		= 0,	/* never started */
	CNLAB_GEN_RUNNING	= 1,
	CNLAB_GEN_DONE		= 2,	/* every CPU hit count/duration */
	CNLAB_GEN_STOPPED	= 3,	/* GEN_STOP or unload */
};

/* Per (generator, CPU) counters; cpu is where messages were generated. */
struct cnlab_gen_cpu_stats {
	__u32	cpu;
	__u32	reserved;
	__u64	generated;	/* messages built == next seq */
	__u64	ok;		/* direct: cn_netlink_send 0; cbus: insert 0 */
	__u64	err_nolistener;	/* direct: -ESRCH, nobody listening */
	__u64	err_overrun;	/* direct: -ESRCH, every listener full */
	__u64	err_nomem;	/* -ENOMEM (either path) */
	__u64	err_full;	/* cbus: -ENOBUFS (queue full) */
	__u64	err_other;
	__u64	bursts;		/* CNLAB_GEN_F_BURSTS: bursts emitted */
	__u64	bursts_missed;	/* burst slots skipped: late, or the 50 % duty cap */
};

/* GEN_STATS reply body: this, then nr_cpus struct cnlab_gen_cpu_stats */
struct cnlab_gen_stats_rep {
	__u32	gen_id;
	__u32	state;		/* enum cnlab_gen_state */
	__u32	nr_cpus;
	__u32	active;	/* CPU instances still generating */
	__u64	start_ns;
	__u64	end_ns;		/* 0 while running */
	struct cnlab_gen_start cfg;
};

/* SET_FAULT (CAP_NET_ADMIN). Reply body: op and the previous value. */
enum cnlab_fault_op {
	CNLAB_FAULT_ALLOC_NTH	= 1,	/* fail every Nth CBUS alloc per CPU */
	CNLAB_FAULT_STALL_MS	= 2,	/* stall drain workers N ms from now */
	CNLAB_FAULT_QLIMIT	= 3,	/* per-CPU queue limit */
	CNLAB_FAULT_WARN	= 4,	/* WARN() once; value CNLAB_WARN_MAGIC */
	CNLAB_FAULT_PANIC	= 5,	/* panic(); value CNLAB_PANIC_MAGIC */
	CNLAB_FAULT_MAX		= 5,
};

struct cnlab_fault {
	__u32	op;
	__u32	reserved;
	__u64	value;
};

/*
 * BENCH (CAP_NET_ADMIN). Runs in process context on CPU `cpu`; times
 * `iterations` cbus_insert() calls and `iterations` direct
 * cn_netlink_send(GFP_ATOMIC) calls to {idx, val}/group, `chunk` calls at
 * a time with preemption off, pausing (untimed) between chunks until the
 * CBUS queue is empty plus pause_us. The reply (a cnlab_bench_result) is
 * sent when the run ends; BENCH_RESULT returns the latest result.
 */
struct cnlab_bench {
	__u32	idx;
	__u32	val;
	__u32	group;		/* 1..32; put one listener there */
	__u32	payload;	/* data bytes, 0..CNLAB_PAYLOAD_MAX */
	__u32	iterations;	/* per path, 1..CNLAB_BENCH_ITER_MAX */
	__u32	chunk;		/* 1..min(queue limit, CNLAB_BENCH_CHUNK_MAX),
				 * chunk x payload <= CNLAB_BENCH_CHUNK_BYTES_MAX
				 */
	__u32	pause_us;	/* 0..CNLAB_BENCH_PAUSE_MAX_US */
	__u32	cpu;		/* CPU to run on (must be online) */
};

struct cnlab_bench_result {
	__s32	status;		/* 0 done, -EINPROGRESS, -errno */
	__u32	cpu;
	__u64	cbus_ns;	/* total timed ns of the cbus loop */
	__u64	cbus_calls;
	__u64	cbus_ok;
	__u64	direct_ns;	/* total timed ns of the direct loop */
	__u64	direct_calls;
	__u64	direct_ok;	/* returned 0 */
	__u64	direct_esrch;	/* returned -ESRCH */
	__u64	direct_err;	/* other errors */
	__u64	cbus_ns_min_chunk;	/* best chunk, ns per call * 1000 */
	__u64	direct_ns_min_chunk;	/* best chunk, ns per call * 1000 */
	__u64	cbus_first_ns;	/* part of cbus_ns: each chunk's first call (the kick) */
	__u64	direct_first_ns;	/* part of direct_ns: each chunk's first call */
	struct cnlab_bench cfg;
};

#endif /* _UAPI_CNLAB_H */
