/*
 * kernel.c: a fake rump kernel, in C, that runs inside a guest image against
 * the guest rumpuser implementation (Sources/RumpUserGuest) and checks the
 * rumpuser v17 contract from the kernel's side.  Booted by
 * Tests/IntegrationTests/RumpUserGuestTests.swift.
 *
 * Like a real rump kernel it has virtual CPUs (two) that a thread must hold
 * to be "in the kernel", built from the rumpuser nowrap primitives as
 * NetBSD's rump scheduler is.  Its upcall table tracks, per thread, whether
 * a CPU is held and how often it was released and retaken; every hypercall
 * goes through HC(), which checks afterwards: a CPU is held, releases match
 * retakes, the big-lock count survived, curlwp is unchanged, and NEVER calls
 * did not release while ALWAYS calls did.  The upcalls check the cv
 * interlock and its owner (NetBSD's reacquire order), that hyp_schedule
 * comes from a thread without a CPU and the lwp upcalls from one with, and
 * model the kernel's lwps (temporary ones for threads without, released
 * ones dropped at unschedule); the component suite drives them through
 * rumpuser_component_* from threads the kernel did not set up.
 *
 * Output: one "ok <suite>" line per suite, "FAIL ..." lines, and a summary
 * "rumpuser conformance: N checks, F failures".  main returns 1 on failure.
 * Expects -N rumpbox -e RUMPTEST=value -e RUMPTEST_HOSTNAME=rumpbox.
 * With -e RUMPTEST_BLK=<bytes> it also does block I/O on blk0 (-b FILE on
 * --machine pc; the host test checks the file afterwards).
 * With -e RUMPTEST_PCI_IRQ=1 (pc, -device e1000) it establishes an e1000
 * interrupt through rumpcomp_pci_irq_establish and raises it 100 times.
 * With -e RUMPTEST_MODE=exit|panic|kill it ends at once through
 * rumpuser_exit(7), rumpuser_exit(RUMPUSER_PANIC) or rumpuser_kill(SIGKILL).
 */
#include <stddef.h>
#include <stdint.h>
#include "CRumpUserGuest.h"

#define NCPU 2
#define NSEC 1000000000LL
#define MS 1000000LL

#define E_NOENT 2
#define E_NXIO 6
#define E_BADF 9
#define E_BUSY 16
#define E_EXIST 17
#define E_INVAL 22
#define E_RANGE 34
#define E_OPNOTSUPP 45
#define E_TIMEDOUT 60

struct lwp {
	int id;
	int temporary;	/* bound by hyp_schedule to a thread without an lwp */
	int released;	/* hyp_lwproc_release: dropped at hyp_unschedule */
	int alive;	/* in the kernel's lwp pool */
};

/* ---- checks ---------------------------------------------------------- */

static int checks, failures;
static const char *suite_name = "";

#define CHECK(cond, ...) do {						\
	checks++;							\
	if (!(cond)) {							\
		failures++;						\
		rumpuser_dprintf("FAIL %s line %d: ", suite_name, __LINE__); \
		rumpuser_dprintf(__VA_ARGS__);				\
		rumpuser_dprintf("\n");					\
	}								\
} while (0)

static int
streq(const char *a, const char *b)
{
	while (*a != '\0' && *a == *b) {
		a++;
		b++;
	}
	return *a == *b;
}

/* ---- virtual CPUs ------------------------------------------------------ */

struct self {
	int cpu;	/* 1 + index of the held CPU, 0 for none */
	int released;	/* hyp_backend_unschedule calls */
	int retaken;	/* hyp_backend_schedule calls */
	int biglocks;
};
static __thread struct self self;

static struct rumpuser_mtx *sched_mtx;
static struct rumpuser_cv *sched_cv;
static int cpu_busy[NCPU];
static int cpus_free = NCPU;
static int max_cpus_busy;

static void
take_cpu(void)
{
	rumpuser_mutex_enter_nowrap(sched_mtx);
	while (cpus_free == 0)
		rumpuser_cv_wait_nowrap(sched_cv, sched_mtx);
	cpus_free--;
	if (NCPU - cpus_free > max_cpus_busy)
		max_cpus_busy = NCPU - cpus_free;
	for (int i = 0; i < NCPU; i++) {
		if (!cpu_busy[i]) {
			cpu_busy[i] = 1;
			self.cpu = i + 1;
			break;
		}
	}
	rumpuser_mutex_exit(sched_mtx);
}

static void
give_cpu(void)
{
	rumpuser_mutex_enter_nowrap(sched_mtx);
	cpu_busy[self.cpu - 1] = 0;
	self.cpu = 0;
	cpus_free++;
	rumpuser_cv_signal(sched_cv);
	rumpuser_mutex_exit(sched_mtx);
}

/* Mutexes the kernel made, with their flags (for the interlock checks). */
static struct {
	struct rumpuser_mtx *mtx;
	int flags;
} registry[64];

static struct rumpuser_mtx *
new_mutex(int flags)
{
	struct rumpuser_mtx *m;
	rumpuser_mutex_init(&m, flags);
	for (int i = 0; i < 64; i++) {
		if (registry[i].mtx == NULL) {
			registry[i].mtx = m;
			registry[i].flags = flags;
			return m;
		}
	}
	CHECK(0, "mutex registry full");
	return m;
}

static void
drop_mutex(struct rumpuser_mtx *m)
{
	for (int i = 0; i < 64; i++)
		if (registry[i].mtx == m)
			registry[i].mtx = NULL;
	rumpuser_mutex_destroy(m);
}

static int
registered_flags(void *m)
{
	for (int i = 0; i < 64; i++)
		if (registry[i].mtx == m)
			return registry[i].flags;
	return -1;
}

/* ---- the upcall table -------------------------------------------------- */

static void
hyp_backend_unschedule(int dummy, int *nlocks, void *interlock)
{
	(void)dummy;
	CHECK(self.cpu != 0, "unschedule by a thread without a CPU");
	if (interlock != NULL) {
		int flags = registered_flags(interlock);
		CHECK(flags >= 0, "unschedule with an unknown interlock %p", interlock);
		if (flags >= 0 && (flags & RUMPUSER_MTX_KMUTEX)) {
			struct lwp *owner;
			rumpuser_mutex_owner(interlock, &owner);
			CHECK(owner == rumpuser_curlwp(), "cv interlock not held by the waiter at unschedule");
		}
	}
	__atomic_fetch_add(&self.released, 1, __ATOMIC_SEQ_CST);	/* watched by other threads */
	*nlocks = self.biglocks;
	self.biglocks = 0;
	if (self.cpu != 0)
		give_cpu();
}

static void
hyp_backend_schedule(int nlocks, void *interlock)
{
	CHECK(self.cpu == 0, "schedule by a thread holding a CPU");
	if (interlock != NULL) {
		int flags = registered_flags(interlock);
		CHECK(flags >= 0, "schedule with an unknown interlock %p", interlock);
		int both = RUMPUSER_MTX_SPIN | RUMPUSER_MTX_KMUTEX;
		struct lwp *owner;
		if (flags >= 0 && (flags & both) == both) {
			rumpuser_mutex_owner(interlock, &owner);
			CHECK(owner != rumpuser_curlwp(), "SPIN|KMUTEX interlock retaken before the CPU");
		} else if (flags >= 0 && (flags & RUMPUSER_MTX_KMUTEX)) {
			rumpuser_mutex_owner(interlock, &owner);
			CHECK(owner == rumpuser_curlwp(), "KMUTEX interlock not retaken before the CPU");
		} else if (flags >= 0) {
			CHECK(rumpuser_mutex_tryenter(interlock) == E_BUSY, "interlock not retaken before the CPU");
		}
	}
	self.retaken++;
	take_cpu();
	self.biglocks = nlocks;
}

/*
 * lwps the kernel makes itself (hyp_lwproc_newlwp, and the temporary ones
 * hyp_schedule binds to a thread that has none), as NetBSD's rump kernel:
 * a temporary lwp is dropped by hyp_unschedule, a released one too, and
 * switching away from a temporary lwp drops it.  Every lwp upcall needs a
 * CPU; hyp_schedule needs a thread without one, hyp_unschedule one with.
 */
#define NLWP 32
static struct lwp lwp_pool[NLWP];
static int lwps_alive, lwps_made;

static struct lwp *
make_lwp(int temporary)
{
	struct lwp *l = NULL;
	rumpuser_mutex_enter_nowrap(sched_mtx);
	for (int i = 0; i < NLWP; i++) {
		if (!lwp_pool[i].alive) {
			l = &lwp_pool[i];
			l->id = 1000 + i;
			l->temporary = temporary;
			l->released = 0;
			l->alive = 1;
			lwps_alive++;
			lwps_made++;
			break;
		}
	}
	rumpuser_mutex_exit(sched_mtx);
	CHECK(l != NULL, "kernel lwp pool exhausted");
	return l;
}

/* Unbinds the thread's lwp; a temporary or released one ceases to be. */
static void
unbind_lwp(struct lwp *l)
{
	rumpuser_curlwpop(RUMPUSER_LWP_CLEAR, l);
	if (l >= lwp_pool && l < lwp_pool + NLWP && (l->temporary || l->released)) {
		rumpuser_curlwpop(RUMPUSER_LWP_DESTROY, l);
		rumpuser_mutex_enter_nowrap(sched_mtx);
		l->alive = 0;
		lwps_alive--;
		rumpuser_mutex_exit(sched_mtx);
	}
}

static void
bind_lwp(struct lwp *l)
{
	rumpuser_curlwpop(RUMPUSER_LWP_CREATE, l);
	rumpuser_curlwpop(RUMPUSER_LWP_SET, l);
}

static void
hyp_schedule(void)
{
	CHECK(self.cpu == 0, "hyp_schedule by a thread holding a CPU");
	if (self.cpu != 0)
		return;
	take_cpu();
	if (rumpuser_curlwp() == NULL) {
		struct lwp *l = make_lwp(1);
		if (l != NULL)
			bind_lwp(l);
	}
}

static void
hyp_unschedule(void)
{
	CHECK(self.cpu != 0, "hyp_unschedule by a thread without a CPU");
	if (self.cpu == 0)
		return;
	struct lwp *l = rumpuser_curlwp();
	if (l != NULL && (l->temporary || l->released))
		unbind_lwp(l);
	give_cpu();
}

