/*
 * basic.c: suites for initialization, memory, files, clocks, parameters,
 * errno, kill, entropy, console, exit and daemonization (the syscall proxy
 * has its own file, sysproxy.c).
 */

#include "conf.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int64_t
monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int
rumpconf_test_init(void)
{
	static const struct rumpuser_hyperup empty;
	int rv;

	conf_begin_suite();
	CHECK(rumpuser_init(16, &empty) != 0, "rumpuser_init accepted version 16");
	CHECK(rumpuser_init(18, &empty) != 0, "rumpuser_init accepted version 18");
	/* The harness table is still in force: a CPU round trip works. */
	conf_enter_kernel();
	HYPERCALL(CONF_ALWAYS, rv = rumpuser_clock_sleep(RUMPUSER_CLOCK_RELWALL, 0, 1000));
	CHECK_EQ(rv, 0, "clock_sleep after failed inits");
	conf_leave_kernel();
	return conf_end_suite();
}

int
rumpconf_test_memory(void)
{
	static const int alignments[] = { 0, 1, 8, 16, 32, 64, 512, 4096, 65536 };
	void *mem = NULL;
	int rv;

	conf_begin_suite();
	conf_enter_kernel();
	for (size_t i = 0; i < sizeof(alignments) / sizeof(alignments[0]); i++) {
		int a = alignments[i];
		HYPERCALL(CONF_NEVER, rv = rumpuser_malloc(1000, a, &mem));
		CHECK_EQ(rv, 0, "malloc");
		if (rv != 0)
			continue;
		if (a > 0)
			CHECK(((uintptr_t)mem & (uintptr_t)(a - 1)) == 0,
			    "malloc(1000, %d) returned %p", a, mem);
		memset(mem, 0xa5, 1000);
		HYPERCALL(CONF_NEVER, rumpuser_free(mem, 1000));
	}
	HYPERCALL(CONF_NEVER, rv = rumpuser_malloc(64, 48, &mem));
	CHECK_EQ(rv, 22, "malloc with alignment 48 (not a power of 2) → EINVAL");

	for (int alignbit = 0; alignbit <= 21; alignbit += 21) {
		void *map = NULL;
		size_t len = 3 * 4096 + 100;
		HYPERCALL(CONF_MAY, rv = rumpuser_anonmmap(NULL, len, alignbit, 0, &map));
		CHECK_EQ(rv, 0, "anonmmap");
		if (rv != 0)
			continue;
		CHECK(((uintptr_t)map & ((1ul << alignbit) - 1)) == 0,
		    "anonmmap alignbit %d returned %p", alignbit, map);
		memset(map, 0x5a, len);
		CHECK(((unsigned char *)map)[len - 1] == 0x5a, "anonmmap memory not writable");
		HYPERCALL(CONF_MAY, rumpuser_unmap(map, len));
	}
	conf_leave_kernel();
	return conf_end_suite();
}

static void
path_in(char *out, size_t size, const char *directory, const char *name)
{
	snprintf(out, size, "%s/%s", directory, name);
}

