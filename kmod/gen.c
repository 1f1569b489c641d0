// SPDX-License-Identifier: GPL-2.0
/*
 * Generators: emulated kernel subsystems that emit connector messages from
 * a chosen context (kthread, tasklet, timer_list, hard-IRQ hrtimer) through
 * a chosen path (direct cn_netlink_send() or cbus_insert()).
 *
 * One instance per selected CPU. Each message is numbered per (generator,
 * CPU the message was generated on) with preemption disabled together with
 * its hand-off to the path, so numbering order == per-CPU queue order even
 * if an instance is migrated (CPU hotplug moves timers, tasklets and
 * threads of a dead CPU elsewhere; the instance then simply continues there).
 */
#include <linux/cpu.h>
#include <linux/cpumask.h>
#include <linux/hrtimer.h>
#include <linux/interrupt.h>
#include <linux/kthread.h>
#include <linux/math64.h>
#include <linux/mutex.h>
#include <linux/percpu.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/smp.h>
#include <linux/timer.h>
#include <linux/timekeeping.h>

#include "cbus.h"
#include "cnlab_int.h"

#define GEN_BURST_DEFAULT	64
#define GEN_BURST_TIMER		1024
#define GEN_MIN_PERIOD_NS	(20 * NSEC_PER_USEC)

struct gen_cpu {
	u64 seq;		/* == generated */
	u64 ok;
	u64 err_nolistener;
	u64 err_overrun;
	u64 err_nomem;
	u64 err_full;
	u64 err_other;
	u64 bursts;
	u64 bursts_missed;
};

struct cnlab_gen;

struct gen_inst {
	struct cnlab_gen *gen;
	unsigned int cpu;	/* CPU it was started on */
	bool done;
	bool ready;		/* context initialised: safe to cancel */
	u32 rng;
	u64 sent;
	u64 period_ns;		/* timer/hrtimer period; burst mode: 1/rate */
	u64 next_ns;		/* burst mode: when the next burst is due */
	struct cn_msg *buf;
	struct task_struct *task;
	struct tasklet_struct tasklet;
	struct hrtimer hrt;	/* hard-IRQ generator, or tasklet pacer */
	struct timer_list timer;
};

struct cnlab_gen {
	u32 id;
	bool used;		/* started at least once */
	bool stopped;		/* GEN_STOP or unload */
	bool stop;		/* instances must finish now */
	struct cnlab_gen_start cfg;
	u64 start_ns;
	u64 deadline_ns;
	u64 end_ns;
	atomic_t active;
	struct gen_cpu __percpu *pcpu;
	struct gen_inst *inst;
	unsigned int nr_inst;
};

static struct cnlab_gen cnlab_gens[CNLAB_MAX_GENS];
static DEFINE_MUTEX(cnlab_gen_lock);

static void gen_inst_finish(struct gen_inst *in, u64 now)
{
	struct cnlab_gen *g = in->gen;

	if (in->done)
		return;
	in->done = true;
	if (atomic_dec_and_test(&g->active))
		WRITE_ONCE(g->end_ns, now);
}

static bool gen_finished(struct gen_inst *in, u64 now)
{
	struct cnlab_gen *g = in->gen;

	return READ_ONCE(g->stop) || now >= g->deadline_ns ||
	       (g->cfg.count && in->sent >= g->cfg.count);
}

/* How many messages are due now (0 if rate-limited and not yet due). */
static u32 gen_due(struct gen_inst *in, u64 now, u32 burst)
{
	const struct cnlab_gen_start *c = &in->gen->cfg;
	u64 due = burst;
	u64 target;

	if (c->rate) {
		target = mul_u64_u32_div(now - in->gen->start_ns, c->rate,
					 NSEC_PER_SEC) + 1;
		due = target > in->sent ? target - in->sent : 0;
	}
	if (c->count && due > c->count - in->sent)
		due = c->count - in->sent;
	return min_t(u64, due, burst);
}

/* Monotonic time at which the next message becomes due (rate > 0). */
static u64 gen_next_ns(struct gen_inst *in)
{
	return in->gen->start_ns +
	       mul_u64_u32_div(in->sent, NSEC_PER_SEC, in->gen->cfg.rate) + 1;
}

