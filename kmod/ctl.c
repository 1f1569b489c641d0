// SPDX-License-Identifier: GPL-2.0
/*
 * Control connector: request parsing, validation, permission checks and
 * unicast replies.
 *
 * The callback runs synchronously in the sender's sendmsg(). Replies are
 * sent with GFP_ATOMIC to nsp->portid, so a sender that never reads cannot
 * make us sleep. cn_del_callback() does not wait for running callbacks, so
 * every callback body runs inside an SRCU read section and exit waits for
 * them (and for the few instructions around them, with RCU Tasks).
 */
#include <linux/atomic.h>
#include <linux/capability.h>
#include <linux/connector.h>
#include <linux/jiffies.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/net.h>
#include <linux/skbuff.h>
#include <linux/slab.h>
#include <linux/smp.h>
#include <linux/srcu.h>
#include <linux/string.h>
#include <linux/timekeeping.h>
#include <linux/user_namespace.h>
#include <linux/uio.h>
#include <net/net_namespace.h>
#include <net/sock.h>

#include "cnlab_int.h"

static struct cb_id cnlab_ctl_id = { .idx = CNLAB_CTL_IDX, .val = CNLAB_CTL_VAL };
static struct srcu_struct cnlab_ctl_srcu;
static bool cnlab_ctl_closing;
/* Our own kernel socket while it sends the init probe (cnlab_find_cn_sock()). */
static struct sock *cnlab_probe_sk;

static atomic64_t ctl_requests = ATOMIC64_INIT(0);
/*
 * The last CNLAB_CTL_RING control requests, for a vmcore (cnlab debug): a
 * record is written when a request arrives (status CNLAB_CTL_PENDING) and
 * gets its result when the handler returns, so a request that crashed the
 * kernel shows as pending. Concurrent requests take different slots.
 */
#define CNLAB_CTL_RING		32
#define CNLAB_CTL_PENDING	1
struct cnlab_ctl_record {
	u64 ns;			/* ktime_get_ns() on arrival */
	unsigned long jiffies;	/* jiffies on arrival */
	u32 seq;		/* the request's cn_msg seq */
	u32 portid;		/* the sender */
	u32 len;		/* request bytes after the cn_msg */
	u16 type;		/* enum cnlab_msg_type, 0xffff: too short to tell */
	s16 status;		/* CNLAB_CTL_PENDING, then 0 or -errno */
	u32 cpu;
};
static struct cnlab_ctl_record cnlab_ctl_ring[CNLAB_CTL_RING];
static atomic_t cnlab_ctl_ring_next = ATOMIC_INIT(0);
static atomic64_t ctl_errors = ATOMIC64_INIT(0);
static atomic64_t ctl_reply_fail = ATOMIC64_INIT(0);

void cnlab_ctl_counters(u64 *requests, u64 *errors, u64 *reply_fail)
{
	*requests = atomic64_read(&ctl_requests);
	*errors = atomic64_read(&ctl_errors);
	*reply_fail = atomic64_read(&ctl_reply_fail);
}

/*
 * Allocate a zeroed reply: cn_msg + cnlab_hdr + body_len bytes. Returns the
 * body; *cn receives the buffer to pass to cnlab_reply_send() or kfree().
 */
void *cnlab_reply_alloc(u32 body_len, struct cn_msg **cn)
{
	size_t size = sizeof(**cn) + sizeof(struct cnlab_hdr) + body_len;

	*cn = kzalloc(size, GFP_ATOMIC);
	if (!*cn)
		return NULL;
	return (*cn)->data + sizeof(struct cnlab_hdr);
}