static void
hyp_lwproc_switch(struct lwp *l)
{
	CHECK(self.cpu != 0, "hyp_lwproc_switch without a CPU");
	struct lwp *old = rumpuser_curlwp();
	if (old != NULL)
		unbind_lwp(old);
	if (l != NULL)
		rumpuser_curlwpop(RUMPUSER_LWP_SET, l);
}

static void
hyp_lwproc_release(void)
{
	CHECK(self.cpu != 0, "hyp_lwproc_release without a CPU");
	struct lwp *l = rumpuser_curlwp();
	CHECK(l != NULL && !l->temporary, "hyp_lwproc_release of no lwp of the thread's own");
	if (l != NULL)
		l->released = 1;
}

static int hyp_lwproc_rfork(void *p, int f, const char *n) { (void)p; (void)f; (void)n; return 0; }

/* A new lwp of the thread's own, replacing (and dropping, if temporary)
 * the one it had. */
static int
hyp_lwproc_newlwp(pid_t p)
{
	(void)p;
	CHECK(self.cpu != 0, "hyp_lwproc_newlwp without a CPU");
	struct lwp *l = make_lwp(0);
	if (l == NULL)
		return 12;
	struct lwp *old = rumpuser_curlwp();
	if (old != NULL)
		unbind_lwp(old);
	bind_lwp(l);
	return 0;
}

static struct lwp *
hyp_lwproc_curlwp(void)
{
	CHECK(self.cpu != 0, "hyp_lwproc_curlwp without a CPU");
	return rumpuser_curlwp();
}
static int hyp_syscall(int n, void *a, long *r) { (void)n; (void)a; (void)r; return 0; }
static void hyp_lwpexit(void) {}
static void hyp_execnotify(const char *n) { (void)n; }
static pid_t hyp_getpid(void) { return 1; }

static const struct rumpuser_hyperup hyperup = {
	.hyp_schedule = hyp_schedule,
	.hyp_unschedule = hyp_unschedule,
	.hyp_backend_unschedule = hyp_backend_unschedule,
	.hyp_backend_schedule = hyp_backend_schedule,
	.hyp_lwproc_switch = hyp_lwproc_switch,
	.hyp_lwproc_release = hyp_lwproc_release,
	.hyp_lwproc_rfork = hyp_lwproc_rfork,
	.hyp_lwproc_newlwp = hyp_lwproc_newlwp,
	.hyp_lwproc_curlwp = hyp_lwproc_curlwp,
	.hyp_syscall = hyp_syscall,
	.hyp_lwpexit = hyp_lwpexit,
	.hyp_execnotify = hyp_execnotify,
	.hyp_getpid = hyp_getpid,
};

/* ---- the hypercall wrapper --------------------------------------------- */

enum { NEVER, ALWAYS, MAYBE };

static void
hc_check(int kind, int released0, int retaken0, struct lwp *lwp0, const char *what, int line)
{
	int released = self.released - released0, retaken = self.retaken - retaken0;
	checks++;
	const char *problem = NULL;
	if (self.cpu == 0)
		problem = "returned without a CPU";
	else if (released != retaken)
		problem = "releases and retakes differ";
	else if (self.biglocks != 3)
		problem = "big-lock count lost";
	else if (rumpuser_curlwp() != lwp0)
		problem = "curlwp changed";
	else if (kind == NEVER && released != 0)
		problem = "released the CPU (must never)";
	else if (kind == ALWAYS && released == 0)
		problem = "did not release the CPU (must)";
	if (problem != NULL) {
		failures++;
		rumpuser_dprintf("FAIL %s line %d: %s: %s (released %d, retaken %d)\n",
		    suite_name, line, what, problem, released, retaken);
	}
}

#define HC(kind, call) do {						\
	int released0_ = self.released, retaken0_ = self.retaken;	\
	struct lwp *lwp0_ = rumpuser_curlwp();				\
	self.biglocks = 3;						\
	call;								\
	hc_check(kind, released0_, retaken0_, lwp0_, #call, __LINE__);	\
} while (0)

static int64_t
now_ns(void)
{
	int64_t sec;
	long nsec;
	rumpuser_clock_gettime(RUMPUSER_CLOCK_ABSMONO, &sec, &nsec);
	return sec * NSEC + nsec;
}

static void
sleep_ns(int64_t ns)
{
	int rv;
	HC(ALWAYS, rv = rumpuser_clock_sleep(RUMPUSER_CLOCK_RELWALL, ns / NSEC, (long)(ns % NSEC)));
	CHECK(rv == 0, "clock_sleep returned %d", rv);
}

/* ---- kernel threads ---------------------------------------------------- */

struct kthread {
	void (*body)(void *);
	void *arg;
	struct lwp lwp;
	int exit_early;
};

static int next_lwp_id = 100;

/* A kernel thread starts without a CPU and without an lwp, like rump's. */
static void *
kthread_main(void *arg)
{
	struct kthread *k = arg;
	rumpuser_curlwpop(RUMPUSER_LWP_CREATE, &k->lwp);
	rumpuser_curlwpop(RUMPUSER_LWP_SET, &k->lwp);
	CHECK(rumpuser_curlwp() == &k->lwp, "curlwp after SET in a new thread");
	take_cpu();
	k->body(k->arg);
	give_cpu();
	rumpuser_curlwpop(RUMPUSER_LWP_CLEAR, &k->lwp);
	CHECK(rumpuser_curlwp() == NULL, "curlwp after CLEAR");
	rumpuser_curlwpop(RUMPUSER_LWP_DESTROY, &k->lwp);
	if (k->exit_early) {
		rumpuser_free(k, sizeof(*k));
		rumpuser_thread_exit();
	}
	rumpuser_free(k, sizeof(*k));
	return NULL;
}

static void *
spawn(void (*body)(void *), void *arg, const char *name, int joinable, int exit_early)
{
	struct kthread *k;
	void *cookie = NULL;
	int rv;
	HC(NEVER, rv = rumpuser_malloc(sizeof(*k), 0, (void **)&k));
	CHECK(rv == 0, "malloc of a kthread: %d", rv);
	k->body = body;
	k->arg = arg;
	k->lwp.id = next_lwp_id++;
	k->lwp.temporary = k->lwp.released = k->lwp.alive = 0;
	k->exit_early = exit_early;
	HC(NEVER, rv = rumpuser_thread_create(kthread_main, k, name, joinable, -1, -1, joinable ? &cookie : NULL));
	CHECK(rv == 0, "thread_create: %d", rv);
	CHECK(!joinable || cookie != NULL, "no join cookie");
	return cookie;
}

static void
join(void *cookie)
{
	int rv;
	HC(ALWAYS, rv = rumpuser_thread_join(cookie));
	CHECK(rv == 0, "thread_join: %d", rv);
}

/* ---- suites ------------------------------------------------------------ */

static void
suite_memory(void)
{
	int rv;
	void *p;
	static const int alignments[] = { 0, 8, 16, 64, 512, 4096, 65536 };
	for (unsigned i = 0; i < sizeof(alignments) / sizeof(alignments[0]); i++) {
		int a = alignments[i];
		HC(NEVER, rv = rumpuser_malloc(1000, a, &p));
		CHECK(rv == 0 && p != NULL, "malloc(1000, %d): %d", a, rv);
		uintptr_t need = a == 0 ? sizeof(void *) : (uintptr_t)a;
		CHECK(((uintptr_t)p & (need - 1)) == 0, "malloc(1000, %d) gave %p", a, p);
		for (int j = 0; j < 1000; j++)
			((unsigned char *)p)[j] = (unsigned char)j;
		HC(NEVER, rumpuser_free(p, 1000));
	}
	HC(NEVER, rv = rumpuser_malloc(16, 24, &p));
	CHECK(rv == E_INVAL, "malloc with alignment 24: %d", rv);

	/* Many live blocks at once: patterns must survive (no overlap). */
	static void *blocks[200];
	for (int i = 0; i < 200; i++) {
		size_t size = 16 + (size_t)(i * 37) % 3000;
		HC(NEVER, rv = rumpuser_malloc(size, 0, &blocks[i]));
		CHECK(rv == 0, "malloc #%d: %d", i, rv);
		for (size_t j = 0; j < size; j++)
			((unsigned char *)blocks[i])[j] = (unsigned char)(i + j);
	}
	int bad = 0;
	for (int i = 0; i < 200; i++) {
		size_t size = 16 + (size_t)(i * 37) % 3000;
		for (size_t j = 0; j < size; j++)
			if (((unsigned char *)blocks[i])[j] != (unsigned char)(i + j))
				bad++;
		HC(NEVER, rumpuser_free(blocks[i], size));
	}
	CHECK(bad == 0, "%d bytes of 200 live blocks overwritten", bad);

	static const int bits[] = { 0, 12, 16, 21 };
	for (unsigned i = 0; i < sizeof(bits) / sizeof(bits[0]); i++) {
		size_t size = 10000;
		HC(NEVER, rv = rumpuser_anonmmap(NULL, size, bits[i], 0, &p));
		CHECK(rv == 0 && p != NULL, "anonmmap alignbit %d: %d", bits[i], rv);
		if (rv != 0)
			continue;
		uintptr_t align = bits[i] < 12 ? 4096 : ((uintptr_t)1 << bits[i]);
		CHECK(((uintptr_t)p & (align - 1)) == 0, "anonmmap alignbit %d gave %p", bits[i], p);
		int nonzero = 0;
		for (size_t j = 0; j < size; j++) {
			if (((unsigned char *)p)[j] != 0)
				nonzero++;
			((unsigned char *)p)[j] = 0xA5;
		}
		CHECK(nonzero == 0, "anonmmap memory not zeroed (%d bytes)", nonzero);
		HC(NEVER, rumpuser_unmap(p, size));
	}
	HC(NEVER, rv = rumpuser_anonmmap(NULL, 4096, 12, 1, &p));
	CHECK(rv == E_OPNOTSUPP, "executable anonmmap: %d (want EOPNOTSUPP 45)", rv);
	HC(NEVER, rv = rumpuser_anonmmap(NULL, 0, 12, 0, &p));
	CHECK(rv == E_INVAL, "anonmmap of 0 bytes: %d", rv);
}

