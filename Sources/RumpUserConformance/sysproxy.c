/*
 * sysproxy.c: the syscall proxy suite.  The harness kernel serves fake
 * system calls (spkernel.c) to test clients speaking the wire protocol
 * (spclient.c) over unix and tcp sockets: URL errors, the banner and
 * handshakes (guest, prefork/fork, exec), data both ways, errors as NetBSD
 * errno, reverse requests (anonmmap, raise), hostile frames, clients that
 * vanish mid-request, concurrency, and fini.  After the clients are gone
 * every process and lwp they had in the kernel must be gone too.
 */

#include "conf.h"
#include "sptest.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { REQ, RESP, ERR };
enum { T_HANDSHAKE, T_SYSCALL, T_COPYIN, T_COPYINSTR, T_COPYOUT, T_COPYOUTSTR, T_ANONMMAP, T_PREFORK, T_RAISE };
enum { H_GUEST, H_AUTH, H_FORK, H_EXEC };

static void
pause_ms(int ms)
{
	struct timespec t = { ms / 1000, (long)(ms % 1000) * 1000000L };
	nanosleep(&t, NULL);
}

static int
sp_init(const char *url)
{
	int rv;

	conf_enter_kernel();
	HYPERCALL(CONF_MAY, rv = rumpuser_sp_init(url, "NetBSD", "10.0", "amd64"));
	conf_leave_kernel();
	return rv;
}

static void
sp_fini(void)
{
	conf_enter_kernel();
	HYPERCALL(CONF_MAY, rumpuser_sp_fini(NULL));
	conf_leave_kernel();
}

/* Connects and shakes hands as a guest named `name`. */
static int
guest(struct spc_conn *c, const char *url, const char *name)
{
	int rv = spc_connect(c, url);

	if (rv != 0)
		return rv;
	return spc_handshake(c, H_GUEST, name, strlen(name) + 1);
}

static int
echo(struct spc_conn *c, size_t len, unsigned seed)
{
	unsigned char *in = malloc(len + 1), *out = malloc(len + 1);
	struct spt_echo a = { in, out, len };
	long rv[2] = { -1, -1 }, sum = 0;
	int error, bad = 0;

	for (size_t i = 0; i < len; i++) {
		in[i] = (unsigned char)rand_r(&seed);
		sum += in[i];
		out[i] = 0;
	}
	error = spc_syscall(c, SPT_ECHO, &a, sizeof(a), rv);
	if (error == 0) {
		for (size_t i = 0; i < len; i++)
			bad += out[i] != (in[i] ^ 0x5a);
		CHECK(bad == 0, "echo of %zu bytes: %d bytes wrong", len, bad);
		CHECK(rv[0] == (long)len && rv[1] == sum, "echo of %zu: retval %ld/%ld", len, rv[0], rv[1]);
	}
	free(in);
	free(out);
	return error;
}

static int
getpid_name(struct spc_conn *c, char *name, size_t max, long *pid)
{
	struct spt_getpid a = { name, max };
	long rv[2] = { 0, 0 };
	int error;

	memset(name, 0, max);
	error = spc_syscall(c, SPT_GETPID, &a, sizeof(a), rv);
	*pid = rv[0];
	return error;
}

/* Expects an ERROR frame with `code`, then (if closes) the end of the stream. */
static void
expect_error_frame(struct spc_conn *c, uint32_t code, int closes, const char *what)
{
	struct spc_header h;
	unsigned char body[64];
	size_t blen;
	int rv = spc_read_frame(c, &h, body, sizeof(body), &blen);

	CHECK(rv == 1 && h.cls == ERR && h.arg == code, "%s: expected ERROR %u, got rv %d class %u arg %u",
	    what, code, rv, rv == 1 ? h.cls : 0, rv == 1 ? h.arg : 0);
	if (closes) {
		rv = spc_read_frame(c, &h, body, sizeof(body), &blen);
		CHECK(rv == 0, "%s: connection not closed (rv %d)", what, rv);
	}
}

