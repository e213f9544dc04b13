/*
 * CRumpUser.h: the C side of swift-rumprun's librumpuser.
 *
 * Swift imports this module; C programs include <rumpuser.h> (and
 * <rumpuser_component.h>) only.  Besides the public ABI this header holds
 * what the Swift implementation needs from C: the saved upcall table and
 * inline wrappers around it, the thread-local curlwp slot, and the layouts of
 * the lock objects behind the opaque struct rumpuser_mtx/rw/cv pointers.
 */

#ifndef CRUMPUSER_H
#define CRUMPUSER_H

#include "rumpuser.h"
#include "rumpuser_component.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* ---- upcalls ----------------------------------------------------------- */

/*
 * The table given to rumpuser_init().  Until then it holds no-op upcalls
 * (hyp_backend_unschedule reports zero big locks), so the locks, clocks and
 * files also work for programs that use them without a rump kernel.
 */
extern struct rumpuser_hyperup crumpuser_hyp;

static inline void crumpuser_set_hyperup(const struct rumpuser_hyperup *hyp) {
	crumpuser_hyp = *hyp;
}

/* Release the calling thread's virtual CPU; returns the big-lock count. */
static inline int crumpuser_unschedule(void *interlock) {
	int nlocks = 0;
	crumpuser_hyp.hyp_backend_unschedule(0, &nlocks, interlock);
	return nlocks;
}

/* Take a virtual CPU back, restoring the big-lock count. */
static inline void crumpuser_schedule(int nlocks, void *interlock) {
	crumpuser_hyp.hyp_backend_schedule(nlocks, interlock);
}

static inline void crumpuser_hyp_schedule(void) { crumpuser_hyp.hyp_schedule(); }
static inline void crumpuser_hyp_unschedule(void) { crumpuser_hyp.hyp_unschedule(); }
static inline int crumpuser_hyp_newlwp(pid_t pid) {
	return crumpuser_hyp.hyp_lwproc_newlwp(pid);
}
static inline struct lwp *crumpuser_hyp_curlwp(void) {
	return crumpuser_hyp.hyp_lwproc_curlwp();
}
static inline void crumpuser_hyp_switch(struct lwp *l) {
	crumpuser_hyp.hyp_lwproc_switch(l);
}
static inline void crumpuser_hyp_release(void) {
	crumpuser_hyp.hyp_lwproc_release();
}

/* Upcalls used by the syscall proxy server (SyscallProxyServer.swift). */
static inline int crumpuser_hyp_rfork(void *client, int flags, const char *comm) {
	return crumpuser_hyp.hyp_lwproc_rfork(client, flags, comm);
}
static inline int crumpuser_hyp_syscall(int number, void *arguments, long *retval) {
	return crumpuser_hyp.hyp_syscall(number, arguments, retval);
}
static inline void crumpuser_hyp_lwpexit(void) { crumpuser_hyp.hyp_lwpexit(); }
static inline void crumpuser_hyp_execnotify(const char *comm) {
	crumpuser_hyp.hyp_execnotify(comm);
}
static inline pid_t crumpuser_hyp_getpid(void) { return crumpuser_hyp.hyp_getpid(); }

/* ---- curlwp: one thread-local load ------------------------------------- */

extern __thread struct lwp *crumpuser_curlwp_slot
    __attribute__((tls_model("initial-exec")));

static inline struct lwp *crumpuser_tls_curlwp(void) {
	return crumpuser_curlwp_slot;
}
static inline void crumpuser_tls_set_curlwp(struct lwp *l) {
	crumpuser_curlwp_slot = l;
}

/* ---- errno --------------------------------------------------------------- */

static inline int crumpuser_errno(void) { return errno; }
static inline void crumpuser_set_errno(int value) { errno = value; }

/* ---- lock objects ------------------------------------------------------- */

/* Objects are allocated on their own cache line (NetBSD does the same). */
#define CRUMPUSER_LOCK_ALIGN 64

/*
 * A futex mutex (U. Drepper, "Futexes Are Tricky", mutex #2): word 0 is
 * free, 1 locked, 2 locked with possible sleepers.  Smaller and faster
 * than pthread_mutex_t on both paths, and it lets the condition variable
 * below retake the mutex in the order the contract requires.
 */