static void
suite_clocks(void)
{
	int rv;
	int64_t sec, sec2;
	long nsec, nsec2;
	HC(NEVER, rv = rumpuser_clock_gettime(RUMPUSER_CLOCK_ABSMONO, &sec, &nsec));
	CHECK(rv == 0 && nsec >= 0 && nsec < NSEC, "gettime ABSMONO: %d %ld", rv, nsec);
	HC(NEVER, rv = rumpuser_clock_gettime(RUMPUSER_CLOCK_ABSMONO, &sec2, &nsec2));
	CHECK(sec2 * NSEC + nsec2 >= sec * NSEC + nsec, "ABSMONO went backwards");
	HC(NEVER, rv = rumpuser_clock_gettime(RUMPUSER_CLOCK_RELWALL, &sec, &nsec));
	CHECK(rv == 0 && sec > 1600000000LL, "gettime RELWALL: %d, %ld s", rv, (long)sec);
	rumpuser_dprintf("clocks: wall %ld s\n", (long)sec);
	HC(NEVER, rv = rumpuser_clock_gettime(7, &sec, &nsec));
	CHECK(rv == E_INVAL, "gettime of clock 7: %d", rv);

	int64_t t0 = now_ns();
	HC(ALWAYS, rv = rumpuser_clock_sleep(RUMPUSER_CLOCK_RELWALL, 0, 50 * MS));
	int64_t t1 = now_ns();
	CHECK(rv == 0 && t1 - t0 >= 50 * MS, "RELWALL sleep of 50 ms took %ld ns", (long)(t1 - t0));
	int64_t until = now_ns() + 30 * MS;
	HC(ALWAYS, rv = rumpuser_clock_sleep(RUMPUSER_CLOCK_ABSMONO, until / NSEC, (long)(until % NSEC)));
	CHECK(rv == 0 && now_ns() >= until, "ABSMONO sleep ended early");
	HC(MAYBE, rv = rumpuser_clock_sleep(RUMPUSER_CLOCK_RELWALL, 0, NSEC));
	CHECK(rv == E_INVAL, "sleep with 10^9 ns: %d", rv);
}

static void
suite_params(void)
{
	char buf[64];
	int rv;
	HC(NEVER, rv = rumpuser_getparam(RUMPUSER_PARAM_NCPU, buf, sizeof(buf)));
	CHECK(rv == 0 && streq(buf, "1"), "NCPU: %d '%s'", rv, rv == 0 ? buf : "");
	HC(NEVER, rv = rumpuser_getparam(RUMPUSER_PARAM_HOSTNAME, buf, sizeof(buf)));
	char want[64];
	int rv2 = rumpuser_getparam("RUMPTEST_HOSTNAME", want, sizeof(want));
	CHECK(rv == 0 && rv2 == 0 && streq(buf, want), "HOSTNAME: %d '%s', expected '%s'", rv, buf, rv2 == 0 ? want : "?");
	rumpuser_dprintf("getparam: hostname %s\n", buf);
	HC(NEVER, rv = rumpuser_getparam(RUMPUSER_PARAM_HOSTNAME, buf, 4));
	CHECK(rv == 0 && buf[3] == '\0' && buf[0] == want[0] && buf[2] == want[2], "HOSTNAME truncated to 4: %d", rv);
	HC(NEVER, rv = rumpuser_getparam("RUMPTEST", buf, sizeof(buf)));
	CHECK(rv == 0 && streq(buf, "value"), "RUMPTEST: %d '%s'", rv, rv == 0 ? buf : "");
	HC(NEVER, rv = rumpuser_getparam("RUMPTEST", buf, 5));
	CHECK(rv == E_RANGE, "RUMPTEST in 5 bytes: %d (want ERANGE 34)", rv);
	HC(NEVER, rv = rumpuser_getparam("RUMPTEST_MISSING", buf, sizeof(buf)));
	CHECK(rv == E_NOENT, "missing parameter: %d (want ENOENT 2)", rv);
	rumpuser_dprintf("getparam: missing -> %d\n", rv);
	HC(NEVER, rv = rumpuser_getparam("_RUMPUSER_NO_SUCH", buf, sizeof(buf)));
	CHECK(rv == E_INVAL, "unknown _RUMPUSER name: %d (want EINVAL 22)", rv);
}

/* bio is asynchronous: biodone arrives on another thread, holding a CPU. */
static struct rumpuser_mtx *bio_mtx;
static struct rumpuser_cv *bio_cv;

struct biowait {
	int calls;
	size_t done;
	int error;
	struct self *submitter;
	int cpu_held;
	int same_thread;
	int with_own_lwp;
};

static void
biowait_done(void *arg, size_t done, int error)
{
	struct biowait *w = arg;
	int cpu_held = self.cpu != 0, same_thread = w->submitter == &self;
	struct lwp *l = rumpuser_curlwp();
	int with_own_lwp = l != NULL && !l->temporary;
	rumpuser_mutex_enter(bio_mtx);
	w->calls++;
	w->done = done;
	w->error = error;
	w->cpu_held = cpu_held;
	w->same_thread = same_thread;
	w->with_own_lwp = with_own_lwp;
	rumpuser_cv_broadcast(bio_cv);
	rumpuser_mutex_exit(bio_mtx);
}

static void
bio_and_wait(int fd, int op, void *data, size_t len, int64_t off, struct biowait *w)
{
	w->calls = 0;
	w->submitter = &self;
	HC(NEVER, rumpuser_bio(fd, op, data, len, off, biowait_done, w));
	HC(MAYBE, rumpuser_mutex_enter(bio_mtx));
	while (w->calls == 0)
		HC(ALWAYS, rumpuser_cv_wait(bio_cv, bio_mtx));
	HC(NEVER, rumpuser_mutex_exit(bio_mtx));
	CHECK(w->calls == 1 && w->cpu_held && !w->same_thread && w->with_own_lwp,
	    "biodone: %d calls, with a CPU %d, on the submitting thread %d, on the worker's own lwp %d",
	    w->calls, w->cpu_held, w->same_thread, w->with_own_lwp);
}

static void
suite_misc(void)
{
	int rv;
	HC(NEVER, rumpuser_seterrno(5));
	CHECK(rumpuser_guest_errno() == 5, "seterrno(5) left %d", rumpuser_guest_errno());
	HC(NEVER, rv = rumpuser_kill(RUMPUSER_PID_SELF, 0));
	CHECK(rv == 0, "kill 0: %d", rv);
	HC(NEVER, rv = rumpuser_kill(RUMPUSER_PID_SELF, 20));
	CHECK(rv == 0, "kill SIGCHLD: %d", rv);
	HC(NEVER, rv = rumpuser_kill(RUMPUSER_PID_SELF, 99));
	CHECK(rv == E_INVAL, "kill 99: %d", rv);

	unsigned char a[64], b[64];
	size_t got;
	HC(NEVER, rv = rumpuser_getrandom(a, sizeof(a), 0, &got));
	CHECK(rv == 0 && got == sizeof(a), "getrandom: %d, %zu", rv, got);
	HC(NEVER, rv = rumpuser_getrandom(b, sizeof(b), RUMPUSER_RANDOM_HARD | RUMPUSER_RANDOM_NOWAIT, &got));
	CHECK(rv == 0 && got == sizeof(b), "getrandom HARD|NOWAIT: %d, %zu", rv, got);
	int same = 0, zero = 0;
	for (int i = 0; i < 64; i++) {
		same += a[i] == b[i];
		zero += a[i] == 0;
	}
	CHECK(same < 16 && zero < 16, "random bytes look fixed (%d equal, %d zero)", same, zero);
	HC(NEVER, rv = rumpuser_getrandom(a, 8, 0x80, &got));
	CHECK(rv == E_INVAL, "getrandom flag 0x80: %d", rv);

	int fd = -1;
	HC(ALWAYS, rv = rumpuser_open("blk7", RUMPUSER_OPEN_RDWR, &fd));
	CHECK(rv == E_NXIO, "open: %d (want ENXIO 6)", rv);
	uint64_t size;
	int type;
	HC(ALWAYS, rv = rumpuser_getfileinfo("blk7", &size, &type));
	CHECK(rv == E_NXIO, "getfileinfo: %d", rv);
	HC(MAYBE, rv = rumpuser_close(3));
	CHECK(rv == E_BADF, "close(3): %d", rv);
	char block[512];
	struct biowait w;
	bio_and_wait(3, RUMPUSER_BIO_READ, block, sizeof(block), 0, &w);
	CHECK(w.error == E_BADF, "bio on fd 3: error %d (want EBADF 9)", w.error);
	bio_and_wait(3, RUMPUSER_BIO_READ | RUMPUSER_BIO_WRITE, block, sizeof(block), 0, &w);
	CHECK(w.error == E_INVAL, "bio READ|WRITE: error %d (want EINVAL 22)", w.error);
	HC(NEVER, rv = rumpuser_sp_init("unix:///x", "NetBSD", "9", "amd64"));
	CHECK(rv == E_OPNOTSUPP, "sp_init: %d", rv);
	HC(NEVER, rv = rumpuser_daemonize_begin());
	CHECK(rv == 0, "daemonize_begin: %d", rv);
	HC(NEVER, rv = rumpuser_daemonize_done(0));
	CHECK(rv == 0, "daemonize_done: %d", rv);

	HC(NEVER, rumpuser_dprintf("dprintf: %d %u %x %X %5s|%-5s| %c %ld %lld %zu %p %% %03d\n",
	    -42, 42u, 0xbeefu, 0xbeefu, "ab", "cd", 'z', -1234567890123L, 9876543210LL, (size_t)77, (void *)0x1000, 7));
	const char *text = "putchar: ok\n";
	for (const char *c = text; *c; c++)
		HC(NEVER, rumpuser_putchar(*c));
}

/* Threads: values, curlwp per thread, thread_exit, detached, storms. */

static int results[8];
static struct rumpuser_mtx *count_mtx;
static struct rumpuser_cv *count_cv;
static int counter;

static void
square_body(void *arg)
{
	int i = (int)(intptr_t)arg;
	struct lwp *mine = rumpuser_curlwp();
	for (int round = 0; round < 5; round++) {
		sleep_ns(MS);
		CHECK(rumpuser_curlwp() == mine, "curlwp of thread %d changed across a sleep", i);
	}
	CHECK(mine != NULL && mine->id >= 100, "thread %d has no lwp", i);
	results[i] = i * i;
}

static void
count_body(void *arg)
{
	(void)arg;
	HC(MAYBE, rumpuser_mutex_enter(count_mtx));
	counter++;
	HC(NEVER, rumpuser_cv_broadcast(count_cv));
	HC(NEVER, rumpuser_mutex_exit(count_mtx));
}

