/*
 * rumpuser_c.c: the few pieces of librumpuser that must be C: the varargs
 * rumpuser_dprintf, the thread-local curlwp slot and the default upcall table.
 */

#include "CRumpUser.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

__thread struct lwp *crumpuser_curlwp_slot
    __attribute__((tls_model("initial-exec")));

static void nop_void(void) {}
static void nop_backend_unschedule(int ignored, int *nlocks, void *interlock) {
	(void)ignored; (void)interlock;
	if (nlocks != NULL)
		*nlocks = 0;
}
static void nop_backend_schedule(int nlocks, void *interlock) {
	(void)nlocks; (void)interlock;
}
static void nop_switch(struct lwp *l) { (void)l; }
static int nop_rfork(void *priv, int flags, const char *comm) {
	(void)priv; (void)flags; (void)comm;
	return 78; /* NetBSD ENOSYS */
}
static int nop_newlwp(pid_t pid) { (void)pid; return 0; }
static struct lwp *nop_curlwp(void) { return crumpuser_curlwp_slot; }
static int nop_syscall(int num, void *arg, long *retval) {
	(void)num; (void)arg; (void)retval;
	return 78;
}
static void nop_execnotify(const char *comm) { (void)comm; }
static pid_t nop_getpid(void) { return 0; }

struct rumpuser_hyperup crumpuser_hyp = {
	.hyp_schedule = nop_void,
	.hyp_unschedule = nop_void,
	.hyp_backend_unschedule = nop_backend_unschedule,
	.hyp_backend_schedule = nop_backend_schedule,
	.hyp_lwproc_switch = nop_switch,
	.hyp_lwproc_release = nop_void,
	.hyp_lwproc_rfork = nop_rfork,
	.hyp_lwproc_newlwp = nop_newlwp,
	.hyp_lwproc_curlwp = nop_curlwp,
	.hyp_syscall = nop_syscall,
	.hyp_lwpexit = nop_void,
	.hyp_execnotify = nop_execnotify,
	.hyp_getpid = nop_getpid,
};

/*
 * Debug output that bypasses the kernel's printf: format on the stack (or
 * the heap for long messages) and hand the text to the console sink in one
 * piece, so concurrent messages do not interleave within a line.
 */
void
rumpuser_dprintf(const char *format, ...)
{
	char stackbuf[512];
	va_list ap;
	int n;

	va_start(ap, format);
	n = vsnprintf(stackbuf, sizeof(stackbuf), format, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n < sizeof(stackbuf)) {
		crumpuser_console_write(2, stackbuf, (size_t)n);
		return;
	}

	char *heapbuf = malloc((size_t)n + 1);
	if (heapbuf == NULL) {
		crumpuser_console_write(2, stackbuf, sizeof(stackbuf) - 1);
		return;
	}
	va_start(ap, format);
	vsnprintf(heapbuf, (size_t)n + 1, format, ap);
	va_end(ap);
	crumpuser_console_write(2, heapbuf, (size_t)n);
	free(heapbuf);
}

/* The upcall table's layout is ABI: NetBSD's field order, LP64 offsets. */
#include <stddef.h>
#if defined(__LP64__)
_Static_assert(offsetof(struct rumpuser_hyperup, hyp_schedule) == 0, "hyperup layout");
_Static_assert(offsetof(struct rumpuser_hyperup, hyp_backend_unschedule) == 16, "hyperup layout");
_Static_assert(offsetof(struct rumpuser_hyperup, hyp_backend_schedule) == 24, "hyperup layout");
_Static_assert(offsetof(struct rumpuser_hyperup, hyp_lwproc_switch) == 32, "hyperup layout");
_Static_assert(offsetof(struct rumpuser_hyperup, hyp_lwproc_newlwp) == 56, "hyperup layout");
_Static_assert(offsetof(struct rumpuser_hyperup, hyp_lwproc_curlwp) == 64, "hyperup layout");
_Static_assert(offsetof(struct rumpuser_hyperup, hyp_syscall) == 72, "hyperup layout");
_Static_assert(offsetof(struct rumpuser_hyperup, hyp_getpid) == 96, "hyperup layout");
_Static_assert(offsetof(struct rumpuser_hyperup, hyp__extra) == 104, "hyperup layout");
_Static_assert(sizeof(struct rumpuser_hyperup) == 168, "hyperup layout");
_Static_assert(sizeof(struct rumpuser_iovec) == 16, "iovec layout");
#endif
