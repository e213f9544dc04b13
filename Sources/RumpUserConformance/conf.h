/*
 * conf.h: internals shared by the harness kernel (kernel.c) and the suites.
 */

#ifndef RUMPCONF_INTERNAL_H
#define RUMPCONF_INTERNAL_H

#define _GNU_SOURCE
#include "RumpUserConformance.h"
#include "rumpuser.h"
#include "rumpuser_component.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

/* The harness kernel's lwp. */
struct lwp {
	uint32_t magic;
	int id;
	int temporary;		/* made by hyp_schedule for a bare thread */
	struct conf_proc *proc;	/* a syscall proxy client's process, or NULL */
};
#define CONF_LWP_MAGIC 0x4c575021u

/* Per-thread view of the harness kernel. */
struct conf_thread {
	int cpu;		/* virtual CPU held, or -1 */
	int biglocks;		/* big-lock count, handed over on unschedule */
	/* Backend upcalls made by this thread; atomic because a helper thread
	 * watches it to see that this thread has blocked in a hypercall. */
	_Atomic uint64_t unschedules;
	uint64_t schedules;
	void *last_unschedule_interlock;
	void *last_schedule_interlock;
	int in_biodone;
};
extern __thread struct conf_thread conf_self;

/* Failure recording. */
void conf_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void conf_count_check(void);
#define CHECK(cond, ...) do { \
	conf_count_check(); \
	if (!(cond)) conf_fail(__FILE__, __LINE__, __VA_ARGS__); \
} while (0)
#define CHECK_EQ(actual, expected, what) do { \
	long long a_ = (long long)(actual), e_ = (long long)(expected); \
	CHECK(a_ == e_, "%s: got %lld, expected %lld", (what), a_, e_); \
} while (0)

void conf_begin_suite(void);
int conf_end_suite(void);

/*
 * Contract check around one hypercall.  CONF_NEVER: must not release the
 * CPU (nowrap, SPIN, non-blocking calls); CONF_MAY: may release it;
 * CONF_ALWAYS: must release it (calls that always block).
 */
enum conf_release { CONF_NEVER, CONF_MAY, CONF_ALWAYS };
struct conf_call {
	const char *name;
	enum conf_release release;
	uint64_t unschedules, schedules;
	int biglocks;
	struct lwp *lwp;
};
void conf_call_begin(struct conf_call *call, const char *name,
    enum conf_release release);
void conf_call_end(struct conf_call *call);
#define HYPERCALL(release, expr) do { \
	struct conf_call call_; \
	conf_call_begin(&call_, #expr, (release)); \
	expr; \
	conf_call_end(&call_); \
} while (0)

/* Entering and leaving the harness kernel on a host thread. */
void conf_enter_kernel(void);		/* CPU + new lwp */
void conf_leave_kernel(void);		/* release lwp + CPU */

/* Registry of mutex flags so upcalls can check interlock ordering. */
void conf_register_mutex(struct rumpuser_mtx *mtx, int flags);
void conf_forget_mutex(struct rumpuser_mtx *mtx);

struct lwp *conf_new_lwp(int temporary);
void conf_free_lwp(struct lwp *l);

extern _Atomic uint64_t conf_biodones;

/*
 * The harness kernel's processes for syscall proxy clients (spkernel.c):
 * the upcalls the proxy server makes (rfork, newlwp with a pid, syscall,
 * lwpexit, execnotify, getpid) and the bookkeeping of lwps in them.
 */
int conf_sp_rfork(void *client, int flags, const char *comm);
int conf_sp_newlwp(pid_t pid);
int conf_sp_syscall(int number, void *arguments, long *retval);
void conf_sp_lwpexit(void);
void conf_sp_execnotify(const char *comm);
pid_t conf_sp_getpid(void);
void conf_sp_lwp_freed(struct lwp *l);
void conf_lwproc_switch(struct lwp *l);

#endif
