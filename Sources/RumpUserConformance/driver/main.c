/*
 * The conformance harness as a C program: built with a C compiler against
 * <rumpuser.h> and linked with -lrumpuser (the dynamic or static library),
 * exactly as a rump kernel would be.
 * Usage: rumpuser-conformance [-v] [-sysproxy] [dir]
 * (-sysproxy runs only the syscall proxy suites, for the leak-checked run).
 */

#include "RumpUserConformance.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int
main(int argc, char **argv)
{
	int verbose = 0, sysproxy_only = 0;
	const char *directory = "/tmp";

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-v") == 0)
			verbose = 1;
		else if (strcmp(argv[i], "-sysproxy") == 0)
			sysproxy_only = 1;
		else
			directory = argv[i];
	}
	if (rumpconf_setup(2) != 0) {
		fprintf(stderr, "rumpuser_init failed\n");
		return 2;
	}
	if (sysproxy_only) {
		int failures = rumpconf_test_syscall_proxy();
		printf("syscall proxy: %s (%ld checks)\n%s", failures ? "FAILED" : "ok",
		    rumpconf_checks(), rumpconf_failure_log());
		failures += rumpconf_test_component_intr();
		return failures == 0 ? 0 : 1;
	}
	if (rumpconf_test_dl_bootstrap() == 0) {
		struct rumpconf_dl_report dl;
		rumpconf_get_dl_report(&dl);
		if (!dl.marker_found) {
			fprintf(stderr, "dl_bootstrap: rumpconf_dl_marker not handed "
			    "to symload (link with -rdynamic)\n");
			return 1;
		}
	}
	return rumpconf_run_all(directory, verbose) == 0 ? 0 : 1;
}
