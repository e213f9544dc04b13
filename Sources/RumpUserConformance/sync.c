/*
 * sync.c: threads, curlwp, mutexes, rwlocks and condition variables, with
 * the CPU-release rules of each call and stress runs with exact counts.
 */

#include "conf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int64_t
now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Sleeps in the host while keeping the CPU (for helper threads only). */
static void
host_pause_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };
	nanosleep(&ts, NULL);
}

/* Kernel-style sleep: releases the CPU. */
static void
kernel_pause_ms(int ms)
{
	rumpuser_clock_sleep(RUMPUSER_CLOCK_RELWALL, ms / 1000, (long)(ms % 1000) * 1000000);
}

static void
wait_flag(_Atomic int *flag, int value)
{
	while (atomic_load(flag) < value)
		kernel_pause_ms(1);
}

/*
 * A contended-lock check must see the waiter block while the lock is still
 * held: a holder that let go after a fixed time lost the race whenever the
 * host stalled the waiter for longer (CI runs on a loaded 2-core machine),
 * and the waiter then took a free lock without releasing its CPU.  The
 * waiter announces the call it is about to make (its own unschedule count
 * before it); the holder keeps the lock until that count has moved, i.e.
 * the waiter has released its CPU inside the call.  If it never does, the
 * holder gives up after a long time and the CONF_ALWAYS check fails.
 */
struct block_watch {
	_Atomic(_Atomic uint64_t *) counter;	/* the waiter's conf_self.unschedules */
	_Atomic uint64_t before;
	_Atomic int armed;
};

static void
watch_arm(struct block_watch *w)
{
	atomic_store(&w->before, atomic_load(&conf_self.unschedules));
	atomic_store(&w->counter, &conf_self.unschedules);
	atomic_store(&w->armed, 1);
}

/* Waits (keeping the CPU when `keep_cpu`) until the armed thread has
 * released its CPU; 0 when seen, -1 after 30 s. */
static int
watch_wait(struct block_watch *w, int keep_cpu)
{
	int64_t deadline = now_ns() + 30000000000LL;

	while (now_ns() < deadline) {
		if (atomic_load(&w->armed) &&
		    atomic_load(atomic_load(&w->counter)) != atomic_load(&w->before))
			return 0;
		if (keep_cpu)
			host_pause_ms(1);
		else
			kernel_pause_ms(1);
	}
	return -1;
}

static void *
create_joinable(void *(*fn)(void *), void *arg, const char *name)
{
	void *cookie = NULL;
	int rv;

	HYPERCALL(CONF_MAY, rv = rumpuser_thread_create(fn, arg, name, 1, 0, -1, &cookie));
	CHECK_EQ(rv, 0, "thread_create");
	return cookie;
}

static void
join(void *cookie)
{
	int rv;

	HYPERCALL(CONF_ALWAYS, rv = rumpuser_thread_join(cookie));
	CHECK_EQ(rv, 0, "thread_join");
}

/* ---- threads ------------------------------------------------------------- */

struct thread_probe {
	char name[32];
	int ran;
	int after_exit;
	struct rumpuser_mtx *mtx;
	struct rumpuser_cv *cv;
	int detached_done;
};

static void *
named_thread(void *arg)
{
	struct thread_probe *p = arg;

	conf_enter_kernel();
	pthread_getname_np(pthread_self(), p->name, sizeof(p->name));
	p->ran = 1;
	conf_leave_kernel();
	return NULL;
}

static void *
exiting_thread(void *arg)
{
	struct thread_probe *p = arg;

	conf_enter_kernel();
	p->ran = 1;
	conf_leave_kernel();
	rumpuser_thread_exit();
	p->after_exit = 1;	/* never reached */
	return NULL;
}

static void *
detached_thread(void *arg)
{
	struct thread_probe *p = arg;

	conf_enter_kernel();
	rumpuser_mutex_enter(p->mtx);
	p->detached_done++;
	rumpuser_cv_broadcast(p->cv);
	rumpuser_mutex_exit(p->mtx);
	conf_leave_kernel();
	return NULL;
}

