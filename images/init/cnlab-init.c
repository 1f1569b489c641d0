// SPDX-License-Identifier: GPL-2.0
/*
 * cnlab-init: PID 1 of a cnlab guest.
 *
 * Stage 1 runs from the initramfs: mount the pseudo filesystems, load the
 * virtio modules listed in /etc/cnlab/modules, mount the root disk (a
 * per-guest copy-on-write overlay of the cached image, on NVMe, which the
 * cloud kernel has built in) and the kernel's module disk, and move into
 * the root.  Stage 2 runs in the root disk: start the SSH daemon, bring up
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
 *
 * Any fatal error is printed to the console and the guest powers off, so
 * the host sees QEMU exit before readiness and reports the console tail.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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
#include <time.h>
#include <unistd.h>

#define CMDLINE_MAX 4096
#define SSHD "/usr/sbin/sshd"
#define SSHD_CONFIG "/etc/cnlab/sshd_config"
#define SSHD_PIDFILE "/run/sshd.pid"
#define SSHD_LOG "/run/cnlab/sshd.log"
#define SSHD_STARTS 3	/* sshd starts before the guest gives up */

static char cmdline[CMDLINE_MAX];
static int tracing;
/* Test hook: the first N sshd starts exec a missing program (cnlab.sshd_fail=N). */
static int sshd_sabotage;

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

/* Value of "key=" on the kernel command line, or NULL. */
static const char *cmdline_get(const char *key, char *out, size_t outlen)
{
	size_t klen = strlen(key);
	const char *p = cmdline;

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

/* Copy the per-boot files (/cnlab/ in the initramfs) to DST. */
static void copy_boot_files(const char *dst)
{
	char from[512], to[512];
	struct dirent *de;
	DIR *d = opendir("/cnlab");

	if (!d)
		return;
	mkdir(dst, 0700);
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(from, sizeof(from), "/cnlab/%s", de->d_name);
		snprintf(to, sizeof(to), "%s/%s", dst, de->d_name);
		if (copy_file(from, to, 0600))
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
	char root[64] = "/dev/nvme0n1", moddisk[64] = "";
	static const char * const moves[] = { "/dev", "/proc", "/sys" };
	char target[64];
	size_t i;

	pid_t loader, sshd;

	cmdline_get("cnlab.root", root, sizeof(root));
	cmdline_get("cnlab.moddisk", moddisk, sizeof(moddisk));
	/* The virtio modules load on the other vCPU while this one mounts the disks. */
	loader = fork();
	if (loader == 0) {
		load_module_list("/etc/cnlab/modules");
		_exit(0);
	}
	mkdir("/newroot", 0755);
	if (wait_for_device(root, 30000))
		die("root disk never appeared");
	if (mount(root, "/newroot", "ext4", MS_NOATIME, ""))
		die("mount root disk");
	mount_or_die("tmpfs", "/newroot/run", "tmpfs", MS_NOSUID | MS_NODEV,
		     "mode=0755");
	copy_boot_files("/newroot/run/cnlab");
	mkdir("/newroot/run/sshd", 0755);
	sshd = start_sshd("/newroot");
	if (moddisk[0] && wait_for_device(moddisk, 30000) == 0 &&
	    mount(moddisk, "/newroot/lib/modules", "ext4", MS_RDONLY | MS_NOATIME, ""))
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

static void announce_ready(const char *modules)
{
	static const char port[] = "/dev/ttyS1";
	char nonce[80] = "-", line[1200];
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	int n, fd;

	cmdline_get("cnlab.nonce", nonce, sizeof(nonce));
	n = snprintf(line, sizeof(line),
		     "CNLAB-READY nonce=%s cpus=%ld modules=%s lpj=%lu\n", nonce,
		     cpus, modules, measured_lpj());
	if (n < 0 || (size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	say("%s", line);
	fd = open(port, O_WRONLY | O_NOCTTY | O_CLOEXEC);
	if (fd < 0) {
		say("cnlab-init: open %s: %s\n", port, strerror(errno));
		return;
	}
	if (write(fd, line, n) != n)
		say("cnlab-init: ready write: %s\n", strerror(errno));
	/* Kept open: closing could drop the line before the host reads it. */
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

/* Reap children; power off on a shutdown signal or when sshd dies. */
static void serve_forever(pid_t sshd, int sfd)
{
	struct signalfd_siginfo si;
	pid_t pid;
	int status;

	for (;;) {
		if (read(sfd, &si, sizeof(si)) != sizeof(si))
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
	char modules[1024];
	char sabotage_arg[16];
	pid_t sshd;
	int sfd;

	if (getpid() != 1)
		return 1;
	mount_or_die("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	mount_or_die("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
		     "");
	mount_or_die("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
		     "");
	read_cmdline();
	tracing = cmdline_has("cnlab.trace");
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
	/* Terminals for "cnlab shell", shared memory for guest programs. */
	mount_or_die("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
		     "gid=5,mode=620,ptmxmode=666");
	mount_or_die("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV,
		     "mode=1777");
	sethostname("cnlab", 5);
	network_up();
	trace("network up");
	load_lab_modules(modules, sizeof(modules));
	trace("lab modules loaded");
	sshd = wait_sshd_listening(sshd, sfd);
	trace("sshd listening");
	announce_ready(modules);
	serve_forever(sshd, sfd);
	return 0;
}