static void
suite_threads(void)
{
	void *cookies[8];
	static const char *names[8] = { "w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7" };
	for (int i = 0; i < 8; i++)
		cookies[i] = spawn(square_body, (void *)(intptr_t)i, names[i], 1, 0);
	for (int i = 7; i >= 0; i--)
		join(cookies[i]);
	int sum = 0;
	for (int i = 0; i < 8; i++)
		sum += results[i] == i * i;
	CHECK(sum == 8, "joined threads' results: %d of 8", sum);

	count_mtx = new_mutex(RUMPUSER_MTX_KMUTEX);
	rumpuser_cv_init(&count_cv);
	counter = 0;
	for (int i = 0; i < 10; i++)
		spawn(count_body, NULL, "detached", 0, 0);
	HC(MAYBE, rumpuser_mutex_enter(count_mtx));
	while (counter < 10)
		HC(ALWAYS, rumpuser_cv_wait(count_cv, count_mtx));
	HC(NEVER, rumpuser_mutex_exit(count_mtx));
	CHECK(counter == 10, "detached threads: %d of 10", counter);

	/* A thread that ends through rumpuser_thread_exit. */
	counter = 0;
	join(spawn(count_body, NULL, "exiting", 1, 1));
	CHECK(counter == 1, "thread_exit thread ran %d times", counter);

	/* Create/join storm. */
	counter = 0;
	for (int wave = 0; wave < 5; wave++) {
		void *c[20];
		for (int i = 0; i < 20; i++)
			c[i] = spawn(count_body, NULL, "storm", 1, 0);
		for (int i = 0; i < 20; i++)
			join(c[i]);
	}
	CHECK(counter == 100, "storm: %d of 100 threads counted", counter);
	rumpuser_cv_destroy(count_cv);
	drop_mutex(count_mtx);
}

/*
 * Components (rumpuser_component_*): the host half of a driver runs on
 * threads the kernel did not create.  Such a thread starts with no CPU and
 * no lwp; it gets an lwp of its own (component_kthread), enters the kernel
 * with component_schedule(NULL), calls into it (a KMUTEX that records the
 * thread's lwp as owner, a sleeping hypercall checked by HC), leaves with
 * component_unschedule, and in between gives the CPU up and takes it back
 * with the big-lock count in the cookie.  The upcalls above check that
 * hyp_schedule and hyp_backend_schedule come from threads without a CPU,
 * the others from threads holding one, and model NetBSD's lwps.
 */

#define COMPONENT_THREADS 2
#define COMPONENT_ROUNDS 40

static struct rumpuser_mtx *comp_mtx;
static long comp_counter;
static struct lwp comp_other[COMPONENT_THREADS];

struct comp_result {
	int index;
	int entered;		/* rounds that found CPU, lwp and big locks right */
	int cookies_ok;		/* unschedule cookies that carried the count */
	int own_lwp_ok;		/* checks of the thread's own lwp that held */
	int intr_ok;		/* interrupt-context checks that held */
	int released_ok;	/* kthread_release dropped the lwp */
};
static struct comp_result comp_results[COMPONENT_THREADS];

static void *
component_main(void *arg)
{
	struct comp_result *r = arg;
	CHECK(self.cpu == 0 && rumpuser_curlwp() == NULL, "a component thread starts with a CPU or an lwp");

	rumpuser_component_kthread();
	struct lwp *own = rumpuser_curlwp();
	CHECK(self.cpu == 0, "component_kthread returned holding a CPU");
	CHECK(own != NULL && !own->temporary && own->alive, "component_kthread gave the thread no lwp of its own");
	if (own == NULL)
		return NULL;
	r->own_lwp_ok++;

	for (int round = 0; round < COMPONENT_ROUNDS; round++) {
		rumpuser_component_schedule(NULL);
		if (self.cpu != 0 && self.biglocks == 0 && rumpuser_curlwp() == own)
			r->entered++;
		/* In the kernel: a KMUTEX owned by the thread's lwp, and now and
		 * then a hypercall that sleeps (HC checks the contract). */
		HC(MAYBE, rumpuser_mutex_enter(comp_mtx));
		struct lwp *owner = NULL;
		rumpuser_mutex_owner(comp_mtx, &owner);
		CHECK(owner == own, "component thread %d: KMUTEX owner %p, not its lwp %p", r->index, (void *)owner, (void *)own);
		comp_counter++;
		HC(NEVER, rumpuser_mutex_exit(comp_mtx));
		if (round % 8 == 0)
			sleep_ns(MS);

		/* Blocking in the host in the middle of kernel work: the CPU goes,
		 * the big-lock count travels in the cookie. */
		self.biglocks = 2;
		void *cookie = rumpuser_component_unschedule();
		CHECK(self.cpu == 0, "component_unschedule kept the CPU");
		if ((intptr_t)cookie == 2 && self.cpu == 0)
			r->cookies_ok++;
		rumpuser_component_schedule(cookie);
		CHECK(self.cpu != 0 && self.biglocks == 2, "component_schedule(cookie): CPU %d, big locks %d", self.cpu, self.biglocks);

		self.biglocks = 0;
		(void)rumpuser_component_unschedule();
		CHECK(self.cpu == 0, "component_unschedule kept the CPU");
	}

	/* Outside the kernel: curlwp and switchlwp take a CPU for the moment. */
	struct lwp *seen = rumpuser_component_curlwp();
	if (seen == own && self.cpu == 0)
		r->own_lwp_ok++;
	struct lwp *other = &comp_other[r->index];
	rumpuser_component_switchlwp(other);
	CHECK(rumpuser_curlwp() == other && self.cpu == 0, "component_switchlwp: curlwp %p, not %p", (void *)rumpuser_curlwp(), (void *)other);
	rumpuser_component_switchlwp(own);
	if (rumpuser_curlwp() == own && own->alive && self.cpu == 0)
		r->own_lwp_ok++;

	/* Interrupt context on a thread with its own lwp keeps that lwp. */
	rumpuser_component_schedule_intr();
	if (self.cpu != 0 && rumpuser_curlwp() == own)
		r->intr_ok++;
	rumpuser_component_unschedule_intr();
	if (self.cpu == 0 && rumpuser_curlwp() == own)
		r->intr_ok++;

	rumpuser_component_kthread_release();
	if (rumpuser_curlwp() == NULL && !own->alive && self.cpu == 0)
		r->released_ok++;

	/* Interrupt context on a bare thread: a temporary lwp, dropped after. */
	rumpuser_component_schedule_intr();
	struct lwp *temporary = rumpuser_curlwp();
	if (self.cpu != 0 && temporary != NULL && temporary->temporary)
		r->intr_ok++;
	rumpuser_component_unschedule_intr();
	if (self.cpu == 0 && rumpuser_curlwp() == NULL && temporary != NULL && !temporary->alive)
		r->intr_ok++;
	return NULL;
}

static void
suite_component(void)
{
	int rv;
	/* From kernel context: unschedule gives the CPU up with the big-lock
	 * count (HC sets 3) in the cookie, schedule restores both. */
	void *cookie = NULL;
	HC(ALWAYS, (cookie = rumpuser_component_unschedule(), rumpuser_component_schedule(cookie)));
	CHECK((intptr_t)cookie == 3, "component_unschedule cookie %p, not the 3 big locks", cookie);

	HC(NEVER, rv = rumpuser_component_errtrans(0));
	CHECK(rv == 0, "errtrans(0) = %d", rv);
	HC(NEVER, rv = rumpuser_component_errtrans(E_NOENT));
	CHECK(rv == E_NOENT, "errtrans(ENOENT) = %d", rv);
	HC(NEVER, rv = rumpuser_component_errtrans(E_TIMEDOUT));
	CHECK(rv == E_TIMEDOUT, "errtrans(ETIMEDOUT) = %d", rv);
	HC(NEVER, rv = rumpuser_component_errtrans(98));
	CHECK(rv == 98, "errtrans(98) = %d", rv);
	HC(NEVER, rv = rumpuser_component_errtrans(1000));
	CHECK(rv == E_INVAL, "errtrans(1000) = %d (want EINVAL)", rv);
	HC(NEVER, rv = rumpuser_component_errtrans(-1));
	CHECK(rv == E_INVAL, "errtrans(-1) = %d (want EINVAL)", rv);

	/* Component threads: made with rumpuser_thread_create but without the
	 * kernel's kthread setup, so they start bare, as a platform thread. */
	comp_mtx = new_mutex(RUMPUSER_MTX_KMUTEX);
	comp_counter = 0;
	int alive0 = lwps_alive, made0 = lwps_made;
	void *cookies[COMPONENT_THREADS];
	for (int i = 0; i < COMPONENT_THREADS; i++) {
		comp_results[i] = (struct comp_result){ .index = i };
		comp_other[i] = (struct lwp){ .id = 500 + i };
		HC(NEVER, rv = rumpuser_thread_create(component_main, &comp_results[i], "component", 1, -1, -1, &cookies[i]));
		CHECK(rv == 0, "thread_create of a component thread: %d", rv);
	}
	/* The main thread works in the kernel meanwhile. */
	for (int i = 0; i < 20; i++) {
		HC(MAYBE, rumpuser_mutex_enter(comp_mtx));
		comp_counter++;
		HC(NEVER, rumpuser_mutex_exit(comp_mtx));
		sleep_ns(MS);
	}
	for (int i = 0; i < COMPONENT_THREADS; i++)
		join(cookies[i]);
	for (int i = 0; i < COMPONENT_THREADS; i++) {
		struct comp_result *r = &comp_results[i];
		CHECK(r->entered == COMPONENT_ROUNDS, "thread %d: component_schedule(NULL) right in %d of %d rounds", i, r->entered, COMPONENT_ROUNDS);
		CHECK(r->cookies_ok == COMPONENT_ROUNDS, "thread %d: %d of %d cookies carried the big-lock count", i, r->cookies_ok, COMPONENT_ROUNDS);
		CHECK(r->own_lwp_ok == 3, "thread %d: %d of 3 own-lwp checks (kthread, curlwp, switchlwp back)", i, r->own_lwp_ok);
		CHECK(r->intr_ok == 4, "thread %d: %d of 4 schedule_intr checks", i, r->intr_ok);
		CHECK(r->released_ok == 1, "thread %d: kthread_release did not drop the lwp", i);
	}
	long want = 20 + COMPONENT_THREADS * COMPONENT_ROUNDS;
	CHECK(comp_counter == want, "kernel counter %ld, want %ld", comp_counter, want);
	/* Each thread: its own lwp and one temporary (plus the temporary that
	 * component_kthread's hyp_schedule binds before newlwp replaces it). */
	CHECK(lwps_made - made0 == 3 * COMPONENT_THREADS, "kernel made %d lwps for %d component threads, want %d",
	    lwps_made - made0, COMPONENT_THREADS, 3 * COMPONENT_THREADS);
	CHECK(lwps_alive == alive0, "%d kernel lwps left behind by component threads", lwps_alive - alive0);
	drop_mutex(comp_mtx);
	rumpuser_dprintf("component: %d threads x %d rounds, counter %ld, %d kernel lwps made and dropped\n",
	    COMPONENT_THREADS, COMPONENT_ROUNDS, comp_counter, lwps_made - made0);
}