int
rumpconf_test_threads(void)
{
	struct thread_probe p;
	int rv;

	conf_begin_suite();
	conf_enter_kernel();
	memset(&p, 0, sizeof(p));
	join(create_joinable(named_thread, &p, "conf-named-thread-long"));
	CHECK(p.ran, "joinable thread did not run before join returned");
	CHECK(strcmp(p.name, "conf-named-thre") == 0, "thread name '%s'", p.name);

	memset(&p, 0, sizeof(p));
	join(create_joinable(exiting_thread, &p, NULL));
	CHECK(p.ran && !p.after_exit, "rumpuser_thread_exit did not end the thread");

	memset(&p, 0, sizeof(p));
	rumpuser_mutex_init(&p.mtx, RUMPUSER_MTX_KMUTEX);
	rumpuser_cv_init(&p.cv);
	for (int i = 0; i < 4; i++) {
		HYPERCALL(CONF_MAY, rv = rumpuser_thread_create(detached_thread, &p,
		    "conf-detached", 0, 1, i % 2, NULL));
		CHECK_EQ(rv, 0, "detached thread_create");
	}
	rumpuser_mutex_enter(p.mtx);
	while (p.detached_done < 4)
		HYPERCALL(CONF_ALWAYS, rumpuser_cv_wait(p.cv, p.mtx));
	rumpuser_mutex_exit(p.mtx);
	rumpuser_cv_destroy(p.cv);
	rumpuser_mutex_destroy(p.mtx);
	conf_leave_kernel();
	return conf_end_suite();
}

/* ---- curlwp ---------------------------------------------------------------- */

struct curlwp_probe {
	_Atomic int started;
	_Atomic int mismatches;
	int seen[8];		/* lwp ids: addresses may be reused */
};

struct curlwp_arg {
	struct curlwp_probe *probe;
	int slot;
};

static void *
curlwp_thread(void *arg)
{
	struct curlwp_arg *a = arg;
	struct lwp *mine;

	CHECK(rumpuser_curlwp() == NULL, "new thread starts with an lwp");
	conf_enter_kernel();
	mine = rumpuser_curlwp();
	a->probe->seen[a->slot] = mine != NULL ? mine->id : -1;
	atomic_fetch_add(&a->probe->started, 1);
	for (int i = 0; i < 100000; i++) {
		if (rumpuser_curlwp() != mine)
			atomic_fetch_add(&a->probe->mismatches, 1);
	}
	CHECK(mine != NULL && mine->magic == CONF_LWP_MAGIC, "curlwp is not our lwp");
	conf_leave_kernel();
	CHECK(rumpuser_curlwp() == NULL, "curlwp survives LWP_CLEAR");
	return NULL;
}

int
rumpconf_test_curlwp(void)
{
	struct curlwp_probe probe;
	struct curlwp_arg args[4];
	void *cookies[4];
	struct lwp *main_lwp;

	conf_begin_suite();
	memset(&probe, 0, sizeof(probe));
	conf_enter_kernel();
	main_lwp = rumpuser_curlwp();
	CHECK(main_lwp != NULL, "no curlwp after LWP_SET");
	for (int i = 0; i < 4; i++) {
		args[i] = (struct curlwp_arg){ &probe, i };
		cookies[i] = create_joinable(curlwp_thread, &args[i], "conf-curlwp");
	}
	for (int i = 0; i < 4; i++)
		join(cookies[i]);
	CHECK_EQ(atomic_load(&probe.mismatches), 0, "curlwp changed under a thread");
	for (int i = 0; i < 4; i++) {
		CHECK(probe.seen[i] != main_lwp->id, "thread %d saw the main thread's lwp", i);
		for (int j = 0; j < i; j++)
			CHECK(probe.seen[i] != probe.seen[j], "threads %d and %d share an lwp", i, j);
	}
	CHECK(rumpuser_curlwp() == main_lwp, "main thread's curlwp changed");

	/* SET and CLEAR directly. */
	struct lwp *l = conf_new_lwp(0);
	rumpuser_curlwpop(RUMPUSER_LWP_CLEAR, main_lwp);
	CHECK(rumpuser_curlwp() == NULL, "curlwp after CLEAR");
	rumpuser_curlwpop(RUMPUSER_LWP_SET, l);
	CHECK(rumpuser_curlwp() == l, "curlwp after SET");
	rumpuser_curlwpop(RUMPUSER_LWP_CLEAR, l);
	conf_free_lwp(l);
	rumpuser_curlwpop(RUMPUSER_LWP_SET, main_lwp);
	conf_leave_kernel();
	return conf_end_suite();
}

/* ---- mutexes ----------------------------------------------------------------- */

struct holder {
	struct rumpuser_mtx *mtx;
	struct rumpuser_rw *rw;
	int rw_kind;
	int hold_ms;		/* 0: hold until `waiter` has blocked or `release` */
	_Atomic int holding;
	_Atomic int release;
	int tryenter_rv;
	struct block_watch waiter;
};

/* Holds the lock (the CPU too when `keep_cpu`) for hold_ms, or until the
 * watched waiter has blocked, or until told to let go. */