static int cnlab_send_cn(struct cn_msg *cn, u32 portid, u32 seq, u32 ack,
			 u16 type, int status, u32 body_len)
{
	struct cnlab_hdr *hdr = (struct cnlab_hdr *)cn->data;
	int ret;

	cn->id = cnlab_ctl_id;
	cn->seq = seq;
	cn->ack = ack + 1;
	cn->len = sizeof(*hdr) + body_len;
	cn->flags = 0;
	hdr->version = CNLAB_ABI_VERSION;
	hdr->flags = CNLAB_F_REPLY;
	hdr->type = type;
	hdr->status = status;
	hdr->len = body_len;
	hdr->reserved = 0;

	if (status)
		atomic64_inc(&ctl_errors);
	/*
	 * portid 0 with group 0 would make the connector broadcast to the
	 * callback's group: never do that with a reply.
	 */
	if (!portid) {
		ret = -EINVAL;
	} else {
		ret = cn_netlink_send(cn, portid, 0, GFP_ATOMIC);
		if (ret > 0)
			ret = 0;
	}
	if (ret)
		atomic64_inc(&ctl_reply_fail);
	kfree(cn);
	return ret;
}

/* Send a reply built with cnlab_reply_alloc(); consumes cn. */
int cnlab_reply_send(struct cnlab_req *rq, struct cn_msg *cn, u32 body_len)
{
	rq->replied = true;
	return cnlab_send_cn(cn, rq->nsp->portid, rq->msg->seq, rq->msg->ack,
			     rq->type, 0, body_len);
}

/* Reply to a request that is no longer in hand (asynchronous work). */
int cnlab_reply_to(u32 portid, u32 seq, u32 ack, u16 type, int status,
		   const void *body, u32 body_len)
{
	struct cn_msg *cn;
	void *p;

	p = cnlab_reply_alloc(body_len, &cn);
	if (!p) {
		atomic64_inc(&ctl_reply_fail);
		return -ENOMEM;
	}
	if (body_len)
		memcpy(p, body, body_len);
	return cnlab_send_cn(cn, portid, seq, ack, type, status, body_len);
}

static void cnlab_reply_error(struct cnlab_req *rq, int status)
{
	rq->replied = true;
	cnlab_reply_to(rq->nsp->portid, rq->msg->seq, rq->msg->ack, rq->type,
		       status, NULL, 0);
}

static int cnlab_do_echo(struct cnlab_req *rq)
{
	struct cnlab_echo echo;
	struct cn_msg *cn;
	u8 *body;

	if (rq->len < sizeof(echo))
		return -EBADMSG;
	memcpy(&echo, rq->body, sizeof(echo));
	if (echo.data_len > CNLAB_ECHO_MAX_DATA)
		return -EMSGSIZE;
	if (rq->len != sizeof(echo) + echo.data_len)
		return -EBADMSG;
	if (echo.rx_ns || echo.tx_ns || echo.cpu)
		return -EINVAL;

	body = cnlab_reply_alloc(rq->len, &cn);
	if (!body)
		return -ENOMEM;
	echo.rx_ns = rq->rx_ns;
	echo.cpu = raw_smp_processor_id();
	memcpy(body + sizeof(echo), rq->body + sizeof(echo), echo.data_len);
	echo.tx_ns = ktime_get_ns();
	memcpy(body, &echo, sizeof(echo));
	return cnlab_reply_send(rq, cn, rq->len);
}

static bool debug_warn;
module_param(debug_warn, bool, 0644);
MODULE_PARM_DESC(debug_warn, "Allow SET_FAULT CNLAB_FAULT_WARN to WARN() on purpose (test only)");

static bool debug_panic;
module_param(debug_panic, bool, 0644);
MODULE_PARM_DESC(debug_panic, "Allow SET_FAULT CNLAB_FAULT_PANIC to panic() the kernel on purpose (test only)");

