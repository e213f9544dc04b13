/*
 * kernel.c: the harness "rump kernel": virtual CPUs, lwps and the upcall
 * table handed to rumpuser_init(), with the contract checks made inside the
 * upcalls themselves and around every hypercall.
 */

#include "conf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CONF_HAS_TSAN 1
#endif
#endif
#ifndef CONF_HAS_TSAN
#define CONF_HAS_TSAN 0
#endif

__thread struct conf_thread conf_self = { .cpu = -1 };

/* ---- failures ----------------------------------------------------------- */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char failure_log[8192];
static _Atomic int failures;
static _Atomic long checks;

void
conf_count_check(void)
{
	atomic_fetch_add_explicit(&checks, 1, memory_order_relaxed);
}

void
conf_fail(const char *file, int line, const char *fmt, ...)
{
	char message[512];
	va_list ap;
	const char *base = strrchr(file, '/');

	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	if (atomic_fetch_add(&failures, 1) >= 20)
		return;
	pthread_mutex_lock(&log_lock);
	size_t used = strlen(failure_log);
	snprintf(failure_log + used, sizeof(failure_log) - used, "%s:%d: %s\n",
	    base ? base + 1 : file, line, message);
	pthread_mutex_unlock(&log_lock);
}

void
conf_begin_suite(void)
{
	atomic_store(&failures, 0);
	atomic_store(&checks, 0);
	pthread_mutex_lock(&log_lock);
	failure_log[0] = '\0';
	pthread_mutex_unlock(&log_lock);
}

int conf_end_suite(void) { return atomic_load(&failures); }
int rumpconf_failures(void) { return atomic_load(&failures); }
long rumpconf_checks(void) { return atomic_load(&checks); }
const char *rumpconf_failure_log(void) { return failure_log; }

/* ---- virtual CPUs --------------------------------------------------------- */

#define MAX_CPUS 64
static pthread_mutex_t cpu_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cpu_free;
static int ncpu = 2;
static int cpu_busy[MAX_CPUS];
static _Atomic uint64_t backend_unschedules, backend_schedules, hyp_schedules;
static _Atomic uint64_t cpu_waits_over_limit;
_Atomic uint64_t conf_biodones;

/*
 * Waits for a free CPU.  A thread that waits seconds means some thread is
 * blocked in the host while holding a CPU: that is reported, and the
 * waiter then proceeds over the limit so that the run does not hang.
 */
static void
cpu_acquire(void)
{
	struct timespec deadline;
	int waited_too_long = 0;

	CHECK(conf_self.cpu == -1, "CPU acquired by a thread that holds CPU %d",
	    conf_self.cpu);
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += 5;
	pthread_mutex_lock(&cpu_lock);
	for (;;) {
		for (int i = 0; i < ncpu; i++) {
			if (!cpu_busy[i]) {
				cpu_busy[i] = 1;
				conf_self.cpu = i;
				pthread_mutex_unlock(&cpu_lock);
				return;
			}
		}
		if (waited_too_long) {
			conf_self.cpu = MAX_CPUS;	/* over the limit */
			pthread_mutex_unlock(&cpu_lock);
			return;
		}
		if (pthread_cond_timedwait(&cpu_free, &cpu_lock, &deadline) == ETIMEDOUT) {
			atomic_fetch_add(&cpu_waits_over_limit, 1);
			conf_fail(__FILE__, __LINE__, "waited 5 s for a virtual CPU: "
			    "a thread blocks in the host while holding one");
			waited_too_long = 1;
		}
	}
}

static void
cpu_release(void)
{
	CHECK(conf_self.cpu != -1, "CPU released by a thread that holds none");
	if (conf_self.cpu == -1)
		return;
	pthread_mutex_lock(&cpu_lock);
	if (conf_self.cpu < MAX_CPUS)
		cpu_busy[conf_self.cpu] = 0;
	conf_self.cpu = -1;
	pthread_cond_signal(&cpu_free);
	pthread_mutex_unlock(&cpu_lock);
}

/* ---- lwps ----------------------------------------------------------------- */

static _Atomic int next_lwp_id = 1;

struct lwp *
conf_new_lwp(int temporary)
{
	struct lwp *l = calloc(1, sizeof(*l));

	l->magic = CONF_LWP_MAGIC;
	l->id = atomic_fetch_add(&next_lwp_id, 1);
	l->temporary = temporary;
	rumpuser_curlwpop(RUMPUSER_LWP_CREATE, l);
	return l;
}

void
conf_free_lwp(struct lwp *l)
{
	if (l->proc != NULL)
		conf_sp_lwp_freed(l);
	rumpuser_curlwpop(RUMPUSER_LWP_DESTROY, l);
	l->magic = 0;
	free(l);
}

/* ---- mutex registry (for interlock order checks) --------------------------- */