static void
hold(struct holder *h, int keep_cpu)
{
	if (h->hold_ms > 0) {
		if (keep_cpu)
			host_pause_ms(h->hold_ms);
		else
			kernel_pause_ms(h->hold_ms);
		return;
	}
	int64_t deadline = now_ns() + 30000000000LL;
	while (!atomic_load(&h->release) && now_ns() < deadline) {
		if (atomic_load(&h->waiter.armed)) {
			watch_wait(&h->waiter, keep_cpu);
			return;
		}
		if (keep_cpu)
			host_pause_ms(1);
		else
			kernel_pause_ms(1);
	}
}

static void *
mutex_holder(void *arg)
{
	struct holder *h = arg;

	conf_enter_kernel();
	rumpuser_mutex_enter(h->mtx);
	atomic_store(&h->holding, 1);
	hold(h, 1);	/* hold the mutex and the CPU */
	rumpuser_mutex_exit(h->mtx);
	conf_leave_kernel();
	return NULL;
}

static void *
mutex_trier(void *arg)
{
	struct holder *h = arg;

	conf_enter_kernel();
	HYPERCALL(CONF_NEVER, h->tryenter_rv = rumpuser_mutex_tryenter(h->mtx));
	conf_leave_kernel();
	return NULL;
}

int
rumpconf_test_mutex(void)
{
	struct rumpuser_mtx *kmtx, *spin, *plain;
	struct lwp *owner = (void *)1;
	struct holder h;
	int rv;

	conf_begin_suite();
	conf_enter_kernel();
	rumpuser_mutex_init(&kmtx, RUMPUSER_MTX_KMUTEX);
	rumpuser_mutex_init(&spin, RUMPUSER_MTX_SPIN | RUMPUSER_MTX_KMUTEX);
	rumpuser_mutex_init(&plain, RUMPUSER_MTX_SPIN);
	CHECK_EQ(rumpuser_mutex_spin_p(kmtx), 0, "spin_p of a KMUTEX");
	CHECK_EQ(rumpuser_mutex_spin_p(spin), 1, "spin_p of a SPIN mutex");

	/* Uncontended: no release; owner tracked. */
	HYPERCALL(CONF_NEVER, rumpuser_mutex_enter(kmtx));
	rumpuser_mutex_owner(kmtx, &owner);
	CHECK(owner == rumpuser_curlwp(), "KMUTEX owner is not curlwp");
	memset(&h, 0, sizeof(h));
	h.mtx = kmtx;
	join(create_joinable(mutex_trier, &h, "conf-trier"));
	CHECK_EQ(h.tryenter_rv, 16, "tryenter of a held mutex → EBUSY");
	HYPERCALL(CONF_NEVER, rumpuser_mutex_exit(kmtx));
	rumpuser_mutex_owner(kmtx, &owner);
	CHECK(owner == NULL, "KMUTEX owner after exit");
	HYPERCALL(CONF_NEVER, rv = rumpuser_mutex_tryenter(kmtx));
	CHECK_EQ(rv, 0, "tryenter of a free mutex");
	rumpuser_mutex_owner(kmtx, &owner);
	CHECK(owner == rumpuser_curlwp(), "owner after tryenter");
	rumpuser_mutex_exit(kmtx);

	/* Contended KMUTEX: the waiter releases its CPU. */
	memset(&h, 0, sizeof(h));
	h.mtx = kmtx;
	void *c = create_joinable(mutex_holder, &h, "conf-holder");
	wait_flag(&h.holding, 1);
	watch_arm(&h.waiter);
	HYPERCALL(CONF_ALWAYS, rumpuser_mutex_enter(kmtx));
	rumpuser_mutex_owner(kmtx, &owner);
	CHECK(owner == rumpuser_curlwp(), "owner after contended enter");
	rumpuser_mutex_exit(kmtx);
	join(c);

	/* Contended SPIN mutex: enter and enter_nowrap keep the CPU. */
	memset(&h, 0, sizeof(h));
	h.mtx = spin;
	h.hold_ms = 30;
	c = create_joinable(mutex_holder, &h, "conf-holder");
	wait_flag(&h.holding, 1);
	HYPERCALL(CONF_NEVER, rumpuser_mutex_enter(spin));
	rumpuser_mutex_exit(spin);
	join(c);
	HYPERCALL(CONF_NEVER, rumpuser_mutex_enter_nowrap(spin));
	rumpuser_mutex_owner(spin, &owner);
	CHECK(owner == rumpuser_curlwp(), "SPIN|KMUTEX owner");
	HYPERCALL(CONF_NEVER, rumpuser_mutex_exit(spin));
	HYPERCALL(CONF_NEVER, rumpuser_mutex_enter(plain));
	HYPERCALL(CONF_NEVER, rumpuser_mutex_exit(plain));

	rumpuser_mutex_destroy(kmtx);
	rumpuser_mutex_destroy(spin);
	rumpuser_mutex_destroy(plain);
	conf_leave_kernel();
	return conf_end_suite();
}

