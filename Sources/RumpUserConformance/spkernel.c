/*
 * spkernel.c: processes of syscall proxy clients in the harness kernel, and
 * its fake system calls.  The upcalls check that they run on a thread that
 * holds a virtual CPU; the system calls reach the client only through the
 * rumpuser_sp_* hypercalls, each checked against the contract (copyin and
 * anonmmap wait for the client, so they must release the CPU).
 */

#include "conf.h"
#include "sptest.h"

#include <stdlib.h>
#include <string.h>

struct conf_proc {
	int pid;
	void *client;
	char name[64];
	int lwps;
	int exiting;
	struct conf_proc *next;
};

static pthread_mutex_t proc_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t proc_exit_cv = PTHREAD_COND_INITIALIZER;
static struct conf_proc *procs;
static int next_pid = 100;
static _Atomic int live_lwps;
static _Atomic uint64_t exits, syscalls;

int
conf_sp_live_processes(void)
{
	int n = 0;

	pthread_mutex_lock(&proc_lock);
	for (struct conf_proc *p = procs; p != NULL; p = p->next)
		n++;
	pthread_mutex_unlock(&proc_lock);
	return n;
}
int conf_sp_live_lwps(void) { return atomic_load(&live_lwps); }
uint64_t conf_sp_exits(void) { return atomic_load(&exits); }
uint64_t conf_sp_syscalls(void) { return atomic_load(&syscalls); }

static struct conf_proc *
current_proc(void)
{
	struct lwp *l = rumpuser_curlwp();

	return l != NULL ? l->proc : NULL;
}

/* A new lwp in p, made current on this thread.  Called with proc_lock. */
static void
attach_new_lwp(struct conf_proc *p)
{
	struct lwp *l = conf_new_lwp(0);

	l->proc = p;
	p->lwps++;
	atomic_fetch_add(&live_lwps, 1);
	pthread_mutex_unlock(&proc_lock);
	conf_lwproc_switch(l);
	pthread_mutex_lock(&proc_lock);
}

int
conf_sp_rfork(void *client, int flags, const char *comm)
{
	struct conf_proc *parent = current_proc();
	struct conf_proc *p;

	CHECK(conf_self.cpu != -1, "hyp_lwproc_rfork without a CPU");
	CHECK(client != NULL, "hyp_lwproc_rfork without a client");
	CHECK(flags == 0 || flags == 1 || flags == 2, "rfork flags %d", flags);
	/* A guest clears its files (2) and starts from no process. */
	if (flags == 2)
		CHECK(parent == NULL, "guest rfork from a process");
	p = calloc(1, sizeof(*p));
	p->client = client;
	if (comm != NULL)
		strncpy(p->name, comm, sizeof(p->name) - 1);
	else if (parent != NULL)
		memcpy(p->name, parent->name, sizeof(p->name));
	pthread_mutex_lock(&proc_lock);
	p->pid = next_pid++;
	p->next = procs;
	procs = p;
	attach_new_lwp(p);
	pthread_mutex_unlock(&proc_lock);
	return 0;
}

int
conf_sp_newlwp(pid_t pid)
{
	struct conf_proc *p;

	pthread_mutex_lock(&proc_lock);
	for (p = procs; p != NULL; p = p->next)
		if (p->pid == pid)
			break;
	if (p == NULL || p->exiting) {
		pthread_mutex_unlock(&proc_lock);
		return 3;	/* ESRCH */
	}
	attach_new_lwp(p);
	pthread_mutex_unlock(&proc_lock);
	return 0;
}

void
conf_sp_lwp_freed(struct lwp *l)
{
	struct conf_proc *p = l->proc, **pp;

	l->proc = NULL;
	atomic_fetch_sub(&live_lwps, 1);
	pthread_mutex_lock(&proc_lock);
	if (--p->lwps == 0) {
		for (pp = &procs; *pp != NULL; pp = &(*pp)->next) {
			if (*pp == p) {
				*pp = p->next;
				break;
			}
		}
		free(p);
	}
	pthread_mutex_unlock(&proc_lock);
}

void
conf_sp_lwpexit(void)
{
	struct conf_proc *p = current_proc();

	CHECK(conf_self.cpu != -1, "hyp_lwpexit without a CPU");
	CHECK(p != NULL, "hyp_lwpexit outside a process");
	atomic_fetch_add(&exits, 1);
	if (p == NULL)
		return;
	pthread_mutex_lock(&proc_lock);
	p->exiting = 1;
	pthread_cond_broadcast(&proc_exit_cv);
	pthread_mutex_unlock(&proc_lock);
}

void
conf_sp_execnotify(const char *comm)
{
	struct conf_proc *p = current_proc();

	CHECK(conf_self.cpu != -1, "hyp_execnotify without a CPU");
	CHECK(p != NULL && comm != NULL, "hyp_execnotify outside a process");
	if (p == NULL || comm == NULL)
		return;
	pthread_mutex_lock(&proc_lock);
	memset(p->name, 0, sizeof(p->name));
	strncpy(p->name, comm, sizeof(p->name) - 1);
	p->exiting = 0;		/* the new image runs */
	pthread_mutex_unlock(&proc_lock);
}

pid_t
conf_sp_getpid(void)
{
	struct conf_proc *p = current_proc();

	return p != NULL ? p->pid : 1;
}

