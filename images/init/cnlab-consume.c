// SPDX-License-Identifier: GPL-2.0
/*
 * cnlab-consume: the native connector consumer (built-in consumer plugin
 * "checker-native"), the same accounting and report as the Python checker
 * (plugins/cnlab_plugins/guestside/consume.py) at a fraction of its cost per
 * message.  Built with the initramfs like cnlab-init; the init copies it to
 * /run/cnlab/bin in every guest.
 *
 *   cnlab-consume --name NAME --groups G1,G2 --out PATH [--rcvbuf N]
 *                 [--resync] [--listen-proc] [--delay-us N] [--churn-ms N]
 *   cnlab-consume --replay FILE [--resync] ...
 *
 * --replay reads datagrams from FILE instead of a socket (each: u32 length,
 * its top bit set if the datagram reached an idle reader, u64 receive time
 * in ns from the start, the bytes; native byte order) and reports on them:
 * the unit tests compare its accounting with consume.py's.
 *
 * Joins the groups and receives until SIGTERM; then drains what is queued
 * without blocking and writes one JSON report to PATH (atomically, through
 * PATH.tmp) and to stdout.  PATH.ready (its netlink portid) appears once the
 * socket is bound; PATH.live ({"received", "gaps", "enobufs"}) is rewritten
 * atomically at most every 50 ms while messages arrive.
 *
 * Accounting, as consume.py's Checker: per stream (generator/CPU for lab
 * events, proc/CPU for cn_proc) the messages received, the next expected
 * sequence number, gaps (sequence jumps) and reorders/duplicates; a module
 * stream starts at sequence 0 unless --resync or after a rejoin (then at its
 * first message), a cn_proc stream at its first message, its sequence
 * wrapping at 2^32.  CBUS bundles are expanded like lab/kabi.py's
 * walk_datagram.  Latency is receive time minus the event's kernel
 * timestamp (CLOCK_MONOTONIC), over the first 200,000 messages; "idle
 * latency" is the same for the first message of each datagram that reached
 * a reader whose socket was empty (no backlog in it); the report's
 * "series" counts messages and gaps in 250 ms bins from the start, with each
 * bin's largest latency.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/connector.h>
#include <linux/netlink.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CN_IDX_PROC_ 1
#define PROC_CN_MCAST_LISTEN_ 1
#define PROC_CN_MCAST_IGNORE_ 2
#define CNLAB_CN_F_BUNDLE 0x0001
#define NL_HDR 16
#define CN_HDR 20
#define DATA_OFF (NL_HDR + CN_HDR)
#define EVENT_SIZE 32		/* struct cnlab_event: gen_id, cpu, seq, ts_ns, len, flags */
#define PROC_EVENT_HEAD 16	/* struct proc_event: what, cpu, timestamp_ns */
#define PROC_EVENT_EXIT_ 0x80000000u
#define SENTINEL_WAIT_NS 2000000000ull	/* the most a stop waits for its sentinels' exits */
#define MAX_SENTINELS CPU_SETSIZE
#define MAX_SAMPLES 200000
#define MAX_GROUPS 32
#define BIN_NS 250000000ull
#define LIVE_NS 50000000ull
#define RECV_BUF (1 << 17)
#define REPLAY_IDLE 0x80000000u	/* --replay: the datagram reached an idle reader */
#ifndef SO_RCVBUFFORCE
#define SO_RCVBUFFORCE 33
#endif

struct stream {
	int used;
	int proc;		/* 1: cn_proc stream, sequence modulo 2^32 */
	uint32_t gen;		/* generator id (lab events) */
	uint32_t cpu;
	uint64_t received, gaps, reordered;
	uint64_t baseline, next;
	int has_next;
};

struct bin {
	uint64_t received, gaps;
	uint64_t max_lat;	/* the largest latency in the bin, ns */
	int has_lat;
};