static u32 gen_size(struct gen_inst *in)
{
	const struct cnlab_gen_start *c = &in->gen->cfg;
	u32 x;

	if (c->size_min == c->size_max)
		return c->size_min;
	x = in->rng;		/* xorshift32 */
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	in->rng = x;
	return c->size_min + x % (c->size_max - c->size_min + 1);
}

/*
 * Build and hand off one message. Preemption is disabled (by the caller or
 * by the context), so the sequence number, the CPU and the position in the
 * CPU's queue agree.
 */
static void gen_emit(struct gen_inst *in)
{
	struct cnlab_gen *g = in->gen;
	struct gen_cpu *gc = this_cpu_ptr(g->pcpu);
	struct cn_msg *m = in->buf;
	struct cnlab_event ev;
	u32 size = gen_size(in);
	int ret;

	ev.gen_id = g->id;
	ev.cpu = smp_processor_id();
	ev.seq = gc->seq++;
	ev.ts_ns = ktime_get_ns();
	ev.len = size;
	ev.flags = g->cfg.path == CNLAB_PATH_CBUS ? CNLAB_EV_F_CBUS : 0;
	m->seq = (u32)ev.seq;
	m->ack = 0;
	m->len = size;
	m->flags = 0;
	memcpy(m->data, &ev, sizeof(ev));
	memset(m->data + sizeof(ev), ev.seq & 0xff, size - sizeof(ev));
	in->sent++;

	if (g->cfg.path == CNLAB_PATH_CBUS) {
		ret = cbus_insert_group(m, g->cfg.group,
					g->cfg.flags & CNLAB_GEN_F_BUNDLE ?
					CBUS_F_BUNDLE : 0, GFP_ATOMIC);
		if (!ret)
			gc->ok++;
		else if (ret == -ENOBUFS)
			gc->err_full++;
		else if (ret == -ENOMEM)
			gc->err_nomem++;
		else
			gc->err_other++;
	} else {
		ret = cn_netlink_send(m, 0, g->cfg.group, GFP_ATOMIC);
		if (!ret)
			gc->ok++;
		else if (ret == -ESRCH && cnlab_cbus_has_listeners(g->cfg.group))
			gc->err_overrun++;
		else if (ret == -ESRCH)
			gc->err_nolistener++;
		else if (ret == -ENOMEM)
			gc->err_nomem++;
		else
			gc->err_other++;
	}
}

static void gen_emit_n(struct gen_inst *in, u32 n)
{
	while (n--)
		gen_emit(in);
}

static bool gen_bursts(const struct gen_inst *in)
{
	return in->gen->cfg.flags & CNLAB_GEN_F_BURSTS;
}

/*
 * Burst mode: is a burst due? Bursts are due at start + k / rate; half a
 * period early counts, so a pacing timer whose phase or granularity
 * (jiffies) differs a little does not miss its slot.
 */
static bool gen_burst_due(const struct gen_inst *in, u64 now)
{
	return now + in->period_ns / 2 >= in->next_ns;
}

/*
 * Burst mode: emit one burst of cfg.burst messages back to back (fewer if
 * count ends first), with preemption disabled (by the caller or the
 * context), and set the next slot. A burst is never made up: slots that
 * are already past are skipped, and so are those that would leave less
 * idle time after this burst than it took (at most 50 % of the CPU in any
 * context, however slow the machine); both count as bursts_missed.
 */
static void gen_burst(struct gen_inst *in)
{
	const struct cnlab_gen_start *c = &in->gen->cfg;
	struct gen_cpu *gc;
	u64 t0, t1, next, earliest, skip;
	u32 n = c->burst;

	if (c->count && n > c->count - in->sent)
		n = c->count - in->sent;
	t0 = ktime_get_ns();
	gen_emit_n(in, n);
	t1 = ktime_get_ns();
	gc = this_cpu_ptr(in->gen->pcpu);
	gc->bursts++;
	next = in->next_ns + in->period_ns;
	earliest = t1 + (t1 - t0);
	if (next < earliest) {
		skip = div64_u64(earliest - next + in->period_ns - 1, in->period_ns);
		next += skip * in->period_ns;
		gc->bursts_missed += skip;
	}
	in->next_ns = next;
}

