// SPDX-License-Identifier: GPL-2.0
/*
 * cnbeat: a small kernel subsystem that reports its own events through CBUS.
 *
 * The shape to copy for "my module sends connector events from a timer":
 * every online CPU gets a pinned timer; each firing inserts the events due
 * since the start (rate per CPU per second) with cbus_insert_group() and
 * counts what CBUS accepted and what it refused. Nothing here sends with
 * cn_netlink_send(): CBUS queues the event on this CPU and its drain thread
 * sends it, so the timer never waits for netlink.
 *
 * Why cbus_insert_group() and not cbus_insert(): cbus_insert() resolves the
 * group from msg->id when the drain *sends* (like cn_netlink_send(msg, 0,
 * 0, gfp)), through a callback registered for that id. Events still queued
 * when this module unloads would find no callback and be dropped (-ENODEV,
 * drop_nlerr). With an explicit group they are delivered by CBUS after we
 * are gone: the example's reconciliation under the module-reload fault
 * depends on it.
 *
 * Module parameters (/sys/module/cnbeat/parameters/):
 *   rate      events per second per online CPU; writing it (re)starts the
 *             timers, 0 stops them (0..CNBEAT_RATE_MAX, root only)
 *   inserted  events CBUS accepted (cbus_insert_group() returned 0), read-only
 *   failed    events CBUS refused (-ENOBUFS, -ENOMEM, ...), read-only
 *   instance  a random id of this load; every event carries it, read-only
 *   warn      write 1: WARN once on purpose (the console scanner must see it)
 *
 * Event: cn_msg{idx 0x1c, val 1, seq = low 32 bits of the event number} +
 * struct cnbeat_event. Unload logs the final counts:
 *   cnbeat: instance 1a2b3c4d final: inserted N failed M
 */
#include <linux/atomic.h>
#include <linux/connector.h>
#include <linux/cpu.h>
#include <linux/cpumask.h>
#include <linux/jiffies.h>
#include <linux/kernel.h>
#include <linux/ktime.h>
#include <linux/math64.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/mutex.h>
#include <linux/percpu.h>
#include <linux/random.h>
#include <linux/smp.h>
#include <linux/string.h>
#include <linux/timer.h>

#include <cbus.h>

#define CNBEAT_IDX		0x1c	/* even: only root may join group 28 */
#define CNBEAT_VAL		0x1
#define CNBEAT_GROUP		28
#define CNBEAT_RATE_MAX		100000
#define CNBEAT_MAX_PER_TICK	256	/* a late timer catches up at most this much */
#define CNBEAT_PERIOD_MS	10

struct cnbeat_event {
	__u32 instance;
	__u32 cpu;		/* where it was inserted */
	__u64 seq;		/* event number of this instance, from 0 */
	__u64 ts_ns;		/* ktime_get_ns() at insert */
};

struct cnbeat_timer {
	struct timer_list timer;
	u64 start_ns;
	u64 issued;
};

static DEFINE_PER_CPU(struct cnbeat_timer, cnbeat_timers);
static DEFINE_MUTEX(cnbeat_lock);	/* rate changes, start and stop */
static unsigned int cnbeat_rate;
static bool cnbeat_ready;		/* init done: a rate set by insmod waits for it */
static u32 cnbeat_instance;
static atomic64_t cnbeat_seq = ATOMIC64_INIT(0);
static atomic64_t cnbeat_inserted = ATOMIC64_INIT(0);
static atomic64_t cnbeat_failed = ATOMIC64_INIT(0);

/*
 * The payload goes right after the 20-byte cn_msg header (msg->data), so it
 * is copied there: a struct { struct cn_msg; struct cnbeat_event; } would put
 * 4 bytes of padding before the event (its u64 fields align it to 8), and
 * CBUS sends msg->len bytes from msg->data, padding first.
 */
static void cnbeat_insert_one(void)
{
	u8 buf[sizeof(struct cn_msg) + sizeof(struct cnbeat_event)] __aligned(8);
	struct cn_msg *msg = (struct cn_msg *)buf;
	u64 seq = atomic64_inc_return(&cnbeat_seq) - 1;
	struct cnbeat_event ev = {
		.instance = cnbeat_instance,
		.cpu = smp_processor_id(),
		.seq = seq,
		.ts_ns = ktime_get_ns(),
	};

	memset(msg, 0, sizeof(*msg));
	msg->id.idx = CNBEAT_IDX;
	msg->id.val = CNBEAT_VAL;
	msg->seq = lower_32_bits(seq);
	msg->len = sizeof(ev);
	memcpy(msg->data, &ev, sizeof(ev));
	if (cbus_insert_group(msg, CNBEAT_GROUP, 0, GFP_ATOMIC))
		atomic64_inc(&cnbeat_failed);
	else
		atomic64_inc(&cnbeat_inserted);
}