static void
wait_drained(int processes, int lwps, const char *when)
{
	for (int i = 0; i < 400; i++) {
		if (conf_sp_live_processes() == processes && conf_sp_live_lwps() == lwps)
			return;
		pause_ms(50);
	}
	CHECK(0, "%s: %d processes and %d lwps left in the kernel (expected %d, %d)", when,
	    conf_sp_live_processes(), conf_sp_live_lwps(), processes, lwps);
}

static void
test_urls(void)
{
	static const struct { const char *url; int error; } cases[] = {
		{ "nothing", 22 },			/* no :// */
		{ "http://127.0.0.1:80", 22 },		/* unknown scheme */
		{ "averyveryverylongscheme://x", 22 },
		{ "tcp://127.0.0.1", 22 },		/* no port */
		{ "tcp://127.0.0.1:", 22 },
		{ "tcp://127.0.0.1:12x", 22 },		/* junk after the port */
		{ "tcp://127.0.0.1:99999", 34 },	/* ERANGE */
		{ "tcp://1.2.3.4.5:80", 22 },
		{ "tcp6://[::1]:80", 45 },		/* EOPNOTSUPP */
		{ "unix://", 22 },
	};
	char longpath[300];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		CHECK_EQ(sp_init(cases[i].url), cases[i].error, cases[i].url);
	memset(longpath, 'a', sizeof(longpath));
	memcpy(longpath, "unix:///tmp/", 12);
	longpath[sizeof(longpath) - 1] = '\0';
	CHECK_EQ(sp_init(longpath), 63, "unix:// path longer than sun_path (ENAMETOOLONG)");
}

static void
test_calls(const char *url)
{
	struct spc_conn c;
	char name[64], text[64], out[64];
	long rv[2], pid;
	int error;

	CHECK_EQ(guest(&c, url, "spclient"), 0, "guest handshake");
	CHECK(strcmp(c.banner, "RUMPSP-0.4-NetBSD-10.0/amd64\n") == 0, "banner '%s'", c.banner);
	CHECK_EQ(getpid_name(&c, name, sizeof(name), &pid), 0, "GETPID");
	CHECK(pid >= 100 && strcmp(name, "spclient") == 0, "process %ld named '%s'", pid, name);

	static const size_t sizes[] = { 0, 1, 100, 4096, 65536, 1 << 20 };
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
		CHECK_EQ(echo(&c, sizes[i], (unsigned)i), 0, "echo");
	CHECK(c.copyins >= 5 && c.copyouts >= 5, "copyins %d copyouts %d", c.copyins, c.copyouts);

	strcpy(text, "hello, proxy");
	struct spt_string s = { text, sizeof(text), out };
	error = spc_syscall(&c, SPT_STRING, &s, sizeof(s), rv);
	CHECK(error == 0 && rv[0] == 12 && strcmp(out, "yxorp ,olleh") == 0,
	    "copyinstr/copyoutstr: error %d len %ld '%s'", error, rv[0], out);
	memset(text, 'x', 16);
	s.max = 16;
	CHECK_EQ(spc_syscall(&c, SPT_STRING, &s, sizeof(s), rv), 63, "string without NUL (ENAMETOOLONG)");

	struct spt_error e = { 2 };
	CHECK_EQ(spc_syscall(&c, SPT_ERROR, &e, sizeof(e), rv), 2, "ENOENT from the kernel");
	e.error = 60;
	CHECK_EQ(spc_syscall(&c, SPT_ERROR, &e, sizeof(e), rv), 60, "ETIMEDOUT from the kernel");
	CHECK_EQ(spc_syscall(&c, 999, NULL, 0, rv), 78, "unknown syscall (ENOSYS)");
	CHECK_EQ(spc_syscall(&c, SPT_ECHO, NULL, 0, rv), 14, "no argument block");

	struct spt_mmap m = { 8192 };
	CHECK_EQ(spc_syscall(&c, SPT_MMAP, &m, sizeof(m), rv), 0, "anonmmap");
	unsigned char *mapped = (unsigned char *)(uintptr_t)rv[0];
	CHECK(mapped != NULL && c.mmaps == 1, "anonmmap gave %p", (void *)mapped);
	if (mapped != NULL) {
		int bad = 0;
		for (int i = 0; i < 64; i++)
			bad += mapped[i] != (unsigned char)(0xa0 + i);
		CHECK(bad == 0, "copyout into the mapped area: %d bytes wrong", bad);
		munmap(mapped, 8192);
	}

	struct spt_raise r = { 30 };
	CHECK_EQ(spc_syscall(&c, SPT_RAISE, &r, sizeof(r), rv), 0, "raise");
	CHECK_EQ(c.raised, 30, "RAISE frame carries the NetBSD signal");

	/* exec: the process keeps its pid and takes the new name. */
	long before = pid;
	CHECK_EQ(spc_handshake(&c, H_EXEC, "execd", 6), 0, "HANDSHAKE EXEC");
	CHECK_EQ(getpid_name(&c, name, sizeof(name), &pid), 0, "GETPID after exec");
	CHECK(pid == before && strcmp(name, "execd") == 0, "after exec: pid %ld (was %ld) '%s'", pid, before, name);

	/* exec with a system call asleep: lwpexit ends it, then exec completes. */
	int slot = 0;
	uint64_t sleeping = spc_send(&c, REQ, T_SYSCALL, SPT_WAITEXIT, NULL, 0);
	pause_ms(100);
	uint64_t exec = spc_send(&c, REQ, T_HANDSHAKE, H_EXEC, "second", 7);
	CHECK(spc_wait(&c, sleeping, &slot) == 0, "sleeping syscall during exec: no answer");
	/* EINTR (4) once asleep; ESRCH (3) if exec came before it got an lwp. */
	CHECK(c.slots[slot].error == 4 || c.slots[slot].error == 3, "sleeping syscall ended with %d",
	    c.slots[slot].error);
	c.slots[slot].used = 0;
	CHECK(spc_wait(&c, exec, &slot) == 0 && c.slots[slot].cls == RESP && c.slots[slot].dlen == 4,
	    "second exec: no handshake response");
	c.slots[slot].used = 0;
	CHECK_EQ(getpid_name(&c, name, sizeof(name), &pid), 0, "GETPID after the second exec");
	CHECK(pid == before && strcmp(name, "second") == 0, "after the second exec: '%s'", name);
	spc_close(&c);
}

