// SPDX-License-Identifier: GPL-2.0
/*
 * CBUS: a per-CPU deferred message bus on top of the netlink connector.
 *
 * Producer (cbus_insert): with local IRQs off on the current CPU: count
 * the message, take a preallocated slot from the CPU's free list (or, for a
 * big message or an empty pool, a kmalloc() buffer), copy it, check the
 * queue limit, add it to the CPU's queue and, only if the queue was empty,
 * wake the CPU's drain thread. No netlink work, no global lock, no atomic
 * read-modify-write but the list add, only CPU-local cache lines in the
 * common case (the drain thread runs on the same CPU and gives slots back
 * to the local free list; from another CPU they go back through a
 * lock-free remote list).
 *
 * Consumer (cbus_thread_fn, a per-CPU smpboot thread "cbus/N" like
 * ksoftirqd): takes the whole queue with llist_del_all(), restores FIFO
 * order and sends each message, or a bundle of consecutive bundle-able
 * messages, with cn_netlink_send(GFP_KERNEL). One drain of a given queue at
 * a time (drain_lock), so per-CPU order is kept when the hotplug callback
 * or the unload drains a CPU's queue from elsewhere.
 *
 * Why a thread and not a work item: waking an idle worker through
 * queue_work_on() cost 11.4 us (median in the BENCH loop) under TCG, a
 * wake_up_process() of the thread 6.8-8.5 us; the kick is the dearest part
 * of a burst of inserts.
 *
 * Invariant per CPU and in total:
 *	inserted == sent + drop_full + drop_nomem + drop_nolistener +
 *		    drop_overrun + drop_nlerr + queued
 */
#include <linux/cpuhotplug.h>
#include <linux/cpumask.h>
#include <linux/debugfs.h>
#include <linux/error-injection.h>
#include <linux/irqflags.h>
#include <linux/jiffies.h>
#include <linux/kthread.h>
#include <linux/kernel.h>
#include <linux/llist.h>
#include <linux/lockdep.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/mutex.h>
#include <linux/netlink.h>
#include <linux/percpu.h>
#include <linux/sched.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/smpboot.h>
#include <linux/timekeeping.h>
#include <linux/wait.h>
#include <net/sock.h>
#include <asm/unaligned.h>

#include "cbus.h"
#include "cnlab_int.h"

#define CREATE_TRACE_POINTS
#include "cnlab_trace.h"

static unsigned int queue_limit = 4096;
module_param(queue_limit, uint, 0444);
MODULE_PARM_DESC(queue_limit, "CBUS per-CPU queue limit at load (1..1048576; SET_FAULT changes it)");

static unsigned int queue_bytes = CNLAB_QBYTES_DEFAULT;
module_param(queue_bytes, uint, 0444);
MODULE_PARM_DESC(queue_bytes, "CBUS bytes queued per CPU, cn_msg headers included (65536..1073741824)");

static unsigned int bundle_bytes = 8192;
module_param(bundle_bytes, uint, 0444);
MODULE_PARM_DESC(bundle_bytes, "CBUS bundle size limit in bytes (256..16364: a bundle is one connector message)");

static unsigned int drain_budget = 4096;
module_param(drain_budget, uint, 0444);
MODULE_PARM_DESC(drain_budget, "Messages a drain thread sends before it yields the CPU");

static int drain_nice = MIN_NICE;
module_param(drain_nice, int, 0444);
MODULE_PARM_DESC(drain_nice, "Nice level of the per-CPU drain threads (-20..19, default -20)");

static unsigned int pool_slots = 1024;
module_param(pool_slots, uint, 0444);
MODULE_PARM_DESC(pool_slots, "Preallocated CBUS message slots per CPU (0..65536; 0: always kmalloc)");

/* Internal event flag (above the CBUS_F_* insert flags). */
#define CBUS_EV_SLOT	0x80000000u	/* from the per-CPU slot pool */

struct cbus_event {
	struct llist_node node;
	u32 group;
	u32 flags;		/* CBUS_F_* | CBUS_EV_SLOT */
	struct cn_msg msg;	/* followed by msg.len data bytes */
};

/* Pool slot size: messages with up to CBUS_SLOT_DATA data bytes use a slot. */
#define CBUS_SLOT_SIZE	256
#define CBUS_SLOT_DATA	(CBUS_SLOT_SIZE - sizeof(struct cbus_event))

/* What the drain thread is doing, as it says itself (read from a vmcore). */
enum cbus_drain_state {
	CBUS_DRAIN_IDLE,	/* between drains: waiting for work */
	CBUS_DRAIN_STALLED,	/* held by the STALL_MS fault knob */
	CBUS_DRAIN_LOCKING,	/* waiting for drain_lock */
	CBUS_DRAIN_SENDING,	/* draining the queue */
};

