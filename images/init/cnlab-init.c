// SPDX-License-Identifier: GPL-2.0
/*
 * cnlab-init: PID 1 of a cnlab guest.
 *
 * Stage 1 runs from the initramfs: mount the pseudo filesystems, load the
 * virtio modules listed in /etc/cnlab/modules, mount the root disk (a
 * per-guest copy-on-write overlay of the cached image, on NVMe, which the
 * cloud kernel has built in, or virtio-blk for guests whose state is saved)
 * and the kernel's module disk, copy the per-boot files (/cnlab) and the
 * image's programs (/cnlab-bin: the native consumer) to /run/cnlab and
 * /run/cnlab/bin, and move into the root.  Stage 2 runs in the root disk: start the SSH daemon, bring up
 * the network, load the lab's modules named on the kernel command line, wait
 * until sshd listens, and only then announce readiness on the second serial
 * port (ttyS1, a socket the host reads): no polling on either side.
 *
 * Kernel command line keys (all optional):
 *   cnlab.nonce=HEX      echoed in the ready line, ties it to this boot
 *   cnlab.ip=A.B.C.D/N   address of eth0 (default 10.0.2.15/24)
 *   cnlab.gw=A.B.C.D     default gateway (default 10.0.2.2)
 *   cnlab.load=PATH,...  modules to load before announcing readiness
 *   cnlab.root=DEV       root disk (default /dev/nvme0n1)
 *   cnlab.moddisk=DEV    disk with /lib/modules (none if not given)
 *   cnlab.halt           stage 1 only: print the ready line, power off
 *   cnlab.trace_instance=NAME  make the tracefs instance NAME before
 *                        announcing readiness (the flight recorder's: making
 *                        one costs a TCG guest 0.2-0.3 s, paid here once by
 *                        the guest whose state is saved, not per scenario)
 *   cnlab.snapshot       the boot of a guest whose state the host saves:
 *                        mount the root disk read-only (every restored
 *                        guest gets its own overlay and remounts it
 *                        read-write when it resumes)
 *
 * Resume (guests restored from a saved state): the ready port is also read.
 * A restored guest wakes up still holding the boot's clock, random pool and
 * nonce, so the host writes one line after it restores the guest:
 *
 *   CNLAB-RESUME nonce=HEX rt=SECONDS.NANOSECONDS seed=HEX
 *
 * and the init sets the wall clock to rt, mixes the seed into the random
 * pool and reseeds the kernel's CRNG from it (RNDADDENTROPY, RNDRESEEDCRNG),
 * lets sshd go on (see below), remounts the root disk read-write
 * (cnlab.snapshot), writes the new nonce to /run/cnlab/nonce, and answers
 * with a ready line for the new nonce that says what it did (restored=1;
 * clock=, reseed=, sshd=, rw=: 0 or an errno; rt= the clock after setting
 * it; build-id= the lab modules' GNU build IDs, read from /sys/module once
 * they were loaded), so the host can check the restored guest before it
 * uses it.
 *
 * sshd is held (SIGSTOP) in the saved state: just before the host saves a
 * guest it writes "CNLAB-HOLD nonce=HEX" and the init stops sshd and
 * answers "CNLAB-HELD nonce=HEX sshd=0" (or an errno).  A restored sshd goes
 * on (SIGCONT) only once the CRNG is reseeded, so no connection can draw
 * random bytes every restored guest shares; the host may therefore connect
 * as soon as it has resumed the guest, and the SSH handshake runs beside
 * the rest of the resume instead of after it.
 *
 * Taint: "CNLAB-TAINT id=TOKEN" asks for the kernel's taint mask at any time
 * after readiness; the init answers "CNLAB-TAINTED id=TOKEN tainted=N err=0"
 * (or err= an errno and tainted=0).  The host reads it before and after every
 * scenario: over SSH that was two commands per scenario, 0.15-0.25 s each on
 * a restored TCG guest; here it is one read(2) of PID 1.
 *
 * Any fatal error is printed to the console and the guest powers off, so
 * the host sees QEMU exit before readiness and reports the console tail.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/random.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/klog.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define CMDLINE_MAX 4096
#define SSHD "/usr/sbin/sshd"
#define SSHD_CONFIG "/etc/cnlab/sshd_config"
#define SSHD_PIDFILE "/run/sshd.pid"
#define SSHD_LOG "/run/cnlab/sshd.log"
#define SSHD_STARTS 3	/* sshd starts before the guest gives up */
#define NONCE_FILE "/run/cnlab/nonce"
/*
 * The root disk's image has inode tables that are not zeroed yet: without
 * noinit_itable every guest's kernel would zero them (about 20 MB of
 * writes into its copy-on-write overlay) in the background while it runs.
 */
#define ROOT_OPTIONS "noinit_itable"
#define SEED_MAX 64	/* bytes of host randomness a resume line may carry */