/* ---- process context: one kthread per CPU ---- */

static int gen_kthread_fn(void *arg)
{
	struct gen_inst *in = arg;
	u32 burst = in->gen->cfg.burst;
	ktime_t next;
	u64 now;
	u32 n;

	while (!kthread_should_stop()) {
		now = ktime_get_ns();
		if (gen_finished(in, now))
			break;
		if (gen_bursts(in)) {
			if (now >= in->next_ns) {
				preempt_disable();	/* back to back */
				gen_burst(in);
				preempt_enable();
				cond_resched();
				continue;
			}
			next = ns_to_ktime(in->next_ns);
			set_current_state(TASK_INTERRUPTIBLE);
			if (!kthread_should_stop())
				schedule_hrtimeout_range(&next, 0, HRTIMER_MODE_ABS);
			__set_current_state(TASK_RUNNING);
			continue;
		}
		n = gen_due(in, now, burst);
		if (n) {
			while (n--) {
				preempt_disable();
				gen_emit(in);
				preempt_enable();
			}
			cond_resched();
			continue;
		}
		next = ns_to_ktime(gen_next_ns(in));
		set_current_state(TASK_INTERRUPTIBLE);
		if (!kthread_should_stop())
			schedule_hrtimeout_range(&next, 10 * NSEC_PER_USEC,
						 HRTIMER_MODE_ABS);
		__set_current_state(TASK_RUNNING);
	}
	gen_inst_finish(in, ktime_get_ns());

	/* Stay around until kthread_stop() so the task cannot vanish. */
	for (;;) {
		set_current_state(TASK_INTERRUPTIBLE);
		if (kthread_should_stop())
			break;
		schedule();
	}
	__set_current_state(TASK_RUNNING);
	return 0;
}

/* ---- softirq: a tasklet, paced by a hard hrtimer when rate > 0 ---- */

static void gen_tasklet_fn(struct tasklet_struct *t)
{
	struct gen_inst *in = from_tasklet(in, t, tasklet);
	u64 now = ktime_get_ns();

	if (in->done)
		return;
	if (gen_finished(in, now)) {
		gen_inst_finish(in, now);
		return;
	}
	if (gen_bursts(in)) {
		if (gen_burst_due(in, now))
			gen_burst(in);
	} else {
		gen_emit_n(in, gen_due(in, now, in->gen->cfg.burst));
	}
	if (gen_finished(in, now)) {
		gen_inst_finish(in, now);
		return;
	}
	if (!in->gen->cfg.rate)
		tasklet_schedule(&in->tasklet);
}

static enum hrtimer_restart gen_pacer_fn(struct hrtimer *h)
{
	struct gen_inst *in = container_of(h, struct gen_inst, hrt);

	if (READ_ONCE(in->done) || READ_ONCE(in->gen->stop))
		return HRTIMER_NORESTART;
	tasklet_schedule(&in->tasklet);
	hrtimer_forward_now(h, ns_to_ktime(in->period_ns));
	return HRTIMER_RESTART;
}

/* ---- timer_list, pinned, once per jiffy at most ---- */

static void gen_timer_fn(struct timer_list *t)
{
	struct gen_inst *in = from_timer(in, t, timer);
	u64 now = ktime_get_ns();
	unsigned long delay = 1;

	if (gen_finished(in, now)) {
		gen_inst_finish(in, now);
		return;
	}
	if (gen_bursts(in)) {
		if (gen_burst_due(in, now))
			gen_burst(in);
		if (gen_finished(in, now)) {
			gen_inst_finish(in, now);
			return;
		}
		now = ktime_get_ns();
		if (in->next_ns > now)
			delay = max_t(unsigned long, 1,
				      nsecs_to_jiffies(in->next_ns - now + TICK_NSEC - 1));
		mod_timer(&in->timer, jiffies + delay);
		return;
	}
	gen_emit_n(in, gen_due(in, now, in->gen->cfg.burst));
	if (gen_finished(in, now)) {
		gen_inst_finish(in, now);
		return;
	}
	if (in->gen->cfg.rate)
		delay = max_t(unsigned long, 1,
			      nsecs_to_jiffies(gen_next_ns(in) - min(now, gen_next_ns(in))));
	mod_timer(&in->timer, jiffies + delay);
}