/* ---- rwlocks -------------------------------------------------------------------- */

static void *
rw_holder(void *arg)
{
	struct holder *h = arg;

	conf_enter_kernel();
	rumpuser_rw_enter(h->rw_kind, h->rw);
	atomic_store(&h->holding, 1);
	hold(h, 0);
	rumpuser_rw_exit(h->rw);
	conf_leave_kernel();
	return NULL;
}

static void *
rw_queued_writer(void *arg)
{
	struct holder *h = arg;

	conf_enter_kernel();
	watch_arm(&h->waiter);
	rumpuser_rw_enter(RUMPUSER_RW_WRITER, h->rw);
	rumpuser_rw_exit(h->rw);
	conf_leave_kernel();
	return NULL;
}

static int
held(int kind, struct rumpuser_rw *rw)
{
	int value = -1;

	HYPERCALL(CONF_NEVER, rumpuser_rw_held(kind, rw, &value));
	return value;
}

int
rumpconf_test_rwlock(void)
{
	struct rumpuser_rw *rw;
	struct holder h, q;
	void *c, *c2;
	int rv;

	conf_begin_suite();
	conf_enter_kernel();
	rumpuser_rw_init(&rw);

	HYPERCALL(CONF_NEVER, rumpuser_rw_enter(RUMPUSER_RW_READER, rw));
	CHECK(held(RUMPUSER_RW_READER, rw) > 0, "rw_held READER after enter");
	CHECK_EQ(held(RUMPUSER_RW_WRITER, rw), 0, "rw_held WRITER while reading");
	HYPERCALL(CONF_NEVER, rv = rumpuser_rw_tryenter(RUMPUSER_RW_WRITER, rw));
	CHECK_EQ(rv, 16, "tryenter WRITER while read-held → EBUSY");
	HYPERCALL(CONF_NEVER, rv = rumpuser_rw_tryupgrade(rw));
	CHECK_EQ(rv, 0, "tryupgrade by the only reader");
	CHECK_EQ(held(RUMPUSER_RW_WRITER, rw), 1, "rw_held WRITER after upgrade");
	CHECK_EQ(held(RUMPUSER_RW_READER, rw), 0, "rw_held READER after upgrade");
	HYPERCALL(CONF_MAY, rumpuser_rw_downgrade(rw));
	CHECK_EQ(held(RUMPUSER_RW_WRITER, rw), 0, "rw_held WRITER after downgrade");
	CHECK(held(RUMPUSER_RW_READER, rw) > 0, "rw_held READER after downgrade");
	HYPERCALL(CONF_NEVER, rv = rumpuser_rw_tryenter(RUMPUSER_RW_READER, rw));
	CHECK_EQ(rv, 0, "second reader");
	HYPERCALL(CONF_NEVER, rv = rumpuser_rw_tryupgrade(rw));
	CHECK_EQ(rv, 16, "tryupgrade with two readers → EBUSY");
	HYPERCALL(CONF_NEVER, rumpuser_rw_exit(rw));
	HYPERCALL(CONF_NEVER, rumpuser_rw_exit(rw));
	CHECK_EQ(held(RUMPUSER_RW_READER, rw), 0, "rw_held READER after exits");
	HYPERCALL(CONF_NEVER, rv = rumpuser_rw_tryenter(RUMPUSER_RW_WRITER, rw));
	CHECK_EQ(rv, 0, "tryenter WRITER on a free lock");
	CHECK_EQ(held(RUMPUSER_RW_WRITER, rw), 1, "rw_held WRITER");
	HYPERCALL(CONF_NEVER, rv = rumpuser_rw_tryenter(RUMPUSER_RW_READER, rw));
	CHECK_EQ(rv, 16, "tryenter READER while write-held → EBUSY");
	rumpuser_rw_exit(rw);

	/* A reader waiting for a writer releases its CPU. */
	memset(&h, 0, sizeof(h));
	h.rw = rw; h.rw_kind = RUMPUSER_RW_WRITER;
	c = create_joinable(rw_holder, &h, "conf-rw-writer");
	wait_flag(&h.holding, 1);
	watch_arm(&h.waiter);
	HYPERCALL(CONF_ALWAYS, rumpuser_rw_enter(RUMPUSER_RW_READER, rw));
	rumpuser_rw_exit(rw);
	join(c);

	/* A writer waiting for a reader releases its CPU. */
	memset(&h, 0, sizeof(h));
	h.rw = rw; h.rw_kind = RUMPUSER_RW_READER;
	c = create_joinable(rw_holder, &h, "conf-rw-reader");
	wait_flag(&h.holding, 1);
	watch_arm(&h.waiter);
	HYPERCALL(CONF_ALWAYS, rumpuser_rw_enter(RUMPUSER_RW_WRITER, rw));
	CHECK_EQ(held(RUMPUSER_RW_WRITER, rw), 1, "write-held after contended enter");
	rumpuser_rw_exit(rw);
	join(c);

	/* A queued writer keeps new readers out.  The reader holds the lock
	 * until told (a fixed 100 ms ran out when the host stalled this
	 * thread); the writer has released its CPU inside rw_enter before the
	 * probe, then 20 ms more let it reach the wait queue. */
	memset(&h, 0, sizeof(h));
	memset(&q, 0, sizeof(q));
	h.rw = rw; h.rw_kind = RUMPUSER_RW_READER;
	q.rw = rw;
	c = create_joinable(rw_holder, &h, "conf-rw-reader");
	wait_flag(&h.holding, 1);
	c2 = create_joinable(rw_queued_writer, &q, "conf-rw-queued");
	CHECK_EQ(watch_wait(&q.waiter, 0), 0, "queued writer released its CPU in rw_enter");
	kernel_pause_ms(20);
	HYPERCALL(CONF_NEVER, rv = rumpuser_rw_tryenter(RUMPUSER_RW_READER, rw));
	CHECK_EQ(rv, 16, "tryenter READER with a writer queued → EBUSY");
	if (rv == 0)
		rumpuser_rw_exit(rw);
	atomic_store(&h.release, 1);
	join(c);
	join(c2);

	rumpuser_rw_destroy(rw);
	conf_leave_kernel();
	return conf_end_suite();
}