/* Mutexes. */

static struct rumpuser_mtx *test_mtx;
static volatile int holding;

/*
 * A thread about to make a contended call, watched by the thread that holds
 * the lock. Holders used to let go after a fixed 30 ms: on several CPUs a
 * waiter whose vCPU the host stalled that long found the lock free (a
 * sleeping enter then "did not release the CPU", a SPIN enter "did not
 * wait", a tryenter expecting EBUSY got in), and a writer given 5 ms to
 * queue up had not always run yet. Now the waiter arms its watch just
 * before the call; the holder keeps the lock until the waiter has released
 * its CPU inside a call that must block, or for 30 ms after the arming for
 * one that spins; 30 s at most, so a call that never blocks still fails.
 */
struct watch {
	int *volatile count;	/* the waiter's self.released */
	volatile int before;
	volatile int blocks;
	volatile int armed;
};
static struct watch main_watch, writer_watch;

static void
arm(struct watch *w, int blocks)
{
	w->before = __atomic_load_n(&self.released, __ATOMIC_SEQ_CST);
	w->count = &self.released;
	w->blocks = blocks;
	__atomic_store_n(&w->armed, 1, __ATOMIC_SEQ_CST);
}

/* Returns once w's thread is in its call (see above), and disarms w. */
static void
wait_watch(struct watch *w)
{
	int64_t deadline = now_ns() + 30 * NSEC;
	while (!__atomic_load_n(&w->armed, __ATOMIC_SEQ_CST) && now_ns() < deadline)
		sleep_ns(MS);
	if (__atomic_load_n(&w->armed, __ATOMIC_SEQ_CST) && w->blocks) {
		while (__atomic_load_n(w->count, __ATOMIC_SEQ_CST) == w->before && now_ns() < deadline)
			sleep_ns(MS);
	} else {
		sleep_ns(30 * MS);
	}
	__atomic_store_n(&w->armed, 0, __ATOMIC_SEQ_CST);
}

static void
hold_body(void *arg)
{
	int nowrap = (int)(intptr_t)arg;
	if (nowrap)
		HC(NEVER, rumpuser_mutex_enter_nowrap(test_mtx));
	else
		HC(MAYBE, rumpuser_mutex_enter(test_mtx));
	holding = 1;
	wait_watch(&main_watch);
	holding = 0;
	HC(NEVER, rumpuser_mutex_exit(test_mtx));
}

static void
wait_for_holding(void)
{
	while (!holding)
		sleep_ns(MS);
}

static void
suite_mutex(void)
{
	int rv;
	struct lwp *owner;
	struct rumpuser_mtx *k = new_mutex(RUMPUSER_MTX_KMUTEX);
	HC(NEVER, rumpuser_mutex_enter(k));
	HC(NEVER, rumpuser_mutex_owner(k, &owner));
	CHECK(owner == rumpuser_curlwp() && owner != NULL, "KMUTEX owner after enter");
	HC(NEVER, rv = rumpuser_mutex_tryenter(k));
	CHECK(rv == E_BUSY, "tryenter of a held mutex: %d (want EBUSY 16)", rv);
	HC(NEVER, rumpuser_mutex_exit(k));
	HC(NEVER, rumpuser_mutex_owner(k, &owner));
	CHECK(owner == NULL, "KMUTEX owner after exit");
	HC(NEVER, rv = rumpuser_mutex_tryenter(k));
	CHECK(rv == 0, "tryenter of a free mutex: %d", rv);
	HC(NEVER, rumpuser_mutex_exit(k));
	CHECK(rumpuser_mutex_spin_p(k) == 0, "spin_p of a KMUTEX");
	drop_mutex(k);

	struct rumpuser_mtx *plain = new_mutex(0);
	HC(NEVER, rumpuser_mutex_enter(plain));
	HC(NEVER, rumpuser_mutex_owner(plain, &owner));
	CHECK(owner == NULL, "owner of a non-KMUTEX is not tracked");
	HC(NEVER, rumpuser_mutex_exit(plain));
	drop_mutex(plain);

	/* Contended sleeping mutex: enter releases the CPU. */
	test_mtx = new_mutex(RUMPUSER_MTX_KMUTEX);
	void *c = spawn(hold_body, (void *)0, "holder", 1, 0);
	wait_for_holding();
	HC(NEVER, rv = rumpuser_mutex_tryenter(test_mtx));
	CHECK(rv == E_BUSY, "tryenter of another thread's mutex: %d", rv);
	HC(NEVER, rumpuser_mutex_owner(test_mtx, &owner));
	CHECK(owner != NULL && owner != rumpuser_curlwp(), "owner is the holder's lwp");
	arm(&main_watch, 1);
	HC(ALWAYS, rumpuser_mutex_enter(test_mtx));
	CHECK(!holding, "entered while the holder still held it");
	HC(NEVER, rumpuser_mutex_exit(test_mtx));
	join(c);
	drop_mutex(test_mtx);

	/* Contended SPIN mutex and enter_nowrap: wait holding the CPU. */
	static const int kinds[2] = { RUMPUSER_MTX_SPIN, RUMPUSER_MTX_SPIN | RUMPUSER_MTX_KMUTEX };
	for (int i = 0; i < 2; i++) {
		test_mtx = new_mutex(kinds[i]);
		CHECK(rumpuser_mutex_spin_p(test_mtx) == 1, "spin_p of a SPIN mutex");
		c = spawn(hold_body, (void *)1, "spinholder", 1, 0);
		wait_for_holding();
		int64_t t0 = now_ns();
		arm(&main_watch, 0);
		HC(NEVER, rumpuser_mutex_enter(test_mtx));
		CHECK(!holding && now_ns() - t0 >= 5 * MS, "SPIN enter did not wait for the holder");
		HC(NEVER, rumpuser_mutex_exit(test_mtx));
		join(c);
		drop_mutex(test_mtx);
	}
	test_mtx = new_mutex(RUMPUSER_MTX_KMUTEX);
	c = spawn(hold_body, (void *)0, "holder", 1, 0);
	wait_for_holding();
	arm(&main_watch, 0);
	HC(NEVER, rumpuser_mutex_enter_nowrap(test_mtx));
	CHECK(!holding, "enter_nowrap did not wait for the holder");
	HC(NEVER, rumpuser_mutex_owner(test_mtx, &owner));
	CHECK(owner == rumpuser_curlwp(), "owner after enter_nowrap");
	HC(NEVER, rumpuser_mutex_exit(test_mtx));
	join(c);
	drop_mutex(test_mtx);
	/* The SPIN waits above held one CPU while the holder ran on the other. */
	CHECK(max_cpus_busy == NCPU, "both virtual CPUs were in use at once (%d)", max_cpus_busy);
}

/* Reader/writer locks. */

static struct rumpuser_rw *test_rw;

static void
read_hold_body(void *arg)
{
	(void)arg;
	HC(MAYBE, rumpuser_rw_enter(RUMPUSER_RW_READER, test_rw));
	holding = 1;
	wait_watch(&main_watch);
	holding = 0;
	HC(NEVER, rumpuser_rw_exit(test_rw));
}

static volatile int writer_in;
static void
write_body(void *arg)
{
	(void)arg;
	arm(&writer_watch, 1);
	HC(ALWAYS, rumpuser_rw_enter(RUMPUSER_RW_WRITER, test_rw));
	writer_in = 1;
	int held;
	rumpuser_rw_held(RUMPUSER_RW_WRITER, test_rw, &held);
	CHECK(held == 1, "held(WRITER) by the writer thread");
	sleep_ns(5 * MS);
	writer_in = 0;
	HC(NEVER, rumpuser_rw_exit(test_rw));
}