#define REGISTRY 256
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct { struct rumpuser_mtx *mtx; int flags; } registry[REGISTRY];

void
conf_register_mutex(struct rumpuser_mtx *mtx, int flags)
{
	pthread_mutex_lock(&registry_lock);
	for (int i = 0; i < REGISTRY; i++) {
		if (registry[i].mtx == NULL) {
			registry[i].mtx = mtx;
			registry[i].flags = flags;
			break;
		}
	}
	pthread_mutex_unlock(&registry_lock);
}

void
conf_forget_mutex(struct rumpuser_mtx *mtx)
{
	pthread_mutex_lock(&registry_lock);
	for (int i = 0; i < REGISTRY; i++)
		if (registry[i].mtx == mtx)
			registry[i].mtx = NULL;
	pthread_mutex_unlock(&registry_lock);
}

static int
registered_flags(void *mtx)
{
	int flags = -1;

	pthread_mutex_lock(&registry_lock);
	for (int i = 0; i < REGISTRY; i++)
		if (registry[i].mtx == mtx)
			flags = registry[i].flags;
	pthread_mutex_unlock(&registry_lock);
	return flags;
}

/* ---- upcalls ----------------------------------------------------------------- */

static void
hyp_schedule(void)
{
	atomic_fetch_add(&hyp_schedules, 1);
	if (rumpuser_curlwp() == NULL) {
		struct lwp *l = conf_new_lwp(1);
		rumpuser_curlwpop(RUMPUSER_LWP_SET, l);
	}
	cpu_acquire();
}

static void
hyp_unschedule(void)
{
	struct lwp *l = rumpuser_curlwp();

	cpu_release();
	if (l != NULL && l->temporary) {
		rumpuser_curlwpop(RUMPUSER_LWP_CLEAR, l);
		conf_free_lwp(l);
	}
}

static void
hyp_backend_unschedule(int dummy, int *nlocks, void *interlock)
{
	(void)dummy;
	atomic_fetch_add(&backend_unschedules, 1);
	conf_self.unschedules++;
	conf_self.last_unschedule_interlock = interlock;
	CHECK(conf_self.cpu != -1, "hyp_backend_unschedule without a CPU");
	CHECK(!conf_self.in_biodone, "CPU released inside biodone");
	CHECK(nlocks != NULL, "hyp_backend_unschedule with NULL nlocks");
	if (nlocks != NULL)
		*nlocks = conf_self.biglocks;
	conf_self.biglocks = 0;
	if (interlock != NULL) {
		/* The interlock is still held by this thread's lwp here. */
		int flags = registered_flags(interlock);
		if (flags >= 0 && (flags & RUMPUSER_MTX_KMUTEX)) {
			struct lwp *owner = NULL;
			rumpuser_mutex_owner(interlock, &owner);
			CHECK(owner == rumpuser_curlwp(),
			    "cv interlock not held by the waiter at unschedule");
		}
	}
	cpu_release();
}

static void
hyp_backend_schedule(int nlocks, void *interlock)
{
	atomic_fetch_add(&backend_schedules, 1);
	conf_self.schedules++;
	conf_self.last_schedule_interlock = interlock;
	CHECK(conf_self.cpu == -1, "hyp_backend_schedule while holding a CPU");
	if (interlock != NULL) {
		int flags = registered_flags(interlock);
		if (flags >= 0 && (flags & RUMPUSER_MTX_KMUTEX)) {
			struct lwp *owner = NULL;
			int spin = (flags & RUMPUSER_MTX_SPIN) != 0;
			/*
			 * SPIN|KMUTEX: CPU first, then the mutex; else the
			 * reverse.  Reading the owner of a mutex this thread
			 * does not hold races with its holders, so the spin
			 * case is checked only outside ThreadSanitizer runs.
			 */
			if (!spin) {
				rumpuser_mutex_owner(interlock, &owner);
				CHECK(owner == rumpuser_curlwp(),
				    "KMUTEX interlock not retaken before the CPU");
			}
#if !defined(__SANITIZE_THREAD__) && !CONF_HAS_TSAN
			else {
				rumpuser_mutex_owner(interlock, &owner);
				CHECK(owner != rumpuser_curlwp(),
				    "SPIN|KMUTEX interlock retaken before the CPU");
			}
#endif
		}
	}
	cpu_acquire();
	conf_self.biglocks = nlocks;
}

static void
hyp_lwproc_switch(struct lwp *l)
{
	struct lwp *old = rumpuser_curlwp();

	CHECK(conf_self.cpu != -1, "lwproc_switch without a CPU");
	if (old != NULL) {
		rumpuser_curlwpop(RUMPUSER_LWP_CLEAR, old);
		if (old->temporary)
			conf_free_lwp(old);
	}
	if (l != NULL)
		rumpuser_curlwpop(RUMPUSER_LWP_SET, l);
}