static void
test_fork(const char *url)
{
	struct spc_conn parent, child, again;
	struct { uint32_t auth[4]; int cancel; } hf;
	char name[64];
	long ppid, cpid;
	int slot = 0;

	CHECK_EQ(guest(&parent, url, "forker"), 0, "parent handshake");
	CHECK_EQ(getpid_name(&parent, name, sizeof(name), &ppid), 0, "parent GETPID");
	uint64_t req = spc_send(&parent, REQ, T_PREFORK, 0, NULL, 0);
	CHECK(req != 0 && spc_wait(&parent, req, &slot) == 0, "PREFORK");
	CHECK(parent.slots[slot].cls == RESP && parent.slots[slot].dlen == 16, "PREFORK response: class %u, %zu bytes",
	    parent.slots[slot].cls, parent.slots[slot].dlen);
	memcpy(hf.auth, parent.slots[slot].data, 16);
	parent.slots[slot].used = 0;

	hf.cancel = 0;
	CHECK_EQ(spc_connect(&child, url), 0, "child connect");
	CHECK_EQ(spc_handshake(&child, H_FORK, &hf, sizeof(hf)), 0, "HANDSHAKE FORK");
	CHECK_EQ(getpid_name(&child, name, sizeof(name), &cpid), 0, "child GETPID");
	CHECK(cpid != ppid && strcmp(name, "forker") == 0, "child pid %ld (parent %ld) named '%s'", cpid, ppid, name);
	CHECK_EQ(echo(&child, 300, 7), 0, "child echo");

	/* The key is used up. */
	CHECK_EQ(spc_connect(&again, url), 0, "connect");
	CHECK_EQ(spc_handshake(&again, H_FORK, &hf, sizeof(hf)), 3, "FORK with a used key (ESRCH)");
	spc_close(&again);
	/* A malformed fork handshake. */
	CHECK_EQ(spc_connect(&again, url), 0, "connect");
	CHECK_EQ(spc_handshake(&again, H_FORK, &hf, 7), 22, "FORK with 7 bytes (EINVAL)");
	spc_close(&again);
	/* A cancelled fork: the server drops the connection and the lwp. */
	req = spc_send(&parent, REQ, T_PREFORK, 0, NULL, 0);
	CHECK(req != 0 && spc_wait(&parent, req, &slot) == 0, "second PREFORK");
	memcpy(hf.auth, parent.slots[slot].data, 16);
	parent.slots[slot].used = 0;
	hf.cancel = 1;
	CHECK_EQ(spc_connect(&again, url), 0, "connect");
	CHECK_EQ(spc_handshake(&again, H_FORK, &hf, sizeof(hf)), -1, "cancelled FORK closes the connection");
	spc_close(&again);
	/* A prefork never claimed goes with its parent. */
	req = spc_send(&parent, REQ, T_PREFORK, 0, NULL, 0);
	CHECK(req != 0 && spc_wait(&parent, req, &slot) == 0, "third PREFORK");
	parent.slots[slot].used = 0;
	spc_close(&child);
	spc_close(&parent);
}

