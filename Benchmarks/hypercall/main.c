/*
 * hypercall-bench: each rumpuser hypercall beside a plain C pthread
 * implementation of the same operation, measured in the same run.
 *
 *   swift run -c release hypercall-bench [scale [row]]
 *
 * With a second argument only the rows whose name contains it run (say
 * "create" for thread create + join).
 *
 * The upcall table is a minimal one (no-op CPU release/retake through
 * function pointers), so the figures are the hypercall layer's own cost.
 * Each figure is the best of 7 alternating runs; output is a Markdown table.
 */

#define _GNU_SOURCE
#include "rumpuser.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double
now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef void (*bench_fn)(long iterations);

/* CPU time of the whole process (every thread), in seconds. */
static double
cpu_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

struct cost {
	double wall;	/* ns per operation, elapsed */
	double cpu;	/* ns per operation of CPU time, all threads */
};

static struct cost
ns_per_op(bench_fn fn, long iterations)
{
	double t0 = now(), c0 = cpu_now();
	fn(iterations);
	double c1 = cpu_now(), t1 = now();
	return (struct cost){ (t1 - t0) * 1e9 / (double)iterations, (c1 - c0) * 1e9 / (double)iterations };
}

/* ---- upcalls: what a kernel's cheapest path costs ----------------------- */

static _Atomic long releases;
static void up_void(void) {}
static void up_unschedule(int d, int *nlocks, void *il) { (void)d; (void)il; *nlocks = 0; releases++; }
static void up_schedule(int n, void *il) { (void)n; (void)il; }
static void up_switch(struct lwp *l) { (void)l; }
static void *sp_client;	/* the one proxy client's cookie */
static int up_rfork(void *p, int f, const char *c) { (void)f; (void)c; sp_client = p; return 0; }
static int up_newlwp(pid_t p) { (void)p; return 0; }
static struct lwp *up_curlwp(void) { return rumpuser_curlwp(); }
static int up_syscall(int n, void *a, long *r);
static void up_exec(const char *c) { (void)c; }
static pid_t up_getpid(void) { return 1; }
static const struct rumpuser_hyperup upcalls = {
	up_void, up_void, up_unschedule, up_schedule, up_switch, up_void,
	up_rfork, up_newlwp, up_curlwp, up_syscall, up_void, up_exec, up_getpid, { 0 }
};

/* ---- syscall proxy round trip -------------------------------------------- */
/*
 * One system call from a client over a unix socket whose kernel side copies
 * 64 bytes in from the client and back out: five frames (request, copyin
 * request, its response, copyout, syscall response).  rumpuser: the
 * rumpuser_sp server and its worker thread.  Baseline: a C thread serving
 * the same five frames on a socketpair.
 */
struct frame { uint64_t len, reqno; uint16_t cls, type; uint32_t arg; };
struct echo_args { const void *in; void *out; };
enum { SP_REQ, SP_RESP, SP_ERR, SP_SYSCALL = 1, SP_COPYIN = 2, SP_COPYOUT = 4 };

static int
up_syscall(int n, void *a, long *r)
{
	struct echo_args *args = a;
	char buffer[64];
	int error;

	if (n != 1 || a == NULL)
		return 78;
	error = rumpuser_sp_copyin(sp_client, args->in, buffer, sizeof(buffer));
	if (error == 0)
		error = rumpuser_sp_copyout(sp_client, buffer, args->out, sizeof(buffer));
	r[0] = error == 0 ? (long)sizeof(buffer) : -1;
	return error;
}

static int
read_all(int fd, void *buffer, size_t len)
{
	for (size_t got = 0; got < len;) {
		ssize_t n = read(fd, (char *)buffer + got, len - got);
		if (n <= 0)
			return -1;
		got += (size_t)n;
	}
	return 0;
}

static void
send_frame(int fd, uint64_t reqno, uint16_t cls, uint16_t type, uint32_t arg,
    const void *a, size_t alen, const void *b, size_t blen)
{
	struct frame h = { sizeof(h) + alen + blen, reqno, cls, type, arg };
	struct iovec iov[3] = { { &h, sizeof(h) }, { (void *)a, alen }, { (void *)b, blen } };
	struct msghdr m = { .msg_iov = iov, .msg_iovlen = 3 };
	if (sendmsg(fd, &m, MSG_NOSIGNAL) != (ssize_t)h.len)
		abort();
}

