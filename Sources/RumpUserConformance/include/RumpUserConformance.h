/*
 * RumpUserConformance.h: a conformance harness for rumpuser(3) version 17
 * implementations, written in C and behaving like a rump kernel.
 *
 * rumpconf_setup() calls rumpuser_init() with an upcall table that keeps
 * real virtual CPUs (a thread must hold one to be "in the kernel"), tracks
 * per thread whether it holds one, and checks the contract on every
 * hypercall the suites make: the caller holds a CPU on return, every
 * release is matched by a retake with the same big-lock count, calls that
 * must not release (nowrap variants, SPIN mutexes, non-blocking calls) do
 * not, calls that always block do, cv waits pass their interlock, biodone
 * runs scheduled on a thread with an lwp, curlwp is per thread.
 *
 * Each rumpconf_test_* suite returns its number of failed checks; the
 * messages of the first failures are kept for rumpconf_failure_log().
 * Only one suite may run at a time.
 */

#ifndef RUMPUSER_CONFORMANCE_H
#define RUMPUSER_CONFORMANCE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Initializes the implementation with the harness kernel's upcalls. */
int rumpconf_setup(int virtual_cpus);

/*
 * Makes the calling host thread a kernel thread (a CPU and an lwp) and back,
 * for callers that make hypercalls outside the suites.  rumpconf_leave()
 * returns the failures the upcalls recorded since rumpconf_enter().
 */
void rumpconf_enter(void);
int rumpconf_leave(void);

/* Failure bookkeeping (reset at the start of every suite). */
int rumpconf_failures(void);
long rumpconf_checks(void);
const char *rumpconf_failure_log(void);

/* Contract counters over the life of the process. */
struct rumpconf_counters {
	uint64_t backend_unschedules;
	uint64_t backend_schedules;
	uint64_t hyp_schedules;
	uint64_t biodones;
	uint64_t cpu_waits_over_limit;
};
void rumpconf_get_counters(struct rumpconf_counters *out);

/* Suites.  `directory` is a writable scratch directory. */
int rumpconf_test_init(void);
int rumpconf_test_memory(void);
int rumpconf_test_files(const char *directory);
int rumpconf_test_bio(const char *directory, int count);
int rumpconf_test_clocks(void);
int rumpconf_test_params(void);
int rumpconf_test_errno_and_kill(void);
int rumpconf_test_random(void);
int rumpconf_test_threads(void);
int rumpconf_test_curlwp(void);
int rumpconf_test_mutex(void);
int rumpconf_test_rwlock(void);
int rumpconf_test_condvar(void);
int rumpconf_test_dl_bootstrap(void);
int rumpconf_test_components(void);
int rumpconf_test_console(void);
int rumpconf_test_exit(void);
int rumpconf_test_daemonize(void);
/* The syscall proxy against test clients on unix and tcp sockets (starts
 * and stops its own servers; leaves none running). */
int rumpconf_test_syscall_proxy(void);
int rumpconf_test_component_intr(void);

/* Stress: exact counts after `threads` threads do `iterations` each. */
int rumpconf_stress_mutex(int threads, int iterations);
int rumpconf_stress_rwlock(int threads, int iterations);
int rumpconf_stress_condvar(int producers, int items_each);
int rumpconf_stress_threads(int waves, int per_wave);

/* What the last rumpconf_test_dl_bootstrap saw. */
struct rumpconf_dl_report {
	int symload_calls;
	uint64_t symbols;
	int marker_found;	/* rumpconf_dl_marker was among the symbols */
	int modules_seen;	/* harness modules handed to modinit */
	int components_seen;
	int evcnts_seen;
};
void rumpconf_get_dl_report(struct rumpconf_dl_report *out);

/* Runs every suite (what the C driver does); returns total failures. */
int rumpconf_run_all(const char *directory, int verbose);

#ifdef __cplusplus
}
#endif

#endif /* RUMPUSER_CONFORMANCE_H */