static int cnlab_do_stats(struct cnlab_req *rq)
{
	struct cnlab_stats_req req;
	struct cnlab_cbus_stats *cpus;
	struct cnlab_stats_rep *rep;
	u32 nr = min_t(u32, num_possible_cpus(), CNLAB_MAX_CPUS);
	u32 len = sizeof(*rep) + nr * sizeof(*cpus);
	struct cn_msg *cn;
	u32 i = 0;
	int cpu;

	if (rq->len != sizeof(req))
		return -EBADMSG;
	memcpy(&req, rq->body, sizeof(req));
	if ((req.flags & ~CNLAB_STATS_F_ALL) || req.reserved)
		return -EINVAL;
	if (req.flags & CNLAB_STATS_F_RESET_HWM) {
		/* Reading is for anyone; changing state is not. */
		if (!__netlink_ns_capable(rq->nsp, &init_user_ns, CAP_NET_ADMIN))
			return -EPERM;
		cnlab_cbus_reset_hwm();
	}

	rep = cnlab_reply_alloc(len, &cn);
	if (!rep)
		return -ENOMEM;
	cpus = (struct cnlab_cbus_stats *)(rep + 1);
	rep->nr_cpus = nr;
	rep->queue_limit = cnlab_cbus_limit();
	rep->queue_bytes = cnlab_cbus_qbytes();
	rep->alloc_fail_nth = cnlab_cbus_alloc_fail_nth();
	rep->stall_ms = cnlab_cbus_stall_ms();
	cnlab_ctl_counters(&rep->ctl_requests, &rep->ctl_errors,
			   &rep->ctl_reply_fail);
	/* The first nr possible CPUs (the mask may have holes), each with its number. */
	for_each_possible_cpu(cpu) {
		if (i == nr)
			break;
		cnlab_cbus_read(cpu, &cpus[i++]);
	}
	cnlab_cbus_read(-1, &rep->total);
	return cnlab_reply_send(rq, cn, len);
}

static int cnlab_do_fault(struct cnlab_req *rq)
{
	struct cnlab_fault f;
	struct cn_msg *cn;
	u64 old;
	void *body;

	if (rq->len != sizeof(f))
		return -EBADMSG;
	memcpy(&f, rq->body, sizeof(f));
	if (f.reserved)
		return -EINVAL;

	switch (f.op) {
	case CNLAB_FAULT_ALLOC_NTH:
		if (f.value > U32_MAX)
			return -ERANGE;
		old = cnlab_cbus_set_alloc_fail_nth(f.value);
		break;
	case CNLAB_FAULT_STALL_MS:
		if (f.value > CNLAB_STALL_MAX_MS)
			return -ERANGE;
		old = cnlab_cbus_stall(f.value);
		break;
	case CNLAB_FAULT_QLIMIT:
		if (!f.value || f.value > CNLAB_QLIMIT_MAX)
			return -ERANGE;
		old = cnlab_cbus_set_limit(f.value);
		break;
	case CNLAB_FAULT_WARN:
		if (f.value != CNLAB_WARN_MAGIC)
			return -EINVAL;
		if (!READ_ONCE(debug_warn))
			return -EOPNOTSUPP;
		WARN(1, CNLAB_NAME ": WARN requested by SET_FAULT (test)\n");
		old = 0;
		break;
	case CNLAB_FAULT_PANIC:
		if (f.value != CNLAB_PANIC_MAGIC)
			return -EINVAL;
		if (!READ_ONCE(debug_panic))
			return -EOPNOTSUPP;
		panic(CNLAB_NAME ": panic requested by SET_FAULT (test)\n");
	default:
		return -EOPNOTSUPP;
	}

	body = cnlab_reply_alloc(sizeof(f), &cn);
	if (!body)
		return -ENOMEM;
	f.value = old;
	memcpy(body, &f, sizeof(f));
	return cnlab_reply_send(rq, cn, sizeof(f));
}

struct cnlab_handler {
	int (*fn)(struct cnlab_req *rq);
	bool privileged;	/* needs CAP_NET_ADMIN in the initial userns */
};