static void
suite_rwlock(void)
{
	int rv, held;
	rumpuser_rw_init(&test_rw);
	HC(NEVER, rumpuser_rw_enter(RUMPUSER_RW_READER, test_rw));
	HC(NEVER, rv = rumpuser_rw_tryenter(RUMPUSER_RW_READER, test_rw));
	CHECK(rv == 0, "second reader: %d", rv);
	HC(NEVER, rumpuser_rw_held(RUMPUSER_RW_READER, test_rw, &held));
	CHECK(held == 1, "held(READER) with readers");
	HC(NEVER, rv = rumpuser_rw_tryenter(RUMPUSER_RW_WRITER, test_rw));
	CHECK(rv == E_BUSY, "writer with readers in: %d", rv);
	HC(NEVER, rv = rumpuser_rw_tryupgrade(test_rw));
	CHECK(rv == E_BUSY, "tryupgrade with two readers: %d", rv);
	HC(NEVER, rumpuser_rw_exit(test_rw));
	HC(NEVER, rv = rumpuser_rw_tryupgrade(test_rw));
	CHECK(rv == 0, "tryupgrade of the sole reader: %d", rv);
	HC(NEVER, rumpuser_rw_held(RUMPUSER_RW_WRITER, test_rw, &held));
	CHECK(held == 1, "held(WRITER) after upgrade");
	HC(NEVER, rv = rumpuser_rw_tryenter(RUMPUSER_RW_READER, test_rw));
	CHECK(rv == E_BUSY, "reader while written: %d", rv);
	HC(NEVER, rumpuser_rw_downgrade(test_rw));
	HC(NEVER, rumpuser_rw_held(RUMPUSER_RW_WRITER, test_rw, &held));
	CHECK(held == 0, "held(WRITER) after downgrade");
	HC(NEVER, rumpuser_rw_held(RUMPUSER_RW_READER, test_rw, &held));
	CHECK(held == 1, "held(READER) after downgrade");
	HC(NEVER, rumpuser_rw_exit(test_rw));
	HC(NEVER, rumpuser_rw_held(RUMPUSER_RW_READER, test_rw, &held));
	CHECK(held == 0, "held(READER) when free");

	/* A reader holds it; our writer waits releasing the CPU. */
	void *r = spawn(read_hold_body, NULL, "reader", 1, 0);
	wait_for_holding();
	HC(NEVER, rv = rumpuser_rw_tryenter(RUMPUSER_RW_WRITER, test_rw));
	CHECK(rv == E_BUSY, "writer tryenter while read: %d", rv);
	arm(&main_watch, 1);
	HC(ALWAYS, rumpuser_rw_enter(RUMPUSER_RW_WRITER, test_rw));
	CHECK(!holding, "writer entered while a reader was in");
	HC(NEVER, rumpuser_rw_held(RUMPUSER_RW_WRITER, test_rw, &held));
	CHECK(held == 1, "held(WRITER) after a contended enter");
	HC(NEVER, rumpuser_rw_exit(test_rw));
	join(r);

	/* Writer preference: with a writer waiting, new readers wait too. */
	r = spawn(read_hold_body, NULL, "reader", 1, 0);
	wait_for_holding();
	void *w = spawn(write_body, NULL, "writer", 1, 0);
	/* The writer has released its CPU in rw_enter; 5 ms more to queue. */
	wait_watch(&writer_watch);
	sleep_ns(5 * MS);
	HC(NEVER, rv = rumpuser_rw_tryenter(RUMPUSER_RW_READER, test_rw));
	CHECK(rv == E_BUSY, "reader got in past a waiting writer: %d", rv);
	arm(&main_watch, 1);
	HC(ALWAYS, rumpuser_rw_enter(RUMPUSER_RW_READER, test_rw));
	CHECK(!holding && !writer_in, "reader entered while the writer was in");
	HC(NEVER, rumpuser_rw_held(RUMPUSER_RW_WRITER, test_rw, &held));
	CHECK(held == 0, "held(WRITER) for a reader");
	HC(NEVER, rumpuser_rw_exit(test_rw));
	join(r);
	join(w);
	rumpuser_rw_destroy(test_rw);
}

/* Condition variables. */

static struct rumpuser_cv *test_cv;
static volatile int flag, woken;

static void
signal_later_body(void *arg)
{
	int broadcast = (int)(intptr_t)arg;
	sleep_ns(20 * MS);
	HC(MAYBE, rumpuser_mutex_enter(test_mtx));
	flag = 1;
	if (broadcast)
		HC(NEVER, rumpuser_cv_broadcast(test_cv));
	else
		HC(NEVER, rumpuser_cv_signal(test_cv));
	HC(NEVER, rumpuser_mutex_exit(test_mtx));
}

static void
cv_waiter_body(void *arg)
{
	(void)arg;
	HC(MAYBE, rumpuser_mutex_enter(test_mtx));
	while (!flag)
		HC(ALWAYS, rumpuser_cv_wait(test_cv, test_mtx));
	woken++;
	HC(NEVER, rumpuser_mutex_exit(test_mtx));
}

static void
suite_cv(void)
{
	int rv, n;
	struct lwp *owner;
	static const int kinds[4] = { RUMPUSER_MTX_KMUTEX, RUMPUSER_MTX_SPIN | RUMPUSER_MTX_KMUTEX, 0, RUMPUSER_MTX_SPIN };
	rumpuser_cv_init(&test_cv);
	for (int i = 0; i < 4; i++) {
		test_mtx = new_mutex(kinds[i]);
		HC(MAYBE, rumpuser_mutex_enter(test_mtx));
		int64_t t0 = now_ns();
		HC(ALWAYS, rv = rumpuser_cv_timedwait(test_cv, test_mtx, 0, 50 * MS));
		int64_t elapsed = now_ns() - t0;
		CHECK(rv == E_TIMEDOUT, "timedwait (flags %d): %d (want ETIMEDOUT 60)", kinds[i], rv);
		CHECK(elapsed >= 50 * MS, "timedwait of 50 ms returned after %ld ns", (long)elapsed);
		if (kinds[i] & RUMPUSER_MTX_KMUTEX) {
			rumpuser_mutex_owner(test_mtx, &owner);
			CHECK(owner == rumpuser_curlwp(), "interlock owner after timedwait");
		}
		CHECK(rumpuser_mutex_tryenter(test_mtx) == E_BUSY, "interlock held after timedwait");
		if (i == 0)
			rumpuser_dprintf("cv: timedwait 50 ms -> %d after %ld ms\n", rv, (long)(elapsed / MS));

		/* Signalled before the timeout. */
		flag = 0;
		void *s = spawn(signal_later_body, (void *)0, "signaller", 1, 0);
		HC(ALWAYS, rv = rumpuser_cv_timedwait(test_cv, test_mtx, 10, 0));
		CHECK(rv == 0 && flag, "signalled timedwait: %d, flag %d", rv, flag);
		HC(NEVER, rumpuser_mutex_exit(test_mtx));
		join(s);
		/* A timeout far beyond any timer's reach, signalled. */
		flag = 0;
		s = spawn(signal_later_body, (void *)0, "signaller", 1, 0);
		HC(MAYBE, rumpuser_mutex_enter(test_mtx));
		HC(ALWAYS, rv = rumpuser_cv_timedwait(test_cv, test_mtx, INT64_MAX / 4, 999999999));
		CHECK(rv == 0 && flag, "signalled timedwait with a huge timeout: %d, flag %d", rv, flag);
		/* cv_wait with the same interlock. */
		flag = 0;
		HC(NEVER, rumpuser_mutex_exit(test_mtx));
		join(s);
		s = spawn(signal_later_body, (void *)0, "signaller", 1, 0);
		HC(MAYBE, rumpuser_mutex_enter(test_mtx));
		while (!flag)
			HC(ALWAYS, rumpuser_cv_wait(test_cv, test_mtx));
		HC(NEVER, rumpuser_mutex_exit(test_mtx));
		join(s);

		/* cv_wait_nowrap holds the CPU. */
		flag = 0;
		s = spawn(signal_later_body, (void *)0, "signaller", 1, 0);
		HC(NEVER, rumpuser_mutex_enter_nowrap(test_mtx));
		while (!flag)
			HC(NEVER, rumpuser_cv_wait_nowrap(test_cv, test_mtx));
		HC(NEVER, rumpuser_mutex_exit(test_mtx));
		join(s);
		drop_mutex(test_mtx);
	}

	/* Broadcast wakes every waiter; has_waiters counts them. */
	test_mtx = new_mutex(RUMPUSER_MTX_KMUTEX);
	flag = 0;
	woken = 0;
	void *c[5];
	for (int i = 0; i < 5; i++)
		c[i] = spawn(cv_waiter_body, NULL, "cvwaiter", 1, 0);
	/*
	 * The waiters reach cv_wait in their own time (on several CPUs of a
	 * loaded host a fixed 20 ms was not always enough): poll until all five
	 * are counted, for at most 10 s; a count above 5 or stuck below fails.
	 */
	int64_t give_up = now_ns() + 10000 * MS;
	do {
		sleep_ns(MS);
		HC(NEVER, rumpuser_cv_has_waiters(test_cv, &n));
	} while (n < 5 && now_ns() < give_up);
	CHECK(n == 5, "has_waiters with 5 waiters: %d", n);
	HC(MAYBE, rumpuser_mutex_enter(test_mtx));
	flag = 1;
	HC(NEVER, rumpuser_cv_broadcast(test_cv));
	HC(NEVER, rumpuser_mutex_exit(test_mtx));
	for (int i = 0; i < 5; i++)
		join(c[i]);
	CHECK(woken == 5, "broadcast woke %d of 5", woken);
	HC(NEVER, rumpuser_cv_has_waiters(test_cv, &n));
	CHECK(n == 0, "has_waiters afterwards: %d", n);
	drop_mutex(test_mtx);
	rumpuser_cv_destroy(test_cv);
}

/* Stress with exact counts. */

#define STRESS_THREADS 4
#define STRESS_ROUNDS 5000
static long stress_counter;
static struct rumpuser_rw *stress_rw;
static long pair_a, pair_b;
static int torn;

static void
mutex_stress_body(void *arg)
{
	(void)arg;
	for (int i = 0; i < STRESS_ROUNDS; i++) {
		HC(MAYBE, rumpuser_mutex_enter(test_mtx));
		long v = stress_counter;
		if (i % 64 == 0)
			sleep_ns(0);	/* hand the CPU over inside the critical section */
		stress_counter = v + 1;
		HC(NEVER, rumpuser_mutex_exit(test_mtx));
	}
}

static void
rw_stress_body(void *arg)
{
	int writer = (int)(intptr_t)arg;
	for (int i = 0; i < 2000; i++) {
		if (writer) {
			HC(MAYBE, rumpuser_rw_enter(RUMPUSER_RW_WRITER, stress_rw));
			pair_a++;
			if (i % 50 == 0)
				sleep_ns(0);
			pair_b++;
		} else {
			HC(MAYBE, rumpuser_rw_enter(RUMPUSER_RW_READER, stress_rw));
			long a = pair_a;
			if (i % 50 == 0)
				sleep_ns(0);
			if (a != pair_b)
				torn++;
		}
		HC(NEVER, rumpuser_rw_exit(stress_rw));
	}
}

struct channel {
	struct rumpuser_mtx *mtx;
	struct rumpuser_cv *cv;
	int full;
	long value;
	long sum;
};

static void
producer_body(void *arg)
{
	struct channel *ch = arg;
	for (long i = 1; i <= 2000; i++) {
		HC(MAYBE, rumpuser_mutex_enter(ch->mtx));
		while (ch->full)
			HC(ALWAYS, rumpuser_cv_wait(ch->cv, ch->mtx));
		ch->value = i;
		ch->full = 1;
		HC(NEVER, rumpuser_cv_broadcast(ch->cv));
		HC(NEVER, rumpuser_mutex_exit(ch->mtx));
	}
}

static void
consumer_body(void *arg)
{
	struct channel *ch = arg;
	for (int i = 0; i < 2000; i++) {
		HC(MAYBE, rumpuser_mutex_enter(ch->mtx));
		while (!ch->full)
			HC(ALWAYS, rumpuser_cv_wait(ch->cv, ch->mtx));
		ch->sum += ch->value;
		ch->full = 0;
		HC(NEVER, rumpuser_cv_broadcast(ch->cv));
		HC(NEVER, rumpuser_mutex_exit(ch->mtx));
	}
}