/* The client side, the same for both: one syscall, serving the reverse requests. */
static int proxy_fd, plain_fd;
static char client_in[64] = "sixty-four bytes from the client for the kernel to copy in.....";
static char client_out[64];

static void
client_syscall(int fd)
{
	static uint64_t reqno;
	struct echo_args args = { client_in, client_out };
	struct frame h;
	unsigned char body[256];

	send_frame(fd, ++reqno, SP_REQ, SP_SYSCALL, 1, &args, sizeof(args), NULL, 0);
	for (;;) {
		if (read_all(fd, &h, sizeof(h)) != 0 || h.len - sizeof(h) > sizeof(body) ||
		    read_all(fd, body, h.len - sizeof(h)) != 0)
			abort();
		if (h.cls == SP_RESP)
			return;
		uint64_t len, addr;
		memcpy(&len, body, 8);
		memcpy(&addr, body + 8, 8);
		if (h.type == SP_COPYIN)
			send_frame(fd, h.reqno, SP_RESP, SP_COPYIN, 0, (void *)(uintptr_t)addr, len, NULL, 0);
		else if (h.type == SP_COPYOUT)
			memcpy((void *)(uintptr_t)addr, body + 16, len);
	}
}

static void rump_sysproxy(long n) { for (long i = 0; i < n; i++) client_syscall(proxy_fd); }
static void plain_sysproxy(long n) { for (long i = 0; i < n; i++) client_syscall(plain_fd); }

/* The baseline server: one thread, the same frames, no rump kernel. */
static void *
plain_server(void *arg)
{
	int fd = (int)(intptr_t)arg;
	struct frame h;
	unsigned char body[256];
	uint64_t next = 1;

	for (;;) {
		if (read_all(fd, &h, sizeof(h)) != 0 || read_all(fd, body, h.len - sizeof(h)) != 0)
			return NULL;
		struct echo_args args;
		memcpy(&args, body, sizeof(args));
		uint64_t copy[2] = { 64, (uint64_t)(uintptr_t)args.in };
		uint64_t request = h.reqno;
		send_frame(fd, next++, SP_REQ, SP_COPYIN, 0, copy, sizeof(copy), NULL, 0);
		if (read_all(fd, &h, sizeof(h)) != 0 || read_all(fd, body, h.len - sizeof(h)) != 0)
			return NULL;
		copy[1] = (uint64_t)(uintptr_t)args.out;
		send_frame(fd, next++, SP_REQ, SP_COPYOUT, 0, copy, sizeof(copy), body, 64);
		long response[3] = { 0, 64, 0 };
		send_frame(fd, request, SP_RESP, SP_SYSCALL, 0, response, sizeof(response), NULL, 0);
	}
}

/*
 * The same design in plain C (NetBSD's): a receiver thread reads every
 * frame and hands the system call to a worker thread, which sends the
 * copyin request and sleeps until the receiver passes it the response.
 */
static pthread_mutex_t d_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t d_cv = PTHREAD_COND_INITIALIZER;
static int design_fd, d_have_call, d_have_data;
static struct echo_args d_args;
static uint64_t d_request;
static unsigned char d_data[64];

static void *
design_receiver(void *arg)
{
	struct frame h;
	unsigned char body[256];

	(void)arg;
	for (;;) {
		struct pollfd pfd = { .fd = design_fd, .events = POLLIN };
		if (poll(&pfd, 1, -1) != 1)
			return NULL;
		if (read_all(design_fd, &h, sizeof(h)) != 0 || read_all(design_fd, body, h.len - sizeof(h)) != 0)
			return NULL;
		pthread_mutex_lock(&d_lock);
		if (h.cls == SP_REQ) {
			memcpy(&d_args, body, sizeof(d_args));
			d_request = h.reqno;
			d_have_call = 1;
		} else {
			memcpy(d_data, body, sizeof(d_data));
			d_have_data = 1;
		}
		pthread_cond_broadcast(&d_cv);
		pthread_mutex_unlock(&d_lock);
	}
}