static char cmdline[CMDLINE_MAX];
static int tracing;
/* Test hook: the first N sshd starts exec a missing program (cnlab.sshd_fail=N). */
static int sshd_sabotage;
/* cnlab.snapshot: the root disk is mounted read-only until a resume. */
static int snapshot_boot;
static char root_dev[64] = "/dev/nvme0n1";
/* The lab modules' load status, announced at boot and again at each resume. */
static char modules_status[1024];
/* "name:build-id,..." of the lab modules, read once they are loaded. */
static char module_build_id_list[400];
/* The sshd that listens, and whether the host had it held for a save. */
static pid_t sshd_pid;
static int sshd_held;

static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int fd, n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(buf))
		n = sizeof(buf) - 1;
	fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		fd = STDERR_FILENO;
	if (write(fd, buf, n) < 0)
		(void)0;
	if (fd != STDERR_FILENO)
		close(fd);
}

/* With cnlab.trace on the command line, log each boot phase with its time. */
static void trace(const char *phase)
{
	struct timespec ts;

	if (!tracing)
		return;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	say("cnlab-init: %5ld.%06ld %s\n", (long)ts.tv_sec, ts.tv_nsec / 1000,
	    phase);
}

static void power_off(void)
{
	sync();
	reboot(RB_POWER_OFF);
	for (;;)
		pause();
}

static void die(const char *what)
{
	say("cnlab-init: FATAL: %s: %s\n", what, strerror(errno));
	power_off();
}

/* Value of "key=" in a line of space-separated words, or NULL. */
static const char *word_get(const char *text, const char *key, char *out,
			    size_t outlen)
{
	size_t klen = strlen(key);
	const char *p = text;

	while (*p) {
		while (*p == ' ' || *p == '\n')
			p++;
		if (!strncmp(p, key, klen) && p[klen] == '=') {
			size_t n = strcspn(p + klen + 1, " \n");

			if (n >= outlen)
				n = outlen - 1;
			memcpy(out, p + klen + 1, n);
			out[n] = '\0';
			return out;
		}
		p += strcspn(p, " \n");
	}
	return NULL;
}

/* Value of "key=" on the kernel command line, or NULL. */
static const char *cmdline_get(const char *key, char *out, size_t outlen)
{
	return word_get(cmdline, key, out, outlen);
}

static int cmdline_has(const char *word)
{
	size_t wlen = strlen(word);
	const char *p = cmdline;

	while (*p) {
		while (*p == ' ' || *p == '\n')
			p++;
		if (!strncmp(p, word, wlen) &&
		    (p[wlen] == ' ' || p[wlen] == '\n' || p[wlen] == '\0'))
			return 1;
		p += strcspn(p, " \n");
	}
	return 0;
}

static void read_cmdline(void)
{
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		die("open /proc/cmdline");
	n = read(fd, cmdline, sizeof(cmdline) - 1);
	close(fd);
	cmdline[n > 0 ? n : 0] = '\0';
}

static void mount_or_die(const char *src, const char *dst, const char *type,
			 unsigned long flags, const char *data)
{
	mkdir(dst, 0755);
	if (mount(src, dst, type, flags, data) && errno != EBUSY) {
		say("cnlab-init: mount %s on %s\n", type, dst);
		die("mount");
	}
}

static int load_module(const char *path, const char *params)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int err = 0;

	if (fd < 0)
		return -errno;
	if (syscall(SYS_finit_module, fd, params, 0) && errno != EEXIST)
		err = -errno;
	close(fd);
	return err;
}

/* Load every module named (one path per line) in a list file. */
static void load_module_list(const char *list)
{
	char line[256];
	FILE *f = fopen(list, "re");

	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		int err;

		line[strcspn(line, "\n")] = '\0';
		if (!line[0])
			continue;
		err = load_module(line, "");
		if (err)
			say("cnlab-init: load %s: %s\n", line, strerror(-err));
	}
	fclose(f);
}

static int copy_file(const char *src, const char *dst, mode_t mode)
{
	char buf[65536];
	int in, out;
	ssize_t n;

	in = open(src, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return -1;
	out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (out < 0) {
		close(in);
		return -1;
	}
	while ((n = read(in, buf, sizeof(buf))) > 0)
		if (write(out, buf, n) != n)
			break;
	close(in);
	close(out);
	return n == 0 ? 0 : -1;
}

/*
 * Copy the regular files of SRC (a folder of the initramfs) to DST: the
 * per-boot files (/cnlab: keys, the lab's modules) and the base image's
 * programs (/cnlab-bin: the native consumer).
 */
static void copy_dir(const char *src, const char *dst, mode_t dir_mode,
		     mode_t file_mode)
{
	char from[512], to[512];
	struct dirent *de;
	DIR *d = opendir(src);

	if (!d)
		return;
	mkdir(dst, dir_mode);
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(from, sizeof(from), "%s/%s", src, de->d_name);
		snprintf(to, sizeof(to), "%s/%s", dst, de->d_name);
		if (copy_file(from, to, file_mode))
			say("cnlab-init: copy %s failed\n", from);
	}
	closedir(d);
}

