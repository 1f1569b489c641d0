// SPDX-License-Identifier: GPL-2.0
/*
 * Print the size and field offsets of every cnlab UAPI struct, and the
 * UAPI constants, as JSON. Host tool: gcc -o abi_dump abi_dump.c
 * tests/unit/test_kabi.py compares the output with lab/kabi.py.
 */
#include <stddef.h>
#include <stdio.h>
#include <linux/connector.h>

#include "../include/uapi/cnlab.h"

static int first_struct = 1;
static int first_field;

static void struct_begin(const char *name, size_t size)
{
	printf("%s\n  \"%s\": {\"size\": %zu, \"fields\": {",
	       first_struct ? "" : ",", name, size);
	first_struct = 0;
	first_field = 1;
}

static void field(const char *name, size_t off, size_t size)
{
	printf("%s\"%s\": [%zu, %zu]", first_field ? "" : ", ", name, off,
	       size);
	first_field = 0;
}

static void struct_end(void)
{
	printf("}}");
}

#define S(type) struct_begin(#type, sizeof(struct type))
#define F(type, member) \
	field(#member, offsetof(struct type, member), \
	      sizeof(((struct type *)0)->member))
#define E() struct_end()

static int first_const = 1;

static void constant(const char *name, unsigned long long v)
{
	printf("%s\n  \"%s\": %llu", first_const ? "" : ",", name, v);
	first_const = 0;
}

#define K(name) constant(#name, (unsigned long long)(name))