struct cbus_cpu {
	/* Producer side: written on the owning CPU with IRQs off. */
	struct llist_head list;
	u64 inserted;
	u64 drop_full;
	u64 drop_nomem;
	u64 rejected;
	u64 enq;		/* accepted onto the queue */
	u64 enq_bytes;		/* their cn_msg bytes (header + data) */
	u64 hwm;
	u64 kicks;
	u64 pool_miss;		/* small message, empty pool: kmalloc */
	u32 alloc_count;	/* fault injection: allocations seen in alloc_epoch */
	u32 alloc_epoch;	/* the ALLOC_NTH setting alloc_count belongs to */
	struct llist_node *free;	/* slot free list (owner CPU, IRQs off) */
	unsigned long queued_since;	/* jiffies when the queue last went non-empty */

	/* Slots given back from other CPUs (lock-free). */
	struct llist_head remote_free ____cacheline_aligned;
	void *pool;		/* pool_slots * CBUS_SLOT_SIZE bytes */

	/* Consumer side: written under drain_lock. */
	u64 deq ____cacheline_aligned;	/* taken off the queue */
	u64 deq_bytes;		/* their cn_msg bytes */
	u64 sent;
	u64 drop_nolistener;
	u64 drop_overrun;
	u64 drop_nlerr;
	u64 batches;
	u64 batch_max;
	u64 nl_msgs;
	u64 bundles;
	u64 hist[CNLAB_BATCH_BUCKETS];
	struct mutex drain_lock;	/* one drainer at a time: keeps per-CPU order */
	struct llist_node *backlog;	/* taken off the queue, not yet sent (FIFO) */
	struct task_struct *thread;	/* the drain thread (smpboot's store) */
	unsigned long backlog_since;	/* queued_since of what the backlog was taken from */
	unsigned long drain_jiffies;	/* when the drain thread last changed drain_state */
	enum cbus_drain_state drain_state;	/* for a vmcore (cnlab debug) */
	unsigned int cpu;
	/* Bundle being built (under drain_lock). */
	struct cn_msg *bundle;
	u32 bundle_group;
	u32 bundle_count;
};

/* The kernel's HZ, for a debugger turning jiffies into seconds. */
const unsigned int cnlab_hz = HZ;

static struct cbus_cpu __percpu *cbus_pcpu;
/* The connector's kernel socket, to tell "no listener" from "all full". */
static struct sock *cbus_cn_sk;
static int cbus_hp_state;
static struct dentry *cbus_dbg_file;

static bool cbus_accepting __read_mostly;
static bool cbus_stopping __read_mostly;
static u32 cbus_limit __read_mostly;
static u32 cbus_qbytes __read_mostly;
/*
 * ALLOC_NTH fault knob: epoch (high 32 bits, bumped by every setting) and
 * nth (low 32 bits) in one word, so a producer reads both at once and each
 * CPU restarts its own count at its first insert of a new epoch: no other
 * CPU ever writes a producer's count.
 */
static atomic64_t cbus_alloc_fault __read_mostly;
static u64 cbus_stall_until;
static u32 cbus_stall_last_ms;
static unsigned int cbus_stall_gen;	/* bumped by every SET_FAULT STALL_MS */
static DECLARE_WAIT_QUEUE_HEAD(cbus_stall_wq);

/* Counter bump by its single writer; lockless readers use READ_ONCE(). */
static inline void cbus_add(u64 *field, u64 n)
{
	WRITE_ONCE(*field, *field + n);
}

/*
 * Copy a small message word by word: for the short messages that use pool
 * slots this beats a call to memcpy() (a "rep movsb" on CPUs with FSRM,
 * which emulators execute byte by byte).
 */
static __always_inline void cbus_copy_small(u8 *dst, const u8 *src, u32 len)
{
	while (len >= 8) {
		put_unaligned(get_unaligned((const u64 *)src), (u64 *)dst);
		src += 8;
		dst += 8;
		len -= 8;
	}
	while (len--)
		*dst++ = *src++;
}

static __always_inline void cbus_fill(struct cbus_event *ev,
				      const struct cn_msg *msg,
				      u32 group, u32 flags, bool small)
{
	ev->group = group;
	ev->flags = flags;
	/* Header and data apart: no fortify field-spanning copy. */
	ev->msg = *msg;
	if (small)
		cbus_copy_small(ev->msg.data, msg->data, msg->len);
	else
		memcpy(ev->msg.data, msg->data, msg->len);
}

/*
 * llist_add() inline: llist_add_batch() is out of line, and a call and
 * return cost the hot path more than the cmpxchg under emulation.  Full
 * barrier like llist_add(); true if the list was empty.
 */
static __always_inline bool cbus_list_add(struct llist_node *node,
					  struct llist_head *head)
{
	struct llist_node *first = READ_ONCE(head->first);

	do {
		node->next = first;
	} while (!try_cmpxchg(&head->first, &first, node));
	return !first;
}