static struct {
	const char *name, *out, *replay;
	int groups[MAX_GROUPS], ngroups;
	int rcvbuf, resync, listen_proc, delay_us, churn_ms;
} opt = { .name = "consumer", .out = "" };

static struct stream *streams;
static size_t nstreams_cap, nstreams;
static uint64_t *samples, *idle_samples;
static size_t nsamples, nidle;
static int woke;		/* the datagram being walked reached an idle reader */
static int reader_idle = 1;	/* the last read found the socket empty */
static struct bin *bins;
static size_t nbins;
static uint64_t received_total, gaps_total, enobufs;
static unsigned int reset_marks, churns;
static uint64_t start_ns;
static volatile sig_atomic_t stop;
static char live_path[4096], live_tmp[4096];
static uint64_t live_written_ns, live_received = (uint64_t)-1, live_gaps, live_enobufs;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static void fail(const char *what)
{
	fprintf(stderr, "cnlab-consume: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void *grow(void *p, size_t *cap, size_t want, size_t size)
{
	size_t n = *cap ? *cap : 16;

	if (want <= *cap)
		return p;
	while (n < want)
		n *= 2;
	p = realloc(p, n * size);
	if (!p)
		fail("realloc");
	memset((char *)p + *cap * size, 0, (n - *cap) * size);
	*cap = n;
	return p;
}

/* The stream of (proc, gen, cpu): a linear scan, there are a few dozen at most. */
static struct stream *stream_of(int proc, uint32_t gen, uint32_t cpu)
{
	static struct stream *last;
	size_t i;

	if (last && last->proc == proc && last->gen == gen && last->cpu == cpu)
		return last;
	for (i = 0; i < nstreams; i++) {
		struct stream *s = &streams[i];

		if (s->proc == proc && s->gen == gen && s->cpu == cpu)
			return last = s;
	}
	streams = grow(streams, &nstreams_cap, nstreams + 1, sizeof(*streams));
	last = &streams[nstreams++];
	last->used = 1;
	last->proc = proc;
	last->gen = gen;
	last->cpu = cpu;
	return last;
}

/* One message of a stream: Checker.event() of consume.py. */
static void event(int proc, uint32_t gen, uint32_t cpu, uint64_t seq,
		  uint64_t ts, uint64_t now)
{
	struct stream *s = stream_of(proc, gen, cpu);
	uint64_t mask = proc ? 0xffffffffull : ~0ull;
	uint64_t half = proc ? 1ull << 31 : 1ull << 63;
	uint64_t exp, diff, slot;
	struct bin *b;

	s->received++;
	received_total++;
	if (!s->has_next) {
		exp = (opt.resync || proc || reset_marks) ? seq : 0;
		if (s->received == 1)
			s->baseline = exp;
	} else {
		exp = s->next;
	}
	diff = (seq - exp) & mask;
	slot = (now - start_ns) / BIN_NS;
	bins = grow(bins, &nbins, slot + 1, sizeof(*bins));
	b = &bins[slot];
	b->received++;
	if (diff < half) {
		s->gaps += diff;
		gaps_total += diff;
		b->gaps += diff;
		s->next = (seq + 1) & mask;
		s->has_next = 1;
	} else {
		s->reordered++;
	}
	if (ts) {
		if (!b->has_lat || now - ts > b->max_lat)
			b->max_lat = now - ts;
		b->has_lat = 1;
		if (nsamples < MAX_SAMPLES)
			samples[nsamples++] = now - ts;
		if (woke) {	/* only the first: the rest of its datagram queued behind it */
			woke = 0;
			if (nidle < MAX_SAMPLES)
				idle_samples[nidle++] = now - ts;
		}
	}
}

static uint16_t get16(const unsigned char *p)
{
	uint16_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static uint32_t get32(const unsigned char *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static uint64_t get64(const unsigned char *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

/* The cn_proc sentinels whose exit event has not been read yet. */
static pid_t sentinels[MAX_SENTINELS];
static int sentinels_left;

/* cn_proc reported that pid exited: one sentinel fewer to wait for, if it was one. */
static void proc_exit(uint32_t pid)
{
	int i;

	for (i = 0; i < sentinels_left; i++)
		if ((uint32_t)sentinels[i] == pid) {
			sentinels[i] = sentinels[--sentinels_left];
			return;
		}
}

static void lab_event(const unsigned char *ev, uint64_t now)
{
	event(0, get32(ev), get32(ev + 4), get64(ev + 8), get64(ev + 16), now);
}

/* Every message of one datagram: lab/kabi.py walk_datagram() with cn_proc as foreign. */
static void walk_messages(const unsigned char *buf, size_t n, uint64_t now)
{
	size_t off = 0;

	while (off + DATA_OFF <= n) {
		uint32_t nl_len = get32(buf + off);
		const unsigned char *cn = buf + off + NL_HDR;
		uint32_t idx = get32(cn);
		uint32_t seq = get32(cn + 8);
		uint16_t length = get16(cn + 16), flags = get16(cn + 18);
		size_t data = off + DATA_OFF;

		if (nl_len < DATA_OFF || off + nl_len > n)
			break;
		if (idx == CN_IDX_PROC_) {
			if (length >= PROC_EVENT_HEAD)
				event(1, 0, get32(buf + data + 4), seq,
				      get64(buf + data + 8), now);
			if (length >= PROC_EVENT_HEAD + 4 &&
			    get32(buf + data) == PROC_EVENT_EXIT_)
				proc_exit(get32(buf + data + PROC_EVENT_HEAD));
		} else if (flags & CNLAB_CN_F_BUNDLE) {
			size_t p = data, end = data + length;

			if (end > off + nl_len)
				end = off + nl_len;
			while (p + CN_HDR + EVENT_SIZE <= end) {
				uint16_t inner = get16(buf + p + 16);

				lab_event(buf + p + CN_HDR, now);
				p += CN_HDR + inner;
			}
		} else if (length >= EVENT_SIZE) {
			lab_event(buf + data, now);
		}
		off += (nl_len + 3) & ~3u;
	}
}

/* One datagram: Checker.datagram() of consume.py. */
static void walk(const unsigned char *buf, size_t n, uint64_t now, int idle)
{
	woke = idle;
	walk_messages(buf, n, now);
	woke = 0;
}

static void write_file(const char *path, const char *tmp, const char *text, size_t len)
{
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	if (fd < 0)
		fail(tmp);
	if (write(fd, text, len) != (ssize_t)len)
		fail(tmp);
	close(fd);
	if (rename(tmp, path))
		fail(path);
}

/* PATH.live, at most every LIVE_NS, when the counts changed. */
static void write_live(uint64_t now)
{
	char text[128];
	int n;

	if (!opt.out[0] || now - live_written_ns < LIVE_NS ||
	    (received_total == live_received && gaps_total == live_gaps &&
	     enobufs == live_enobufs))
		return;
	n = snprintf(text, sizeof(text), "{\"received\": %llu, \"gaps\": %llu, \"enobufs\": %llu}",
		     (unsigned long long)received_total, (unsigned long long)gaps_total,
		     (unsigned long long)enobufs);
	write_file(live_path, live_tmp, text, n);
	live_written_ns = now;
	live_received = received_total;
	live_gaps = gaps_total;
	live_enobufs = enobufs;
}

/* Receive until the socket is empty (never blocks); returns the datagrams read. */
static size_t drain(int sock, unsigned char *buf)
{
	size_t count = 0;

	for (;;) {
		ssize_t n = recv(sock, buf, RECV_BUF, MSG_DONTWAIT);

		if (n < 0) {
			if (errno == ENOBUFS) {
				enobufs++;
				continue;
			}
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				reader_idle = 1;
				return count;
			}
			fail("recv");
		}
		walk(buf, n, now_ns(), reader_idle);
		reader_idle = 0;
		count++;
	}
}

static void set_groups(int sock, int option)
{
	int i;

	for (i = 0; i < opt.ngroups; i++)
		if (setsockopt(sock, SOL_NETLINK, option, &opt.groups[i], sizeof(int)))
			fail("netlink membership");
}

/* PROC_CN_MCAST_LISTEN or _IGNORE to the proc connector, as consume.py's proc_listen(). */
static int proc_listen(int sock, uint32_t op)
{
	unsigned char msg[NL_HDR + CN_HDR + 4];
	struct nlmsghdr *nl = (struct nlmsghdr *)msg;
	struct cn_msg *cn = (struct cn_msg *)(msg + NL_HDR);

	memset(msg, 0, sizeof(msg));
	nl->nlmsg_len = sizeof(msg);
	nl->nlmsg_type = NLMSG_DONE;
	cn->id.idx = CN_IDX_PROC_;
	cn->id.val = 1;
	cn->len = 4;
	memcpy(msg + DATA_OFF, &op, 4);
	return send(sock, msg, sizeof(msg), 0) == (ssize_t)sizeof(msg) ? 0 : -1;
}

/* The socket's drops (column 9 of /proc/net/netlink), -1 if not found. */
static long long socket_drops(uint32_t portid)
{
	char line[512];
	long long drops = -1;
	FILE *f = fopen("/proc/net/netlink", "re");

	if (!f)
		return -1;
	if (!fgets(line, sizeof(line), f)) {
		fclose(f);
		return -1;
	}
	while (fgets(line, sizeof(line), f)) {
		unsigned long long sk;
		int eth;
		unsigned int pid;
		long long d;
		char groups[64];
		long rmem, wmem, dump, locks;

		if (sscanf(line, "%llx %d %u %63s %ld %ld %ld %ld %lld", &sk, &eth, &pid,
			   groups, &rmem, &wmem, &dump, &locks, &d) == 9 &&
		    eth == NETLINK_CONNECTOR && pid == portid) {
			drops = d;
			break;
		}
	}
	fclose(f);
	return drops;
}

/* cn_proc sentinel: one exit event on every CPU this process may run on (read until each arrived). */
static void proc_sentinels(void)
{
	cpu_set_t set, one;
	int cpu;

	if (sched_getaffinity(0, sizeof(set), &set))
		return;
	for (cpu = 0; cpu < CPU_SETSIZE; cpu++) {
		pid_t pid;

		if (!CPU_ISSET(cpu, &set))
			continue;
		pid = fork();
		if (pid == 0) {
			CPU_ZERO(&one);
			CPU_SET(cpu, &one);
			sched_setaffinity(0, sizeof(one), &one);
			_exit(0);
		}
		if (pid > 0) {
			sentinels[sentinels_left++] = pid;
			waitpid(pid, NULL, 0);
		}
	}
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* consume.py's pct(): lat[min(n - 1, int(n * p))] / 1000, one decimal; "null" without samples. */
static void pct(char *out, size_t len, const uint64_t *lat, size_t n, double p)
{
	size_t i;

	if (!n) {
		snprintf(out, len, "null");
		return;
	}
	i = (size_t)(n * p);
	if (i > n - 1)
		i = n - 1;
	snprintf(out, len, "%.1f", lat[i] / 1000.0);
}

/* consume.py orders streams by (str(stream), cpu). */
static int cmp_stream(const void *a, const void *b)
{
	const struct stream *x = a, *y = b;
	char kx[16], ky[16];
	int c;

	snprintf(kx, sizeof(kx), "%s", x->proc ? "proc" : "");
	snprintf(ky, sizeof(ky), "%s", y->proc ? "proc" : "");
	if (!x->proc)
		snprintf(kx, sizeof(kx), "%u", x->gen);
	if (!y->proc)
		snprintf(ky, sizeof(ky), "%u", y->gen);
	c = strcmp(kx, ky);
	if (c)
		return c;
	return x->cpu < y->cpu ? -1 : x->cpu > y->cpu;
}

static void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fprintf(f, "\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			fprintf(f, "\\u%04x", *s);
		else
			fputc(*s, f);
	}
	fputc('"', f);
}

static char *report(uint32_t portid, int rcvbuf, long long drops, size_t *len)
{
	char *text = NULL, p50[32], p99[32], p999[32], max[32], i50[32], i99[32], imax[32];
	uint64_t reordered = 0;
	size_t i;
	int first = 1;
	FILE *f = open_memstream(&text, len);

	if (!f)
		fail("open_memstream");
	qsort(samples, nsamples, sizeof(*samples), cmp_u64);
	qsort(idle_samples, nidle, sizeof(*idle_samples), cmp_u64);
	qsort(streams, nstreams, sizeof(*streams), cmp_stream);
	for (i = 0; i < nstreams; i++)
		reordered += streams[i].reordered;
	pct(p50, sizeof(p50), samples, nsamples, 0.5);
	pct(p99, sizeof(p99), samples, nsamples, 0.99);
	pct(p999, sizeof(p999), samples, nsamples, 0.999);
	pct(max, sizeof(max), samples, nsamples, 1.0);
	pct(i50, sizeof(i50), idle_samples, nidle, 0.5);
	pct(i99, sizeof(i99), idle_samples, nidle, 0.99);
	pct(imax, sizeof(imax), idle_samples, nidle, 1.0);
	fprintf(f, "{\"schema\": 1, \"name\": ");
	json_string(f, opt.name);
	fprintf(f, ", \"portid\": %u, \"groups\": [", portid);
	for (i = 0; i < (size_t)opt.ngroups; i++)
		fprintf(f, "%s%d", i ? ", " : "", opt.groups[i]);
	fprintf(f, "], \"rcvbuf\": %d, \"enobufs\": %llu, \"socket_drops\": %lld, \"churns\": %u, "
		"\"resync\": %s, \"parser\": \"native\", \"received\": %llu, \"gaps\": %llu, "
		"\"reordered\": %llu, \"streams\": {",
		rcvbuf, (unsigned long long)enobufs, drops, churns,
		opt.resync ? "true" : "false", (unsigned long long)received_total,
		(unsigned long long)gaps_total, (unsigned long long)reordered);
	for (i = 0; i < nstreams; i++) {
		struct stream *s = &streams[i];
		char next[32];

		if (s->has_next)
			snprintf(next, sizeof(next), "%llu", (unsigned long long)s->next);
		else
			snprintf(next, sizeof(next), "null");
		if (s->proc)
			fprintf(f, "%s\"proc/%u\": ", i ? ", " : "", s->cpu);
		else
			fprintf(f, "%s\"%u/%u\": ", i ? ", " : "", s->gen, s->cpu);
		fprintf(f, "{\"received\": %llu, \"gaps\": %llu, \"reordered\": %llu, "
			"\"baseline\": %llu, \"next\": %s}",
			(unsigned long long)s->received, (unsigned long long)s->gaps,
			(unsigned long long)s->reordered, (unsigned long long)s->baseline, next);
	}
	fprintf(f, "}, \"latency_us\": {\"p50\": %s, \"p99\": %s, \"p999\": %s, \"max\": %s, "
		"\"samples\": %zu}, \"idle_latency_us\": {\"p50\": %s, \"p99\": %s, \"max\": %s, "
		"\"samples\": %zu}, \"series\": [", p50, p99, p999, max, nsamples, i50, i99, imax, nidle);
	for (i = 0; i < nbins; i++) {
		char lat[32];

		if (!bins[i].received)
			continue;
		if (bins[i].has_lat)
			snprintf(lat, sizeof(lat), "%.1f", bins[i].max_lat / 1000.0);
		else
			snprintf(lat, sizeof(lat), "null");
		fprintf(f, "%s[%.2f, %llu, %llu, %s]", first ? "" : ", ", i * (BIN_NS / 1e9),
			(unsigned long long)bins[i].received, (unsigned long long)bins[i].gaps, lat);
		first = 0;
	}
	fprintf(f, "]}");
	if (fclose(f))
		fail("report");
	return text;
}

static void parse_groups(const char *text)
{
	char *copy = strdup(text), *tok, *save = NULL;

	if (!copy)
		fail("strdup");
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (opt.ngroups == MAX_GROUPS) {
			fprintf(stderr, "cnlab-consume: at most %d groups\n", MAX_GROUPS);
			exit(2);
		}
		opt.groups[opt.ngroups++] = atoi(tok);
	}
	free(copy);
}

static void parse_args(int argc, char **argv)
{
	static const struct option longs[] = {
		{ "name", required_argument, NULL, 'n' },
		{ "groups", required_argument, NULL, 'g' },
		{ "out", required_argument, NULL, 'o' },
		{ "rcvbuf", required_argument, NULL, 'r' },
		{ "delay-us", required_argument, NULL, 'd' },
		{ "churn-ms", required_argument, NULL, 'c' },
		{ "resync", no_argument, NULL, 's' },
		{ "listen-proc", no_argument, NULL, 'l' },
		{ "replay", required_argument, NULL, 'p' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
		switch (c) {
		case 'n': opt.name = optarg; break;
		case 'g': parse_groups(optarg); break;
		case 'o': opt.out = optarg; break;
		case 'r': opt.rcvbuf = atoi(optarg); break;
		case 'd': opt.delay_us = atoi(optarg); break;
		case 'c': opt.churn_ms = atoi(optarg); break;
		case 's': opt.resync = 1; break;
		case 'l': opt.listen_proc = 1; break;
		case 'p': opt.replay = optarg; break;
		default:
			fprintf(stderr, "usage: cnlab-consume --name NAME --groups G1,G2 --out PATH [--rcvbuf N] "
				"[--resync] [--listen-proc] [--delay-us N] [--churn-ms N]\n");
			exit(2);
		}
	}
}

/* --replay: the datagrams of FILE, at the receive times it gives; then the report on stdout. */
static int replay(const char *file, unsigned char *buf)
{
	FILE *f = fopen(file, "re");
	uint32_t n;
	uint64_t t;
	size_t len;
	char *text;

	if (!f)
		fail(file);
	start_ns = 0;
	while (fread(&n, sizeof(n), 1, f) == 1 && fread(&t, sizeof(t), 1, f) == 1) {
		int idle = !!(n & REPLAY_IDLE);

		n &= ~REPLAY_IDLE;
		if (n > RECV_BUF || fread(buf, 1, n, f) != n) {
			fprintf(stderr, "cnlab-consume: %s: truncated record\n", file);
			return 1;
		}
		walk(buf, n, t, idle);
	}
	fclose(f);
	text = report(0, 0, -1, &len);
	printf("%s\n", text);
	free(text);
	return 0;
}

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) && errno == EINTR && !stop)
		;
}

int main(int argc, char **argv)
{
	struct sockaddr_nl addr = { .nl_family = AF_NETLINK };
	struct sigaction sa;
	socklen_t alen = sizeof(addr);
	unsigned char *buf;
	uint64_t next_churn = 0;
	int sock, rcvbuf = 0;
	socklen_t olen = sizeof(rcvbuf);
	char path[4096], tmp[4096];
	size_t len;
	char *text;

	start_ns = now_ns();
	parse_args(argc, argv);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;	/* no SA_RESTART: poll() returns at once */
	sigaction(SIGTERM, &sa, NULL);
	buf = malloc(RECV_BUF);
	samples = malloc(MAX_SAMPLES * sizeof(*samples));
	idle_samples = malloc(MAX_SAMPLES * sizeof(*idle_samples));
	if (!buf || !samples || !idle_samples)
		fail("malloc");
	if (opt.replay)
		return replay(opt.replay, buf);

	sock = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_CONNECTOR);
	if (sock < 0)
		fail("socket");
	if (opt.rcvbuf && setsockopt(sock, SOL_SOCKET, SO_RCVBUFFORCE, &opt.rcvbuf, sizeof(int)) &&
	    setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &opt.rcvbuf, sizeof(int)))
		fail("SO_RCVBUF");
	if (bind(sock, (struct sockaddr *)&addr, sizeof(addr)))
		fail("bind");
	set_groups(sock, NETLINK_ADD_MEMBERSHIP);
	if (getsockname(sock, (struct sockaddr *)&addr, &alen))
		fail("getsockname");
	getsockopt(sock, SOL_SOCKET, SO_RCVBUF, &rcvbuf, &olen);
	if (opt.listen_proc && proc_listen(sock, PROC_CN_MCAST_LISTEN_))
		fail("PROC_CN_MCAST_LISTEN");
	if (opt.out[0]) {
		char portid[16];
		int n = snprintf(portid, sizeof(portid), "%u", addr.nl_pid);

		snprintf(live_path, sizeof(live_path), "%s.live", opt.out);
		snprintf(live_tmp, sizeof(live_tmp), "%s.live.tmp", opt.out);
		snprintf(path, sizeof(path), "%s.ready", opt.out);
		snprintf(tmp, sizeof(tmp), "%s.ready.tmp", opt.out);
		write_file(path, tmp, portid, n);
	}
	if (opt.churn_ms)
		next_churn = now_ns() + opt.churn_ms * 1000000ull;

	while (!stop) {
		struct pollfd pfd = { .fd = sock, .events = POLLIN };
		uint64_t now;
		int ready;

		if (opt.churn_ms && now_ns() >= next_churn) {
			set_groups(sock, NETLINK_DROP_MEMBERSHIP);
			drain(sock, buf);
			for (len = 0; len < nstreams; len++)
				streams[len].has_next = 0;
			reset_marks++;
			sleep_ms(opt.churn_ms / 2);
			set_groups(sock, NETLINK_ADD_MEMBERSHIP);
			churns++;
			next_churn = now_ns() + opt.churn_ms * 1000000ull;
		}
		ready = poll(&pfd, 1, 50);
		now = now_ns();
		if (ready <= 0) {
			write_live(now);
			continue;
		}
		if (opt.delay_us) {	/* slow: one datagram, then the pause */
			ssize_t n = recv(sock, buf, RECV_BUF, MSG_DONTWAIT);

			if (n >= 0) {
				walk(buf, n, now_ns(), reader_idle);
				reader_idle = 0;
			} else if (errno == ENOBUFS) {
				enobufs++;
			} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
				reader_idle = 1;
			}
			usleep(opt.delay_us);
		} else {
			drain(sock, buf);
		}
		write_live(now_ns());
	}
	drain(sock, buf);
	if (opt.listen_proc) {
		uint64_t give_up;

		proc_sentinels();
		give_up = now_ns() + SENTINEL_WAIT_NS;
		while (sentinels_left && now_ns() < give_up) {
			struct pollfd pfd = { .fd = sock, .events = POLLIN };

			if (poll(&pfd, 1, 50) > 0)
				drain(sock, buf);
		}
	}
	live_written_ns = 0;
	write_live(now_ns() + LIVE_NS);
	text = report(addr.nl_pid, rcvbuf, socket_drops(addr.nl_pid), &len);
	if (opt.listen_proc)
		proc_listen(sock, PROC_CN_MCAST_IGNORE_);
	if (opt.out[0]) {
		snprintf(tmp, sizeof(tmp), "%s.tmp", opt.out);
		write_file(opt.out, tmp, text, len);
	}
	printf("%s\n", text);
	free(text);
	return 0;
}