/*
 * NVMe namespaces appear asynchronously (the driver scans them from a
 * workqueue), so wait for the node with inotify on /dev: devtmpfs creates it.
 */
static int wait_for_device(const char *path, int timeout_ms)
{
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	struct timespec start, now;
	int fd, left = timeout_ms;

	if (access(path, F_OK) == 0)
		return 0;
	fd = inotify_init1(IN_CLOEXEC);
	if (fd < 0 || inotify_add_watch(fd, "/dev", IN_CREATE) < 0)
		return -1;
	clock_gettime(CLOCK_MONOTONIC, &start);
	while (access(path, F_OK) != 0 && left > 0) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };

		if (poll(&pfd, 1, left) > 0 && read(fd, buf, sizeof(buf)) < 0)
			break;
		clock_gettime(CLOCK_MONOTONIC, &now);
		left = timeout_ms - (int)((now.tv_sec - start.tv_sec) * 1000 +
					  (now.tv_nsec - start.tv_nsec) / 1000000);
	}
	close(fd);
	return access(path, F_OK);
}

/*
 * Mount an ext4 disk once it can be opened.  devtmpfs creates a disk's node
 * before the disk can be opened (virtio-blk: a mount in between fails with
 * ENXIO), and the disk's "add" uevent comes only once it can: so a mount
 * that fails with ENXIO is tried again after each uevent.
 */
static int mount_disk(const char *dev, const char *target, unsigned long flags,
		      const char *data, int timeout_ms)
{
	char buf[4096];
	struct sockaddr_nl addr = { .nl_family = AF_NETLINK, .nl_groups = 1 };
	struct timespec start, now;
	int sock, err, left = timeout_ms;

	sock = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC,
		      NETLINK_KOBJECT_UEVENT);
	if (sock >= 0 && bind(sock, (struct sockaddr *)&addr, sizeof(addr))) {
		close(sock);
		sock = -1;
	}
	clock_gettime(CLOCK_MONOTONIC, &start);
	if (wait_for_device(dev, timeout_ms)) {
		err = ENODEV;
		goto out;
	}
	for (;;) {
		struct pollfd pfd = { .fd = sock, .events = POLLIN };

		err = mount(dev, target, "ext4", flags, data) ? errno : 0;
		if (err != ENXIO || sock < 0 || left <= 0)
			break;
		if (poll(&pfd, 1, left) > 0 && recv(sock, buf, sizeof(buf), 0) < 0)
			break;
		clock_gettime(CLOCK_MONOTONIC, &now);
		left = timeout_ms - (int)((now.tv_sec - start.tv_sec) * 1000 +
					  (now.tv_nsec - start.tv_nsec) / 1000000);
	}
out:
	if (sock >= 0)
		close(sock);
	errno = err;
	return err ? -1 : 0;
}

/* Signals PID 1 handles, read from a signalfd; blocked before any fork. */
static int init_signalfd(void)
{
	sigset_t mask;
	int sfd;

	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGPWR);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	sfd = signalfd(-1, &mask, SFD_CLOEXEC);
	if (sfd < 0)
		die("signalfd");
	return sfd;
}

/*
 * Start the SSH daemon once, as soon as the root disk is mounted (in a
 * chroot: stage 1 has not switched root yet), on the other vCPU: "-r" (no re-exec)
 * makes each connection a fork of a daemon that has already loaded its
 * libraries, config and host key.  Serving each connection with "sshd -i"
 * paid that start-up (about 0.2 s under TCG) on every connection,
 * including the first one the host waits for.  Logs go to a file, not to
 * the console the host scans. Started again (in the switched root) if it
 * dies before it listens: see wait_sshd_listening().
 */