struct crumpuser_mtx {
	uint32_t word;
	int flags;
	struct lwp *owner;	/* tracked for RUMPUSER_MTX_KMUTEX only */
};

/*
 * Reader/writer lock built on a mutex and two condition variables so that
 * tryupgrade and downgrade are exact: readers counts read holders, writing
 * is 1 while a writer holds it.  Waiting writers keep new readers out.
 */
struct crumpuser_rw {
	pthread_mutex_t lock;
	pthread_cond_t readers_cv;
	pthread_cond_t writers_cv;
	struct lwp *writer;
	unsigned int readers;
	unsigned int writing;
	unsigned int waiting_readers;
	unsigned int waiting_writers;
};

/*
 * A futex condition variable: waiters sleep on `sequence`, which every
 * signal and broadcast advances; `waiters` counts them, so that signalling
 * an idle variable makes no system call (and answers has_waiters).
 */
struct crumpuser_cv {
	uint32_t sequence;
	uint32_t waiters;
};

/* ---- atomics and futexes for the lock objects --------------------------- */

static inline uint32_t crumpuser_load_relaxed(uint32_t *word) {
	return __atomic_load_n(word, __ATOMIC_RELAXED);
}
static inline uint32_t crumpuser_load_seqcst(uint32_t *word) {
	return __atomic_load_n(word, __ATOMIC_SEQ_CST);
}
/* Compare-and-swap with acquire ordering on success. */
static inline int crumpuser_cas_acquire(uint32_t *word, uint32_t expected,
    uint32_t desired) {
	return __atomic_compare_exchange_n(word, &expected, desired, 0,
	    __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}
static inline uint32_t crumpuser_exchange_acquire(uint32_t *word, uint32_t value) {
	return __atomic_exchange_n(word, value, __ATOMIC_ACQUIRE);
}
static inline uint32_t crumpuser_exchange_release(uint32_t *word, uint32_t value) {
	return __atomic_exchange_n(word, value, __ATOMIC_RELEASE);
}
static inline uint32_t crumpuser_fetch_add(uint32_t *word, uint32_t value) {
	return __atomic_fetch_add(word, value, __ATOMIC_SEQ_CST);
}
static inline uint32_t crumpuser_fetch_sub(uint32_t *word, uint32_t value) {
	return __atomic_fetch_sub(word, value, __ATOMIC_SEQ_CST);
}

/*
 * Sleeps while *word == value, until woken or (deadline non-NULL) the
 * CLOCK_MONOTONIC deadline passes.  Returns 0 or a host errno (EAGAIN:
 * the word had changed; ETIMEDOUT; EINTR).
 */
int crumpuser_futex_wait(uint32_t *word, uint32_t value,
    const struct timespec *deadline);
/* Wakes up to `count` sleepers on word. */
void crumpuser_futex_wake(uint32_t *word, int count);

/* ---- host facilities that need GNU or Linux headers (host.c) ----------- */

#include <elf.h>

/* pthread_setname_np, truncating the name to the host's 15 characters. */
int crumpuser_set_thread_name(pthread_t thread, const char *name);
/* Names the calling thread (PR_SET_NAME: at most 15 characters are kept). */
void crumpuser_set_own_thread_name(const char *name);
/* getrandom(2); returns the byte count or -1 with errno set. */
long crumpuser_host_getrandom(void *buffer, size_t length, int nonblocking,
    int hard);
/* Size in bytes of a block or character device (BLKGETSIZE64, then lseek). */
int crumpuser_device_size(int fd, uint64_t *size);

/* One object mapped by the dynamic linker (dl_iterate_phdr order). */
struct crumpuser_object {
	uintptr_t base;			/* load bias (link_map l_addr) */
	const char *name;		/* "" for the main program */
	const Elf64_Phdr *phdr;
	uint16_t phnum;
};
/* Fills up to `capacity` entries and returns how many objects exist. */
size_t crumpuser_loaded_objects(struct crumpuser_object *objects,
    size_t capacity);

/* ---- console sink for rumpuser_dprintf (defined in Swift) ---------------- */

void crumpuser_console_write(int fd, const char *text, size_t length);

#endif /* CRUMPUSER_H */