/* ---- hard IRQ: hrtimer in HRTIMER_MODE_REL_PINNED_HARD ---- */

/*
 * Rate-paced hard-IRQ firing that took @busy ns: the next one is due a
 * period later, but never sooner than @busy after this one ended, so the
 * generator keeps at most half of its CPU in hard-IRQ context whatever the
 * rate, burst and payload (nothing else would stop an hrtimer that re-arms
 * itself every 20 us from taking the whole CPU). Messages that fall behind
 * are caught up at later firings, at most burst at a time.
 */
static void gen_hrt_rearm(struct hrtimer *h, u64 period_ns, u64 end, u64 busy)
{
	hrtimer_forward_now(h, ns_to_ktime(period_ns));
	if (ktime_before(hrtimer_get_expires(h), ns_to_ktime(end + busy)))
		hrtimer_set_expires(h, ns_to_ktime(end + busy));
}

static enum hrtimer_restart gen_hrt_fn(struct hrtimer *h)
{
	struct gen_inst *in = container_of(h, struct gen_inst, hrt);
	u64 now = ktime_get_ns();
	u64 end;

	if (gen_finished(in, now)) {
		gen_inst_finish(in, now);
		return HRTIMER_NORESTART;
	}
	if (gen_bursts(in)) {
		if (gen_burst_due(in, now))
			gen_burst(in);
		if (gen_finished(in, now)) {
			gen_inst_finish(in, now);
			return HRTIMER_NORESTART;
		}
		/* The next slot: the hrtimer clock is CLOCK_MONOTONIC, as ktime_get_ns(). */
		hrtimer_set_expires(h, ns_to_ktime(in->next_ns));
		return HRTIMER_RESTART;
	}
	gen_emit_n(in, gen_due(in, now, in->gen->cfg.burst));
	if (gen_finished(in, now)) {
		gen_inst_finish(in, now);
		return HRTIMER_NORESTART;
	}
	end = ktime_get_ns();
	gen_hrt_rearm(h, in->period_ns, end, end - now);
	return HRTIMER_RESTART;
}

/* Runs on the instance's CPU (IPI) so pinned timers start there. */
static void gen_start_on_cpu(void *arg)
{
	struct gen_inst *in = arg;

	switch (in->gen->cfg.context) {
	case CNLAB_CTX_SOFTIRQ:
		if (in->gen->cfg.rate)
			hrtimer_start(&in->hrt, ns_to_ktime(in->period_ns),
				      HRTIMER_MODE_REL_PINNED_HARD);
		tasklet_schedule(&in->tasklet);
		break;
	case CNLAB_CTX_HARDIRQ:
		hrtimer_start(&in->hrt, ns_to_ktime(0),
			      HRTIMER_MODE_REL_PINNED_HARD);
		break;
	}
}

/* Stop every context of @g and wait for it; idempotent. Process context. */
static void gen_stop_instances(struct cnlab_gen *g)
{
	struct gen_inst *in;
	unsigned int i;

	WRITE_ONCE(g->stop, true);
	for (i = 0; i < g->nr_inst; i++) {
		in = &g->inst[i];
		if (!in->ready)
			continue;
		switch (g->cfg.context) {
		case CNLAB_CTX_KTHREAD:
			if (in->task) {
				kthread_stop(in->task);
				in->task = NULL;
			}
			break;
		case CNLAB_CTX_SOFTIRQ:
			hrtimer_cancel(&in->hrt);
			tasklet_kill(&in->tasklet);
			/* The pacer sees g->stop: it schedules nothing more. */
			hrtimer_cancel(&in->hrt);
			break;
		case CNLAB_CTX_TIMER:
			del_timer_sync(&in->timer);
			break;
		case CNLAB_CTX_HARDIRQ:
			hrtimer_cancel(&in->hrt);
			break;
		}
		gen_inst_finish(in, ktime_get_ns());
	}
}