static pid_t start_sshd(const char *root)
{
	static char * const argv[] = { SSHD, "-D", "-r", "-f", SSHD_CONFIG,
				       "-E", SSHD_LOG, NULL };
	static char * const envp[] = {
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root", "LANG=C.UTF-8", NULL };
	const char *path = SSHD;
	pid_t pid;

	if (sshd_sabotage > 0) {
		sshd_sabotage--;
		path = "/nonexistent/sshd";
	}
	pid = fork();
	if (pid == 0) {
		sigset_t none;
		int null = open("/dev/null", O_RDONLY);

		if (null >= 0)
			dup2(null, 0);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		setsid();
		if (chroot(root) || chdir("/")) {
			say("cnlab-init: sshd: chroot %s: %s\n", root, strerror(errno));
			_exit(126);
		}
		execve(path, argv, envp);
		say("cnlab-init: sshd: exec %s: %s\n", path, strerror(errno));
		_exit(127);
	}
	if (pid < 0)
		die("fork sshd");
	return pid;
}

static pid_t stage1_switch_root(void)
{
	char moddisk[64] = "";
	static const char * const moves[] = { "/dev", "/proc", "/sys" };
	char target[64];
	size_t i;

	pid_t loader, sshd;

	cmdline_get("cnlab.root", root_dev, sizeof(root_dev));
	cmdline_get("cnlab.moddisk", moddisk, sizeof(moddisk));
	/* The virtio modules load on the other vCPU while this one mounts the disks. */
	loader = fork();
	if (loader == 0) {
		load_module_list("/etc/cnlab/modules");
		_exit(0);
	}
	mkdir("/newroot", 0755);
	if (mount_disk(root_dev, "/newroot",
		       MS_NOATIME | (snapshot_boot ? MS_RDONLY : 0), ROOT_OPTIONS,
		       30000))
		die("mount root disk");
	mount_or_die("tmpfs", "/newroot/run", "tmpfs", MS_NOSUID | MS_NODEV,
		     "mode=0755");
	copy_dir("/cnlab", "/newroot/run/cnlab", 0700, 0600);
	copy_dir("/cnlab-bin", "/newroot/run/cnlab/bin", 0755, 0755);
	mkdir("/newroot/run/sshd", 0755);
	sshd = start_sshd("/newroot");
	if (moddisk[0] && mount_disk(moddisk, "/newroot/lib/modules",
				     MS_RDONLY | MS_NOATIME, "", 30000))
		say("cnlab-init: mount %s: %s\n", moddisk, strerror(errno));
	if (loader < 0)
		load_module_list("/etc/cnlab/modules");
	else
		waitpid(loader, NULL, 0);
	trace("modules loaded, disks mounted");
	for (i = 0; i < sizeof(moves) / sizeof(moves[0]); i++) {
		snprintf(target, sizeof(target), "/newroot%s", moves[i]);
		mkdir(target, 0755);
		if (mount(moves[i], target, NULL, MS_MOVE, NULL))
			die("move mount");
	}
	if (chdir("/newroot") || mount(".", "/", NULL, MS_MOVE, NULL) ||
	    chroot(".") || chdir("/"))
		die("switch root");
	return sshd;
}

static void ifreq_set_flags(int sock, const char *name, short flags)
{
	struct ifreq ifr;

	memset(&ifr, 0, sizeof(ifr));
	strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
	if (ioctl(sock, SIOCGIFFLAGS, &ifr) == 0) {
		ifr.ifr_flags |= flags;
		if (ioctl(sock, SIOCSIFFLAGS, &ifr))
			say("cnlab-init: %s up: %s\n", name, strerror(errno));
	}
}

static void set_addr(int sock, const char *name, unsigned long req,
		     in_addr_t addr)
{
	struct ifreq ifr;
	struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;

	memset(&ifr, 0, sizeof(ifr));
	strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = addr;
	if (ioctl(sock, req, &ifr))
		say("cnlab-init: %s address: %s\n", name, strerror(errno));
}

static void network_up(void)
{
	char ip[64] = "10.0.2.15/24", gw[32] = "10.0.2.2";
	struct rtentry rt;
	struct sockaddr_in *sin;
	in_addr_t addr, mask;
	char *slash;
	int prefix = 24;
	int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (sock < 0)
		die("socket");
	ifreq_set_flags(sock, "lo", IFF_UP);
	cmdline_get("cnlab.ip", ip, sizeof(ip));
	cmdline_get("cnlab.gw", gw, sizeof(gw));
	slash = strchr(ip, '/');
	if (slash) {
		*slash = '\0';
		prefix = atoi(slash + 1);
	}
	if (inet_pton(AF_INET, ip, &addr) != 1 || prefix < 1 || prefix > 32) {
		say("cnlab-init: bad cnlab.ip\n");
		close(sock);
		return;
	}
	mask = htonl(0xffffffffu << (32 - prefix));
	set_addr(sock, "eth0", SIOCSIFADDR, addr);
	set_addr(sock, "eth0", SIOCSIFNETMASK, mask);
	ifreq_set_flags(sock, "eth0", IFF_UP | IFF_RUNNING);

	memset(&rt, 0, sizeof(rt));
	sin = (struct sockaddr_in *)&rt.rt_gateway;
	sin->sin_family = AF_INET;
	if (inet_pton(AF_INET, gw, &sin->sin_addr) == 1) {
		((struct sockaddr_in *)&rt.rt_dst)->sin_family = AF_INET;
		((struct sockaddr_in *)&rt.rt_genmask)->sin_family = AF_INET;
		rt.rt_flags = RTF_UP | RTF_GATEWAY;
		if (ioctl(sock, SIOCADDRT, &rt))
			say("cnlab-init: default route: %s\n", strerror(errno));
	}
	close(sock);
}

/* Load the modules named in cnlab.load; returns a status word for the host. */
static void load_lab_modules(char *status, size_t len)
{
	char list[1024], *path, *save = NULL;
	size_t used = 0;

	snprintf(status, len, "none");
	if (!cmdline_get("cnlab.load", list, sizeof(list)))
		return;
	status[0] = '\0';
	for (path = strtok_r(list, ",", &save); path;
	     path = strtok_r(NULL, ",", &save)) {
		int err = load_module(path, "");
		int n = snprintf(status + used, len - used, "%s%s:%d",
				 used ? "," : "", path, err);

		if (err)
			say("cnlab-init: load %s: %s\n", path, strerror(-err));
		if (n < 0 || (size_t)n >= len - used)
			break;
		used += n;
	}
}

/*
 * The boot CPU's loops_per_jiffy when the kernel computed it from the timer
 * frequency, or 0. The host passes it as lpj= to later guests: under
 * single-threaded TCG the secondary CPUs' own calibration fails and falls
 * back to a slow loop that ends with a wrong value.
 */
static unsigned long measured_lpj(void)
{
	static char log[1 << 18];
	static const char marker[] = "value calculated using timer frequency";
	char *at, *lpj;
	int n = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, log, sizeof(log) - 1);

	if (n <= 0)
		return 0;
	log[n] = '\0';
	at = strstr(log, marker);
	lpj = at ? strstr(at, "(lpj=") : NULL;
	return lpj ? strtoul(lpj + 5, NULL, 10) : 0;
}