/*
 * Wake the CPU's drain thread. A thread parked for CPU hotplug ignores the
 * wake-up (TASK_PARKED); the dead-CPU drain or the unpark picks the queue up.
 */
static __always_inline void cbus_kick(struct cbus_cpu *cc)
{
	struct task_struct *thread = READ_ONCE(cc->thread);

	if (likely(thread))
		wake_up_process(thread);
}

/* A slot from this CPU's pool, or NULL. IRQs off, on cc's CPU. */
static struct cbus_event *cbus_slot_get(struct cbus_cpu *cc)
{
	struct llist_node *n = cc->free;

	/* Checked on lockdep kernels (the lab's debug flavour); no code otherwise. */
	lockdep_assert_irqs_disabled();

	if (unlikely(!n)) {
		/* Take back what other CPUs returned (rare: hotplug, unbound). */
		n = llist_del_all(&cc->remote_free);
		if (!n)
			return NULL;
	}
	cc->free = n->next;
	return container_of(n, struct cbus_event, node);
}

/* Give an event back: to its CPU's pool, or kfree(). Any context. */
static void cbus_event_free(struct cbus_cpu *cc, struct cbus_event *ev)
{
	unsigned long irqflags;

	if (!ev)
		return;
	if (!(ev->flags & CBUS_EV_SLOT)) {
		kfree(ev);
		return;
	}
	local_irq_save(irqflags);
	if (raw_smp_processor_id() == cc->cpu) {
		ev->node.next = cc->free;
		cc->free = &ev->node;
	} else {
		llist_add(&ev->node, &cc->remote_free);
	}
	local_irq_restore(irqflags);
}

int cbus_insert_group(struct cn_msg *msg, u32 group, u32 flags, gfp_t gfp)
{
	struct cbus_event *ev = NULL;
	struct cbus_cpu *cc;
	unsigned long irqflags;
	u64 depth, fault;
	u32 nth, bytes;
	int ret;

	if (unlikely(group > CNLAB_GROUP_MAX || (flags & ~CBUS_F_ALL))) {
		this_cpu_inc(cbus_pcpu->rejected);
		return -EINVAL;
	}
	if (unlikely(msg->len > CBUS_MAX_DATA)) {
		this_cpu_inc(cbus_pcpu->rejected);
		return -EMSGSIZE;
	}
	if (unlikely(msg->len > CBUS_SLOT_DATA)) {
		/* Big message: allocate with the caller's gfp, IRQs still on. */
		if (!preemptible())
			gfp &= ~__GFP_DIRECT_RECLAIM;
		ev = kmalloc(sizeof(*ev) + msg->len, gfp | __GFP_NOWARN);
		if (ev)
			cbus_fill(ev, msg, group, flags, false);
	}

	local_irq_save(irqflags);
	cc = this_cpu_ptr(cbus_pcpu);
	if (unlikely(!READ_ONCE(cbus_accepting))) {
		cc->rejected++;
		ret = -ESHUTDOWN;
		goto out_free;
	}
	cc->inserted++;
	fault = atomic64_read(&cbus_alloc_fault);
	nth = (u32)fault;
	if (unlikely(nth)) {
		/* Injected allocation failure (SET_FAULT ALLOC_NTH). */
		if (cc->alloc_epoch != (u32)(fault >> 32)) {
			cc->alloc_epoch = fault >> 32;
			cc->alloc_count = 0;
		}
		if (++cc->alloc_count % nth == 0) {
			cc->drop_nomem++;
			trace_cnlab_drop(cc->cpu, CNLAB_DROP_NOMEM, 1);
			ret = -ENOMEM;
			goto out_free;
		}
	}
	if (likely(msg->len <= CBUS_SLOT_DATA)) {
		ev = cbus_slot_get(cc);
		if (likely(ev)) {
			cbus_fill(ev, msg, group, flags | CBUS_EV_SLOT, true);
		} else {
			cc->pool_miss++;
			ev = kmalloc(sizeof(*ev) + msg->len,
				     GFP_ATOMIC | __GFP_NOWARN);
			if (ev)
				cbus_fill(ev, msg, group, flags, true);
		}
	}
	if (unlikely(!ev)) {
		cc->drop_nomem++;
		trace_cnlab_drop(cc->cpu, CNLAB_DROP_NOMEM, 1);
		ret = -ENOMEM;
		goto out;
	}
	depth = cc->enq - READ_ONCE(cc->deq);
	bytes = sizeof(*msg) + msg->len;
	if (unlikely(depth >= READ_ONCE(cbus_limit) ||
		     cc->enq_bytes - READ_ONCE(cc->deq_bytes) + bytes > cbus_qbytes)) {
		cc->drop_full++;
		trace_cnlab_drop(cc->cpu, CNLAB_DROP_FULL, 1);
		ret = -ENOBUFS;
		goto out_free;
	}
	cc->enq++;
	cc->enq_bytes += bytes;
	if (depth >= READ_ONCE(cc->hwm))
		WRITE_ONCE(cc->hwm, depth + 1);
	if (cbus_list_add(&ev->node, &cc->list)) {
		/* Empty -> non-empty: the drain thread may sleep, kick it. */
		WRITE_ONCE(cc->queued_since, jiffies);
		cc->kicks++;
		cbus_kick(cc);
	}
	trace_cnlab_insert(cc->cpu, depth + 1, bytes);
	local_irq_restore(irqflags);
	return 0;

out_free:
	cbus_event_free(cc, ev);
out:
	local_irq_restore(irqflags);
	return ret;
}
EXPORT_SYMBOL_GPL(cbus_insert_group);
/* Callers must cope with a refusal: fail_function may make it refuse (the lab's fail-function fault). */
ALLOW_ERROR_INJECTION(cbus_insert_group, ERRNO);