/* ---- condition variables ------------------------------------------------------------- */

struct cv_probe {
	struct rumpuser_mtx *mtx;
	struct rumpuser_cv *cv;
	int predicate;
	int waiters_seen;
	int delay_ms;
	int broadcast;
	_Atomic int waiting;
	_Atomic int entered;	/* the waiter holds the mutex and will wait */
};

static void *
cv_signaller(void *arg)
{
	struct cv_probe *p = arg;

	conf_enter_kernel();
	kernel_pause_ms(p->delay_ms);
	/* The waiter holds the mutex from `entered` until its wait releases
	 * it, so the signal cannot come first (after a fixed delay alone it
	 * did when the host stalled the waiter, and saw no waiter). */
	wait_flag(&p->entered, 1);
	rumpuser_mutex_enter(p->mtx);
	rumpuser_cv_has_waiters(p->cv, &p->waiters_seen);
	p->predicate = 1;
	if (p->broadcast)
		rumpuser_cv_broadcast(p->cv);
	else
		rumpuser_cv_signal(p->cv);
	rumpuser_mutex_exit(p->mtx);
	conf_leave_kernel();
	return NULL;
}

static void *
cv_waiter(void *arg)
{
	struct cv_probe *p = arg;

	conf_enter_kernel();
	rumpuser_mutex_enter(p->mtx);
	atomic_fetch_add(&p->waiting, 1);
	while (!p->predicate)
		HYPERCALL(CONF_ALWAYS, rumpuser_cv_wait(p->cv, p->mtx));
	rumpuser_mutex_exit(p->mtx);
	conf_leave_kernel();
	return NULL;
}