static void *
design_worker(void *arg)
{
	uint64_t next = 1;

	(void)arg;
	for (;;) {
		pthread_mutex_lock(&d_lock);
		while (!d_have_call)
			pthread_cond_wait(&d_cv, &d_lock);
		d_have_call = 0;
		struct echo_args args = d_args;
		uint64_t request = d_request;
		pthread_mutex_unlock(&d_lock);
		uint64_t copy[2] = { 64, (uint64_t)(uintptr_t)args.in };
		send_frame(design_fd, next++, SP_REQ, SP_COPYIN, 0, copy, sizeof(copy), NULL, 0);
		pthread_mutex_lock(&d_lock);
		while (!d_have_data)
			pthread_cond_wait(&d_cv, &d_lock);
		d_have_data = 0;
		unsigned char data[64];
		memcpy(data, d_data, sizeof(data));
		pthread_mutex_unlock(&d_lock);
		copy[1] = (uint64_t)(uintptr_t)args.out;
		send_frame(design_fd, next++, SP_REQ, SP_COPYOUT, 0, copy, sizeof(copy), data, 64);
		long response[3] = { 0, 64, 0 };
		send_frame(design_fd, request, SP_RESP, SP_SYSCALL, 0, response, sizeof(response), NULL, 0);
	}
}

static int design_client_fd;
static void design_sysproxy(long n) { for (long i = 0; i < n; i++) client_syscall(design_client_fd); }

static int
sysproxy_setup(void)
{
	char url[128];
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	char banner[96], comm[] = "bench";
	int pair[2];
	pthread_t server;

	snprintf(sun.sun_path, sizeof(sun.sun_path), "/tmp/hypercall-bench-sp-%d", (int)getpid());
	snprintf(url, sizeof(url), "unix://%s", sun.sun_path);
	if (rumpuser_sp_init(url, "NetBSD", "10.0", "amd64") != 0)
		return -1;
	proxy_fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (connect(proxy_fd, (struct sockaddr *)&sun, sizeof(sun)) != 0)
		return -1;
	for (size_t i = 0; i < sizeof(banner); i++)
		if (read_all(proxy_fd, &banner[i], 1) != 0 || banner[i] == '\n')
			break;
	send_frame(proxy_fd, 1, SP_REQ, 0 /* HANDSHAKE */, 0 /* GUEST */, comm, sizeof(comm), NULL, 0);
	struct frame h;
	int error = -1;
	if (read_all(proxy_fd, &h, sizeof(h)) != 0 || read_all(proxy_fd, &error, sizeof(error)) != 0 || error != 0)
		return -1;
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0)
		return -1;
	plain_fd = pair[0];
	pthread_create(&server, NULL, plain_server, (void *)(intptr_t)pair[1]);
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0)
		return -1;
	design_client_fd = pair[0];
	design_fd = pair[1];
	pthread_create(&server, NULL, design_receiver, NULL);
	pthread_create(&server, NULL, design_worker, NULL);
	return 0;
}

/* ---- uncontended mutex ----------------------------------------------------- */

static struct rumpuser_mtx *rmtx;
static pthread_mutex_t pmtx = PTHREAD_MUTEX_INITIALIZER;
static volatile long shared_counter;

static void rump_uncontended(long n) {
	for (long i = 0; i < n; i++) { rumpuser_mutex_enter(rmtx); shared_counter++; rumpuser_mutex_exit(rmtx); }
}
static void pthread_uncontended(long n) {
	for (long i = 0; i < n; i++) { pthread_mutex_lock(&pmtx); shared_counter++; pthread_mutex_unlock(&pmtx); }
}

/* ---- contended mutex: two threads on one lock -------------------------------- */