/* Stop the instances and free them; the per-CPU counters stay. */
static void gen_free_instances(struct cnlab_gen *g)
{
	unsigned int i;

	gen_stop_instances(g);
	for (i = 0; i < g->nr_inst; i++)
		kfree(g->inst[i].buf);
	kfree(g->inst);
	g->inst = NULL;
	g->nr_inst = 0;
}

static void gen_release(struct cnlab_gen *g)
{
	gen_free_instances(g);
	free_percpu(g->pcpu);
	g->pcpu = NULL;
}

/*
 * Burst mode bounds, per CPU instance (docs/kmod.md): a burst runs back to
 * back in the generator's context, with IRQs off in hard-IRQ context, so
 * its length and the work per second are capped; timer_list runs at most
 * once per jiffy.
 */
static int gen_validate_bursts(const struct cnlab_gen_start *c)
{
	u64 per_s = (u64)c->burst * c->rate;
	u64 per_burst = (u64)c->burst * c->size_max;

	if (!c->rate || c->rate > CNLAB_BURST_RATE_MAX || !c->burst)
		return -EINVAL;
	if (c->context == CNLAB_CTX_TIMER && c->rate > HZ)
		return -EINVAL;
	if (per_s > CNLAB_BURST_MSGS_PER_S_MAX ||
	    per_burst > CNLAB_BURST_BYTES_MAX ||
	    per_burst * c->rate > CNLAB_BURST_BYTES_PER_S_MAX)
		return -EINVAL;
	return 0;
}

static int gen_validate(struct cnlab_gen_start *c)
{
	if (c->gen_id >= CNLAB_MAX_GENS)
		return -EINVAL;
	if (c->idx == CNLAB_CTL_IDX && c->val == CNLAB_CTL_VAL)
		return -EINVAL;
	if (c->group < CNLAB_GROUP_MIN || c->group > CNLAB_GROUP_MAX)
		return -EINVAL;
	if (c->count > CNLAB_COUNT_MAX || c->duration_ns > CNLAB_DURATION_MAX_NS)
		return -ERANGE;
	if (!c->count && !c->duration_ns)
		return -EINVAL;
	if (!c->cpu_mask)
		return -EINVAL;
	if (c->rate > CNLAB_RATE_MAX)
		return -ERANGE;
	if (c->size_min < sizeof(struct cnlab_event) || c->size_max < c->size_min ||
	    c->size_max > CNLAB_PAYLOAD_MAX)
		return -EINVAL;
	if (c->context > CNLAB_CTX_MAX || c->path > CNLAB_PATH_MAX)
		return -EINVAL;
	/* The direct send is not hard-IRQ safe: that is what CBUS is for. */
	if (c->path == CNLAB_PATH_DIRECT && c->context == CNLAB_CTX_HARDIRQ)
		return -EINVAL;
	if (c->flags & ~CNLAB_GEN_F_ALL)
		return -EINVAL;
	if ((c->flags & CNLAB_GEN_F_BUNDLE) && c->path != CNLAB_PATH_CBUS)
		return -EINVAL;
	if (c->burst > CNLAB_BURST_MAX)
		return -ERANGE;
	if (c->flags & CNLAB_GEN_F_BURSTS)
		return gen_validate_bursts(c);
	/*
	 * Softirq, timer and hard-IRQ contexts emit up to burst messages in
	 * one firing without a break: as in burst mode, no firing copies more
	 * than CNLAB_BURST_BYTES_MAX (the default burst shrinks to fit).
	 */
	if (c->context != CNLAB_CTX_KTHREAD &&
	    (u64)c->burst * c->size_max > CNLAB_BURST_BYTES_MAX)
		return -EINVAL;
	return 0;
}

/* The burst a rate-paced generator uses when the request says 0. */
static u32 gen_default_burst(const struct cnlab_gen_start *c)
{
	u32 burst = c->context == CNLAB_CTX_TIMER ? GEN_BURST_TIMER :
						     GEN_BURST_DEFAULT;

	if (c->context != CNLAB_CTX_KTHREAD)
		burst = min_t(u32, burst, CNLAB_BURST_BYTES_MAX / c->size_max);
	return burst;
}