int
rumpconf_test_files(const char *directory)
{
	char path[1024], missing[1024];
	uint64_t size = 0;
	int fd = -1, fd2 = -1, type = -1, rv;
	size_t n = 0;

	conf_begin_suite();
	conf_enter_kernel();
	path_in(path, sizeof(path), directory, "files.img");
	path_in(missing, sizeof(missing), directory, "no-such-file");
	unlink(path);

	/* Errors, as NetBSD errno numbers. */
	HYPERCALL(CONF_ALWAYS, rv = rumpuser_open(missing, RUMPUSER_OPEN_RDONLY, &fd));
	CHECK_EQ(rv, 2, "open of a missing file → ENOENT");
	HYPERCALL(CONF_MAY, rv = rumpuser_getfileinfo(missing, &size, &type));
	CHECK_EQ(rv, 2, "getfileinfo of a missing file → ENOENT");
	HYPERCALL(CONF_NEVER, rv = rumpuser_open(path, RUMPUSER_OPEN_ACCMODE, &fd));
	CHECK_EQ(rv, 22, "open with access mode 3 → EINVAL");

	/* Create, then EXCL on the existing file. */
	HYPERCALL(CONF_ALWAYS, rv = rumpuser_open(path,
	    RUMPUSER_OPEN_RDWR | RUMPUSER_OPEN_CREATE | RUMPUSER_OPEN_BIO, &fd));
	CHECK_EQ(rv, 0, "open with CREATE");
	HYPERCALL(CONF_ALWAYS, rv = rumpuser_open(path,
	    RUMPUSER_OPEN_RDWR | RUMPUSER_OPEN_CREATE | RUMPUSER_OPEN_EXCL, &fd2));
	CHECK_EQ(rv, 17, "open with CREATE|EXCL of an existing file → EEXIST");
	HYPERCALL(CONF_ALWAYS, rv = rumpuser_open(path, RUMPUSER_OPEN_WRONLY, &fd2));
	CHECK_EQ(rv, 0, "open WRONLY");
	if (rv == 0)
		CHECK_EQ(fcntl(fd2, F_GETFL) & O_ACCMODE, O_WRONLY, "WRONLY mapped to O_WRONLY");

	/* NOSEEK writes advance the position; positioned writes do not. */
	struct rumpuser_iovec w[2] = { { "abc", 3 }, { "def", 3 } };
	HYPERCALL(CONF_ALWAYS, rv = rumpuser_iovwrite(fd, w, 2, RUMPUSER_IOV_NOSEEK, &n));
	CHECK(rv == 0 && n == 6, "iovwrite NOSEEK: rv %d n %zu", rv, n);
	struct rumpuser_iovec w2[1] = { { "XYZ", 3 } };
	HYPERCALL(CONF_ALWAYS, rv = rumpuser_iovwrite(fd, w2, 1, RUMPUSER_IOV_NOSEEK, &n));
	CHECK(rv == 0 && n == 3, "second iovwrite NOSEEK");
	HYPERCALL(CONF_ALWAYS, rv = rumpuser_iovwrite(fd, w2, 1, 100, &n));
	CHECK(rv == 0 && n == 3, "iovwrite at 100");
	CHECK_EQ(lseek(fd, 0, SEEK_CUR), 9, "positioned write left the file position");

	char a[4] = { 0 }, b[4] = { 0 };
	struct rumpuser_iovec r[2] = { { a, 3 }, { b, 3 } };
	HYPERCALL(CONF_ALWAYS, rv = rumpuser_iovread(fd, r, 2, 2, &n));
	CHECK(rv == 0 && n == 6 && memcmp(a, "cde", 3) == 0 && memcmp(b, "fXY", 3) == 0,
	    "iovread at 2: rv %d n %zu '%s' '%s'", rv, n, a, b);
	lseek(fd, 6, SEEK_SET);
	memset(a, 0, sizeof(a));
	struct rumpuser_iovec r1[1] = { { a, 3 } };
	HYPERCALL(CONF_ALWAYS, rv = rumpuser_iovread(fd, r1, 1, RUMPUSER_IOV_NOSEEK, &n));
	CHECK(rv == 0 && n == 3 && memcmp(a, "XYZ", 3) == 0, "iovread NOSEEK");
	HYPERCALL(CONF_ALWAYS, rv = rumpuser_iovread(-1, r1, 1, 0, &n));
	CHECK_EQ(rv, 9, "iovread on a bad descriptor → EBADF");

	/* syncfd */
	HYPERCALL(CONF_MAY, rv = rumpuser_syncfd(fd, RUMPUSER_SYNCFD_WRITE, 0, 103));
	CHECK_EQ(rv, 0, "syncfd WRITE");
	HYPERCALL(CONF_MAY, rv = rumpuser_syncfd(fd, RUMPUSER_SYNCFD_WRITE | RUMPUSER_SYNCFD_SYNC, 0, 0));
	CHECK_EQ(rv, 0, "syncfd WRITE|SYNC");
	HYPERCALL(CONF_MAY, rv = rumpuser_syncfd(fd, RUMPUSER_SYNCFD_READ, 0, 0));
	CHECK_EQ(rv, 0, "syncfd READ");
	HYPERCALL(CONF_MAY, rv = rumpuser_syncfd(fd, RUMPUSER_SYNCFD_BARRIER, 0, 0));
	CHECK_EQ(rv, 22, "syncfd without READ or WRITE → EINVAL");

	/* getfileinfo */
	HYPERCALL(CONF_MAY, rv = rumpuser_getfileinfo(path, &size, &type));
	CHECK(rv == 0 && size == 103 && type == RUMPUSER_FT_REG,
	    "getfileinfo regular: rv %d size %llu type %d", rv, (unsigned long long)size, type);
	HYPERCALL(CONF_MAY, rv = rumpuser_getfileinfo(directory, NULL, &type));
	CHECK(rv == 0 && type == RUMPUSER_FT_DIR, "getfileinfo directory: type %d", type);
	HYPERCALL(CONF_MAY, rv = rumpuser_getfileinfo("/dev/null", &size, &type));
	CHECK(rv == 0 && type == RUMPUSER_FT_CHR, "getfileinfo /dev/null: rv %d type %d", rv, type);
	HYPERCALL(CONF_MAY, rv = rumpuser_getfileinfo(path, NULL, NULL));
	CHECK_EQ(rv, 0, "getfileinfo with NULL outputs");

	HYPERCALL(CONF_ALWAYS, rv = rumpuser_close(fd2));
	CHECK_EQ(rv, 0, "close");
	HYPERCALL(CONF_ALWAYS, rv = rumpuser_close(fd));
	CHECK_EQ(rv, 0, "close");
	HYPERCALL(CONF_ALWAYS, rv = rumpuser_close(fd));
	CHECK_EQ(rv, 9, "second close → EBADF");
	unlink(path);
	conf_leave_kernel();
	return conf_end_suite();
}

