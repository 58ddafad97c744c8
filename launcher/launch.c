// SPDX-License-Identifier: GPL-2.0-only
/*
 * ipt2xdp-launch: what `ipt2xdp alternatives install` puts behind the iptables, iptables-save and
 * iptables-restore names when it can. It starts in about a millisecond, where the Python wrapper
 * pays Python's start-up (15-20 ms) on every call, and hands the decisions to `ipt2xdp watch`,
 * whose planning stack is already warm:
 *
 *   run <hex argv> <hex env>   (argv and the few IPT2XDP_* variables the wrapper reads, each
 *                               NUL-separated, hex-encoded: arguments may hold any byte)
 *     -> exec <path>           nothing to do around the command: become the real tool
 *     -> python                the Python wrapper does this one (counters to add, input to read,
 *                              the wrapper's lock busy): exec it, as if it had been called
 *     -> spawn <path>          a rule change: the watcher holds the wrapper's lock for us and XDP
 *                              defers; run the real tool (our stdin, stdout, stderr, environment,
 *                              directory), then
 *   done <exit code>           -> ok <what>   XDP in step   -> error <why>   XDP keeps deferring
 *
 * No watcher (no socket, a refused connection, no answer within a moment): the Python wrapper,
 * which does everything itself. The Python wrapper is the `ipt2xdp-iptables` script beside this
 * program; it learns the name we were started as from IPT2XDP_ARGV0. The protocol's other half
 * is ipt2xdp/watch/server.py and service.py; the decisions are ipt2xdp/wrapper/route.py's.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

extern char **environ;

/* The watcher answers "run" in milliseconds; the sync after "done" is one re-plan, seconds at
 * most on a loaded machine (as wrapper/client.py's BEGIN_TIMEOUT and SYNC_TIMEOUT). */
#define RUN_TIMEOUT_S 2
#define DONE_TIMEOUT_S 120
#define MAX_REQUEST (1 << 20)

static const char *const PASSED_ENV[] = {"IPT2XDP_BACKEND", "IPT2XDP_SBIN", "IPT2XDP_ALT_STATE", NULL};

static void python_wrapper(char **argv) __attribute__((noreturn));

static void python_wrapper(char **argv)
{
	char self[PATH_MAX], script[PATH_MAX + 32];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash;

	if (n <= 0) {
		fprintf(stderr, "ipt2xdp: cannot find where ipt2xdp-launch is: %s\n", strerror(errno));
		exit(1);
	}
	self[n] = '\0';
	slash = strrchr(self, '/');
	*slash = '\0';
	snprintf(script, sizeof(script), "%s/ipt2xdp-iptables", self);
	setenv("IPT2XDP_ARGV0", argv[0], 1);
	argv[0] = script;
	execv(script, argv);
	fprintf(stderr, "ipt2xdp: cannot run the Python wrapper %s: %s; reinstall ipt2xdp\n", script,
		strerror(errno));
	exit(1);
}

/* What realbin.applet() gives: the name we were called by, minus our prefix. */
static const char *applet(const char *argv0)
{
	const char *base = strrchr(argv0, '/');

	base = base ? base + 1 : argv0;
	return strncmp(base, "ipt2xdp-", 8) == 0 ? base + 8 : base;
}

static int connect_watcher(void)
{
	unsigned long long cookie;
	socklen_t len = sizeof(cookie);
	const char *dir = getenv("IPT2XDP_STATE_DIR");
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	int probe, sock;

	probe = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (probe < 0)
		return -1;
	if (getsockopt(probe, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) != 0) {
		struct stat st; /* kernels before 5.14: the namespace's inode, as pins.netns_id() */

		if (stat("/proc/self/ns/net", &st) != 0) {
			close(probe);
			return -1;
		}
		cookie = st.st_ino;
	}
	close(probe);
	if (snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/%llu/watch.sock", dir && *dir ? dir : "/run/ipt2xdp",
		     cookie) >= (int)sizeof(addr.sun_path))
		return -1;
	sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		return -1;
	if (connect(sock, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
		close(sock);
		return -1;
	}
	return sock;
}

static char *hex_append(char *out, const char *data, size_t len)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < len; i++) {
		*out++ = digits[(unsigned char)data[i] >> 4];
		*out++ = digits[(unsigned char)data[i] & 15];
	}
	return out;
}