int cbus_insert(struct cn_msg *msg, gfp_t gfp)
{
	return cbus_insert_group(msg, 0, 0, gfp);
}
EXPORT_SYMBOL_GPL(cbus_insert);

/*
 * Take a reference to the connector's kernel socket (ctl.c finds it at
 * init); kept until unload.
 */
void cnlab_cbus_set_cn_sock(struct sock *sk)
{
	if (cbus_cn_sk)
		return;
	sock_hold(sk);
	WRITE_ONCE(cbus_cn_sk, sk);
}

bool cnlab_cbus_cn_sock_known(void)
{
	return READ_ONCE(cbus_cn_sk);
}

/*
 * After cn_netlink_send() returned -ESRCH for @group: true if the group has
 * listeners (so every one of them was full, or filtered the message: an
 * overrun), false if it has none or it cannot be told (group 0, resolved by
 * the connector; connector socket not found). Any context.
 */
bool cnlab_cbus_has_listeners(u32 group)
{
	struct sock *sk = READ_ONCE(cbus_cn_sk);

	return sk && group && netlink_has_listeners(sk, group);
}

/*
 * Count the outcome of one cn_netlink_send() to @group carrying n messages
 * (size bytes of connector payload).
 */
static void cbus_account(struct cbus_cpu *cc, int ret, u32 group, u32 n, u32 size)
{
	trace_cnlab_send(cc->cpu, group, n, size, ret);
	if (ret >= 0) {
		cbus_add(&cc->sent, n);
		cbus_add(&cc->nl_msgs, 1);
	} else if (ret == -ESRCH) {
		if (cnlab_cbus_has_listeners(group)) {
			cbus_add(&cc->drop_overrun, n);
			trace_cnlab_drop(cc->cpu, CNLAB_DROP_OVERRUN, n);
		} else {
			cbus_add(&cc->drop_nolistener, n);
			trace_cnlab_drop(cc->cpu, CNLAB_DROP_NOLISTENER, n);
		}
	} else {
		cbus_add(&cc->drop_nlerr, n);
		trace_cnlab_drop(cc->cpu, CNLAB_DROP_NLERR, n);
	}
}

static void cbus_flush_bundle(struct cbus_cpu *cc)
{
	int ret;

	if (!cc->bundle_count)
		return;
	ret = cn_netlink_send(cc->bundle, 0, cc->bundle_group, GFP_KERNEL);
	cbus_account(cc, ret, cc->bundle_group, cc->bundle_count,
		     sizeof(*cc->bundle) + cc->bundle->len);
	if (ret >= 0)
		cbus_add(&cc->bundles, 1);
	cc->bundle_count = 0;
}

/* Send or bundle one event, then free it. Called under drain_lock. */
static void cbus_deliver(struct cbus_cpu *cc, struct cbus_event *ev)
{
	u32 size = sizeof(ev->msg) + ev->msg.len;
	struct cn_msg *b = cc->bundle;
	int ret;

	if ((ev->flags & CBUS_F_BUNDLE) && size <= bundle_bytes) {
		if (cc->bundle_count &&
		    (cc->bundle_group != ev->group ||
		     b->id.idx != ev->msg.id.idx || b->id.val != ev->msg.id.val ||
		     b->len + size > bundle_bytes))
			cbus_flush_bundle(cc);
		if (!cc->bundle_count) {
			b->id = ev->msg.id;
			b->seq = ev->msg.seq;
			b->ack = 0;
			b->len = 0;
			b->flags = CNLAB_CN_F_BUNDLE;
			cc->bundle_group = ev->group;
		}
		memcpy(b->data + b->len, &ev->msg, sizeof(ev->msg));
		memcpy(b->data + b->len + sizeof(ev->msg), ev->msg.data,
		       ev->msg.len);
		b->len += size;
		cc->bundle_count++;
	} else {
		cbus_flush_bundle(cc);
		ret = cn_netlink_send(&ev->msg, 0, ev->group, GFP_KERNEL);
		cbus_account(cc, ret, ev->group, 1, size);
	}
	cbus_event_free(cc, ev);
	cbus_add(&cc->deq_bytes, size);
	cbus_add(&cc->deq, 1);
}