int
rumpconf_test_clocks(void)
{
	int64_t sec = 0, sec2 = 0;
	long nsec = 0, nsec2 = 0;
	int rv;

	conf_begin_suite();
	conf_enter_kernel();
	HYPERCALL(CONF_NEVER, rv = rumpuser_clock_gettime(RUMPUSER_CLOCK_RELWALL, &sec, &nsec));
	CHECK(rv == 0 && llabs(sec - (int64_t)time(NULL)) <= 2 && nsec >= 0 && nsec < 1000000000,
	    "RELWALL is wall time: %lld", (long long)sec);
	HYPERCALL(CONF_NEVER, rv = rumpuser_clock_gettime(RUMPUSER_CLOCK_ABSMONO, &sec, &nsec));
	CHECK_EQ(rv, 0, "gettime ABSMONO");
	HYPERCALL(CONF_NEVER, rv = rumpuser_clock_gettime(RUMPUSER_CLOCK_ABSMONO, &sec2, &nsec2));
	CHECK(sec2 > sec || (sec2 == sec && nsec2 >= nsec), "ABSMONO went backwards");
	HYPERCALL(CONF_NEVER, rv = rumpuser_clock_gettime(7, &sec, &nsec));
	CHECK_EQ(rv, 22, "gettime of an unknown clock → EINVAL");

	int64_t t0 = monotonic_ns();
	HYPERCALL(CONF_ALWAYS, rv = rumpuser_clock_sleep(RUMPUSER_CLOCK_RELWALL, 0, 20000000));
	int64_t slept = monotonic_ns() - t0;
	CHECK(rv == 0 && slept >= 20000000, "RELWALL sleep of 20 ms took %lld ns", (long long)slept);

	HYPERCALL(CONF_NEVER, rumpuser_clock_gettime(RUMPUSER_CLOCK_ABSMONO, &sec, &nsec));
	nsec += 30000000;
	if (nsec >= 1000000000) { sec++; nsec -= 1000000000; }
	HYPERCALL(CONF_ALWAYS, rv = rumpuser_clock_sleep(RUMPUSER_CLOCK_ABSMONO, sec, nsec));
	HYPERCALL(CONF_NEVER, rumpuser_clock_gettime(RUMPUSER_CLOCK_ABSMONO, &sec2, &nsec2));
	CHECK(rv == 0 && (sec2 > sec || (sec2 == sec && nsec2 >= nsec)),
	    "ABSMONO sleep returned before its deadline");
	/* A deadline in the past returns at once. */
	t0 = monotonic_ns();
	HYPERCALL(CONF_MAY, rv = rumpuser_clock_sleep(RUMPUSER_CLOCK_ABSMONO, 0, 0));
	CHECK(rv == 0 && monotonic_ns() - t0 < 500000000, "past ABSMONO deadline slept");
	HYPERCALL(CONF_MAY, rv = rumpuser_clock_sleep(9, 0, 1));
	CHECK_EQ(rv, 22, "sleep on an unknown clock → EINVAL");
	conf_leave_kernel();
	return conf_end_suite();
}