static long contended_n;
static void *rump_contender(void *arg) {
	(void)arg;
	for (long i = 0; i < contended_n; i++) { rumpuser_mutex_enter(rmtx); shared_counter++; rumpuser_mutex_exit(rmtx); }
	return NULL;
}
static void *pthread_contender(void *arg) {
	(void)arg;
	for (long i = 0; i < contended_n; i++) { pthread_mutex_lock(&pmtx); shared_counter++; pthread_mutex_unlock(&pmtx); }
	return NULL;
}
static void two_threads(void *(*fn)(void *), long n) {
	pthread_t t;
	contended_n = n / 2;
	pthread_create(&t, NULL, fn, NULL);
	fn(NULL);
	pthread_join(t, NULL);
}
static void rump_contended(long n) { two_threads(rump_contender, n); }
static void pthread_contended(long n) { two_threads(pthread_contender, n); }

/* ---- cv ping-pong: each op is one hand-over ------------------------------------ */

static struct rumpuser_cv *rcv;
static pthread_cond_t pcv;
static long turn, pingpong_n;

static void *rump_pong(void *arg) {
	long me = (long)arg;
	rumpuser_mutex_enter(rmtx);
	for (long i = 0; i < pingpong_n; i++) {
		while ((turn & 1) != me)
			rumpuser_cv_wait(rcv, rmtx);
		turn++;
		rumpuser_cv_signal(rcv);
	}
	rumpuser_mutex_exit(rmtx);
	return NULL;
}
static void *pthread_pong(void *arg) {
	long me = (long)arg;
	pthread_mutex_lock(&pmtx);
	for (long i = 0; i < pingpong_n; i++) {
		while ((turn & 1) != me)
			pthread_cond_wait(&pcv, &pmtx);
		turn++;
		pthread_cond_signal(&pcv);
	}
	pthread_mutex_unlock(&pmtx);
	return NULL;
}
static void pingpong(void *(*fn)(void *), long n) {
	pthread_t t;
	turn = 0;
	pingpong_n = n / 2;
	pthread_create(&t, NULL, fn, (void *)1);
	fn((void *)0);
	pthread_join(t, NULL);
}
static void rump_pingpong(long n) { pingpong(rump_pong, n); }
static void pthread_pingpong(long n) { pingpong(pthread_pong, n); }

/* ---- thread create + join --------------------------------------------------------- */

static void *nothing(void *arg) { return arg; }
static void rump_create_join(long n) {
	for (long i = 0; i < n; i++) {
		void *cookie;
		rumpuser_thread_create(nothing, NULL, "bench", 1, 0, -1, &cookie);
		rumpuser_thread_join(cookie);
	}
}
/* Same operation: the contract names every thread, so the baseline's
 * threads name themselves too (the cheap way, as librumpuser does). */
static void *named_nothing(void *arg) {
	pthread_setname_np(pthread_self(), "bench");
	return arg;
}
static void pthread_create_join(long n) {
	for (long i = 0; i < n; i++) {
		pthread_t t;
		pthread_create(&t, NULL, named_nothing, NULL);
		pthread_join(t, NULL);
	}
}

/* ---- 4 KiB block I/O round trip ------------------------------------------------------ */

static int bench_fd;
static char iobuf[4096] __attribute__((aligned(4096)));
static int bio_done;

static void bench_biodone(void *arg, size_t len, int error) {
	(void)arg;
	if (len != sizeof(iobuf) || error != 0)
		abort();
	rumpuser_mutex_enter_nowrap(rmtx);
	bio_done = 1;
	rumpuser_cv_signal(rcv);
	rumpuser_mutex_exit(rmtx);
}
static void rump_bio(long n) {
	for (long i = 0; i < n; i++) {
		bio_done = 0;
		rumpuser_bio(bench_fd, RUMPUSER_BIO_READ, iobuf, sizeof(iobuf), (i % 256) * 4096,
		    bench_biodone, NULL);
		rumpuser_mutex_enter(rmtx);
		while (!bio_done)
			rumpuser_cv_wait(rcv, rmtx);
		rumpuser_mutex_exit(rmtx);
	}
}

