// SPDX-License-Identifier: GPL-2.0
/*
 * In-kernel micro benchmark: cost of one cbus_insert() against one direct
 * cn_netlink_send() to a group with a listener, timed in tight loops of
 * `chunk` calls with preemption disabled. Each chunk's first call is also
 * timed on its own: for CBUS it is the one that kicks the drain thread.
 * Runs in a work item on the requested CPU and answers the BENCH request
 * when done.
 */
#include <linux/cpumask.h>
#include <linux/delay.h>
#include <linux/jiffies.h>
#include <linux/math64.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/timekeeping.h>
#include <linux/workqueue.h>

#include "cbus.h"
#include "cnlab_int.h"

#define BENCH_DRAIN_TIMEOUT_MS	2000

static DEFINE_MUTEX(bench_lock);
static struct cnlab_bench_result bench_res;	/* under bench_lock */
static bool bench_have_result;
static bool bench_running;
static bool bench_closing;
static u32 bench_portid, bench_seq, bench_ack;
static struct work_struct bench_work;

/* Untimed: wait until this CPU's CBUS queue is empty, then pause. */
static int bench_settle(u32 cpu, u32 pause_us)
{
	unsigned long end = jiffies + msecs_to_jiffies(BENCH_DRAIN_TIMEOUT_MS);

	while (!cnlab_cbus_idle(cpu)) {
		if (time_after(jiffies, end))
			return -ETIMEDOUT;
		usleep_range(20, 50);
	}
	if (pause_us)
		usleep_range(pause_us, pause_us + 10);
	if (READ_ONCE(bench_closing))
		return -ESHUTDOWN;
	return 0;
}

static void bench_best(u64 *best, u64 ns, u32 n)
{
	u64 per = div_u64(ns * 1000, n);

	if (!*best || per < *best)
		*best = per;
}

/* One call of either path; @cbus is a constant at each call site. */
static __always_inline int bench_call(bool cbus, struct cn_msg *msg, u32 group)
{
	if (cbus)
		return cbus_insert_group(msg, group, 0, GFP_ATOMIC);
	return cn_netlink_send(msg, 0, group, GFP_ATOMIC);
}

/*
 * A failed direct send, counted out of line: the timed loop keeps its count
 * of successes in a register. (A failed insert shows as cbus_ok < cbus_calls;
 * CBUS counts the drop itself.)
 */
static noinline void bench_direct_failed(int ret, struct cnlab_bench_result *r)
{
	if (ret == -ESRCH)
		r->direct_esrch++;
	else
		r->direct_err++;
}

/* 1 for a call that succeeded, else 0 (a failed direct send counted out of line). */
static __always_inline u32 bench_ok(bool cbus, int ret, struct cnlab_bench_result *r)
{
	if (likely(!ret))
		return 1;
	if (!cbus)
		bench_direct_failed(ret, r);
	return 0;
}

/*
 * Time c->iterations calls of one path in chunks. Always inlined with a
 * constant @cbus, so each path gets its own loop with no test for the path
 * inside the timed region.
 */
static __always_inline int bench_path(bool cbus, const struct cnlab_bench *c,
				      struct cn_msg *msg,
				      struct cnlab_bench_result *r)
{
	u32 done, n, i, ok, cpu;
	u64 t0, tf, t1;
	int err, ret;

	for (done = 0; done < c->iterations; done += n) {
		n = min(c->chunk, c->iterations - done);
		/*
		 * Settle on the CPU this work runs on, not c->cpu: if that CPU
		 * goes offline, the work goes on elsewhere. If it moved while
		 * settling, settle again.
		 */
		for (;;) {
			cpu = raw_smp_processor_id();
			err = bench_settle(cpu, c->pause_us);
			if (err)
				return err;
			preempt_disable();
			if (smp_processor_id() == cpu)
				break;
			preempt_enable();
		}
		t0 = ktime_get_ns();
		/* The first call apart (CBUS: the kick), no test in the loop. */
		msg->seq = done;
		ret = bench_call(cbus, msg, c->group);
		tf = ktime_get_ns();
		ok = bench_ok(cbus, ret, r);
		for (i = 1; i < n; i++) {
			msg->seq = done + i;
			ok += bench_ok(cbus, bench_call(cbus, msg, c->group), r);
		}
		t1 = ktime_get_ns();
		preempt_enable();
		if (cbus) {
			r->cbus_ok += ok;
			r->cbus_ns += t1 - t0;
			r->cbus_first_ns += tf - t0;
			r->cbus_calls += n;
			bench_best(&r->cbus_ns_min_chunk, t1 - t0, n);
		} else {
			r->direct_ok += ok;
			r->direct_ns += t1 - t0;
			r->direct_first_ns += tf - t0;
			r->direct_calls += n;
			bench_best(&r->direct_ns_min_chunk, t1 - t0, n);
		}
	}
	return 0;
}