static void
hyp_lwproc_release(void)
{
	struct lwp *l = rumpuser_curlwp();

	CHECK(conf_self.cpu != -1, "lwproc_release without a CPU");
	CHECK(l != NULL, "lwproc_release without an lwp");
	if (l != NULL) {
		rumpuser_curlwpop(RUMPUSER_LWP_CLEAR, l);
		conf_free_lwp(l);
	}
}

void conf_lwproc_switch(struct lwp *l) { hyp_lwproc_switch(l); }

static int
hyp_lwproc_newlwp(pid_t pid)
{
	CHECK(conf_self.cpu != -1, "lwproc_newlwp without a CPU");
	if (pid != 0)
		return conf_sp_newlwp(pid);
	hyp_lwproc_switch(conf_new_lwp(0));
	return 0;
}

static struct lwp *hyp_lwproc_curlwp(void) { return rumpuser_curlwp(); }

/* The syscall proxy's upcalls: processes of proxy clients (spkernel.c). */
static pid_t hyp_getpid(void) { return conf_sp_getpid(); }

static const struct rumpuser_hyperup harness_upcalls = {
	.hyp_schedule = hyp_schedule,
	.hyp_unschedule = hyp_unschedule,
	.hyp_backend_unschedule = hyp_backend_unschedule,
	.hyp_backend_schedule = hyp_backend_schedule,
	.hyp_lwproc_switch = hyp_lwproc_switch,
	.hyp_lwproc_release = hyp_lwproc_release,
	.hyp_lwproc_rfork = conf_sp_rfork,
	.hyp_lwproc_newlwp = hyp_lwproc_newlwp,
	.hyp_lwproc_curlwp = hyp_lwproc_curlwp,
	.hyp_syscall = conf_sp_syscall,
	.hyp_lwpexit = conf_sp_lwpexit,
	.hyp_execnotify = conf_sp_execnotify,
	.hyp_getpid = hyp_getpid,
};

int
rumpconf_setup(int virtual_cpus)
{
	pthread_condattr_t attr;

	if (virtual_cpus < 1 || virtual_cpus > MAX_CPUS)
		return 22;
	ncpu = virtual_cpus;
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&cpu_free, &attr);
	pthread_condattr_destroy(&attr);
	return rumpuser_init(RUMPUSER_VERSION, &harness_upcalls);
}

void
rumpconf_get_counters(struct rumpconf_counters *out)
{
	out->backend_unschedules = atomic_load(&backend_unschedules);
	out->backend_schedules = atomic_load(&backend_schedules);
	out->hyp_schedules = atomic_load(&hyp_schedules);
	out->biodones = atomic_load(&conf_biodones);
	out->cpu_waits_over_limit = atomic_load(&cpu_waits_over_limit);
}

/* ---- entering the kernel and checking calls ---------------------------------- */

void
conf_enter_kernel(void)
{
	hyp_schedule();
	hyp_lwproc_newlwp(0);
}

void
conf_leave_kernel(void)
{
	hyp_lwproc_release();
	cpu_release();
}

/* A distinctive big-lock count that must survive every hypercall. */
#define CALL_BIGLOCKS 3

void
conf_call_begin(struct conf_call *call, const char *name,
    enum conf_release release)
{
	call->name = name;
	call->release = release;
	CHECK(conf_self.cpu != -1, "%s: test called without a CPU", name);
	call->lwp = rumpuser_curlwp();
	conf_self.biglocks = CALL_BIGLOCKS;
	call->unschedules = conf_self.unschedules;
	call->schedules = conf_self.schedules;
}

void
conf_call_end(struct conf_call *call)
{
	uint64_t released = conf_self.unschedules - call->unschedules;
	uint64_t retaken = conf_self.schedules - call->schedules;

	CHECK(conf_self.cpu != -1, "%s returned without a CPU", call->name);
	CHECK(released == retaken, "%s released the CPU %llu times but retook "
	    "it %llu times", call->name, (unsigned long long)released,
	    (unsigned long long)retaken);
	CHECK(conf_self.biglocks == CALL_BIGLOCKS, "%s lost the big-lock count "
	    "(%d, expected %d)", call->name, conf_self.biglocks, CALL_BIGLOCKS);
	CHECK(rumpuser_curlwp() == call->lwp, "%s changed curlwp", call->name);
	if (call->release == CONF_NEVER)
		CHECK(released == 0, "%s released the CPU (it must not)",
		    call->name);
	if (call->release == CONF_ALWAYS)
		CHECK(released > 0, "%s blocked without releasing the CPU",
		    call->name);
	conf_self.biglocks = 0;
}

void
rumpconf_enter(void)
{
	conf_begin_suite();
	conf_enter_kernel();
}

int
rumpconf_leave(void)
{
	conf_leave_kernel();
	return conf_end_suite();
}