static void cbus_account_batch(struct cbus_cpu *cc, u32 n)
{
	unsigned int bucket = min_t(unsigned int, ilog2(n), CNLAB_BATCH_BUCKETS - 1);

	cbus_add(&cc->batches, 1);
	cbus_add(&cc->hist[bucket], 1);
	if (n > cc->batch_max)
		WRITE_ONCE(cc->batch_max, n);
}

/*
 * Send up to @budget messages of one CPU's queue, in FIFO order: first what
 * an earlier call left (the backlog), then whole queues taken with
 * llist_del_all(). What is left beyond the budget stays in the backlog for
 * the next call (thread_should_run sees it). Called with drain_lock held,
 * in process context; yields the CPU when asked between messages. The
 * messages one call sends are one "batch" in the statistics.
 */
static void cbus_drain(struct cbus_cpu *cc, unsigned int budget)
{
	struct llist_node *node = cc->backlog;
	struct cbus_event *ev;
	u32 n = 0;

	trace_cnlab_drain_start(cc->cpu, budget);
	while (n < budget) {
		if (!node) {
			node = llist_del_all(&cc->list);
			if (!node)
				break;
			WRITE_ONCE(cc->backlog_since, READ_ONCE(cc->queued_since));
			node = llist_reverse_order(node);
		}
		ev = llist_entry(node, struct cbus_event, node);
		node = node->next;	/* before cbus_deliver() frees ev */
		cbus_deliver(cc, ev);
		n++;
		cond_resched();
	}
	cbus_flush_bundle(cc);
	WRITE_ONCE(cc->backlog, node);
	if (n)
		cbus_account_batch(cc, n);
	trace_cnlab_drain_end(cc->cpu, n);
}

static inline void cbus_drain_state(struct cbus_cpu *cc, enum cbus_drain_state state)
{
	WRITE_ONCE(cc->drain_state, state);
	WRITE_ONCE(cc->drain_jiffies, jiffies);
}

/*
 * The drain thread must look at its stall again: a new stall value (which
 * may end the stall or move its end), unload, or its CPU going down.
 */
static bool cbus_stall_interrupted(unsigned int gen)
{
	return READ_ONCE(cbus_stall_gen) != gen || READ_ONCE(cbus_stopping) ||
	       kthread_should_park() || kthread_should_stop();
}

/*
 * Fault knob: hold the drain thread until cbus_stall_until. Returns false
 * if the thread has to park or stop first (kthread_park() wakes it; CPU
 * hotplug must not wait for a stall to end). A new stall value wakes the
 * wait, and the deadline is read again: STALL_MS 0 ends a running stall.
 */
static bool cbus_stall_wait(struct cbus_cpu *cc)
{
	unsigned int gen;
	s64 left;

	for (;;) {
		gen = READ_ONCE(cbus_stall_gen);
		/* Pairs with the smp_wmb() in cnlab_cbus_stall(). */
		smp_rmb();
		left = (s64)(READ_ONCE(cbus_stall_until) - ktime_get_ns());
		if (left <= 0 || READ_ONCE(cbus_stopping))
			return true;
		if (kthread_should_park() || kthread_should_stop())
			return false;
		cbus_drain_state(cc, CBUS_DRAIN_STALLED);
		wait_event_timeout(cbus_stall_wq, cbus_stall_interrupted(gen),
				   nsecs_to_jiffies(left) + 1);
	}
}

/*
 * The smpboot loop calls this with the thread TASK_INTERRUPTIBLE (a full
 * barrier before the check): an insert after it wakes the thread, an
 * insert before it is seen here. No lost wake-up.
 */
static int cbus_thread_should_run(unsigned int cpu)
{
	struct cbus_cpu *cc = per_cpu_ptr(cbus_pcpu, cpu);

	return READ_ONCE(cc->backlog) || !llist_empty(&cc->list);
}

/* One drain of up to drain_budget messages; the loop calls it again while more wait. */
static void cbus_thread_fn(unsigned int cpu)
{
	struct cbus_cpu *cc = per_cpu_ptr(cbus_pcpu, cpu);

	if (!cbus_stall_wait(cc)) {
		cbus_drain_state(cc, CBUS_DRAIN_IDLE);
		return;	/* park first; the dead-CPU drain or the next call drains */
	}
	cbus_drain_state(cc, CBUS_DRAIN_LOCKING);
	mutex_lock(&cc->drain_lock);
	cbus_drain_state(cc, CBUS_DRAIN_SENDING);
	cbus_drain(cc, drain_budget);
	mutex_unlock(&cc->drain_lock);
	cbus_drain_state(cc, CBUS_DRAIN_IDLE);
	cond_resched();
}

