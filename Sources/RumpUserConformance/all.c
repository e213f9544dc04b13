/*
 * all.c: every suite in one call, for the C driver that links the harness
 * against librumpuser.so.
 */

#include "conf.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int
report_suite(const char *name, int failures, int verbose)
{
	if (failures != 0 || verbose)
		printf("%-24s %s (%ld checks)\n", name, failures ? "FAILED" : "ok",
		    rumpconf_checks());
	if (failures != 0)
		printf("%s", rumpconf_failure_log());
	fflush(stdout);
	return failures;
}

int
rumpconf_run_all(const char *directory, int verbose)
{
	int total = 0, suites = 0, failed = 0;

#define RUN(name, call) do { \
	int f_ = report_suite(name, (call), verbose); \
	suites++; failed += f_ != 0; total += f_; \
} while (0)
	RUN("init", rumpconf_test_init());
	RUN("memory", rumpconf_test_memory());
	RUN("files", rumpconf_test_files(directory));
	RUN("bio", rumpconf_test_bio(directory, 10000));
	RUN("clocks", rumpconf_test_clocks());
	RUN("params", rumpconf_test_params());
	RUN("errno and kill", rumpconf_test_errno_and_kill());
	RUN("random", rumpconf_test_random());
	RUN("threads", rumpconf_test_threads());
	RUN("curlwp", rumpconf_test_curlwp());
	RUN("mutex", rumpconf_test_mutex());
	RUN("rwlock", rumpconf_test_rwlock());
	RUN("condvar", rumpconf_test_condvar());
	RUN("dl_bootstrap", rumpconf_test_dl_bootstrap());
	RUN("components", rumpconf_test_components());
	RUN("component intr", rumpconf_test_component_intr());
	RUN("console", rumpconf_test_console());
	RUN("exit", rumpconf_test_exit());
	RUN("daemonize", rumpconf_test_daemonize());
	RUN("syscall proxy", rumpconf_test_syscall_proxy());
	RUN("stress mutex", rumpconf_stress_mutex(4, 20000));
	RUN("stress rwlock", rumpconf_stress_rwlock(4, 20000));
	RUN("stress condvar", rumpconf_stress_condvar(3, 20000));
	RUN("stress threads", rumpconf_stress_threads(10, 50));
#undef RUN
	struct rumpconf_dl_report dl;
	rumpconf_get_dl_report(&dl);
	if (verbose)
		printf("dl_bootstrap: %llu symbols, marker %s\n",
		    (unsigned long long)dl.symbols, dl.marker_found ? "found" : "not exported");
	printf("%d passed, %d failed\n", suites - failed, failed);
	return total;
}