static void
condvar_with(int flags)
{
	struct cv_probe p;
	int64_t t0;
	int rv, waiters = -1;

	memset(&p, 0, sizeof(p));
	rumpuser_mutex_init(&p.mtx, flags);
	conf_register_mutex(p.mtx, flags);
	rumpuser_cv_init(&p.cv);

	/* timedwait without a signal: ETIMEDOUT, interlock passed both ways. */
	rumpuser_mutex_enter(p.mtx);
	rumpuser_cv_has_waiters(p.cv, &waiters);
	CHECK_EQ(waiters, 0, "has_waiters of an idle cv");
	t0 = now_ns();
	HYPERCALL(CONF_ALWAYS, rv = rumpuser_cv_timedwait(p.cv, p.mtx, 0, 10000000));
	CHECK_EQ(rv, 60, "timedwait without a signal → ETIMEDOUT");
	CHECK(now_ns() - t0 >= 10000000, "timedwait returned early");
	CHECK(conf_self.last_unschedule_interlock == (void *)p.mtx,
	    "cv_timedwait did not pass its mutex to hyp_backend_unschedule");
	CHECK(conf_self.last_schedule_interlock == (void *)p.mtx,
	    "cv_timedwait did not pass its mutex to hyp_backend_schedule");
	struct lwp *owner = NULL;
	rumpuser_mutex_owner(p.mtx, &owner);
	CHECK(owner == rumpuser_curlwp(), "interlock not held after timedwait");
	HYPERCALL(CONF_ALWAYS, rv = rumpuser_cv_timedwait(p.cv, p.mtx, -1, 0));
	CHECK_EQ(rv, 60, "timedwait with a past timeout → ETIMEDOUT");
	rumpuser_mutex_exit(p.mtx);

	/* timedwait that is signalled: 0, and the signaller saw one waiter. */
	p.delay_ms = 20;
	void *c = create_joinable(cv_signaller, &p, "conf-signal");
	rumpuser_mutex_enter(p.mtx);
	atomic_store(&p.entered, 1);
	rv = 0;
	while (!p.predicate && rv == 0)
		HYPERCALL(CONF_ALWAYS, rv = rumpuser_cv_timedwait(p.cv, p.mtx, 5, 0));
	CHECK_EQ(rv, 0, "signalled timedwait");
	CHECK_EQ(p.waiters_seen, 1, "has_waiters seen by the signaller");
	rumpuser_mutex_exit(p.mtx);
	join(c);

	/* wait_nowrap keeps the CPU; the signaller runs on the other CPU. */
	p.predicate = 0;
	p.delay_ms = 10;
	atomic_store(&p.entered, 0);
	c = create_joinable(cv_signaller, &p, "conf-signal");
	rumpuser_mutex_enter(p.mtx);
	atomic_store(&p.entered, 1);
	while (!p.predicate)
		HYPERCALL(CONF_NEVER, rumpuser_cv_wait_nowrap(p.cv, p.mtx));
	rumpuser_mutex_exit(p.mtx);
	join(c);

	/* broadcast wakes every waiter. */
	p.predicate = 0;
	void *w[3];
	for (int i = 0; i < 3; i++)
		w[i] = create_joinable(cv_waiter, &p, "conf-waiter");
	wait_flag(&p.waiting, 3);
	p.broadcast = 1;
	p.delay_ms = 10;
	/* Each waiter counted itself under the mutex and waits on the cv. */
	atomic_store(&p.entered, 1);
	c = create_joinable(cv_signaller, &p, "conf-broadcast");
	for (int i = 0; i < 3; i++)
		join(w[i]);
	join(c);
	CHECK_EQ(p.waiters_seen, 3, "has_waiters before broadcast");

	rumpuser_cv_destroy(p.cv);
	conf_forget_mutex(p.mtx);
	rumpuser_mutex_destroy(p.mtx);
}

int
rumpconf_test_condvar(void)
{
	conf_begin_suite();
	conf_enter_kernel();
	condvar_with(RUMPUSER_MTX_KMUTEX);
	condvar_with(RUMPUSER_MTX_SPIN | RUMPUSER_MTX_KMUTEX);
	conf_leave_kernel();
	return conf_end_suite();
}

/* ---- stress ---------------------------------------------------------------------------- */

struct stress {
	struct rumpuser_mtx *mtx, *spin;
	struct rumpuser_rw *rw;
	struct rumpuser_cv *not_empty, *not_full;
	int iterations;
	long counter, spin_counter;
	long a, b;
	_Atomic long writes;
	_Atomic long inconsistent;
	/* bounded buffer */
	long buffer[8];
	int head, count;
	long produced_sum, consumed_sum;
	int consumers_left_items;
};

static void *
mutex_stress_thread(void *arg)
{
	struct stress *s = arg;
	struct lwp *owner;

	conf_enter_kernel();
	for (int i = 0; i < s->iterations; i++) {
		if (i % 16 != 0 || rumpuser_mutex_tryenter(s->mtx) != 0)
			rumpuser_mutex_enter(s->mtx);
		rumpuser_mutex_owner(s->mtx, &owner);
		if (owner != rumpuser_curlwp())
			atomic_fetch_add(&s->inconsistent, 1);
		s->counter++;
		rumpuser_mutex_exit(s->mtx);

		rumpuser_mutex_enter(s->spin);
		s->spin_counter++;
		rumpuser_mutex_exit(s->spin);
	}
	conf_leave_kernel();
	return NULL;
}