static void
test_hostile(const char *url)
{
	struct spc_conn c;
	struct spc_header h;
	unsigned char body[64];
	size_t blen;
	long rv[2];

	/* A syscall before the handshake: ERROR AUTH and the door. */
	CHECK_EQ(spc_connect(&c, url), 0, "connect");
	spc_send(&c, REQ, T_SYSCALL, SPT_ERROR, "abcd", 4);
	expect_error_frame(&c, 2, 1, "syscall before handshake");
	spc_close(&c);
	/* Handshake kinds a new client may not use. */
	CHECK_EQ(spc_connect(&c, url), 0, "connect");
	CHECK_EQ(spc_handshake(&c, H_AUTH, NULL, 0), 1, "HANDSHAKE AUTH (EPERM)");
	spc_close(&c);
	CHECK_EQ(spc_connect(&c, url), 0, "connect");
	CHECK_EQ(spc_handshake(&c, 77, NULL, 0), 1, "HANDSHAKE 77 (EPERM)");
	spc_close(&c);

	/* A frame length shorter than the header. */
	CHECK_EQ(guest(&c, url, "hostile"), 0, "handshake");
	h = (struct spc_header){ 8, 1, REQ, T_SYSCALL, 0 };
	send(c.fd, &h, sizeof(h), MSG_NOSIGNAL);
	CHECK_EQ(spc_read_frame(&c, &h, body, sizeof(body), &blen), 0, "short frame length: connection closed");
	spc_close(&c);
	/* A frame length over the limit. */
	CHECK_EQ(guest(&c, url, "hostile"), 0, "handshake");
	h = (struct spc_header){ (uint64_t)1 << 40, 1, REQ, T_SYSCALL, 0 };
	send(c.fd, &h, sizeof(h), MSG_NOSIGNAL);
	expect_error_frame(&c, 7, 1, "1 TiB frame");
	spc_close(&c);

	/* Errors the connection survives. */
	CHECK_EQ(guest(&c, url, "hostile"), 0, "handshake");
	spc_send(&c, 9, 0, 0, "zz", 2);
	expect_error_frame(&c, 7, 0, "unknown class");
	spc_send(&c, REQ, 42, 0, NULL, 0);
	expect_error_frame(&c, 7, 0, "unknown request type");
	spc_send(&c, REQ, T_COPYIN, 0, NULL, 0);
	expect_error_frame(&c, 7, 0, "client sends COPYIN as a request");
	spc_send(&c, RESP, T_COPYIN, 0, "stray", 5);	/* nobody waits for it */
	CHECK_EQ(echo(&c, 1000, 3), 0, "echo after bad frames");
	c.refuse_copyin = 1;
	CHECK_EQ(echo(&c, 1000, 4), 14, "short copyin response (EFAULT)");
	c.refuse_copyin = 2;
	CHECK_EQ(echo(&c, 1000, 5), 14, "ERROR for a copyin (EFAULT)");
	c.refuse_copyin = 0;
	CHECK_EQ(echo(&c, 1000, 6), 0, "echo after refused copyins");
	/* A second guest handshake on a running client. */
	CHECK_EQ(spc_handshake(&c, H_GUEST, "again", 6), 22, "second GUEST handshake (EINVAL)");
	spc_close(&c);

	/* A copyin response longer than asked: the client is dropped. */
	CHECK_EQ(guest(&c, url, "hostile"), 0, "handshake");
	c.refuse_copyin = 3;
	CHECK_EQ(echo(&c, 64, 8), -1, "oversized copyin response: connection closed");
	spc_close(&c);
	/* Half a header, then gone. */
	CHECK_EQ(guest(&c, url, "hostile"), 0, "handshake");
	send(c.fd, &h, 10, MSG_NOSIGNAL);
	spc_close(&c);
	/* The server still serves. */
	CHECK_EQ(guest(&c, url, "after"), 0, "handshake after hostile clients");
	CHECK_EQ(spc_syscall(&c, SPT_ERROR, &(struct spt_error){ 5 }, sizeof(struct spt_error), rv), 5, "syscall");
	spc_close(&c);
}

