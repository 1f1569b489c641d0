/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Tracepoints of CBUS (events/cnlab/ in tracefs): the flight recorder of the
 * lab records them with the scheduler and IRQ events in a bounded ring
 * buffer and keeps it when a scenario fails.
 *
 *   cnlab_insert	a message went onto a CPU's queue (depth after it)
 *   cnlab_drain_start	a drain of a CPU's queue begins (its budget)
 *   cnlab_drain_end	it ends (messages taken off the queue: the batch)
 *   cnlab_send		one cn_netlink_send() (messages it carried, bytes, result)
 *   cnlab_drop		messages counted as dropped, and why
 *
 * Each is a static-key no-op while disabled. Only cbus.c defines them
 * (CREATE_TRACE_POINTS); the Kbuild puts this folder on cbus.o's include
 * path for TRACE_INCLUDE_PATH.
 */
#undef TRACE_SYSTEM
#define TRACE_SYSTEM cnlab

#if !defined(_CNLAB_TRACE_H) || defined(TRACE_HEADER_MULTI_READ)
#define _CNLAB_TRACE_H

#include <linux/tracepoint.h>

/* Why messages were dropped: the counters of the CBUS invariant. */
#define CNLAB_DROP_FULL		0	/* queue limit (-ENOBUFS) */
#define CNLAB_DROP_NOMEM	1	/* entry allocation failed (-ENOMEM) */
#define CNLAB_DROP_NOLISTENER	2	/* -ESRCH, group without listeners */
#define CNLAB_DROP_OVERRUN	3	/* -ESRCH, every listener full */
#define CNLAB_DROP_NLERR	4	/* another cn_netlink_send() error */

TRACE_EVENT(cnlab_insert,
	TP_PROTO(unsigned int cpu, u64 depth, u32 bytes),
	TP_ARGS(cpu, depth, bytes),
	TP_STRUCT__entry(
		__field(unsigned int, cpu)
		__field(u64, depth)
		__field(u32, bytes)
	),
	TP_fast_assign(
		__entry->cpu = cpu;
		__entry->depth = depth;
		__entry->bytes = bytes;
	),
	TP_printk("cpu=%u depth=%llu bytes=%u", __entry->cpu,
		  (unsigned long long)__entry->depth, __entry->bytes)
);

TRACE_EVENT(cnlab_drain_start,
	TP_PROTO(unsigned int cpu, unsigned int budget),
	TP_ARGS(cpu, budget),
	TP_STRUCT__entry(
		__field(unsigned int, cpu)
		__field(unsigned int, budget)
	),
	TP_fast_assign(
		__entry->cpu = cpu;
		__entry->budget = budget;
	),
	TP_printk("cpu=%u budget=%u", __entry->cpu, __entry->budget)
);

TRACE_EVENT(cnlab_drain_end,
	TP_PROTO(unsigned int cpu, u32 batch),
	TP_ARGS(cpu, batch),
	TP_STRUCT__entry(
		__field(unsigned int, cpu)
		__field(u32, batch)
	),
	TP_fast_assign(
		__entry->cpu = cpu;
		__entry->batch = batch;
	),
	TP_printk("cpu=%u batch=%u", __entry->cpu, __entry->batch)
);

TRACE_EVENT(cnlab_send,
	TP_PROTO(unsigned int cpu, u32 group, u32 count, u32 size, int result),
	TP_ARGS(cpu, group, count, size, result),
	TP_STRUCT__entry(
		__field(unsigned int, cpu)
		__field(u32, group)
		__field(u32, count)
		__field(u32, size)
		__field(int, result)
	),
	TP_fast_assign(
		__entry->cpu = cpu;
		__entry->group = group;
		__entry->count = count;
		__entry->size = size;
		__entry->result = result;
	),
	TP_printk("cpu=%u group=%u count=%u size=%u result=%d", __entry->cpu,
		  __entry->group, __entry->count, __entry->size, __entry->result)
);

TRACE_EVENT(cnlab_drop,
	TP_PROTO(unsigned int cpu, int cause, u32 count),
	TP_ARGS(cpu, cause, count),
	TP_STRUCT__entry(
		__field(unsigned int, cpu)
		__field(int, cause)
		__field(u32, count)
	),
	TP_fast_assign(
		__entry->cpu = cpu;
		__entry->cause = cause;
		__entry->count = count;
	),
	TP_printk("cpu=%u cause=%s count=%u", __entry->cpu,
		  __print_symbolic(__entry->cause,
				   { CNLAB_DROP_FULL, "full" },
				   { CNLAB_DROP_NOMEM, "nomem" },
				   { CNLAB_DROP_NOLISTENER, "nolistener" },
				   { CNLAB_DROP_OVERRUN, "overrun" },
				   { CNLAB_DROP_NLERR, "nlerr" }),
		  __entry->count)
);

#endif /* _CNLAB_TRACE_H */

/* This part must be outside the include guard. */
#undef TRACE_INCLUDE_PATH
#define TRACE_INCLUDE_PATH .
#undef TRACE_INCLUDE_FILE
#define TRACE_INCLUDE_FILE cnlab_trace
#include <trace/define_trace.h>