static void
suite_stress(void)
{
	void *c[STRESS_THREADS];
	test_mtx = new_mutex(RUMPUSER_MTX_KMUTEX);
	stress_counter = 0;
	for (int i = 0; i < STRESS_THREADS; i++)
		c[i] = spawn(mutex_stress_body, NULL, "mtxstress", 1, 0);
	for (int i = 0; i < STRESS_THREADS; i++)
		join(c[i]);
	CHECK(stress_counter == STRESS_THREADS * STRESS_ROUNDS, "mutex stress: %ld of %d", stress_counter, STRESS_THREADS * STRESS_ROUNDS);
	rumpuser_dprintf("stress: mutex %ld increments by %d threads\n", stress_counter, STRESS_THREADS);
	drop_mutex(test_mtx);

	rumpuser_rw_init(&stress_rw);
	pair_a = pair_b = 0;
	torn = 0;
	for (int i = 0; i < 4; i++)
		c[i] = spawn(rw_stress_body, (void *)(intptr_t)(i < 2), "rwstress", 1, 0);
	for (int i = 0; i < 4; i++)
		join(c[i]);
	CHECK(pair_a == 4000 && pair_b == 4000 && torn == 0, "rwlock stress: %ld/%ld writes, %d torn reads", pair_a, pair_b, torn);
	rumpuser_dprintf("stress: rwlock %ld writes, %d torn reads\n", pair_a, torn);
	rumpuser_rw_destroy(stress_rw);

	struct channel ch[2];
	void *p[4];
	for (int i = 0; i < 2; i++) {
		ch[i].mtx = new_mutex(RUMPUSER_MTX_KMUTEX);
		rumpuser_cv_init(&ch[i].cv);
		ch[i].full = 0;
		ch[i].sum = 0;
		p[2 * i] = spawn(producer_body, &ch[i], "producer", 1, 0);
		p[2 * i + 1] = spawn(consumer_body, &ch[i], "consumer", 1, 0);
	}
	for (int i = 0; i < 4; i++)
		join(p[i]);
	for (int i = 0; i < 2; i++) {
		CHECK(ch[i].sum == 2000L * 2001 / 2, "channel %d: sum %ld", i, ch[i].sum);
		rumpuser_cv_destroy(ch[i].cv);
		drop_mutex(ch[i].mtx);
	}
	rumpuser_dprintf("stress: cv 2 x 2000 items, sums %ld %ld\n", ch[0].sum, ch[1].sum);
}


/* Block I/O on the guest's first virtio-blk disk ("blk0", -b on pc). The
 * host test fills the file with pattern1 and checks what was written. */

static unsigned char
pattern1(uint64_t i)
{
	return (unsigned char)((i * 13 + 5) ^ (i >> 9));
}

static unsigned char
pattern2(uint64_t i)
{
	return (unsigned char)(i * 3 + 1);
}

static uint64_t
parse_decimal(const char *s)
{
	uint64_t v = 0;
	while (*s >= '0' && *s <= '9')
		v = v * 10 + (uint64_t)(*s++ - '0');
	return v;
}

static void
suite_blk(void)
{
	char value[32];
	int rv, fd, fd2, type;
	uint64_t size;
	size_t moved;
	rv = rumpuser_getparam("RUMPTEST_BLK", value, sizeof(value));
	uint64_t want_size = parse_decimal(value);
	HC(ALWAYS, rv = rumpuser_getfileinfo("blk0", &size, &type));
	CHECK(rv == 0 && size == want_size && type == RUMPUSER_FT_BLK, "getfileinfo blk0: %d, %lu bytes, type %d", rv, (unsigned long)size, type);
	HC(ALWAYS, rv = rumpuser_getfileinfo("blk9", &size, &type));
	CHECK(rv == E_NXIO, "getfileinfo of an unconfigured tag: %d", rv);
	HC(ALWAYS, rv = rumpuser_open("blk0", RUMPUSER_OPEN_RDWR | RUMPUSER_OPEN_BIO, &fd));
	CHECK(rv == 0 && fd >= 0, "open blk0: %d", rv);
	HC(ALWAYS, rv = rumpuser_open("blk0", RUMPUSER_OPEN_RDWR | RUMPUSER_OPEN_CREATE | RUMPUSER_OPEN_EXCL, &fd2));
	CHECK(rv == E_EXIST, "open CREATE|EXCL of a device: %d (want EEXIST 17)", rv);
	HC(MAYBE, rv = rumpuser_open("blk0", 3, &fd2));
	CHECK(rv == E_INVAL, "open with access mode 3: %d", rv);

	unsigned char *a, *b;
	rumpuser_malloc(16384, 4096, (void **)&a);
	rumpuser_malloc(16384, 4096, (void **)&b);

	/* Two vectors at an offset. */
	struct rumpuser_iovec iov[2] = { { a, 512 }, { a + 512, 1024 } };
	HC(ALWAYS, rv = rumpuser_iovread(fd, iov, 2, 4096, &moved));
	int bad = 0;
	for (int i = 0; i < 1536; i++)
		bad += a[i] != pattern1(4096 + (uint64_t)i);
	CHECK(rv == 0 && moved == 1536 && bad == 0, "iovread 2 vectors at 4096: %d, %zu bytes, %d wrong", rv, moved, bad);

	/* NOSEEK reads advance the descriptor's position. */
	bad = 0;
	for (int round = 0; round < 3; round++) {
		struct rumpuser_iovec one = { a, 512 };
		HC(ALWAYS, rv = rumpuser_iovread(fd, &one, 1, RUMPUSER_IOV_NOSEEK, &moved));
		CHECK(rv == 0 && moved == 512, "NOSEEK read %d: %d", round, rv);
		for (int i = 0; i < 512; i++)
			bad += a[i] != pattern1((uint64_t)round * 512 + (uint64_t)i);
	}
	CHECK(bad == 0, "NOSEEK reads: %d bytes wrong", bad);
	struct rumpuser_iovec odd = { a, 512 };
	HC(ALWAYS, rv = rumpuser_iovread(fd, &odd, 1, 100, &moved));
	CHECK(rv == E_INVAL && moved == 0, "read at offset 100: %d", rv);

	/* bio: synchronous write, then read back. */
	for (int i = 0; i < 8192; i++)
		a[i] = pattern2((uint64_t)i);
	struct biowait w;
	bio_and_wait(fd, RUMPUSER_BIO_WRITE | RUMPUSER_BIO_SYNC, a, 8192, 65536, &w);
	CHECK(w.done == 8192 && w.error == 0, "bio write: %zu bytes, error %d", w.done, w.error);
	bio_and_wait(fd, RUMPUSER_BIO_READ, b, 8192, 65536, &w);
	bad = 0;
	for (int i = 0; i < 8192; i++)
		bad += b[i] != pattern2((uint64_t)i);
	CHECK(w.done == 8192 && w.error == 0 && bad == 0, "bio read back: error %d, %d wrong", w.error, bad);
	bio_and_wait(fd, RUMPUSER_BIO_READ, b, 512, (int64_t)want_size, &w);
	CHECK(w.error == E_INVAL, "bio past the end: error %d", w.error);

	/* 200 queued bios of one sector each, then every completion checked. */
	static struct biowait many[200];
	unsigned char *c;
	rumpuser_malloc(200 * 512, 4096, (void **)&c);
	for (int i = 0; i < 200; i++) {
		many[i].calls = 0;
		many[i].submitter = &self;
		HC(NEVER, rumpuser_bio(fd, RUMPUSER_BIO_READ, c + i * 512, 512, (int64_t)(131072 + i * 512), biowait_done, &many[i]));
	}
	HC(MAYBE, rumpuser_mutex_enter(bio_mtx));
	for (int i = 0; i < 200; i++)
		while (many[i].calls == 0)
			HC(ALWAYS, rumpuser_cv_wait(bio_cv, bio_mtx));
	HC(NEVER, rumpuser_mutex_exit(bio_mtx));
	int good = 0;
	for (int i = 0; i < 200; i++)
		good += many[i].calls == 1 && many[i].done == 512 && many[i].error == 0 && many[i].cpu_held && !many[i].same_thread;
	bad = 0;
	for (int i = 0; i < 200 * 512; i++)
		bad += c[i] != pattern1(131072 + (uint64_t)i);
	CHECK(good == 200 && bad == 0, "200 queued bios: %d completed correctly, %d bytes wrong", good, bad);
	rumpuser_free(c, 200 * 512);

	/* iovwrite of the last sector, sync, close. */
	const char *marker = "rumpuser guest was here";
	for (int i = 0; i < 512; i++)
		a[i] = 0;
	for (int i = 0; marker[i]; i++)
		a[i] = (unsigned char)marker[i];
	struct rumpuser_iovec last = { a, 512 };
	HC(ALWAYS, rv = rumpuser_iovwrite(fd, &last, 1, (int64_t)want_size - 512, &moved));
	CHECK(rv == 0 && moved == 512, "iovwrite of the last sector: %d, %zu", rv, moved);
	HC(ALWAYS, rv = rumpuser_syncfd(fd, RUMPUSER_SYNCFD_WRITE | RUMPUSER_SYNCFD_SYNC, 0, 0));
	CHECK(rv == 0, "syncfd WRITE|SYNC: %d", rv);
	HC(MAYBE, rv = rumpuser_syncfd(fd, 0, 0, 0));
	CHECK(rv == E_INVAL, "syncfd without READ or WRITE: %d", rv);
	HC(MAYBE, rv = rumpuser_close(fd));
	CHECK(rv == 0, "close: %d", rv);
	HC(MAYBE, rv = rumpuser_close(fd));
	CHECK(rv == E_BADF, "second close: %d", rv);
	HC(MAYBE, rv = rumpuser_iovread(fd, &last, 1, 0, &moved));
	CHECK(rv == E_BADF, "read after close: %d", rv);
	rumpuser_free(a, 16384);
	rumpuser_free(b, 16384);
	rumpuser_dprintf("blk: %lu bytes, wrote 8192 at 65536 and the last sector\n", (unsigned long)want_size);
}

static void
run(const char *name, void (*suite)(void))
{
	int before = failures, checks0 = checks;
	suite_name = name;
	suite();
	if (failures == before)
		rumpuser_dprintf("ok %s (%d checks)\n", name, checks - checks0);
	else
		rumpuser_dprintf("FAIL %s: %d failures\n", name, failures - before);
}