static int gen_setup_inst(struct cnlab_gen *g, struct gen_inst *in,
			  unsigned int cpu)
{
	const struct cnlab_gen_start *c = &g->cfg;

	in->gen = g;
	in->cpu = cpu;
	in->rng = 0x9e3779b9u ^ (g->id << 8) ^ cpu;
	in->buf = kzalloc_node(struct_size(in->buf, data, c->size_max), GFP_KERNEL,
			       cpu_to_node(cpu));
	if (!in->buf)
		return -ENOMEM;
	in->buf->id.idx = c->idx;
	in->buf->id.val = c->val;
	in->period_ns = GEN_MIN_PERIOD_NS;
	if (c->rate)
		in->period_ns = max_t(u64, NSEC_PER_SEC / c->rate,
				      GEN_MIN_PERIOD_NS);

	switch (c->context) {
	case CNLAB_CTX_KTHREAD:
		in->task = kthread_create(gen_kthread_fn, in, "cnlab_g%u/%u",
					  g->id, cpu);
		if (IS_ERR(in->task)) {
			int err = PTR_ERR(in->task);

			in->task = NULL;
			return err;
		}
		kthread_bind(in->task, cpu);
		break;
	case CNLAB_CTX_SOFTIRQ:
		tasklet_setup(&in->tasklet, gen_tasklet_fn);
		hrtimer_init(&in->hrt, CLOCK_MONOTONIC,
			     HRTIMER_MODE_REL_PINNED_HARD);
		in->hrt.function = gen_pacer_fn;
		break;
	case CNLAB_CTX_TIMER:
		timer_setup(&in->timer, gen_timer_fn, TIMER_PINNED);
		break;
	case CNLAB_CTX_HARDIRQ:
		hrtimer_init(&in->hrt, CLOCK_MONOTONIC,
			     HRTIMER_MODE_REL_PINNED_HARD);
		in->hrt.function = gen_hrt_fn;
		break;
	}
	in->ready = true;
	return 0;
}

static void gen_launch_inst(struct gen_inst *in)
{
	switch (in->gen->cfg.context) {
	case CNLAB_CTX_KTHREAD:
		wake_up_process(in->task);
		break;
	case CNLAB_CTX_TIMER:
		in->timer.expires = jiffies;
		add_timer_on(&in->timer, in->cpu);
		break;
	default:
		smp_call_function_single(in->cpu, gen_start_on_cpu, in, 1);
		break;
	}
}

/*
 * Start generator c->gen_id. @c is validated and updated with the
 * effective CPU mask and burst. Caller holds no lock.
 */
static int gen_start(struct cnlab_gen_start *c)
{
	struct cnlab_gen *g = &cnlab_gens[c->gen_id];
	unsigned int nr_cpus = min_t(unsigned int, nr_cpu_ids, CNLAB_MAX_CPUS);
	struct cnlab_gen prev;
	u64 mask = 0;
	unsigned int cpu, i;
	int err;

	if (!c->burst)	/* burst mode: refused by gen_validate_bursts() */
		c->burst = gen_default_burst(c);
	if (!c->duration_ns)
		c->duration_ns = CNLAB_DURATION_MAX_NS;

	cpus_read_lock();
	mutex_lock(&cnlab_gen_lock);
	if (g->used && atomic_read(&g->active) && !g->stopped) {
		err = -EBUSY;
		goto out_unlock;
	}
	for (cpu = 0; cpu < nr_cpus; cpu++)
		if ((c->cpu_mask & BIT_ULL(cpu)) && cpu_online(cpu))
			mask |= BIT_ULL(cpu);
	if (!mask) {
		err = -EINVAL;
		goto out_unlock;
	}
	c->cpu_mask = mask;

	/*
	 * The previous run's instances go (they point at *g); its counters,
	 * config and times are kept in @prev until the new run has started,
	 * so a start that fails leaves GEN_STATS and the unload log as they
	 * were.
	 */
	gen_free_instances(g);
	prev = *g;
	memset(g, 0, sizeof(*g));
	g->id = c->gen_id;
	g->cfg = *c;
	g->pcpu = alloc_percpu(struct gen_cpu);
	g->inst = kcalloc(hweight64(mask), sizeof(*g->inst), GFP_KERNEL);
	if (!g->pcpu || !g->inst) {
		err = -ENOMEM;
		goto err_release;
	}
	for (cpu = 0; cpu < nr_cpus; cpu++) {
		if (!(mask & BIT_ULL(cpu)))
			continue;
		err = gen_setup_inst(g, &g->inst[g->nr_inst], cpu);
		g->nr_inst++;
		if (err)
			goto err_release;
	}

	g->used = true;
	g->start_ns = ktime_get_ns();
	g->deadline_ns = g->start_ns + c->duration_ns;
	atomic_set(&g->active, g->nr_inst);
	for (i = 0; i < g->nr_inst; i++) {
		g->inst[i].next_ns = g->start_ns;	/* burst mode: first burst at once */
		gen_launch_inst(&g->inst[i]);
	}
	mutex_unlock(&cnlab_gen_lock);
	cpus_read_unlock();
	free_percpu(prev.pcpu);
	return 0;

err_release:
	/* Nothing was launched: threads are created but never woken. */
	gen_release(g);
	*g = prev;	/* the previous run, without instances */
out_unlock:
	mutex_unlock(&cnlab_gen_lock);
	cpus_read_unlock();
	return err;
}