int
rumpconf_test_params(void)
{
	char buf[256], small[2];
	int rv;

	conf_begin_suite();
	conf_enter_kernel();
	unsetenv("RUMP_NCPU");
	HYPERCALL(CONF_NEVER, rv = rumpuser_getparam(RUMPUSER_PARAM_NCPU, buf, sizeof(buf)));
	CHECK(rv == 0 && strcmp(buf, "2") == 0, "_RUMPUSER_NCPU default: rv %d '%s'", rv, buf);
	setenv("RUMP_NCPU", "host", 1);
	HYPERCALL(CONF_NEVER, rv = rumpuser_getparam(RUMPUSER_PARAM_NCPU, buf, sizeof(buf)));
	CHECK(rv == 0 && atoi(buf) == (int)sysconf(_SC_NPROCESSORS_ONLN),
	    "RUMP_NCPU=host: '%s'", buf);
	setenv("RUMP_NCPU", "7", 1);
	HYPERCALL(CONF_NEVER, rv = rumpuser_getparam(RUMPUSER_PARAM_NCPU, buf, sizeof(buf)));
	CHECK(rv == 0 && strcmp(buf, "7") == 0, "RUMP_NCPU=7: '%s'", buf);
	unsetenv("RUMP_NCPU");

	HYPERCALL(CONF_NEVER, rv = rumpuser_getparam(RUMPUSER_PARAM_HOSTNAME, buf, sizeof(buf)));
	char expected[32];
	snprintf(expected, sizeof(expected), "rump-%05d", (int)getpid());
	CHECK(rv == 0 && strncmp(buf, expected, strlen(expected)) == 0,
	    "_RUMPUSER_HOSTNAME '%s' does not start with '%s'", buf, expected);
	HYPERCALL(CONF_NEVER, rv = rumpuser_getparam(RUMPUSER_PARAM_HOSTNAME, small, sizeof(small)));
	CHECK(rv == 0 && small[0] == 'r' && small[1] == '\0', "hostname truncated to the buffer");

	setenv("RUMPCONF_PARAM", "value-42", 1);
	HYPERCALL(CONF_NEVER, rv = rumpuser_getparam("RUMPCONF_PARAM", buf, sizeof(buf)));
	CHECK(rv == 0 && strcmp(buf, "value-42") == 0, "environment parameter: '%s'", buf);
	HYPERCALL(CONF_NEVER, rv = rumpuser_getparam("RUMPCONF_PARAM", small, sizeof(small)));
	CHECK_EQ(rv, 34, "parameter too long for the buffer → ERANGE");
	unsetenv("RUMPCONF_PARAM");
	HYPERCALL(CONF_NEVER, rv = rumpuser_getparam("RUMPCONF_NO_SUCH_PARAM", buf, sizeof(buf)));
	CHECK_EQ(rv, 2, "unknown parameter → ENOENT");
	HYPERCALL(CONF_NEVER, rv = rumpuser_getparam("_RUMPUSER_NO_SUCH", buf, sizeof(buf)));
	CHECK_EQ(rv, 22, "unknown mandatory (_) parameter → EINVAL");
	conf_leave_kernel();
	return conf_end_suite();
}