int main(void)
{
	printf("{\"structs\": {");
	S(cn_msg); F(cn_msg, id); F(cn_msg, seq); F(cn_msg, ack);
	F(cn_msg, len); F(cn_msg, flags);
	field("data", offsetof(struct cn_msg, data), 0); E();
	S(cnlab_hdr); F(cnlab_hdr, version); F(cnlab_hdr, flags);
	F(cnlab_hdr, type); F(cnlab_hdr, status); F(cnlab_hdr, len);
	F(cnlab_hdr, reserved); E();
	S(cnlab_echo); F(cnlab_echo, user_ns); F(cnlab_echo, rx_ns);
	F(cnlab_echo, tx_ns); F(cnlab_echo, cpu); F(cnlab_echo, data_len); E();
	S(cnlab_gen_start); F(cnlab_gen_start, gen_id); F(cnlab_gen_start, idx);
	F(cnlab_gen_start, val); F(cnlab_gen_start, group);
	F(cnlab_gen_start, count); F(cnlab_gen_start, duration_ns);
	F(cnlab_gen_start, cpu_mask); F(cnlab_gen_start, rate);
	F(cnlab_gen_start, size_min); F(cnlab_gen_start, size_max);
	F(cnlab_gen_start, context); F(cnlab_gen_start, path);
	F(cnlab_gen_start, flags); F(cnlab_gen_start, burst); E();
	S(cnlab_gen_stop); F(cnlab_gen_stop, gen_id);
	F(cnlab_gen_stop, reserved); E();
	S(cnlab_event); F(cnlab_event, gen_id); F(cnlab_event, cpu);
	F(cnlab_event, seq); F(cnlab_event, ts_ns); F(cnlab_event, len);
	F(cnlab_event, flags); E();
	S(cnlab_stats_req); F(cnlab_stats_req, flags);
	F(cnlab_stats_req, reserved); E();
	S(cnlab_cbus_stats); F(cnlab_cbus_stats, inserted);
	F(cnlab_cbus_stats, sent); F(cnlab_cbus_stats, drop_full);
	F(cnlab_cbus_stats, drop_nomem); F(cnlab_cbus_stats, drop_nolistener);
	F(cnlab_cbus_stats, drop_overrun);
	F(cnlab_cbus_stats, drop_nlerr); F(cnlab_cbus_stats, rejected);
	F(cnlab_cbus_stats, queued); F(cnlab_cbus_stats, hwm);
	F(cnlab_cbus_stats, kicks); F(cnlab_cbus_stats, batches);
	F(cnlab_cbus_stats, batch_max); F(cnlab_cbus_stats, nl_msgs);
	F(cnlab_cbus_stats, bundles); F(cnlab_cbus_stats, enqueued);
	F(cnlab_cbus_stats, dequeued); F(cnlab_cbus_stats, batch_hist);
	F(cnlab_cbus_stats, cpu); F(cnlab_cbus_stats, online); E();
	S(cnlab_stats_rep); F(cnlab_stats_rep, nr_cpus);
	F(cnlab_stats_rep, queue_limit); F(cnlab_stats_rep, alloc_fail_nth);
	F(cnlab_stats_rep, stall_ms); F(cnlab_stats_rep, queue_bytes);
	F(cnlab_stats_rep, reserved); F(cnlab_stats_rep, ctl_requests);
	F(cnlab_stats_rep, ctl_errors); F(cnlab_stats_rep, ctl_reply_fail);
	F(cnlab_stats_rep, total); E();
	S(cnlab_gen_stats_req); F(cnlab_gen_stats_req, gen_id);
	F(cnlab_gen_stats_req, reserved); E();
	S(cnlab_gen_cpu_stats); F(cnlab_gen_cpu_stats, cpu);
	F(cnlab_gen_cpu_stats, reserved); F(cnlab_gen_cpu_stats, generated);
	F(cnlab_gen_cpu_stats, ok); F(cnlab_gen_cpu_stats, err_nolistener);
	F(cnlab_gen_cpu_stats, err_overrun);
	F(cnlab_gen_cpu_stats, err_nomem); F(cnlab_gen_cpu_stats, err_full);
	F(cnlab_gen_cpu_stats, err_other); F(cnlab_gen_cpu_stats, bursts);
	F(cnlab_gen_cpu_stats, bursts_missed); E();
	S(cnlab_gen_stats_rep); F(cnlab_gen_stats_rep, gen_id);
	F(cnlab_gen_stats_rep, state); F(cnlab_gen_stats_rep, nr_cpus);
	F(cnlab_gen_stats_rep, active); F(cnlab_gen_stats_rep, start_ns);
	F(cnlab_gen_stats_rep, end_ns); F(cnlab_gen_stats_rep, cfg); E();
	S(cnlab_fault); F(cnlab_fault, op); F(cnlab_fault, reserved);
	F(cnlab_fault, value); E();
	S(cnlab_bench); F(cnlab_bench, idx); F(cnlab_bench, val);
	F(cnlab_bench, group); F(cnlab_bench, payload);
	F(cnlab_bench, iterations); F(cnlab_bench, chunk);
	F(cnlab_bench, pause_us); F(cnlab_bench, cpu); E();
	S(cnlab_bench_result); F(cnlab_bench_result, status);
	F(cnlab_bench_result, cpu); F(cnlab_bench_result, cbus_ns);
	F(cnlab_bench_result, cbus_calls); F(cnlab_bench_result, cbus_ok);
	F(cnlab_bench_result, direct_ns); F(cnlab_bench_result, direct_calls);
	F(cnlab_bench_result, direct_ok); F(cnlab_bench_result, direct_esrch);
	F(cnlab_bench_result, direct_err);
	F(cnlab_bench_result, cbus_ns_min_chunk);
	F(cnlab_bench_result, direct_ns_min_chunk);
	F(cnlab_bench_result, cbus_first_ns);
	F(cnlab_bench_result, direct_first_ns);
	F(cnlab_bench_result, cfg); E();
	printf("\n}, \"consts\": {");
	K(CNLAB_ABI_VERSION); K(CNLAB_CTL_IDX); K(CNLAB_CTL_VAL);
	K(CNLAB_CN_F_BUNDLE); K(CNLAB_MAX_GENS); K(CNLAB_MAX_CPUS);
	K(CNLAB_GROUP_MIN); K(CNLAB_GROUP_MAX); K(CNLAB_PAYLOAD_MAX);
	K(CNLAB_ECHO_MAX_DATA); K(CNLAB_RATE_MAX); K(CNLAB_DURATION_MAX_NS);
	K(CNLAB_COUNT_MAX); K(CNLAB_BURST_MAX); K(CNLAB_QLIMIT_MAX);
	K(CNLAB_BURST_RATE_MAX); K(CNLAB_BURST_MSGS_PER_S_MAX);
	K(CNLAB_BURST_BYTES_MAX); K(CNLAB_BURST_BYTES_PER_S_MAX);
	K(CNLAB_STALL_MAX_MS); K(CNLAB_BENCH_ITER_MAX);
	K(CNLAB_BENCH_PAUSE_MAX_US); K(CNLAB_BENCH_CHUNK_MAX);
	K(CNLAB_BENCH_CHUNK_BYTES_MAX); K(CNLAB_QBYTES_MIN);
	K(CNLAB_QBYTES_DEFAULT); K(CNLAB_QBYTES_MAX);
	K(CNLAB_GEN_ALL); K(CNLAB_WARN_MAGIC);
	K(CNLAB_PANIC_MAGIC);
	K(CNLAB_MSG_ECHO); K(CNLAB_MSG_GEN_START); K(CNLAB_MSG_GEN_STOP);
	K(CNLAB_MSG_STATS); K(CNLAB_MSG_GEN_STATS); K(CNLAB_MSG_SET_FAULT);
	K(CNLAB_MSG_BENCH); K(CNLAB_MSG_BENCH_RESULT); K(CNLAB_MSG_MAX);
	K(CNLAB_F_REPLY);
	K(CNLAB_CTX_KTHREAD); K(CNLAB_CTX_SOFTIRQ); K(CNLAB_CTX_TIMER);
	K(CNLAB_CTX_HARDIRQ); K(CNLAB_CTX_MAX);
	K(CNLAB_PATH_DIRECT); K(CNLAB_PATH_CBUS); K(CNLAB_PATH_MAX);
	K(CNLAB_GEN_F_BUNDLE); K(CNLAB_GEN_F_BURSTS); K(CNLAB_GEN_F_ALL);
	K(CNLAB_STATS_F_RESET_HWM); K(CNLAB_STATS_F_ALL);
	K(CNLAB_EV_F_CBUS);
	K(CNLAB_BATCH_BUCKETS);
	K(CNLAB_GEN_IDLE); K(CNLAB_GEN_RUNNING); K(CNLAB_GEN_DONE);
	K(CNLAB_GEN_STOPPED);
	K(CNLAB_FAULT_ALLOC_NTH); K(CNLAB_FAULT_STALL_MS);
	K(CNLAB_FAULT_QLIMIT); K(CNLAB_FAULT_WARN); K(CNLAB_FAULT_PANIC); K(CNLAB_FAULT_MAX);
	printf("\n}}\n");
	return 0;
}