/* "run <hex argv> <hex env>\n", or NULL when it would be too long for the watcher. */
static char *run_request(int argc, char **argv, size_t *length)
{
	size_t size = 16;
	char *request, *out;
	int first = 1;

	for (int i = 0; i < argc; i++)
		size += 2 * (strlen(argv[i]) + 1);
	for (const char *const *name = PASSED_ENV; *name; name++)
		size += getenv(*name) ? 2 * (strlen(*name) + strlen(getenv(*name)) + 2) : 0;
	if (size > MAX_REQUEST)
		return NULL;
	request = malloc(size);
	if (!request)
		return NULL;
	out = stpcpy(request, "run ");
	for (int i = 0; i < argc; i++) {
		if (i)
			out = hex_append(out, "", 1);
		out = hex_append(out, argv[i], strlen(argv[i]));
	}
	*out++ = ' ';
	for (const char *const *name = PASSED_ENV; *name; name++) {
		const char *value = getenv(*name);

		if (!value)
			continue;
		if (!first)
			out = hex_append(out, "", 1);
		first = 0;
		out = hex_append(out, *name, strlen(*name));
		out = hex_append(out, "=", 1);
		out = hex_append(out, value, strlen(value));
	}
	*out++ = '\n';
	*length = out - request;
	return request;
}

static int send_all(int sock, const char *data, size_t length)
{
	while (length) {
		ssize_t n = send(sock, data, length, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		data += n;
		length -= n;
	}
	return 0;
}

/* One answer line, without its newline, into line (NUL-terminated); -1 on timeout or close. */
static int read_line(int sock, char *line, size_t size, int timeout_s)
{
	struct timeval timeout = {.tv_sec = timeout_s};
	size_t used = 0;

	setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
	while (used + 1 < size) {
		ssize_t n = recv(sock, line + used, 1, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		if (line[used] == '\n') {
			line[used] = '\0';
			return 0;
		}
		used++;
	}
	return -1;
}

/* The real tool as a child, as the Python wrapper runs it (realbin.run_real); its wait status. */
static int run_real(const char *path, char **argv, int *status)
{
	struct sigaction ignore = {.sa_handler = SIG_IGN}, old_int, old_quit;
	const char *saved = argv[0];
	pid_t pid;
	int err;

	/* As system(3): a ^C reaches the tool (same process group) and we learn how it ended. */
	sigaction(SIGINT, &ignore, &old_int);
	sigaction(SIGQUIT, &ignore, &old_quit);
	argv[0] = (char *)applet(saved);
	err = posix_spawn(&pid, path, NULL, NULL, argv, environ);
	argv[0] = (char *)saved;
	if (err == 0) {
		while (waitpid(pid, status, 0) < 0 && errno == EINTR)
			;
	}
	sigaction(SIGINT, &old_int, NULL);
	sigaction(SIGQUIT, &old_quit, NULL);
	return err;
}

int main(int argc, char **argv)
{
	char answer[4096];
	size_t length;
	char *request;
	int sock, status, err;

	if (argc < 1 || !argv[0]) { /* execve() with an empty argv: no name to act as */
		fprintf(stderr, "ipt2xdp-launch: started without a name (argv[0]); run it as iptables, "
				"iptables-save or iptables-restore\n");
		return 2;
	}
	sock = connect_watcher();
	if (sock < 0)
		python_wrapper(argv);
	request = run_request(argc, argv, &length);
	if (!request || send_all(sock, request, length) != 0 ||
	    read_line(sock, answer, sizeof(answer), RUN_TIMEOUT_S) != 0) {
		close(sock);
		python_wrapper(argv);
	}
	free(request);
	if (strncmp(answer, "exec ", 5) == 0) {
		close(sock);
		argv[0] = (char *)applet(argv[0]);
		execv(answer + 5, argv);
		fprintf(stderr, "ipt2xdp: cannot run %s: %s\n", answer + 5, strerror(errno));
		return 1;
	}
	if (strncmp(answer, "spawn ", 6) != 0) {
		close(sock);
		python_wrapper(argv);
	}
	err = run_real(answer + 6, argv, &status);
	if (err != 0) {
		fprintf(stderr, "ipt2xdp: cannot run %s: %s\n", answer + 6, strerror(err));
		status = 1 << 8; /* it did not run: netfilter is unchanged, so is the plan */
	}
	if (WIFSIGNALED(status)) {
		/* The change may or may not have been made: the watcher re-reads the kernel once we
		 * are gone (no "done"), and we end as the tool did. */
		close(sock);
		signal(WTERMSIG(status), SIG_DFL);
		raise(WTERMSIG(status));
		return 128 + WTERMSIG(status);
	}
	snprintf(answer, sizeof(answer), "done %d\n", WEXITSTATUS(status));
	if (send_all(sock, answer, strlen(answer)) == 0 &&
	    read_line(sock, answer, sizeof(answer), DONE_TIMEOUT_S) == 0 && strncmp(answer, "error ", 6) == 0)
		fprintf(stderr, "ipt2xdp: XDP keeps deferring everything to netfilter: %s\n", answer + 6);
	close(sock);
	return WEXITSTATUS(status);
}