/*
 * cnlab.trace_instance=NAME: make that tracefs instance (debugfs mounts
 * tracefs on first access).  Not fatal: whoever uses it makes it otherwise.
 */
static void make_trace_instance(void)
{
	char name[40], path[96];
	size_t i;

	if (!cmdline_get("cnlab.trace_instance", name, sizeof(name)))
		return;
	for (i = 0; name[i]; i++)
		if (!isalnum((unsigned char)name[i]) && name[i] != '_' && name[i] != '-')
			break;
	if (!i || name[i]) {
		say("cnlab-init: cnlab.trace_instance=%s: not a name (letters, digits, - and _)\n", name);
		return;
	}
	snprintf(path, sizeof(path), "/sys/kernel/debug/tracing/instances/%s", name);
	if (mkdir(path, 0755) && errno != EEXIST)
		say("cnlab-init: trace instance %s: %s\n", path, strerror(errno));
	trace("trace instance made");
}

/* The ready port (ttyS1, a socket on the host), raw, for reading and writing. */
static int open_ready_port(void)
{
	static const char port[] = "/dev/ttyS1";
	struct termios tio;
	int fd = open(port, O_RDWR | O_NOCTTY | O_CLOEXEC);

	if (fd < 0) {
		say("cnlab-init: open %s: %s\n", port, strerror(errno));
		return -1;
	}
	/* No echo, no line editing: the host's resume line must not come back. */
	if (tcgetattr(fd, &tio) == 0) {
		cfmakeraw(&tio);
		cfsetspeed(&tio, B115200);
		tio.c_cflag |= CLOCAL | CREAD;
		if (tcsetattr(fd, TCSANOW, &tio))
			say("cnlab-init: %s raw mode: %s\n", port, strerror(errno));
	}
	return fd;
}