static void
run_threads(void *(*fn)(void *), void *arg, int threads)
{
	void *cookies[64];

	if (threads > 64)
		threads = 64;
	for (int i = 0; i < threads; i++)
		cookies[i] = create_joinable(fn, arg, "conf-stress");
	for (int i = 0; i < threads; i++)
		join(cookies[i]);
}

int
rumpconf_stress_mutex(int threads, int iterations)
{
	struct stress s;

	conf_begin_suite();
	conf_enter_kernel();
	memset(&s, 0, sizeof(s));
	s.iterations = iterations;
	rumpuser_mutex_init(&s.mtx, RUMPUSER_MTX_KMUTEX);
	rumpuser_mutex_init(&s.spin, RUMPUSER_MTX_SPIN);
	run_threads(mutex_stress_thread, &s, threads);
	CHECK_EQ(s.counter, (long)threads * iterations, "KMUTEX-protected count");
	CHECK_EQ(s.spin_counter, (long)threads * iterations, "SPIN-protected count");
	CHECK_EQ(atomic_load(&s.inconsistent), 0, "owner was not the holder");
	rumpuser_mutex_destroy(s.mtx);
	rumpuser_mutex_destroy(s.spin);
	conf_leave_kernel();
	return conf_end_suite();
}

static void *
rw_stress_thread(void *arg)
{
	struct stress *s = arg;
	long writes = 0;
	int held_value;

	conf_enter_kernel();
	for (int i = 0; i < s->iterations; i++) {
		switch (i % 8) {
		case 0:		/* writer */
			rumpuser_rw_enter(RUMPUSER_RW_WRITER, s->rw);
			s->a++; s->b++; writes++;
			rumpuser_rw_exit(s->rw);
			break;
		case 3:		/* reader that tries to upgrade */
			rumpuser_rw_enter(RUMPUSER_RW_READER, s->rw);
			if (rumpuser_rw_tryupgrade(s->rw) == 0) {
				rumpuser_rw_held(RUMPUSER_RW_WRITER, s->rw, &held_value);
				if (!held_value)
					atomic_fetch_add(&s->inconsistent, 1);
				s->a++; s->b++; writes++;
			}
			rumpuser_rw_exit(s->rw);
			break;
		case 5:		/* writer that downgrades */
			rumpuser_rw_enter(RUMPUSER_RW_WRITER, s->rw);
			s->a++; s->b++; writes++;
			rumpuser_rw_downgrade(s->rw);
			if (s->a != s->b)
				atomic_fetch_add(&s->inconsistent, 1);
			rumpuser_rw_exit(s->rw);
			break;
		default:	/* reader */
			rumpuser_rw_enter(RUMPUSER_RW_READER, s->rw);
			if (s->a != s->b)
				atomic_fetch_add(&s->inconsistent, 1);
			rumpuser_rw_exit(s->rw);
			break;
		}
	}
	atomic_fetch_add(&s->writes, writes);
	conf_leave_kernel();
	return NULL;
}

int
rumpconf_stress_rwlock(int threads, int iterations)
{
	struct stress s;

	conf_begin_suite();
	conf_enter_kernel();
	memset(&s, 0, sizeof(s));
	s.iterations = iterations;
	rumpuser_rw_init(&s.rw);
	run_threads(rw_stress_thread, &s, threads);
	CHECK_EQ(s.a, atomic_load(&s.writes), "writes counted under the write lock");
	CHECK_EQ(s.a, s.b, "the two counters");
	CHECK(s.a >= (long)threads * (iterations / 8) * 2, "too few writes: %ld", s.a);
	CHECK_EQ(atomic_load(&s.inconsistent), 0, "readers saw a half-done write");
	rumpuser_rw_destroy(s.rw);
	conf_leave_kernel();
	return conf_end_suite();
}

static void *
producer_thread(void *arg)
{
	struct stress *s = arg;

	conf_enter_kernel();
	for (int i = 1; i <= s->iterations; i++) {
		rumpuser_mutex_enter(s->mtx);
		while (s->count == 8)
			rumpuser_cv_wait(s->not_full, s->mtx);
		s->buffer[(s->head + s->count) % 8] = i;
		s->count++;
		s->produced_sum += i;
		rumpuser_cv_signal(s->not_empty);
		rumpuser_mutex_exit(s->mtx);
	}
	conf_leave_kernel();
	return NULL;
}