int cnlab_gen_do_start(struct cnlab_req *rq)
{
	struct cnlab_gen_start c;
	struct cn_msg *cn;
	void *body;
	int err;

	if (rq->len != sizeof(c))
		return -EBADMSG;
	memcpy(&c, rq->body, sizeof(c));
	err = gen_validate(&c);
	if (err)
		return err;
	err = gen_start(&c);
	if (err)
		return err;
	body = cnlab_reply_alloc(sizeof(c), &cn);
	if (!body)
		return -ENOMEM;	/* the generator runs; GEN_STATS shows it */
	memcpy(body, &c, sizeof(c));
	return cnlab_reply_send(rq, cn, sizeof(c));
}

static void gen_stop(struct cnlab_gen *g)
{
	if (!g->used || g->stopped)
		return;
	gen_stop_instances(g);
	g->stopped = true;
}

int cnlab_gen_do_stop(struct cnlab_req *rq)
{
	struct cnlab_gen_stop s;
	struct cn_msg *cn;
	void *body;
	u32 i;

	if (rq->len != sizeof(s))
		return -EBADMSG;
	memcpy(&s, rq->body, sizeof(s));
	if (s.reserved)
		return -EINVAL;
	if (s.gen_id >= CNLAB_MAX_GENS && s.gen_id != CNLAB_GEN_ALL)
		return -EINVAL;

	mutex_lock(&cnlab_gen_lock);
	if (s.gen_id != CNLAB_GEN_ALL && !cnlab_gens[s.gen_id].used) {
		mutex_unlock(&cnlab_gen_lock);
		return -ENOENT;
	}
	if (s.gen_id == CNLAB_GEN_ALL) {
		for (i = 0; i < CNLAB_MAX_GENS; i++)
			gen_stop(&cnlab_gens[i]);
	} else {
		gen_stop(&cnlab_gens[s.gen_id]);
	}
	mutex_unlock(&cnlab_gen_lock);

	body = cnlab_reply_alloc(sizeof(s), &cn);
	if (!body)
		return -ENOMEM;
	memcpy(body, &s, sizeof(s));
	return cnlab_reply_send(rq, cn, sizeof(s));
}

static u32 gen_state(struct cnlab_gen *g)
{
	if (!g->used)
		return CNLAB_GEN_IDLE;
	if (g->stopped)
		return CNLAB_GEN_STOPPED;
	return atomic_read(&g->active) ? CNLAB_GEN_RUNNING : CNLAB_GEN_DONE;
}