static volatile sig_atomic_t usr1_seen;
static void on_usr1(int sig) { (void)sig; usr1_seen++; }

int
rumpconf_test_errno_and_kill(void)
{
	struct sigaction sa, old;
	int rv;

	conf_begin_suite();
	conf_enter_kernel();
	HYPERCALL(CONF_NEVER, rumpuser_seterrno(77));
	CHECK_EQ(errno, 77, "seterrno stores the value untranslated");
	HYPERCALL(CONF_NEVER, rumpuser_seterrno(0));
	CHECK_EQ(errno, 0, "seterrno(0)");

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, &old);
	/* raise() delivers to the calling thread, if it does not block it. */
	sigset_t usr1, oldmask;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_UNBLOCK, &usr1, &oldmask);
	usr1_seen = 0;
	HYPERCALL(CONF_MAY, rv = rumpuser_kill(RUMPUSER_PID_SELF, 30));	/* NetBSD SIGUSR1 */
	CHECK(rv == 0 && usr1_seen == 1, "kill with NetBSD SIGUSR1 (30) raised host SIGUSR1");
	HYPERCALL(CONF_MAY, rv = rumpuser_kill(RUMPUSER_PID_SELF, 7));	/* SIGEMT: none here */
	CHECK(rv == 0 && usr1_seen == 1, "kill with a signal the host lacks is dropped");
	pthread_sigmask(SIG_SETMASK, &oldmask, NULL);
	sigaction(SIGUSR1, &old, NULL);
	conf_leave_kernel();
	return conf_end_suite();
}

int
rumpconf_test_random(void)
{
	unsigned char buf[4096];
	size_t got = 0;
	int rv, zeros = 0;

	conf_begin_suite();
	conf_enter_kernel();
	memset(buf, 0, sizeof(buf));
	HYPERCALL(CONF_MAY, rv = rumpuser_getrandom(buf, sizeof(buf), 0, &got));
	CHECK(rv == 0 && got == sizeof(buf), "getrandom(4096, 0): rv %d got %zu", rv, got);
	for (size_t i = 0; i < sizeof(buf); i++)
		zeros += buf[i] == 0;
	CHECK(zeros < 100, "getrandom returned %d zero bytes of 4096", zeros);
	HYPERCALL(CONF_MAY, rv = rumpuser_getrandom(buf, 64, RUMPUSER_RANDOM_HARD, &got));
	CHECK(rv == 0 && got == 64, "getrandom HARD: rv %d got %zu", rv, got);
	HYPERCALL(CONF_NEVER, rv = rumpuser_getrandom(buf, 64,
	    RUMPUSER_RANDOM_HARD | RUMPUSER_RANDOM_NOWAIT, &got));
	CHECK((rv == 0 && got > 0 && got <= 64) || rv == 35,
	    "getrandom HARD|NOWAIT: rv %d got %zu", rv, got);
	conf_leave_kernel();
	return conf_end_suite();
}