/* ---- fake system calls ---------------------------------------------------- */

static int
sys_echo(void *client, const struct spt_echo *a, long *rv)
{
	unsigned char *buffer;
	long sum = 0;
	int error;

	if (a->len > (1 << 20))
		return 7;	/* E2BIG */
	buffer = malloc(a->len + 1);
	HYPERCALL(a->len > 0 ? CONF_ALWAYS : CONF_MAY,
	    error = rumpuser_sp_copyin(client, a->in, buffer, a->len));
	if (error == 0) {
		for (size_t i = 0; i < a->len; i++) {
			sum += buffer[i];
			buffer[i] ^= 0x5a;
		}
		HYPERCALL(CONF_MAY, error = rumpuser_sp_copyout(client, buffer, a->out, a->len));
	}
	free(buffer);
	rv[0] = (long)a->len;
	rv[1] = sum;
	return error;
}

static int
sys_string(void *client, const struct spt_string *a, long *rv)
{
	char buffer[256], reversed[256];
	size_t len = a->max;
	int error;

	if (len > sizeof(buffer))
		return 22;
	HYPERCALL(CONF_ALWAYS, error = rumpuser_sp_copyinstr(client, a->in, buffer, &len));
	if (error != 0)
		return error;
	CHECK(len <= a->max, "copyinstr length %zu over %zu", len, a->max);
	if (len == 0 || buffer[len - 1] != '\0')
		return 63;	/* ENAMETOOLONG: no NUL within max */
	len--;
	for (size_t i = 0; i < len; i++)
		reversed[i] = buffer[len - 1 - i];
	reversed[len] = '\0';
	size_t out = len + 1;
	HYPERCALL(CONF_MAY, error = rumpuser_sp_copyoutstr(client, reversed, a->out, &out));
	rv[0] = (long)len;
	return error;
}

static int
sys_getpid(void *client, struct conf_proc *p, const struct spt_getpid *a, long *rv)
{
	char name[64];
	size_t len;
	int error;

	pthread_mutex_lock(&proc_lock);
	memcpy(name, p->name, sizeof(name));
	pthread_mutex_unlock(&proc_lock);
	len = strlen(name) + 1;
	if (len > a->max)
		return 63;
	HYPERCALL(CONF_MAY, error = rumpuser_sp_copyoutstr(client, name, a->name, &len));
	rv[0] = p->pid;
	return error;
}

static int
sys_mmap(void *client, const struct spt_mmap *a, long *rv)
{
	void *address = NULL;
	unsigned char pattern[64];
	int error;

	HYPERCALL(CONF_ALWAYS, error = rumpuser_sp_anonmmap(client, a->len, &address));
	if (error != 0)
		return error;
	for (size_t i = 0; i < sizeof(pattern); i++)
		pattern[i] = (unsigned char)(0xa0 + i);
	HYPERCALL(CONF_MAY, error = rumpuser_sp_copyout(client, pattern, address,
	    a->len < sizeof(pattern) ? a->len : sizeof(pattern)));
	rv[0] = (long)(uintptr_t)address;
	return error;
}

static int
sys_waitexit(struct conf_proc *p)
{
	struct timespec deadline;
	void *cookie;

	/* Blocks like a sleeping system call: CPU released, woken by lwpexit. */
	cookie = rumpuser_component_unschedule();
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 30;
	pthread_mutex_lock(&proc_lock);
	while (!p->exiting) {
		if (pthread_cond_timedwait(&proc_exit_cv, &proc_lock, &deadline) != 0)
			break;
	}
	int exiting = p->exiting;
	pthread_mutex_unlock(&proc_lock);
	rumpuser_component_schedule(cookie);
	CHECK(exiting, "WAITEXIT: lwpexit never came");
	return 4;	/* EINTR */
}

int
conf_sp_syscall(int number, void *arguments, long *retval)
{
	struct conf_proc *p = current_proc();
	void *client;

	CHECK(conf_self.cpu != -1, "hyp_syscall without a CPU");
	CHECK(p != NULL, "hyp_syscall outside a process");
	if (p == NULL)
		return 78;
	atomic_fetch_add(&syscalls, 1);
	client = p->client;
#define ARGS(type) \
	if (arguments == NULL) return 14; \
	const type *a = arguments
	switch (number) {
	case SPT_ECHO: { ARGS(struct spt_echo); return sys_echo(client, a, retval); }
	case SPT_STRING: { ARGS(struct spt_string); return sys_string(client, a, retval); }
	case SPT_ERROR: { ARGS(struct spt_error); return a->error; }
	case SPT_GETPID: { ARGS(struct spt_getpid); return sys_getpid(client, p, a, retval); }
	case SPT_MMAP: { ARGS(struct spt_mmap); return sys_mmap(client, a, retval); }
	case SPT_RAISE: {
		ARGS(struct spt_raise);
		int error;
		HYPERCALL(CONF_MAY, error = rumpuser_sp_raise(client, a->signal));
		return error;
	}
	case SPT_WAITEXIT: return sys_waitexit(p);
	case SPT_FINI:
		HYPERCALL(CONF_MAY, rumpuser_sp_fini(client));
		return 0;
	default:
		return 78;	/* ENOSYS */
	}
#undef ARGS
}