static void cbus_thread_setup(unsigned int cpu)
{
	set_user_nice(current, drain_nice);
}

static struct smp_hotplug_thread cbus_threads = {
	.thread_should_run	= cbus_thread_should_run,
	.thread_fn		= cbus_thread_fn,
	.setup			= cbus_thread_setup,
	.thread_comm		= "cbus/%u",
};

/*
 * CPU hotplug, teardown of CPUHP_BP_PREPARE_DYN: runs on a surviving CPU
 * after @cpu is dead, so nothing can insert on its queue any more. Deliver
 * (or count) what it still holds. A CPU coming online needs nothing: its
 * queue exists for every possible CPU.
 */
static int cbus_cpu_dead(unsigned int cpu)
{
	struct cbus_cpu *cc = per_cpu_ptr(cbus_pcpu, cpu);

	mutex_lock(&cc->drain_lock);
	cbus_drain(cc, UINT_MAX);
	mutex_unlock(&cc->drain_lock);
	return 0;
}

static void cbus_read_cpu(struct cbus_cpu *cc, struct cnlab_cbus_stats *s)
{
	u64 done;
	int i;

	/* Consumer counters first: they can only trail the producer's. */
	s->sent = READ_ONCE(cc->sent);
	s->drop_nolistener = READ_ONCE(cc->drop_nolistener);
	s->drop_overrun = READ_ONCE(cc->drop_overrun);
	s->drop_nlerr = READ_ONCE(cc->drop_nlerr);
	s->batches = READ_ONCE(cc->batches);
	s->batch_max = READ_ONCE(cc->batch_max);
	s->nl_msgs = READ_ONCE(cc->nl_msgs);
	s->bundles = READ_ONCE(cc->bundles);
	s->dequeued = READ_ONCE(cc->deq);
	for (i = 0; i < CNLAB_BATCH_BUCKETS; i++)
		s->batch_hist[i] = READ_ONCE(cc->hist[i]);
	/*
	 * Pairs with the full barriers of llist_add() (producer, after its
	 * counters) and llist_del_all() (consumer, before it counts): a
	 * message counted by the consumer was counted by the producer first.
	 */
	smp_rmb();
	s->drop_full = READ_ONCE(cc->drop_full);
	s->drop_nomem = READ_ONCE(cc->drop_nomem);
	s->rejected = READ_ONCE(cc->rejected);
	s->hwm = READ_ONCE(cc->hwm);
	s->kicks = READ_ONCE(cc->kicks);
	s->enqueued = READ_ONCE(cc->enq);
	/*
	 * inserted last, so it is never older than the drops just read; the
	 * producer's plain stores are ordered on x86 only, hence the clamp
	 * below (exact when quiescent, as documented).
	 */
	smp_rmb();
	s->inserted = READ_ONCE(cc->inserted);
	done = s->sent + s->drop_nolistener + s->drop_overrun + s->drop_nlerr +
	       s->drop_full + s->drop_nomem;
	s->queued = s->inserted > done ? s->inserted - done : 0;
	s->cpu = cc->cpu;
	s->online = cpu_online(cc->cpu);
}

/*
 * Start every CPU's high-water mark again from its queue depth now, so a
 * scenario sees its own peak.  The owner CPU only ever raises the mark to a
 * depth it just reached, so a raise racing this reset leaves a depth that
 * occurred after the reset began.
 */
void cnlab_cbus_reset_hwm(void)
{
	int cpu;

	for_each_possible_cpu(cpu) {
		struct cbus_cpu *cc = per_cpu_ptr(cbus_pcpu, cpu);
		u64 enq = READ_ONCE(cc->enq);
		u64 deq = READ_ONCE(cc->deq);

		WRITE_ONCE(cc->hwm, enq > deq ? enq - deq : 0);
	}
}

/* Snapshot of one CPU's counters, or of the total with cpu == -1. */
void cnlab_cbus_read(int cpu, struct cnlab_cbus_stats *s)
{
	struct cnlab_cbus_stats c;
	int i, j;

	memset(s, 0, sizeof(*s));
	if (cpu >= 0) {
		cbus_read_cpu(per_cpu_ptr(cbus_pcpu, cpu), s);
		return;
	}
	for_each_possible_cpu(i) {
		memset(&c, 0, sizeof(c));
		cbus_read_cpu(per_cpu_ptr(cbus_pcpu, i), &c);
		s->inserted += c.inserted;
		s->sent += c.sent;
		s->drop_full += c.drop_full;
		s->drop_nomem += c.drop_nomem;
		s->drop_nolistener += c.drop_nolistener;
		s->drop_overrun += c.drop_overrun;
		s->drop_nlerr += c.drop_nlerr;
		s->rejected += c.rejected;
		s->queued += c.queued;
		s->hwm = max(s->hwm, c.hwm);
		s->kicks += c.kicks;
		s->batches += c.batches;
		s->batch_max = max(s->batch_max, c.batch_max);
		s->nl_msgs += c.nl_msgs;
		s->bundles += c.bundles;
		s->enqueued += c.enqueued;
		s->dequeued += c.dequeued;
		for (j = 0; j < CNLAB_BATCH_BUCKETS; j++)
			s->batch_hist[j] += c.batch_hist[j];
		s->online += c.online;
	}
	s->cpu = U32_MAX;
}