static void
test_disconnects(const char *url)
{
	struct spc_conn c;
	uint64_t exits = conf_sp_exits();

	/* Gone while the server waits for its copyin response. */
	CHECK_EQ(guest(&c, url, "vanisher"), 0, "handshake");
	c.refuse_copyin = 4;
	CHECK_EQ(echo(&c, 4096, 9), -1, "client vanishes at copyin");
	spc_close(&c);
	/* Gone while its syscall sleeps in the kernel: lwpexit wakes it. */
	CHECK_EQ(guest(&c, url, "sleeper"), 0, "handshake");
	CHECK(spc_send(&c, REQ, T_SYSCALL, SPT_WAITEXIT, NULL, 0) != 0, "WAITEXIT sent");
	pause_ms(200);
	spc_close(&c);
	for (int i = 0; i < 200 && conf_sp_exits() < exits + 2; i++)
		pause_ms(50);
	CHECK(conf_sp_exits() >= exits + 2, "hyp_lwpexit calls: %llu, expected %llu",
	    (unsigned long long)conf_sp_exits(), (unsigned long long)exits + 2);

	/*
	 * A flood: 100 syscalls that sleep until the client goes.  64 run or
	 * wait for a worker; the other 36 are refused with ERROR TRYAGAIN (1).
	 * Closing the connection ends them all.
	 */
	enum { FLOOD = 100, JOBS = 64 };
	CHECK_EQ(guest(&c, url, "flooder"), 0, "handshake");
	for (int i = 0; i < FLOOD; i++)
		spc_send(&c, REQ, T_SYSCALL, SPT_WAITEXIT, NULL, 0);
	int refused = 0, other = 0;
	while (refused + other < FLOOD - JOBS) {
		struct spc_header h;
		unsigned char body[64];
		size_t blen;
		if (spc_read_frame(&c, &h, body, sizeof(body), &blen) != 1)
			break;
		if (h.cls == ERR && h.arg == 1)
			refused++;
		else
			other++;
	}
	CHECK(refused == FLOOD - JOBS && other == 0, "flood: %d refused with TRYAGAIN, %d other frames", refused, other);
	spc_close(&c);
}

struct worker_arg { const char *url; int index, rounds, failures; };

static void *
echo_worker(void *argument)
{
	struct worker_arg *w = argument;
	struct spc_conn c;
	unsigned seed = (unsigned)w->index * 7919u;

	if (guest(&c, w->url, "worker") != 0) {
		w->failures++;
		return NULL;
	}
	for (int i = 0; i < w->rounds; i++) {
		size_t len = 1 + (size_t)(rand_r(&seed) % 8192);
		if (echo(&c, len, seed + (unsigned)i) != 0)
			w->failures++;
	}
	spc_close(&c);
	return NULL;
}