static void *
consumer_thread(void *arg)
{
	struct stress *s = arg;

	conf_enter_kernel();
	for (;;) {
		rumpuser_mutex_enter(s->mtx);
		while (s->count == 0 && s->consumers_left_items > 0) {
			/* Alternate plain and timed waits. */
			if (s->consumers_left_items % 2)
				rumpuser_cv_wait(s->not_empty, s->mtx);
			else
				(void)rumpuser_cv_timedwait(s->not_empty, s->mtx, 0, 1000000);
		}
		if (s->consumers_left_items == 0) {
			rumpuser_cv_broadcast(s->not_empty);
			rumpuser_mutex_exit(s->mtx);
			break;
		}
		s->consumed_sum += s->buffer[s->head];
		s->head = (s->head + 1) % 8;
		s->count--;
		s->consumers_left_items--;
		if (s->consumers_left_items == 0)
			rumpuser_cv_broadcast(s->not_empty);
		rumpuser_cv_signal(s->not_full);
		rumpuser_mutex_exit(s->mtx);
	}
	conf_leave_kernel();
	return NULL;
}

int
rumpconf_stress_condvar(int producers, int items_each)
{
	struct stress s;
	void *cookies[32];

	conf_begin_suite();
	conf_enter_kernel();
	if (producers > 16)
		producers = 16;
	memset(&s, 0, sizeof(s));
	s.iterations = items_each;
	s.consumers_left_items = producers * items_each;
	rumpuser_mutex_init(&s.mtx, RUMPUSER_MTX_KMUTEX);
	rumpuser_cv_init(&s.not_empty);
	rumpuser_cv_init(&s.not_full);
	for (int i = 0; i < producers; i++) {
		cookies[2 * i] = create_joinable(producer_thread, &s, "conf-producer");
		cookies[2 * i + 1] = create_joinable(consumer_thread, &s, "conf-consumer");
	}
	for (int i = 0; i < 2 * producers; i++)
		join(cookies[i]);
	long expected = (long)producers * ((long)items_each * (items_each + 1) / 2);
	CHECK_EQ(s.produced_sum, expected, "sum of produced items");
	CHECK_EQ(s.consumed_sum, expected, "sum of consumed items");
	CHECK_EQ(s.count, 0, "items left in the buffer");
	rumpuser_cv_destroy(s.not_empty);
	rumpuser_cv_destroy(s.not_full);
	rumpuser_mutex_destroy(s.mtx);
	conf_leave_kernel();
	return conf_end_suite();
}

struct storm {
	_Atomic long ran;
	struct rumpuser_mtx *mtx;
	struct rumpuser_cv *cv;
	long detached_left;
};

static void *
storm_thread(void *arg)
{
	struct storm *s = arg;

	conf_enter_kernel();
	atomic_fetch_add(&s->ran, 1);
	conf_leave_kernel();
	if (atomic_load(&s->ran) % 3 == 0)
		rumpuser_thread_exit();
	return NULL;
}

static void *
storm_detached(void *arg)
{
	struct storm *s = arg;

	conf_enter_kernel();
	rumpuser_mutex_enter(s->mtx);
	if (--s->detached_left == 0)
		rumpuser_cv_signal(s->cv);
	rumpuser_mutex_exit(s->mtx);
	conf_leave_kernel();
	return NULL;
}

int
rumpconf_stress_threads(int waves, int per_wave)
{
	struct storm s;
	void *cookies[256];
	int rv;

	conf_begin_suite();
	conf_enter_kernel();
	if (per_wave > 256)
		per_wave = 256;
	memset(&s, 0, sizeof(s));
	rumpuser_mutex_init(&s.mtx, RUMPUSER_MTX_KMUTEX);
	rumpuser_cv_init(&s.cv);
	for (int w = 0; w < waves; w++) {
		for (int i = 0; i < per_wave; i++)
			cookies[i] = create_joinable(storm_thread, &s, "conf-storm");
		for (int i = 0; i < per_wave; i++)
			join(cookies[i]);
	}
	CHECK_EQ(atomic_load(&s.ran), (long)waves * per_wave, "joinable threads that ran");

	s.detached_left = per_wave;
	for (int i = 0; i < per_wave; i++) {
		HYPERCALL(CONF_MAY, rv = rumpuser_thread_create(storm_detached, &s,
		    "conf-storm-d", 0, 0, -1, NULL));
		CHECK_EQ(rv, 0, "detached thread_create");
	}
	rumpuser_mutex_enter(s.mtx);
	while (s.detached_left > 0)
		rumpuser_cv_wait(s.cv, s.mtx);
	rumpuser_mutex_exit(s.mtx);
	rumpuser_cv_destroy(s.cv);
	rumpuser_mutex_destroy(s.mtx);
	conf_leave_kernel();
	return conf_end_suite();
}