/* ---- dl_bootstrap: the image's link sets -------------------------------- */

struct modinfo {
	const char *name;
};
struct rump_component {
	int type;
};
static const struct modinfo mod_vfs = { "vfs" }, mod_net = { "net" };
static const struct rump_component comp_a = { 11 }, comp_b = { 22 }, comp_c = { 33 };
/* As NetBSD's __link_set_add_rodata does: pointers in a named section. */
static const struct modinfo *const ls_mod_vfs
    __attribute__((section("link_set_modules"), used)) = &mod_vfs;
static const struct modinfo *const ls_mod_net
    __attribute__((section("link_set_modules"), used)) = &mod_net;
static const struct rump_component *const ls_comp_a
    __attribute__((section("link_set_rump_components"), used)) = &comp_a;
static const struct rump_component *const ls_comp_b
    __attribute__((section("link_set_rump_components"), used)) = &comp_b;
static const struct rump_component *const ls_comp_c
    __attribute__((section("link_set_rump_components"), used)) = &comp_c;

/* A link set of the kernel's own, found through strong __start_/__stop_
 * references as NetBSD's __link_set_foreach does: it must survive bake's
 * --gc-sections (LLD drops such sections unless -z nostart-stop-gc). */
static const int sysctl_a = 3, sysctl_b = 4;
static const int *const ls_sysctl_a __attribute__((section("link_set_test_sysctl"), used)) = &sysctl_a;
static const int *const ls_sysctl_b __attribute__((section("link_set_test_sysctl"), used)) = &sysctl_b;
extern const int *const __start_link_set_test_sysctl[];
extern const int *const __stop_link_set_test_sysctl[];

static int modinit_calls, modules_seen, components_sum, components_seen;

static void
dl_modinit(const struct modinfo *const *mi, size_t n)
{
	modinit_calls++;
	for (size_t i = 0; i < n; i++) {
		if (mi[i] == &mod_vfs || mi[i] == &mod_net)
			modules_seen++;
	}
}

static void
dl_compload(const struct rump_component *rc)
{
	components_seen++;
	components_sum += rc->type;
}

static void
suite_dl(void)
{
	HC(NEVER, rumpuser_dl_bootstrap(dl_modinit, NULL, dl_compload, NULL));
	CHECK(modinit_calls == 1 && modules_seen == 2, "modinit: %d calls, %d of 2 modules", modinit_calls, modules_seen);
	CHECK(components_seen == 3 && components_sum == 66, "compload: %d of 3 components, sum %d", components_seen, components_sum);
	int own = 0;
	for (const int *const *p = __start_link_set_test_sysctl; p < __stop_link_set_test_sysctl; p++)
		own += **p;
	CHECK(own == 7, "the kernel's own link set sums to %d, not 7", own);
	rumpuser_dprintf("dl: %d modules, %d components from the link sets\n", modules_seen, components_seen);
}

static struct lwp main_lwp = { 1 };

/* ---- PCI interrupts (rumpcomp_pci_*, pc with -device e1000) ------------ */

/* The hw platform's rump PCI glue, as NetBSD's rumpcomp_user.h declares it. */
int rumpcomp_pci_confread(unsigned, unsigned, unsigned, int, unsigned int *);
void *rumpcomp_pci_map(unsigned long, unsigned long);
int rumpcomp_pci_irq_map(unsigned, unsigned, unsigned, int, unsigned);
void *rumpcomp_pci_irq_establish(unsigned, int (*)(void *), void *);

#define E1000_ICR 0xC0	/* interrupt cause read (clears on read) */
#define E1000_ICS 0xC8	/* interrupt cause set */
#define E1000_IMS 0xD0	/* interrupt mask set */
#define E1000_IMC 0xD8	/* interrupt mask clear */
#define E1000_LSC (1u << 2)

struct intr_state {
	volatile uint32_t *regs;
	volatile int claimed;	/* handler calls that found LSC */
	volatile int unclaimed;
	volatile int without_cpu;	/* calls made without a rump CPU held */
	volatile int on_main;	/* calls made on the main thread */
	volatile int without_own_lwp;	/* calls on no lwp, or a temporary one */
};

static int
e1000_intr(void *arg)
{
	struct intr_state *st = arg;
	if (self.cpu == 0)
		st->without_cpu++;
	if (rumpuser_curlwp() == &main_lwp)
		st->on_main++;
	if (rumpuser_curlwp() == NULL || rumpuser_curlwp()->temporary)
		st->without_own_lwp++;
	uint32_t cause = st->regs[E1000_ICR / 4];
	if (!(cause & E1000_LSC)) {
		st->unclaimed++;
		return 0;
	}
	st->claimed++;
	return 1;
}

static void
suite_pci_irq(void)
{
	unsigned dev, id = 0, bar0 = 0, intr = 0;
	int rv;
	for (dev = 0; dev < 32; dev++) {
		rv = rumpcomp_pci_confread(0, dev, 0, 0x00, &id);
		if (rv == 0 && id == 0x100E8086)
			break;
	}
	CHECK(dev < 32, "no 82540EM (8086:100e) on bus 0");
	if (dev == 32)
		return;
	rumpcomp_pci_confread(0, dev, 0, 0x10, &bar0);
	rumpcomp_pci_confread(0, dev, 0, 0x3C, &intr);
	int line = intr & 0xFF, pin = (intr >> 8) & 0xFF;
	rumpuser_dprintf("pci: e1000 at 0:%u.0, bar0 %x, line %d, pin %d\n", dev, bar0 & ~0xFu, line, pin);
	CHECK(pin != 0 && line != 0 && line != 0xFF, "no INTx routing: line %d pin %d", line, pin);

	static struct intr_state st;
	st.regs = rumpcomp_pci_map(bar0 & ~0xFu, 0x20000);
	CHECK(st.regs != NULL, "map of BAR0 failed");
	if (st.regs == NULL)
		return;
	st.regs[E1000_IMC / 4] = 0xFFFFFFFFu;
	(void)st.regs[E1000_ICR / 4];

	CHECK(rumpcomp_pci_irq_establish(3, e1000_intr, &st) == NULL, "establish on an unmapped cookie succeeded");
	CHECK(rumpcomp_pci_irq_map(0, dev, 0, line, 3) == 0, "irq_map failed");
	CHECK(rumpcomp_pci_irq_establish(3, NULL, &st) == NULL, "establish without a handler succeeded");
	void *handle = rumpcomp_pci_irq_establish(3, e1000_intr, &st);
	CHECK(handle != NULL, "irq_establish failed");
	if (handle == NULL)
		return;

	/* Each round raises LSC through ICS; the handler must run (on the
	 * interrupt thread, holding a rump CPU) and clear it by reading ICR. */
	st.regs[E1000_IMS / 4] = E1000_LSC;
	int rounds = 0;
	for (int i = 0; i < 100; i++) {
		st.regs[E1000_ICS / 4] = E1000_LSC;
		int64_t give_up = now_ns() + 5 * NSEC;
		while (st.claimed < i + 1 && now_ns() < give_up)
			sleep_ns(MS);
		if (st.claimed < i + 1)
			break;
		rounds++;
	}
	CHECK(rounds == 100, "interrupts handled: %d of 100", rounds);
	/* No interrupt without a cause: a quiet device stays quiet. */
	int before = st.claimed + st.unclaimed;
	sleep_ns(100 * MS);
	CHECK(st.claimed + st.unclaimed == before, "handler ran %d times with no cause raised",
	    st.claimed + st.unclaimed - before);
	CHECK(st.without_cpu == 0, "%d handler calls without a rump CPU", st.without_cpu);
	CHECK(st.on_main == 0, "%d handler calls on the main thread", st.on_main);
	CHECK(st.without_own_lwp == 0, "%d handler calls not on the interrupt thread's own lwp", st.without_own_lwp);
	st.regs[E1000_IMC / 4] = 0xFFFFFFFFu;
	rumpuser_dprintf("pci: %d interrupts handled on the interrupt thread, %d unclaimed calls\n",
	    st.claimed, st.unclaimed);
}


int
main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	suite_name = "init";
	int rv = rumpuser_init(16, &hyperup);
	CHECK(rv == E_INVAL, "init version 16: %d", rv);
	rv = rumpuser_init(18, &hyperup);
	CHECK(rv == E_INVAL, "init version 18: %d", rv);
	rv = rumpuser_init(RUMPUSER_VERSION, &hyperup);
	CHECK(rv == 0, "init version 17: %d", rv);
	rumpuser_mutex_init(&sched_mtx, 0);
	rumpuser_cv_init(&sched_cv);
	rumpuser_curlwpop(RUMPUSER_LWP_CREATE, &main_lwp);
	rumpuser_curlwpop(RUMPUSER_LWP_SET, &main_lwp);
	take_cpu();
	bio_mtx = new_mutex(RUMPUSER_MTX_KMUTEX);
	rumpuser_cv_init(&bio_cv);
	if (failures == 0)
		rumpuser_dprintf("ok init (%d checks)\n", checks);

	/* Termination modes (RUMPTEST_MODE): how the guest ends. */
	char mode[16];
	if (rumpuser_getparam("RUMPTEST_MODE", mode, sizeof(mode)) == 0) {
		rumpuser_dprintf("mode %s\n", mode);
		if (streq(mode, "exit"))
			rumpuser_exit(7);
		if (streq(mode, "panic"))
			rumpuser_exit(RUMPUSER_PANIC);
		if (streq(mode, "kill"))
			rumpuser_kill(RUMPUSER_PID_SELF, 9);
		rumpuser_dprintf("unknown mode\n");
		return 2;
	}

	run("memory", suite_memory);
	run("clocks", suite_clocks);
	run("params", suite_params);
	run("misc", suite_misc);
	run("threads", suite_threads);
	run("component", suite_component);
	run("mutex", suite_mutex);
	run("rwlock", suite_rwlock);
	run("cv", suite_cv);
	run("stress", suite_stress);
	run("dl", suite_dl);
	char blk[32];
	if (rumpuser_getparam("RUMPTEST_BLK", blk, sizeof(blk)) == 0)
		run("blk", suite_blk);
	char pci[8];
	if (rumpuser_getparam("RUMPTEST_PCI_IRQ", pci, sizeof(pci)) == 0)
		run("pci_irq", suite_pci_irq);

	rumpuser_dprintf("rumpuser conformance: %d checks, %d failures\n", checks, failures);
	return failures == 0 ? 0 : 1;
}