static void
test_concurrency(const char *url)
{
	enum { THREADS = 4, ROUNDS = 150, PIPELINED = 8, MANY = 40 };
	pthread_t threads[THREADS];
	struct worker_arg args[THREADS];

	for (int i = 0; i < THREADS; i++) {
		args[i] = (struct worker_arg){ url, i, ROUNDS, 0 };
		pthread_create(&threads[i], NULL, echo_worker, &args[i]);
	}

	/* One client with several syscalls outstanding at once. */
	struct spc_conn c;
	CHECK_EQ(guest(&c, url, "pipeliner"), 0, "handshake");
	unsigned char in[PIPELINED][2048], out[PIPELINED][2048];
	struct spt_echo a[PIPELINED];
	uint64_t req[PIPELINED];
	for (int i = 0; i < PIPELINED; i++) {
		memset(in[i], 'a' + i, sizeof(in[i]));
		memset(out[i], 0, sizeof(out[i]));
		a[i] = (struct spt_echo){ in[i], out[i], sizeof(in[i]) };
		req[i] = spc_send(&c, REQ, T_SYSCALL, SPT_ECHO, &a[i], sizeof(a[i]));
	}
	for (int i = PIPELINED - 1; i >= 0; i--) {
		int slot = 0;
		CHECK(spc_wait(&c, req[i], &slot) == 0 && c.slots[slot].error == 0, "pipelined echo %d", i);
		c.slots[slot].used = 0;
		CHECK(out[i][0] == (('a' + i) ^ 0x5a) && out[i][2047] == (('a' + i) ^ 0x5a), "pipelined echo %d data", i);
	}
	spc_close(&c);

	/* Many clients connected at once, each its own process. */
	static struct spc_conn many[MANY];
	long pids[MANY];
	char name[64];
	int distinct = 1;
	for (int i = 0; i < MANY; i++) {
		CHECK_EQ(guest(&many[i], url, "many"), 0, "many: handshake");
		CHECK_EQ(getpid_name(&many[i], name, sizeof(name), &pids[i]), 0, "many: GETPID");
		for (int j = 0; j < i; j++)
			distinct &= pids[j] != pids[i];
	}
	CHECK(distinct, "many clients: process ids not distinct");
	for (int i = 0; i < MANY; i++)
		spc_close(&many[i]);

	for (int i = 0; i < THREADS; i++) {
		pthread_join(threads[i], NULL);
		CHECK(args[i].failures == 0, "echo worker %d: %d failures", i, args[i].failures);
	}
}

/* 254 clients at most (NetBSD's MAXCLI of 256 poll slots less the
 * listener, less one); further connections are closed at once. */
static void
test_capacity(const char *url)
{
	enum { TRIES = 260, LIMIT = 254 };
	static struct spc_conn conns[TRIES];
	int banners = 0;

	for (int i = 0; i < TRIES; i++)
		if (spc_connect(&conns[i], url) == 0 && conns[i].banner[0] == 'R')
			banners++;
	CHECK_EQ(banners, LIMIT, "connections served at once");
	for (int i = 0; i < TRIES; i++)
		spc_close(&conns[i]);
}

static void
test_tcp_and_fini(void)
{
	char url[64];
	struct spc_conn c;
	long rv[2];
	int rv_init = -1, port = 0;

	for (int attempt = 0; attempt < 20 && rv_init != 0; attempt++) {
		port = 20000 + (int)((getpid() * 31 + attempt * 977) % 40000);
		snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
		rv_init = sp_init(url);
	}
	CHECK_EQ(rv_init, 0, "sp_init on tcp://127.0.0.1");
	if (rv_init != 0)
		return;
	CHECK_EQ(guest(&c, url, "tcpclient"), 0, "tcp handshake");
	CHECK_EQ(echo(&c, 70000, 11), 0, "tcp echo");
	/* The kernel halts from inside a syscall: the client gets its answer. */
	CHECK_EQ(spc_syscall(&c, SPT_FINI, NULL, 0, rv), 0, "syscall calling rumpuser_sp_fini");
	spc_close(&c);
	int refused = 0;
	for (int i = 0; i < 100 && !refused; i++) {
		struct spc_conn probe;
		refused = spc_connect(&probe, url) != 0;
		if (!refused) {
			spc_close(&probe);
			pause_ms(50);
		}
	}
	CHECK(refused, "tcp server still accepts after fini");
}