static void cnbeat_tick(struct timer_list *t)
{
	struct cnbeat_timer *bt = from_timer(bt, t, timer);
	unsigned int rate = READ_ONCE(cnbeat_rate);
	u64 due;

	if (!rate)
		return;
	due = mul_u64_u32_div(ktime_get_ns() - bt->start_ns, rate, NSEC_PER_SEC);
	if (due - bt->issued > CNBEAT_MAX_PER_TICK)
		bt->issued = due - CNBEAT_MAX_PER_TICK;
	while (bt->issued < due) {
		cnbeat_insert_one();
		bt->issued++;
	}
	mod_timer(&bt->timer, jiffies + msecs_to_jiffies(CNBEAT_PERIOD_MS));
}

/* Called with cnbeat_lock held. */
static void cnbeat_stop(void)
{
	int cpu;

	WRITE_ONCE(cnbeat_rate, 0);
	for_each_possible_cpu(cpu)
		del_timer_sync(&per_cpu(cnbeat_timers, cpu).timer);
}

/* Called with cnbeat_lock held; the timers are stopped. */
static void cnbeat_start(unsigned int rate)
{
	u64 now = ktime_get_ns();
	int cpu;

	WRITE_ONCE(cnbeat_rate, rate);
	cpus_read_lock();
	for_each_online_cpu(cpu) {
		struct cnbeat_timer *bt = &per_cpu(cnbeat_timers, cpu);

		bt->start_ns = now;
		bt->issued = 0;
		bt->timer.expires = jiffies + 1;
		add_timer_on(&bt->timer, cpu);
	}
	cpus_read_unlock();
}

static int cnbeat_set_rate(const char *val, const struct kernel_param *kp)
{
	unsigned int rate;
	int err = kstrtouint(val, 0, &rate);

	if (err)
		return err;
	if (rate > CNBEAT_RATE_MAX)
		return -EINVAL;
	mutex_lock(&cnbeat_lock);
	if (!cnbeat_ready) {
		cnbeat_rate = rate;	/* insmod cnbeat.ko rate=N: init starts it */
	} else {
		cnbeat_stop();
		if (rate)
			cnbeat_start(rate);
	}
	mutex_unlock(&cnbeat_lock);
	return 0;
}

static const struct kernel_param_ops cnbeat_rate_ops = {
	.set = cnbeat_set_rate,
	.get = param_get_uint,
};
module_param_cb(rate, &cnbeat_rate_ops, &cnbeat_rate, 0644);
MODULE_PARM_DESC(rate, "events per second per online CPU (0: stopped)");

static int cnbeat_get_counter(char *buf, const struct kernel_param *kp)
{
	return scnprintf(buf, PAGE_SIZE, "%lld\n", atomic64_read(kp->arg));
}

static const struct kernel_param_ops cnbeat_counter_ops = {
	.get = cnbeat_get_counter,
};
module_param_cb(inserted, &cnbeat_counter_ops, &cnbeat_inserted, 0444);
MODULE_PARM_DESC(inserted, "events CBUS accepted");
module_param_cb(failed, &cnbeat_counter_ops, &cnbeat_failed, 0444);
MODULE_PARM_DESC(failed, "events CBUS refused");
module_param_named(instance, cnbeat_instance, uint, 0444);
MODULE_PARM_DESC(instance, "random id of this load, carried by every event");

static int cnbeat_set_warn(const char *val, const struct kernel_param *kp)
{
	bool on;
	int err = kstrtobool(val, &on);

	if (err)
		return err;
	WARN(on, "cnbeat: WARN requested through /sys/module/cnbeat/parameters/warn\n");
	return 0;
}

static const struct kernel_param_ops cnbeat_warn_ops = {
	.set = cnbeat_set_warn,
};
module_param_cb(warn, &cnbeat_warn_ops, NULL, 0200);
MODULE_PARM_DESC(warn, "write 1: WARN once on purpose");

static int __init cnbeat_init(void)
{
	int cpu;

	cnbeat_instance = get_random_u32();
	for_each_possible_cpu(cpu)
		timer_setup(&per_cpu(cnbeat_timers, cpu).timer, cnbeat_tick, TIMER_PINNED);
	mutex_lock(&cnbeat_lock);
	cnbeat_ready = true;
	if (cnbeat_rate)
		cnbeat_start(cnbeat_rate);
	mutex_unlock(&cnbeat_lock);
	pr_info("cnbeat: instance %08x loaded, rate %u\n", cnbeat_instance, cnbeat_rate);
	return 0;
}

static void __exit cnbeat_exit(void)
{
	mutex_lock(&cnbeat_lock);
	cnbeat_stop();
	cnbeat_ready = false;
	mutex_unlock(&cnbeat_lock);
	pr_info("cnbeat: instance %08x final: inserted %lld failed %lld\n", cnbeat_instance,
		atomic64_read(&cnbeat_inserted), atomic64_read(&cnbeat_failed));
}

module_init(cnbeat_init);
module_exit(cnbeat_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("cnbeat: example subsystem sending its events through CBUS");
