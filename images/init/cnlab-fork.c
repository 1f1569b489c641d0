// SPDX-License-Identifier: GPL-2.0
/*
 * cnlab-fork PROGRAM [ARG...]: run a guest Python program as a fork of the
 * lab's fork server (lab/guestside/forkserver.py), which has its imports
 * done already, or as "python3 -S PROGRAM ARG..." when no server listens.
 *
 * The request, one SOCK_SEQPACKET message, carries this process's stdin,
 * stdout and stderr (SCM_RIGHTS),
 * working folder, arguments and environment.  The server answers "pid N"
 * once it has forked, and "exit STATUS" (a wait status) when the child
 * ends; this process then exits the same way.  SIGTERM, SIGINT and SIGHUP
 * are passed on to the child's process group.  A server that could not
 * fork answers "refused ERRNO", and this process runs python3 itself.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define SOCKET_PATH "/run/cnlab/forkserver.sock"
#define PYTHON "/usr/bin/python3"
#define MAX_REQUEST (64 << 10)	/* one SOCK_SEQPACKET message */

extern char **environ;
static volatile sig_atomic_t child_pid;

/* Runs with the signal blocked until child_pid is known (main). */
static void forward(int sig)
{
	if (child_pid > 0 && kill(-child_pid, sig) && errno == ESRCH)
		kill(child_pid, sig);	/* not in a session of its own yet */
}

static void run_directly(int argc, char **argv, const sigset_t *mask)
{
	char **args = calloc(argc + 3, sizeof(*args));
	int i;

	sigprocmask(SIG_SETMASK, mask, NULL);	/* python3 starts with this process's own mask */
	if (!args) {
		perror("cnlab-fork");
		exit(125);
	}
	args[0] = "python3";
	args[1] = "-S";
	for (i = 1; i < argc; i++)
		args[i + 1] = argv[i];
	execv(PYTHON, args);
	fprintf(stderr, "cnlab-fork: exec %s: %s\n", PYTHON, strerror(errno));
	exit(127);
}

static int append(char *buf, size_t *used, const char *s)
{
	size_t n = strlen(s) + 1;

	if (*used + n > MAX_REQUEST)
		return -1;
	memcpy(buf + *used, s, n);
	*used += n;
	return 0;
}

static int send_request(int sock, int argc, char **argv)
{
	char *buf = malloc(MAX_REQUEST), folder[4096];
	char control[CMSG_SPACE(3 * sizeof(int))];
	struct msghdr msg = { 0 };
	struct cmsghdr *cmsg;
	struct iovec iov;
	uint32_t header[2] = { argc - 1, 0 };
	size_t used = sizeof(header);
	int fds[3] = { 0, 1, 2 }, i, rc;
	ssize_t n;

	if (!buf || !getcwd(folder, sizeof(folder)) || append(buf, &used, folder)) {
		free(buf);
		return -1;
	}
	for (i = 1; i < argc; i++)
		if (append(buf, &used, argv[i])) {
			free(buf);
			return -1;
		}
	for (i = 0; environ[i]; i++, header[1]++)
		if (append(buf, &used, environ[i])) {
			free(buf);
			return -1;
		}
	memcpy(buf, header, sizeof(header));
	iov.iov_base = buf;
	iov.iov_len = used;
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = control;
	msg.msg_controllen = sizeof(control);
	cmsg = CMSG_FIRSTHDR(&msg);
	cmsg->cmsg_level = SOL_SOCKET;
	cmsg->cmsg_type = SCM_RIGHTS;
	cmsg->cmsg_len = CMSG_LEN(sizeof(fds));
	memcpy(CMSG_DATA(cmsg), fds, sizeof(fds));
	do
		n = sendmsg(sock, &msg, 0);
	while (n < 0 && errno == EINTR);
	rc = n == (ssize_t)used ? 0 : -1;
	free(buf);
	return rc;
}

/* The server's next message, "WORD NUMBER\n"; 0 once it hangs up. */
static int read_line(int sock, char *word, size_t len, long *number)
{
	char line[64];
	ssize_t n;

	do
		n = recv(sock, line, sizeof(line) - 1, 0);
	while (n < 0 && errno == EINTR);
	if (n <= 0)
		return 0;
	line[n] = '\0';
	if (sscanf(line, "%15s %ld", word, number) != 2 || strlen(word) >= len)
		return 0;
	return 1;
}

int main(int argc, char **argv)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct sigaction sa = { .sa_handler = forward };
	sigset_t forwarded, before;
	const char *path;
	char word[16];
	long number;
	int sock;

	if (argc < 2) {
		fprintf(stderr, "usage: cnlab-fork PROGRAM [ARG...]\n");
		return 2;
	}
	/* Held until the child's pid is known, then forwarded: none is lost before. */
	sigemptyset(&forwarded);
	sigaddset(&forwarded, SIGTERM);
	sigaddset(&forwarded, SIGINT);
	sigaddset(&forwarded, SIGHUP);
	sigprocmask(SIG_BLOCK, &forwarded, &before);
	path = getenv("CNLAB_FORK_SOCKET");	/* tests: a server of their own */
	strncpy(addr.sun_path, path && *path ? path : SOCKET_PATH, sizeof(addr.sun_path) - 1);
	sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof(addr)))
		run_directly(argc, argv, &before);	/* no server: a guest that booted cold */
	sa.sa_mask = forwarded;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (send_request(sock, argc, argv)) {	/* the server has nothing: run it here */
		close(sock);
		run_directly(argc, argv, &before);
	}
	if (!read_line(sock, word, sizeof(word), &number)) {
		fprintf(stderr, "cnlab-fork: the fork server hung up on the request\n");
		return 125;
	}
	if (strcmp(word, "pid")) {	/* "refused ERRNO": a request it could not serve */
		fprintf(stderr, "cnlab-fork: the fork server refused the request (%s); running python3 -S\n",
			strerror((int)number));
		close(sock);
		run_directly(argc, argv, &before);
	}
	child_pid = (pid_t)number;
	sigprocmask(SIG_SETMASK, &before, NULL);	/* a signal that came meanwhile is forwarded now */
	if (!read_line(sock, word, sizeof(word), &number) || strcmp(word, "exit")) {
		fprintf(stderr, "cnlab-fork: the fork server hung up before child %d ended\n", (int)child_pid);
		return 125;
	}
	if (WIFEXITED(number))
		return WEXITSTATUS(number);
	if (WIFSIGNALED(number)) {
		signal(WTERMSIG(number), SIG_DFL);
		sigprocmask(SIG_UNBLOCK, &forwarded, NULL);
		raise(WTERMSIG(number));
	}
	return 128 + (WIFSIGNALED(number) ? WTERMSIG(number) : 0);
}