bool cnlab_cbus_idle(int cpu)
{
	struct cnlab_cbus_stats s;

	cnlab_cbus_read(cpu, &s);
	return s.queued == 0;
}

u32 cnlab_cbus_limit(void)
{
	return READ_ONCE(cbus_limit);
}

u32 cnlab_cbus_qbytes(void)
{
	return cbus_qbytes;
}

u32 cnlab_cbus_set_limit(u32 limit)
{
	return xchg(&cbus_limit, limit);
}

u32 cnlab_cbus_alloc_fail_nth(void)
{
	return (u32)atomic64_read(&cbus_alloc_fault);
}

/*
 * Fail every nth CBUS allocation on each CPU from now on (0: off), counted
 * on each CPU from its first insert that sees this setting. One atomic
 * store switches every CPU: no insert slips through uncounted, and no CPU
 * keeps a count of the previous setting.
 */
u32 cnlab_cbus_set_alloc_fail_nth(u32 nth)
{
	s64 old = atomic64_read(&cbus_alloc_fault);
	s64 new;

	do {
		new = (s64)((((u64)old >> 32) + 1) << 32 | nth);
	} while (!atomic64_try_cmpxchg(&cbus_alloc_fault, &old, new));
	return (u32)old;
}

u32 cnlab_cbus_stall_ms(void)
{
	return READ_ONCE(cbus_stall_last_ms);
}

/*
 * Hold every drain thread for @ms from now; 0 ends a stall at once. The new
 * deadline replaces the old one, and the threads waiting in a stall are
 * woken to read it (the generation makes their wait condition true).
 */
u32 cnlab_cbus_stall(u32 ms)
{
	u32 old = xchg(&cbus_stall_last_ms, ms);

	WRITE_ONCE(cbus_stall_until, ktime_get_ns() + (u64)ms * NSEC_PER_MSEC);
	/* Deadline first: a waiter that sees the new generation reads it. */
	smp_wmb();
	WRITE_ONCE(cbus_stall_gen, READ_ONCE(cbus_stall_gen) + 1);
	wake_up_all(&cbus_stall_wq);
	return old;
}

static void cbus_show_one(struct seq_file *m, const char *name,
			  const struct cnlab_cbus_stats *s)
{
	seq_printf(m, "%-5s %6u %12llu %12llu %9llu %9llu %9llu %9llu %9llu %9llu %7llu %7llu %9llu %9llu %7llu %s\n",
		   name, s->online, s->inserted, s->sent, s->drop_full,
		   s->drop_nomem, s->drop_nolistener, s->drop_overrun,
		   s->drop_nlerr, s->rejected, s->queued, s->hwm, s->kicks,
		   s->batches, s->batch_max,
		   s->inserted == s->sent + s->drop_full + s->drop_nomem +
		   s->drop_nolistener + s->drop_overrun + s->drop_nlerr +
		   s->queued ? "ok" : "MISMATCH");
}