/* The nonce of this boot or resume, for programs asking which guest they are in. */
static void write_nonce(const char *nonce)
{
	int fd = open(NONCE_FILE ".tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	if (fd < 0)
		return;
	if (write(fd, nonce, strlen(nonce)) < 0 || write(fd, "\n", 1) < 0)
		say("cnlab-init: write %s: %s\n", NONCE_FILE, strerror(errno));
	close(fd);
	if (rename(NONCE_FILE ".tmp", NONCE_FILE))
		say("cnlab-init: rename %s: %s\n", NONCE_FILE, strerror(errno));
}

/* Write "CNLAB-READY nonce=... cpus=... modules=... lpj=...EXTRA" to the ready port and the console. */
static void announce(int fd, const char *nonce, unsigned long lpj,
		     const char *extra)
{
	char line[1600];
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	int n;

	n = snprintf(line, sizeof(line),
		     "CNLAB-READY nonce=%s cpus=%ld modules=%s lpj=%lu%s\n",
		     nonce, cpus, modules_status, lpj, extra);
	if (n < 0 || (size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	say("%s", line);
	if (fd >= 0 && write(fd, line, n) != n)
		say("cnlab-init: ready write: %s\n", strerror(errno));
}

/* Announce readiness after boot; returns the ready port, kept open (closing could drop the line). */
static int announce_ready(void)
{
	char nonce[80] = "-";
	int fd = open_ready_port();

	cmdline_get("cnlab.nonce", nonce, sizeof(nonce));
	write_nonce(nonce);
	announce(fd, nonce, measured_lpj(), "");
	return fd;
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Mix the host's random bytes into the input pool and reseed the CRNG from
 * it at once: every restored guest starts from the same saved pool, and
 * without this their random bytes would repeat until the next scheduled
 * reseed.  Returns 0 or an errno.
 */
static int reseed_random(const char *hex)
{
	char req[sizeof(struct rand_pool_info) + SEED_MAX]
		__attribute__((aligned(__alignof__(struct rand_pool_info))));
	struct rand_pool_info *info = (struct rand_pool_info *)req;
	unsigned char *bytes = (unsigned char *)info->buf;
	int n = 0, fd, err = 0;

	while (n < SEED_MAX && hex[2 * n] && hex[2 * n + 1]) {
		int hi = hex_value(hex[2 * n]), lo = hex_value(hex[2 * n + 1]);

		if (hi < 0 || lo < 0)
			return EINVAL;
		bytes[n++] = (unsigned char)(hi << 4 | lo);
	}
	if (n < 16)
		return EINVAL;
	info->entropy_count = n * 8;
	info->buf_size = n;
	fd = open("/dev/random", O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return errno;
	if (ioctl(fd, RNDADDENTROPY, info) || ioctl(fd, RNDRESEEDCRNG))
		err = errno;
	close(fd);
	return err;
}

/*
 * The GNU build ID of a loaded module, in hex, from its notes in sysfs (the
 * note: namesz, descsz, type, "GNU\0", then the ID); "none" if it has none.
 */
static void module_build_id(const char *name, char *out, size_t len)
{
	unsigned char note[256];
	char file[128];
	unsigned int namesz, descsz, i;
	ssize_t n = -1;
	int fd;

	snprintf(out, len, "none");
	snprintf(file, sizeof(file), "/sys/module/%s/notes/.note.gnu.build-id", name);
	fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		n = read(fd, note, sizeof(note));
		close(fd);
	}
	if (n < 12)
		return;
	memcpy(&namesz, note, 4);
	memcpy(&descsz, note + 4, 4);
	namesz = (namesz + 3) & ~3u;
	if (12 + namesz + descsz > (size_t)n || 2 * descsz + 1 > len)
		return;
	for (i = 0; i < descsz; i++)
		snprintf(out + 2 * i, 3, "%02x", note[12 + namesz + i]);
}

/* "name:build-id,..." of the modules named in cnlab.load, as /sys/module has them. */
static void module_build_ids(char *out, size_t len)
{
	char list[1024], *path, *save = NULL;
	size_t used = 0;

	out[0] = '\0';
	if (!cmdline_get("cnlab.load", list, sizeof(list)))
		return;
	for (path = strtok_r(list, ",", &save); path;
	     path = strtok_r(NULL, ",", &save)) {
		char name[64], id[80];
		const char *base = strrchr(path, '/');
		size_t i;
		int w;

		base = base ? base + 1 : path;
		snprintf(name, sizeof(name), "%.*s", (int)strcspn(base, "."), base);
		for (i = 0; name[i]; i++)
			if (name[i] == '-')
				name[i] = '_';
		module_build_id(name, id, sizeof(id));
		w = snprintf(out + used, len - used, "%s%s:%s", used ? "," : "",
			     name, id);
		if (w < 0 || (size_t)w >= len - used)
			break;
		used += w;
	}
}

/*
 * A restored guest's first act: "CNLAB-RESUME nonce=HEX rt=S.NS seed=HEX"
 * from the host (see the top of this file).  Every step's outcome goes into
 * the ready line; the host decides whether the guest is fit to use.
 */
static void resume(int fd, const char *line)
{
	char nonce[80], rt[48], seed[2 * SEED_MAX + 1], extra[600];
	struct timespec ts = { 0, 0 };
	char *dot;
	int clock_err = 0, reseed_err, sshd_err = 0, rw_err = 0;

	if (!word_get(line, "nonce", nonce, sizeof(nonce)) ||
	    !word_get(line, "rt", rt, sizeof(rt)) ||
	    !word_get(line, "seed", seed, sizeof(seed))) {
		say("cnlab-init: malformed resume line ignored\n");
		return;
	}
	ts.tv_sec = strtoll(rt, &dot, 10);
	if (*dot == '.')
		ts.tv_nsec = strtol(dot + 1, NULL, 10);
	if (ts.tv_nsec < 0 || ts.tv_nsec > 999999999)
		clock_err = EINVAL;
	else if (clock_settime(CLOCK_REALTIME, &ts))
		clock_err = errno;
	reseed_err = reseed_random(seed);
	if (reseed_err)
		sshd_err = ECANCELED;	/* a held sshd stays held */
	else if (sshd_held && kill(sshd_pid, SIGCONT))
		sshd_err = errno;
	else
		sshd_held = 0;
	if (snapshot_boot &&
	    mount(root_dev, "/", "ext4", MS_REMOUNT | MS_NOATIME, ROOT_OPTIONS))
		rw_err = errno;
	write_nonce(nonce);
	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(extra, sizeof(extra),
		 " restored=1 clock=%d reseed=%d sshd=%d rw=%d rt=%lld.%09ld build-id=%s",
		 clock_err, reseed_err, sshd_err, rw_err, (long long)ts.tv_sec, ts.tv_nsec,
		 module_build_id_list[0] ? module_build_id_list : "none");
	announce(fd, nonce, 0, extra);
}

/*
 * "CNLAB-HOLD nonce=HEX", the host's last word before it saves this guest:
 * stop sshd and say so once it is stopped.  Waiting with WNOWAIT leaves an
 * sshd that died instead to serve_forever(), which powers off.
 */
static void hold_sshd(int fd, const char *line)
{
	char nonce[80], reply[160];
	siginfo_t si;
	int err = 0, n;

	if (!word_get(line, "nonce", nonce, sizeof(nonce))) {
		say("cnlab-init: malformed hold line ignored\n");
		return;
	}
	if (kill(sshd_pid, SIGSTOP))
		err = errno;
	else if (waitid(P_PID, sshd_pid, &si, WSTOPPED | WEXITED | WNOWAIT))
		err = errno;
	else if (si.si_code != CLD_STOPPED)
		err = ESRCH;
	else
		sshd_held = 1;
	n = snprintf(reply, sizeof(reply), "CNLAB-HELD nonce=%s sshd=%d\n", nonce, err);
	if (write(fd, reply, n) != n)
		say("cnlab-init: held write: %s\n", strerror(errno));
}

/* "CNLAB-TAINT id=TOKEN": answer with /proc/sys/kernel/tainted (see the top of this file). */
static void report_taint(int fd, const char *line)
{
	char token[80], text[32], reply[160];
	unsigned long long mask = 0;
	int err = 0, in, n;
	ssize_t got = -1;

	if (!word_get(line, "id", token, sizeof(token))) {
		say("cnlab-init: malformed taint line ignored\n");
		return;
	}
	in = open("/proc/sys/kernel/tainted", O_RDONLY | O_CLOEXEC);
	if (in < 0 || (got = read(in, text, sizeof(text) - 1)) <= 0)
		err = got == 0 ? EIO : errno;
	if (in >= 0)
		close(in);
	if (!err) {
		char *end;

		text[got] = '\0';
		errno = 0;
		mask = strtoull(text, &end, 10);
		if (errno || end == text)
			err = errno ? errno : EINVAL;
	}
	n = snprintf(reply, sizeof(reply), "CNLAB-TAINTED id=%s tainted=%llu err=%d\n",
		     token, err ? 0ULL : mask, err);
	if (write(fd, reply, n) != n)
		say("cnlab-init: taint write: %s\n", strerror(errno));
}

/* Bytes from the ready port: act on each complete "CNLAB-RESUME", "CNLAB-HOLD" or "CNLAB-TAINT" line. */
static void read_ready_port(int fd)
{
	static char buf[512];
	static size_t used;
	char *nl;
	ssize_t n = read(fd, buf + used, sizeof(buf) - 1 - used);

	if (n <= 0)
		return;
	used += n;
	buf[used] = '\0';
	while ((nl = memchr(buf, '\n', used))) {
		*nl = '\0';
		if (!strncmp(buf, "CNLAB-RESUME ", 13))
			resume(fd, buf);
		else if (!strncmp(buf, "CNLAB-HOLD ", 11))
			hold_sshd(fd, buf);
		else if (!strncmp(buf, "CNLAB-TAINT ", 12))
			report_taint(fd, buf);
		used -= nl + 1 - buf;
		memmove(buf, nl + 1, used);
		buf[used] = '\0';
	}
	if (used == sizeof(buf) - 1)
		used = 0;	/* an overlong line: drop it */
}

/* The end of sshd's log on the console: why it died, for the host's error. */
static void show_sshd_log(void)
{
	char buf[400];
	ssize_t n = -1;
	off_t size;
	int fd = open(SSHD_LOG, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		say("cnlab-init: sshd log: %s: %s\n", SSHD_LOG, strerror(errno));
		return;
	}
	size = lseek(fd, 0, SEEK_END);
	if (size >= 0 && lseek(fd, size > (off_t)sizeof(buf) - 1 ?
			       size - (off_t)sizeof(buf) + 1 : 0, SEEK_SET) >= 0)
		n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n > 0) {
		buf[n] = '\0';
		say("cnlab-init: sshd log: %s\n", buf);
	} else {
		say("cnlab-init: sshd log: empty\n");
	}
}

/* "exit status N" or "killed by signal N" for a wait status. */
static const char *describe_status(int status, char *buf, size_t len)
{
	if (WIFSIGNALED(status))
		snprintf(buf, len, "killed by signal %d", WTERMSIG(status));
	else
		snprintf(buf, len, "exit status %d", WEXITSTATUS(status));
	return buf;
}

/*
 * sshd writes its pid file only after it listens: wait for that file (by
 * inotify) or for sshd's death (by the SIGCHLD signalfd), whichever first.
 * An sshd that dies before it listens is reported on the console, with how
 * it ended and the end of its log, and started again, up to SSHD_STARTS
 * times in all (it died so, without a word in its log, on a saturated CI
 * host). Returns the pid of the sshd that listens.
 */
static pid_t wait_sshd_listening(pid_t sshd, int sfd)
{
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	struct signalfd_siginfo si;
	struct pollfd fds[2];
	int ifd = inotify_init1(IN_CLOEXEC);
	int starts = 1, status;
	char how[64];

	if (ifd < 0 || inotify_add_watch(ifd, "/run", IN_CLOSE_WRITE | IN_MOVED_TO) < 0)
		die("inotify /run");
	fds[0].fd = ifd;
	fds[0].events = POLLIN;
	fds[1].fd = sfd;
	fds[1].events = POLLIN;
	while (access(SSHD_PIDFILE, F_OK) != 0) {
		if (poll(fds, 2, 60000) == 0)
			die("sshd did not listen within 60 s");
		if (fds[0].revents & POLLIN && read(ifd, buf, sizeof(buf)) < 0)
			die("inotify read");
		if (!(fds[1].revents & POLLIN) ||
		    read(sfd, &si, sizeof(si)) != sizeof(si) ||
		    waitpid(sshd, &status, WNOHANG) != sshd)
			continue;
		say("cnlab-init: sshd exited before listening (%s, start %d of %d)\n",
		    describe_status(status, how, sizeof(how)), starts, SSHD_STARTS);
		show_sshd_log();
		if (starts == SSHD_STARTS) {
			say("cnlab-init: FATAL: sshd exited before listening (log: %s)\n",
			    SSHD_LOG);
			power_off();
		}
		starts++;
		sshd = start_sshd("/");
	}
	close(ifd);
	return sshd;
}

/*
 * Reap children; power off on a shutdown signal or when sshd dies; act on
 * resume lines from the host on the ready port.
 */
static void serve_forever(pid_t sshd, int sfd, int ready_fd)
{
	struct signalfd_siginfo si;
	struct pollfd fds[2] = { { .fd = sfd, .events = POLLIN },
				 { .fd = ready_fd, .events = POLLIN } };
	pid_t pid;
	int status;

	for (;;) {
		if (poll(fds, ready_fd >= 0 ? 2 : 1, -1) < 0)
			continue;
		if (ready_fd >= 0 && fds[1].revents & POLLIN)
			read_ready_port(ready_fd);
		if (!(fds[0].revents & POLLIN) ||
		    read(sfd, &si, sizeof(si)) != sizeof(si))
			continue;
		if (si.ssi_signo != SIGCHLD)
			power_off();
		while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
			if (pid == sshd) {
				say("cnlab-init: FATAL: sshd exited (status 0x%x), powering off\n",
				    status);
				power_off();
			}
		}
	}
}

int main(void)
{
	char sabotage_arg[16];
	pid_t sshd;
	int sfd, ready_fd;

	if (getpid() != 1)
		return 1;
	mount_or_die("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	mount_or_die("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
		     "");
	mount_or_die("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
		     "");
	read_cmdline();
	tracing = cmdline_has("cnlab.trace");
	snapshot_boot = cmdline_has("cnlab.snapshot");
	if (cmdline_get("cnlab.sshd_fail", sabotage_arg, sizeof(sabotage_arg)))
		sshd_sabotage = atoi(sabotage_arg);
	trace("start");
	if (cmdline_has("cnlab.halt")) {
		say("CNLAB-HALT\n");
		power_off();
	}
	sfd = init_signalfd();
	sshd = stage1_switch_root();
	trace("root switched");

	mount_or_die("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	mount_or_die("debugfs", "/sys/kernel/debug", "debugfs", 0, "");
	make_trace_instance();
	/* Terminals for "cnlab shell", shared memory for guest programs. */
	mount_or_die("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
		     "gid=5,mode=620,ptmxmode=666");
	mount_or_die("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV,
		     "mode=1777");
	sethostname("cnlab", 5);
	network_up();
	trace("network up");
	load_lab_modules(modules_status, sizeof(modules_status));
	module_build_ids(module_build_id_list, sizeof(module_build_id_list));
	trace("lab modules loaded");
	sshd = wait_sshd_listening(sshd, sfd);
	sshd_pid = sshd;
	trace("sshd listening");
	ready_fd = announce_ready();
	serve_forever(sshd, sfd, ready_fd);
	return 0;
}