/* The same operation in plain C: a worker thread, a queue, pread, wakeup. */
static pthread_mutex_t q_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t q_work = PTHREAD_COND_INITIALIZER, q_done = PTHREAD_COND_INITIALIZER;
static long q_offset = -1;
static int q_finished;
static void *pthread_io_worker(void *arg) {
	(void)arg;
	pthread_mutex_lock(&q_lock);
	for (;;) {
		while (q_offset < 0)
			pthread_cond_wait(&q_work, &q_lock);
		long off = q_offset;
		q_offset = -1;
		pthread_mutex_unlock(&q_lock);
		if (pread(bench_fd, iobuf, sizeof(iobuf), off) != (ssize_t)sizeof(iobuf))
			abort();
		pthread_mutex_lock(&q_lock);
		q_finished = 1;
		pthread_cond_signal(&q_done);
	}
	return NULL;
}
static void pthread_bio(long n) {
	for (long i = 0; i < n; i++) {
		pthread_mutex_lock(&q_lock);
		q_finished = 0;
		q_offset = (i % 256) * 4096;
		pthread_cond_signal(&q_work);
		while (!q_finished)
			pthread_cond_wait(&q_done, &q_lock);
		pthread_mutex_unlock(&q_lock);
	}
}

/* ---- curlwp ---------------------------------------------------------------------------- */

/*
 * The baseline: a C function that returns a thread-local, which is what a
 * C librumpuser's rumpuser_curlwp is.  Both are called through a volatile
 * function pointer, as a kernel in another object calls them through its
 * PLT, so that neither call can be hoisted out of the loop.
 */
static __thread struct lwp *plain_tls;
static struct lwp *plain_tls_load(void) { return plain_tls; }
static struct lwp *(*volatile rump_curlwp_fn)(void) = rumpuser_curlwp;
static struct lwp *(*volatile tls_curlwp_fn)(void) = plain_tls_load;
static volatile uintptr_t sink;
static void rump_curlwp(long n) {
	struct lwp *(*fn)(void) = rump_curlwp_fn;
	uintptr_t sum = 0;
	for (long i = 0; i < n; i++) { sum += (uintptr_t)fn(); __asm__ __volatile__("" ::: "memory"); }
	sink = sum;
}
static void tls_curlwp(long n) {
	struct lwp *(*fn)(void) = tls_curlwp_fn;
	uintptr_t sum = 0;
	for (long i = 0; i < n; i++) { sum += (uintptr_t)fn(); __asm__ __volatile__("" ::: "memory"); }
	sink = sum;
}

/* ---------------------------------------------------------------------------------------- */

/*
 * The two sides run alternately, 7 times each, and each keeps its best
 * time: on a shared machine a burst of load then hits both sides alike.
 */
static const char *only_rows;	/* argv[2]: run only rows containing it */

static int
selected(const char *name)
{
	return only_rows == NULL || strstr(name, only_rows) != NULL;
}

static void
row(const char *name, bench_fn rump, bench_fn baseline, long iterations)
{
	double r = 1e30, b = 1e30, rc = 1e30, bc = 1e30;

	if (!selected(name))
		return;

	rump(iterations / 10 + 1);	/* warm up */
	baseline(iterations / 10 + 1);
	for (int run = 0; run < 7; run++) {
		struct cost x = ns_per_op(rump, iterations);
		struct cost y = ns_per_op(baseline, iterations);
		if (x.wall < r) r = x.wall;
		if (y.wall < b) b = y.wall;
		if (x.cpu < rc) rc = x.cpu;
		if (y.cpu < bc) bc = y.cpu;
	}
	printf("| %-34s | %9.1f | %9.1f | %+6.1f%% | %9.1f | %9.1f | %+6.1f%% |\n", name, r, b, (r / b - 1.0) * 100.0,
	    rc, bc, (rc / bc - 1.0) * 100.0);
	fflush(stdout);
}

/*
 * For operations of microseconds whose time on a loaded machine depends on
 * when the scheduler runs the new thread: one operation of each side in
 * turn, each timed alone, and the quantiles of the two distributions.  A
 * burst of load hits neighbouring operations of both sides alike, and the
 * median ignores the bursts that best-of-7 runs of thousands cannot avoid.
 */