static int cbus_stats_show(struct seq_file *m, void *v)
{
	struct cnlab_cbus_stats s;
	char name[16];
	u64 miss = 0;
	int cpu;

	for_each_possible_cpu(cpu)
		miss += READ_ONCE(per_cpu_ptr(cbus_pcpu, cpu)->pool_miss);
	seq_printf(m, "queue_limit %u queue_bytes %u alloc_fail_nth %u bundle_bytes %u pool_slots %u slot_data %zu pool_miss %llu drain_nice %d\n",
		   cnlab_cbus_limit(), cbus_qbytes, cnlab_cbus_alloc_fail_nth(), bundle_bytes,
		   pool_slots, CBUS_SLOT_DATA, miss, drain_nice);
	seq_puts(m, "cpu   online     inserted         sent      full     nomem nolisten   overrun     nlerr  rejected  queued     hwm     kicks   batches bat_max invariant\n");
	for_each_possible_cpu(cpu) {
		cnlab_cbus_read(cpu, &s);
		snprintf(name, sizeof(name), "%d", cpu);
		cbus_show_one(m, name, &s);
	}
	cnlab_cbus_read(-1, &s);
	cbus_show_one(m, "total", &s);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(cbus_stats);

static void cbus_free_cpus(void)
{
	int cpu;

	for_each_possible_cpu(cpu) {
		kfree(per_cpu_ptr(cbus_pcpu, cpu)->bundle);
		kvfree(per_cpu_ptr(cbus_pcpu, cpu)->pool);
	}
	free_percpu(cbus_pcpu);
	cbus_pcpu = NULL;
}

int cnlab_cbus_init(struct dentry *dbg)
{
	struct cbus_cpu *cc;
	unsigned int i;
	int cpu, ret;

	if (!queue_limit || queue_limit > CNLAB_QLIMIT_MAX ||
	    queue_bytes < CNLAB_QBYTES_MIN || queue_bytes > CNLAB_QBYTES_MAX ||
	    bundle_bytes < 256 || bundle_bytes > CBUS_MAX_DATA || !drain_budget ||
	    pool_slots > 65536 || drain_nice < MIN_NICE || drain_nice > MAX_NICE)
		return -EINVAL;
	cbus_limit = queue_limit;
	cbus_qbytes = queue_bytes;
	atomic64_set(&cbus_alloc_fault, 0);
	cbus_stall_until = 0;
	cbus_stopping = false;

	cbus_pcpu = alloc_percpu(struct cbus_cpu);
	if (!cbus_pcpu)
		return -ENOMEM;
	for_each_possible_cpu(cpu) {
		cc = per_cpu_ptr(cbus_pcpu, cpu);
		init_llist_head(&cc->list);
		mutex_init(&cc->drain_lock);
		cc->backlog = NULL;
		cc->thread = NULL;
		cc->cpu = cpu;
		cc->bundle = kzalloc_node(struct_size(cc->bundle, data, bundle_bytes),
					  GFP_KERNEL, cpu_to_node(cpu));
		if (!cc->bundle) {
			ret = -ENOMEM;
			goto err_cpus;
		}
		init_llist_head(&cc->remote_free);
		cc->free = NULL;
		if (!pool_slots)
			continue;
		cc->pool = kvmalloc_node(array_size(pool_slots, CBUS_SLOT_SIZE),
					 GFP_KERNEL, cpu_to_node(cpu));
		if (!cc->pool) {
			ret = -ENOMEM;
			goto err_cpus;
		}
		for (i = pool_slots; i-- > 0; ) {
			struct cbus_event *ev = cc->pool + i * CBUS_SLOT_SIZE;

			ev->node.next = cc->free;
			cc->free = &ev->node;
		}
	}
	ret = cnlab_init_fault(1);
	if (ret)
		goto err_cpus;

	cbus_threads.store = &cbus_pcpu->thread;
	ret = smpboot_register_percpu_thread(&cbus_threads);
	if (ret)
		goto err_cpus;
	ret = cnlab_init_fault(2);
	if (ret)
		goto err_threads;

	ret = cpuhp_setup_state_nocalls(CPUHP_BP_PREPARE_DYN, "cnlab/cbus:dead",
					NULL, cbus_cpu_dead);
	if (ret < 0)
		goto err_threads;
	cbus_hp_state = ret;
	ret = cnlab_init_fault(3);
	if (ret)
		goto err_hp;

	cbus_dbg_file = debugfs_create_file("cbus", 0444, dbg, NULL,
					    &cbus_stats_fops);
	WRITE_ONCE(cbus_accepting, true);
	return 0;

err_hp:
	cpuhp_remove_state_nocalls(cbus_hp_state);
err_threads:
	smpboot_unregister_percpu_thread(&cbus_threads);
err_cpus:
	cbus_free_cpus();
	return ret;
}

void cnlab_cbus_exit(void)
{
	struct cnlab_cbus_stats s;
	struct cbus_cpu *cc;
	int cpu;

	/* Refuse new inserts; wait for those inside their IRQ-off section. */
	WRITE_ONCE(cbus_accepting, false);
	synchronize_rcu();
	WRITE_ONCE(cbus_stopping, true);
	wake_up_all(&cbus_stall_wq);

	debugfs_remove(cbus_dbg_file);
	cpuhp_remove_state_nocalls(cbus_hp_state);
	/* Stops each drain thread once its current drain is done. */
	smpboot_unregister_percpu_thread(&cbus_threads);
	for_each_possible_cpu(cpu) {
		cc = per_cpu_ptr(cbus_pcpu, cpu);
		mutex_lock(&cc->drain_lock);
		cbus_drain(cc, UINT_MAX);
		mutex_unlock(&cc->drain_lock);
	}

	cnlab_cbus_read(-1, &s);
	pr_info(CNLAB_NAME ": cbus final: inserted %llu sent %llu full %llu nomem %llu nolistener %llu overrun %llu nlerr %llu queued %llu rejected %llu\n",
		s.inserted, s.sent, s.drop_full, s.drop_nomem,
		s.drop_nolistener, s.drop_overrun, s.drop_nlerr, s.queued,
		s.rejected);
	cbus_free_cpus();
	if (cbus_cn_sk) {
		sock_put(cbus_cn_sk);
		cbus_cn_sk = NULL;
	}
}