/* Runs `child` in a forked process with stdout and stderr on a pipe. */
static int
run_forked(void (*child)(void), char *output, size_t size, int *status)
{
	int pipefd[2];
	pid_t pid;
	size_t used = 0;

	if (pipe(pipefd) != 0)
		return -1;
	fflush(NULL);
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		dup2(pipefd[1], 1);
		dup2(pipefd[1], 2);
		close(pipefd[0]);
		close(pipefd[1]);
		child();
		_exit(99);
	}
	close(pipefd[1]);
	for (;;) {
		/* Drain everything (a crash report may be long); keep the start. */
		char scratch[4096];
		ssize_t n = used < size - 1
		    ? read(pipefd[0], output + used, size - 1 - used)
		    : read(pipefd[0], scratch, sizeof(scratch));
		if (n <= 0)
			break;
		if (used < size - 1)
			used += (size_t)n;
	}
	output[used] = '\0';
	close(pipefd[0]);
	waitpid(pid, status, 0);
	return 0;
}

static void
console_child(void)
{
	char long_text[2001];

	memset(long_text, 'L', 2000);
	long_text[2000] = '\0';
	rumpuser_putchar('<');
	rumpuser_putchar('x');
	rumpuser_putchar('>');
	rumpuser_dprintf("dprintf %d-%s\n", 42, "ok");
	rumpuser_dprintf("%s|\n", long_text);
	rumpuser_exit(0);
}

int
rumpconf_test_console(void)
{
	static char output[8192];
	int status = 0;

	conf_begin_suite();
	CHECK(run_forked(console_child, output, sizeof(output), &status) == 0, "fork");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "console child status %d", status);
	CHECK(strstr(output, "<x>") != NULL, "putchar output missing: '%.80s'", output);
	CHECK(strstr(output, "dprintf 42-ok\n") != NULL, "dprintf output missing");
	const char *l = strchr(output, 'L');
	size_t run = 0;
	while (l != NULL && l[run] == 'L')
		run++;
	CHECK(run == 2000 && l[run] == '|', "long dprintf cut: %zu characters", run);
	CHECK(strstr(output, "halted") != NULL, "exit did not print 'halted'");
	return conf_end_suite();
}

static void exit_child(void) { rumpuser_exit(7); }
static void panic_child(void) {
	struct rlimit none = { 0, 0 };
	setrlimit(RLIMIT_CORE, &none);	/* no core file from the test */
	rumpuser_exit(RUMPUSER_PANIC);
}

int
rumpconf_test_exit(void)
{
	static char output[1024];
	int status = 0;

	conf_begin_suite();
	CHECK(run_forked(exit_child, output, sizeof(output), &status) == 0, "fork");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 7, "rumpuser_exit(7): status %#x", status);
	CHECK(run_forked(panic_child, output, sizeof(output), &status) == 0, "fork");
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT,
	    "rumpuser_exit(RUMPUSER_PANIC) must abort: status %#x", status);
	return conf_end_suite();
}

static void
daemon_child_ok(void)
{
	int rv = rumpuser_daemonize_begin();
	if (rv != 0)
		_exit(100 + rv);
	/* Only the daemon gets here; the parent waits for done(). */
	if (rumpuser_daemonize_begin() != 36)	/* EINPROGRESS */
		rumpuser_daemonize_done(5);
	rumpuser_daemonize_done(0);
	_exit(0);
}

static void
daemon_child_error(void)
{
	if (rumpuser_daemonize_begin() != 0)
		_exit(100);
	rumpuser_daemonize_done(ENOSPC);
	_exit(0);
}

static void
daemon_child_not_begun(void)
{
	_exit(rumpuser_daemonize_done(0) == 2 ? 0 : 1);
}

int
rumpconf_test_daemonize(void)
{
	static char output[1024];
	int status = 0;

	conf_begin_suite();
	CHECK(run_forked(daemon_child_ok, output, sizeof(output), &status) == 0, "fork");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	    "daemonize: parent exit status %d, expected 0", WEXITSTATUS(status));
	CHECK(run_forked(daemon_child_error, output, sizeof(output), &status) == 0, "fork");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == ENOSPC,
	    "daemonize_done(ENOSPC): parent exit status %d", WEXITSTATUS(status));
	CHECK(run_forked(daemon_child_not_begun, output, sizeof(output), &status) == 0, "fork");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	    "daemonize_done without begin → ENOENT");
	return conf_end_suite();
}