static const struct cnlab_handler cnlab_handlers[CNLAB_MSG_MAX + 1] = {
	[CNLAB_MSG_ECHO]	= { cnlab_do_echo, false },
	[CNLAB_MSG_GEN_START]	= { cnlab_gen_do_start, true },
	[CNLAB_MSG_GEN_STOP]	= { cnlab_gen_do_stop, true },
	[CNLAB_MSG_STATS]	= { cnlab_do_stats, false },
	[CNLAB_MSG_GEN_STATS]	= { cnlab_gen_do_stats, false },
	[CNLAB_MSG_SET_FAULT]	= { cnlab_do_fault, true },
	[CNLAB_MSG_BENCH]	= { cnlab_bench_do_start, true },
	[CNLAB_MSG_BENCH_RESULT] = { cnlab_bench_do_result, false },
};

static int cnlab_dispatch(struct cnlab_req *rq)
{
	const struct cn_msg *msg = rq->msg;
	const struct cnlab_handler *h;
	struct cnlab_hdr hdr;

	if (msg->len < sizeof(hdr))
		return -EBADMSG;
	memcpy(&hdr, msg->data, sizeof(hdr));
	rq->type = hdr.type;
	if (hdr.version != CNLAB_ABI_VERSION)
		return -EPROTONOSUPPORT;
	if (hdr.flags || hdr.status || hdr.reserved || msg->flags)
		return -EINVAL;
	if (hdr.len != msg->len - sizeof(hdr))
		return -EBADMSG;
	if (hdr.type > CNLAB_MSG_MAX || !cnlab_handlers[hdr.type].fn)
		return -EOPNOTSUPP;

	h = &cnlab_handlers[hdr.type];
	if (h->privileged &&
	    !__netlink_ns_capable(rq->nsp, &init_user_ns, CAP_NET_ADMIN))
		return -EPERM;

	rq->body = msg->data + sizeof(hdr);
	rq->len = hdr.len;
	return h->fn(rq);
}

/*
 * The init probe arrived: the skb being delivered is owned by the receiving
 * socket, the connector's kernel socket (netlink_unicast_kernel() sets the
 * owner before it calls the input function), and nsp is its control block.
 */
static void cnlab_probe_arrived(struct netlink_skb_parms *nsp)
{
	struct sk_buff *skb = (struct sk_buff *)((char *)nsp -
						  offsetof(struct sk_buff, cb));
	struct sock *sk = skb->sk;

	if (sk && sk != nsp->sk && sk->sk_protocol == NETLINK_CONNECTOR &&
	    net_eq(sock_net(sk), &init_net))
		cnlab_cbus_set_cn_sock(sk);
}

/*
 * cn_netlink_send() gives -ESRCH both when a group has no listener and when
 * every listener is full. Telling them apart needs netlink_has_listeners()
 * on the connector's kernel socket, which the connector does not export:
 * send ourselves one control message from a kernel socket of our own and
 * take the socket the connector delivers it on. Without it (a kernel whose
 * internals differ), every -ESRCH counts as "no listener", as before.
 */
static void cnlab_find_cn_sock(void)
{
	struct {
		struct nlmsghdr nlh;
		struct cn_msg cn;
		struct cnlab_hdr hdr;
	} req = {};
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	struct msghdr msg = { .msg_name = &kernel, .msg_namelen = sizeof(kernel) };
	struct kvec iov = { .iov_base = &req, .iov_len = sizeof(req) };
	struct socket *sock;
	int err;

	err = sock_create_kern(&init_net, AF_NETLINK, SOCK_DGRAM,
			       NETLINK_CONNECTOR, &sock);
	if (!err) {
		req.nlh.nlmsg_len = sizeof(req);
		req.nlh.nlmsg_type = NLMSG_DONE;
		req.cn.id = cnlab_ctl_id;
		req.cn.len = sizeof(req.hdr);
		req.hdr.version = CNLAB_ABI_VERSION;
		WRITE_ONCE(cnlab_probe_sk, sock->sk);
		err = kernel_sendmsg(sock, &msg, &iov, 1, sizeof(req));
		WRITE_ONCE(cnlab_probe_sk, NULL);
		sock_release(sock);
	}
	if (!cnlab_cbus_cn_sock_known())
		pr_info(CNLAB_NAME ": connector socket not found (%d): overruns count as no listener\n",
			err < 0 ? err : 0);
}