static int
compare_doubles(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static void
interleaved_row(const char *name, bench_fn rump, bench_fn baseline, long iterations)
{
	if (!selected(name))
		return;
	double *r = malloc(sizeof(double) * (size_t)iterations);
	double *b = malloc(sizeof(double) * (size_t)iterations);
	if (r == NULL || b == NULL)
		exit(1);
	rump(iterations / 10 + 1);	/* warm up */
	baseline(iterations / 10 + 1);
	for (long i = 0; i < iterations; i++) {
		double t0 = now();
		rump(1);
		double t1 = now();
		baseline(1);
		double t2 = now();
		r[i] = (t1 - t0) * 1e9;
		b[i] = (t2 - t1) * 1e9;
	}
	qsort(r, (size_t)iterations, sizeof(double), compare_doubles);
	qsort(b, (size_t)iterations, sizeof(double), compare_doubles);
	long p10 = iterations / 10, p50 = iterations / 2, p90 = iterations - iterations / 10 - 1;
	printf("| %-34s | %9.1f | %9.1f | %+6.1f%% | p10 %+.1f%%, p90 %+.1f%% (%.0f/%.0f, %.0f/%.0f) |\n", name,
	    r[p50], b[p50], (r[p50] / b[p50] - 1.0) * 100.0, (r[p10] / b[p10] - 1.0) * 100.0,
	    (r[p90] / b[p90] - 1.0) * 100.0, r[p10], b[p10], r[p90], b[p90]);
	fflush(stdout);
	free(r);
	free(b);
}

int
main(int argc, char **argv)
{
	long scale = argc > 1 ? atol(argv[1]) : 1;
	only_rows = argc > 2 ? argv[2] : NULL;
	char path[] = "/tmp/hypercall-bench-XXXXXX";
	static char block[4096];
	struct lwp *fake = (struct lwp *)0x1000;

	if (rumpuser_init(RUMPUSER_VERSION, &upcalls) != 0)
		return 1;
	rumpuser_curlwpop(RUMPUSER_LWP_SET, fake);
	plain_tls = fake;
	rumpuser_mutex_init(&rmtx, RUMPUSER_MTX_KMUTEX);
	rumpuser_cv_init(&rcv);
	pthread_cond_init(&pcv, NULL);

	bench_fd = mkstemp(path);
	memset(block, 0x42, sizeof(block));
	for (int i = 0; i < 256; i++)
		if (write(bench_fd, block, sizeof(block)) != (ssize_t)sizeof(block))
			return 1;
	unlink(path);
	pthread_t worker;
	pthread_create(&worker, NULL, pthread_io_worker, NULL);

	/* Elapsed time per operation, then the process's CPU time per
	 * operation (all threads, user and system): the second is less
	 * disturbed by other load on the machine. */
	printf("| operation (ns/op, best of 7)        | rumpuser  | C pthread | diff    | rump CPU  | C CPU     | CPU diff |\n");
	printf("|------------------------------------|-----------|-----------|---------|-----------|-----------|---------|\n");
	row("mutex enter/exit, uncontended", rump_uncontended, pthread_uncontended, 2000000 * scale);
	row("mutex enter/exit, 2 threads", rump_contended, pthread_contended, 1000000 * scale);
	row("cv signal/wait ping-pong", rump_pingpong, pthread_pingpong, 50000 * scale);
	row("thread create + join", rump_create_join, pthread_create_join, 2000 * scale);
	interleaved_row("thread create + join, median", rump_create_join, pthread_create_join, 20000 * scale);
	row("4 KiB bio round trip (page cache)", rump_bio, pthread_bio, 20000 * scale);
	row("curlwp lookup", rump_curlwp, tls_curlwp, 20000000 * scale);
	if (!selected("sysproxy call"))
		;
	else if (sysproxy_setup() == 0)
	{
		/* Against the same design in C, then against one C thread. */
		row("sysproxy call, C same design", rump_sysproxy, design_sysproxy, 10000 * scale);
		row("sysproxy call, C one thread", rump_sysproxy, plain_sysproxy, 10000 * scale);
	}
	else
		printf("sysproxy: setup failed\n");
	rumpuser_sp_fini(NULL);
	printf("\nCPU releases during the run: %ld (contended paths only)\n", (long)releases);
	return 0;
}