int
rumpconf_test_syscall_proxy(void)
{
	char directory[] = "/tmp/rumpconf-sp.XXXXXX", url[128], path[128];
	int processes, lwps;

	conf_begin_suite();
	test_urls();
	if (mkdtemp(directory) == NULL) {
		CHECK(0, "mkdtemp");
		return conf_end_suite();
	}
	snprintf(path, sizeof(path), "%s/sp.sock", directory);
	snprintf(url, sizeof(url), "unix://%s", path);
	processes = conf_sp_live_processes();
	lwps = conf_sp_live_lwps();
	CHECK_EQ(sp_init(url), 0, "sp_init on unix://");
	CHECK_EQ(sp_init("unix:///tmp/rumpconf-other.sock"), 16, "second sp_init (EBUSY)");
	CHECK_EQ(sp_init(url), 16, "second sp_init on the same path (EBUSY)");

	test_calls(url);
	test_fork(url);
	test_hostile(url);
	test_disconnects(url);
	test_concurrency(url);
	wait_drained(processes, lwps, "after every client left");
	test_capacity(url);

	sp_fini();
	struct stat st;
	int removed = 0;
	for (int i = 0; i < 100 && !removed; i++) {
		removed = stat(path, &st) != 0;
		if (!removed)
			pause_ms(50);
	}
	CHECK(removed, "socket file still there after fini");
	struct spc_conn c;
	CHECK(spc_connect(&c, url) != 0, "connect after fini succeeded");

	/* A path in use by another file: EADDRINUSE (48). */
	FILE *f = fopen(path, "w");
	if (f != NULL)
		fclose(f);
	CHECK_EQ(sp_init(url), 48, "sp_init on an existing path (EADDRINUSE)");
	unlink(path);

	test_tcp_and_fini();
	wait_drained(processes, lwps, "after tcp clients and fini");
	rmdir(directory);
	return conf_end_suite();
}

/* ---- rumpuser_component_schedule_intr ---------------------------------------- */

static void *
intr_thread(void *argument)
{
	int *ok = argument;
	struct lwp *l;

	/* A bare host thread delivering an "interrupt". */
	CHECK(conf_self.cpu == -1 && rumpuser_curlwp() == NULL, "intr thread starts bare");
	rumpuser_component_schedule_intr();
	l = rumpuser_curlwp();
	CHECK(conf_self.cpu != -1, "schedule_intr took no CPU");
	CHECK(l != NULL && l->magic == CONF_LWP_MAGIC && l->temporary, "schedule_intr: no interrupt lwp");
	/* Kernel work with the CPU held: a nowrap mutex, as interrupt code does. */
	struct rumpuser_mtx *m;
	rumpuser_mutex_init(&m, RUMPUSER_MTX_SPIN);
	HYPERCALL(CONF_NEVER, rumpuser_mutex_enter_nowrap(m));
	HYPERCALL(CONF_NEVER, rumpuser_mutex_exit(m));
	rumpuser_mutex_destroy(m);
	rumpuser_component_unschedule_intr();
	CHECK(conf_self.cpu == -1, "unschedule_intr kept the CPU");
	CHECK(rumpuser_curlwp() == NULL, "unschedule_intr left the interrupt lwp bound");
	*ok = 1;
	return NULL;
}

int
rumpconf_test_component_intr(void)
{
	pthread_t thread;
	int ok = 0;
	struct lwp *mine;

	conf_begin_suite();
	/* On a bare thread: a CPU and a temporary lwp, both given back. */
	pthread_create(&thread, NULL, intr_thread, &ok);
	pthread_join(thread, NULL);
	CHECK(ok, "intr thread did not finish");
	/* On a thread with an lwp of its own (a component kthread): it keeps it. */
	rumpuser_component_kthread();
	mine = rumpuser_curlwp();
	rumpuser_component_schedule_intr();
	CHECK(conf_self.cpu != -1 && rumpuser_curlwp() == mine, "schedule_intr on a kthread");
	rumpuser_component_unschedule_intr();
	CHECK(conf_self.cpu == -1 && rumpuser_curlwp() == mine, "unschedule_intr on a kthread");
	rumpuser_component_kthread_release();
	CHECK(rumpuser_curlwp() == NULL, "kthread_release");
	return conf_end_suite();
}