int cnlab_gen_do_stats(struct cnlab_req *rq)
{
	u32 nr = min_t(u32, num_possible_cpus(), CNLAB_MAX_CPUS);
	struct cnlab_gen_stats_req req;
	struct cnlab_gen_cpu_stats *cs;
	struct cnlab_gen_stats_rep *rep;
	u32 len = sizeof(*rep) + nr * sizeof(*cs);
	struct cnlab_gen *g;
	struct gen_cpu *gc;
	struct cn_msg *cn;
	u32 i = 0;
	int cpu;

	if (rq->len != sizeof(req))
		return -EBADMSG;
	memcpy(&req, rq->body, sizeof(req));
	if (req.reserved || req.gen_id >= CNLAB_MAX_GENS)
		return -EINVAL;

	rep = cnlab_reply_alloc(len, &cn);
	if (!rep)
		return -ENOMEM;
	cs = (struct cnlab_gen_cpu_stats *)(rep + 1);
	g = &cnlab_gens[req.gen_id];

	mutex_lock(&cnlab_gen_lock);
	rep->gen_id = req.gen_id;
	rep->state = gen_state(g);
	rep->nr_cpus = nr;
	rep->active = g->used ? atomic_read(&g->active) : 0;
	rep->start_ns = g->start_ns;
	rep->end_ns = rep->active ? 0 : READ_ONCE(g->end_ns);
	if (g->used)
		rep->cfg = g->cfg;
	/* The first nr possible CPUs (the mask may have holes), each with its number. */
	for_each_possible_cpu(cpu) {
		if (i == nr)
			break;
		cs[i].cpu = cpu;
		if (g->pcpu) {
			gc = per_cpu_ptr(g->pcpu, cpu);
			cs[i].generated = READ_ONCE(gc->seq);
			cs[i].ok = READ_ONCE(gc->ok);
			cs[i].err_nolistener = READ_ONCE(gc->err_nolistener);
			cs[i].err_overrun = READ_ONCE(gc->err_overrun);
			cs[i].err_nomem = READ_ONCE(gc->err_nomem);
			cs[i].err_full = READ_ONCE(gc->err_full);
			cs[i].err_other = READ_ONCE(gc->err_other);
			cs[i].bursts = READ_ONCE(gc->bursts);
			cs[i].bursts_missed = READ_ONCE(gc->bursts_missed);
		}
		i++;
	}
	mutex_unlock(&cnlab_gen_lock);
	return cnlab_reply_send(rq, cn, len);
}

int cnlab_gen_init(void)
{
	u32 i;

	for (i = 0; i < CNLAB_MAX_GENS; i++)
		cnlab_gens[i].id = i;
	return cnlab_init_fault(4);
}

static const char *const gen_state_names[] = {
	[CNLAB_GEN_IDLE] = "idle",
	[CNLAB_GEN_RUNNING] = "running",
	[CNLAB_GEN_DONE] = "done",
	[CNLAB_GEN_STOPPED] = "stopped",
};

/*
 * Log the final per-CPU counts of a stopped generator, so that a consumer's
 * loss can still be reconciled after the module is gone. One header line
 * with the number of CPU lines that follow (CPUs that generated nothing
 * are left out), then one line per CPU. @state is the state before unload.
 */
static void gen_log_final(struct cnlab_gen *g, u32 state)
{
	const struct gen_cpu *gc;
	unsigned int cpu, n = 0;

	if (!g->used || !g->pcpu)
		return;
	for_each_possible_cpu(cpu)
		if (per_cpu_ptr(g->pcpu, cpu)->seq)
			n++;
	pr_info(CNLAB_NAME ": gen %u final: state %s cpus %u\n", g->id,
		gen_state_names[state], n);
	for_each_possible_cpu(cpu) {
		gc = per_cpu_ptr(g->pcpu, cpu);
		if (!gc->seq)
			continue;
		pr_info(CNLAB_NAME ": gen %u cpu %u final: generated %llu ok %llu nolistener %llu overrun %llu nomem %llu full %llu other %llu bursts %llu missed %llu\n",
			g->id, cpu, gc->seq, gc->ok, gc->err_nolistener,
			gc->err_overrun, gc->err_nomem, gc->err_full,
			gc->err_other, gc->bursts, gc->bursts_missed);
	}
}

void cnlab_gen_exit(void)
{
	struct cnlab_gen *g;
	u32 i, state;

	mutex_lock(&cnlab_gen_lock);
	for (i = 0; i < CNLAB_MAX_GENS; i++) {
		g = &cnlab_gens[i];
		state = gen_state(g);
		gen_stop(g);
		gen_log_final(g, state);
		gen_release(g);
	}
	mutex_unlock(&cnlab_gen_lock);
}