static int bench_run(const struct cnlab_bench *c, struct cnlab_bench_result *r)
{
	struct cn_msg *msg;
	int err;

	msg = kzalloc(sizeof(*msg) + c->payload, GFP_KERNEL);
	if (!msg)
		return -ENOMEM;
	msg->id.idx = c->idx;
	msg->id.val = c->val;
	msg->len = c->payload;

	err = bench_path(true, c, msg, r);
	if (!err)
		err = bench_path(false, c, msg, r);
	kfree(msg);
	return err;
}

static void bench_work_fn(struct work_struct *work)
{
	struct cnlab_bench_result r = {};
	u32 portid, seq, ack;

	mutex_lock(&bench_lock);
	r.cfg = bench_res.cfg;
	portid = bench_portid;
	seq = bench_seq;
	ack = bench_ack;
	mutex_unlock(&bench_lock);

	r.cpu = raw_smp_processor_id();
	r.status = bench_run(&r.cfg, &r);

	mutex_lock(&bench_lock);
	bench_res = r;
	bench_have_result = true;
	bench_running = false;
	mutex_unlock(&bench_lock);
	/* A run that failed says so in the header too; the body has what was measured. */
	cnlab_reply_to(portid, seq, ack, CNLAB_MSG_BENCH, r.status, &r, sizeof(r));
}

int cnlab_bench_do_start(struct cnlab_req *rq)
{
	struct cnlab_bench c;
	int err = 0;

	if (rq->len != sizeof(c))
		return -EBADMSG;
	memcpy(&c, rq->body, sizeof(c));
	if (c.idx == CNLAB_CTL_IDX && c.val == CNLAB_CTL_VAL)
		return -EINVAL;
	if (c.group < CNLAB_GROUP_MIN || c.group > CNLAB_GROUP_MAX)
		return -EINVAL;
	if (c.payload > CNLAB_PAYLOAD_MAX || !c.iterations ||
	    c.iterations > CNLAB_BENCH_ITER_MAX || !c.chunk ||
	    c.chunk > CNLAB_BENCH_CHUNK_MAX || c.chunk > cnlab_cbus_limit() ||
	    c.pause_us > CNLAB_BENCH_PAUSE_MAX_US)
		return -ERANGE;
	/* A chunk runs with preemption off: bound what it copies, as a burst. */
	if (c.chunk * c.payload > CNLAB_BENCH_CHUNK_BYTES_MAX)
		return -EINVAL;
	if (c.cpu >= nr_cpu_ids || !cpu_online(c.cpu))
		return -EINVAL;

	mutex_lock(&bench_lock);
	if (bench_running || READ_ONCE(bench_closing)) {
		err = -EBUSY;
	} else {
		bench_running = true;
		memset(&bench_res, 0, sizeof(bench_res));
		bench_res.status = -EINPROGRESS;
		bench_res.cfg = c;
		bench_have_result = true;
		bench_portid = rq->nsp->portid;
		bench_seq = rq->msg->seq;
		bench_ack = rq->msg->ack;
		/* A CPU going offline only makes the work run elsewhere. */
		queue_work_on(c.cpu, system_wq, &bench_work);
	}
	mutex_unlock(&bench_lock);
	if (!err)
		rq->replied = true;	/* answered by bench_work_fn() */
	return err;
}

int cnlab_bench_do_result(struct cnlab_req *rq)
{
	struct cnlab_bench_result *r;
	struct cn_msg *cn;

	if (rq->len)
		return -EBADMSG;
	r = cnlab_reply_alloc(sizeof(*r), &cn);
	if (!r)
		return -ENOMEM;
	mutex_lock(&bench_lock);
	if (!bench_have_result) {
		mutex_unlock(&bench_lock);
		kfree(cn);
		return -ENODATA;
	}
	*r = bench_res;
	mutex_unlock(&bench_lock);
	return cnlab_reply_send(rq, cn, sizeof(*r));
}

int cnlab_bench_init(void)
{
	INIT_WORK(&bench_work, bench_work_fn);
	bench_closing = false;
	bench_running = false;
	bench_have_result = false;
	return cnlab_init_fault(5);
}

void cnlab_bench_exit(void)
{
	WRITE_ONCE(bench_closing, true);
	flush_work(&bench_work);
}