static struct cnlab_ctl_record *cnlab_ctl_record_start(const struct cnlab_req *rq)
{
	unsigned int slot = (unsigned int)atomic_inc_return(&cnlab_ctl_ring_next) - 1;
	struct cnlab_ctl_record *rec = &cnlab_ctl_ring[slot % CNLAB_CTL_RING];
	struct cnlab_hdr hdr;

	rec->status = CNLAB_CTL_PENDING;
	rec->ns = rq->rx_ns;
	rec->jiffies = jiffies;
	rec->seq = rq->msg->seq;
	rec->portid = rq->nsp->portid;
	rec->len = rq->msg->len;
	rec->cpu = raw_smp_processor_id();
	rec->type = 0xffff;
	if (rq->msg->len >= sizeof(hdr)) {
		memcpy(&hdr, rq->msg->data, sizeof(hdr));
		rec->type = hdr.type;
	}
	return rec;
}

static void cnlab_ctl_callback(struct cn_msg *msg, struct netlink_skb_parms *nsp)
{
	struct cnlab_ctl_record *rec;
	struct cnlab_req rq = {
		.msg = msg,
		.nsp = nsp,
		.rx_ns = ktime_get_ns(),
	};
	int srcu_idx;
	int err;

	srcu_idx = srcu_read_lock(&cnlab_ctl_srcu);
	if (unlikely(nsp->sk && nsp->sk == READ_ONCE(cnlab_probe_sk))) {
		cnlab_probe_arrived(nsp);	/* ours, from init: no reply */
		srcu_read_unlock(&cnlab_ctl_srcu, srcu_idx);
		return;
	}
	atomic64_inc(&ctl_requests);
	rec = cnlab_ctl_record_start(&rq);
	/*
	 * Exit has started: answer without sleeping (exit relies on RCU
	 * Tasks for the code outside this section).
	 */
	if (READ_ONCE(cnlab_ctl_closing))
		err = -ESHUTDOWN;
	else
		err = cnlab_dispatch(&rq);
	WRITE_ONCE(rec->status, (s16)err);
	if (err && !rq.replied)
		cnlab_reply_error(&rq, err);
	srcu_read_unlock(&cnlab_ctl_srcu, srcu_idx);
}

int cnlab_ctl_init(void)
{
	int err;

	err = init_srcu_struct(&cnlab_ctl_srcu);
	if (err)
		return err;
	WRITE_ONCE(cnlab_ctl_closing, false);

	err = cn_add_callback(&cnlab_ctl_id, CNLAB_NAME, cnlab_ctl_callback);
	if (err)
		goto err_srcu;
	cnlab_find_cn_sock();

	err = cnlab_init_fault(6);
	if (err)
		goto err_callback;
	return 0;

err_callback:
	cn_del_callback(&cnlab_ctl_id);
	synchronize_srcu(&cnlab_ctl_srcu);
	synchronize_rcu_tasks();
err_srcu:
	cleanup_srcu_struct(&cnlab_ctl_srcu);
	return err;
}

void cnlab_ctl_exit(void)
{
	WRITE_ONCE(cnlab_ctl_closing, true);
	cn_del_callback(&cnlab_ctl_id);
	/* Callbacks inside their SRCU section. */
	synchronize_srcu(&cnlab_ctl_srcu);
	/*
	 * Tasks between the connector's lookup and our srcu_read_lock(), or
	 * after srcu_read_unlock(), are still executing module text; they do
	 * not sleep there, so an RCU Tasks grace period covers them.
	 */
	synchronize_rcu_tasks();
	cleanup_srcu_struct(&cnlab_ctl_srcu);
}
