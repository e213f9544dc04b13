/*
 * dl.c: rumpuser_dl_bootstrap and the rumpuser_component_* helpers.
 *
 * The harness carries its own link sets (link_set_modules,
 * link_set_rump_components, link_set_evcnts), as a rump kernel's objects do,
 * and checks that the bootstrap hands each entry over exactly once and that
 * the symbol table it builds is well formed.
 */

#include "conf.h"

#include <stdlib.h>
#include <string.h>
#include <elf.h>

/* The harness's stand-ins for the kernel's types. */
struct modinfo { const char *name; };
struct rump_component { const char *name; };
struct evcnt { const char *name; };

static const struct modinfo conf_mod_a = { "conf_mod_a" }, conf_mod_b = { "conf_mod_b" };
static const struct rump_component conf_comp = { "conf_comp" };
static struct evcnt conf_evcnt = { "conf_evcnt" };

#define LINK_SET_ENTRY(set, name, value) \
	__attribute__((section(set), used, aligned(sizeof(void *)))) \
	static const void *const name = (value)
LINK_SET_ENTRY("link_set_modules", conf_mod_entry_a, &conf_mod_a);
LINK_SET_ENTRY("link_set_modules", conf_mod_entry_b, &conf_mod_b);
LINK_SET_ENTRY("link_set_rump_components", conf_comp_entry, &conf_comp);
LINK_SET_ENTRY("link_set_evcnts", conf_evcnt_entry, &conf_evcnt);

/* Referencing the bounds keeps the sections through --gc-sections. */
extern const void *const __start_link_set_modules[] __attribute__((weak));
extern const void *const __stop_link_set_modules[] __attribute__((weak));
extern const void *const __start_link_set_rump_components[] __attribute__((weak));
extern const void *const __start_link_set_evcnts[] __attribute__((weak));

/* A symbol in the rump namespace that symload should receive when the
 * program exports its symbols (-rdynamic). */
__attribute__((used, visibility("default"))) int rumpconf_dl_marker = 42;

static struct rumpconf_dl_report report;

static void
modinit(const struct modinfo *const *mi, size_t count)
{
	CHECK(conf_self.cpu != -1, "modinit called without a CPU");
	for (size_t i = 0; i < count; i++) {
		if (mi[i] == &conf_mod_a || mi[i] == &conf_mod_b)
			report.modules_seen++;
	}
}

static int
symload(void *symtab, uint64_t symsize, char *strtab, uint64_t strsize)
{
	const Elf64_Sym *sym = symtab;
	uint64_t n = symsize / sizeof(Elf64_Sym);

	report.symload_calls++;
	report.symbols += n;
	CHECK(symsize % sizeof(Elf64_Sym) == 0, "symtab size %llu", (unsigned long long)symsize);
	CHECK(strsize > 0 && strtab[strsize - 1] == '\0', "strtab not NUL-terminated");
	for (uint64_t i = 0; i < n; i++) {
		CHECK(sym[i].st_name < strsize, "symbol %llu name offset out of range",
		    (unsigned long long)i);
		if (sym[i].st_name >= strsize)
			break;
		const char *name = strtab + sym[i].st_name;
		CHECK(strncmp(name, "rump", 4) == 0 || strncmp(name, "RUMP", 4) == 0 ||
		    strncmp(name, "__", 2) == 0, "symbol '%s' outside the rump namespace", name);
		CHECK(sym[i].st_value != 0 && sym[i].st_shndx != SHN_UNDEF,
		    "undefined symbol '%s' handed over", name);
		if (strcmp(name, "rumpconf_dl_marker") == 0) {
			report.marker_found = 1;
			CHECK(sym[i].st_value == (uintptr_t)&rumpconf_dl_marker,
			    "rumpconf_dl_marker at %#llx, really at %p",
			    (unsigned long long)sym[i].st_value, (void *)&rumpconf_dl_marker);
		}
	}
	return 0;
}

static void
compload(const struct rump_component *rc)
{
	if (rc == &conf_comp)
		report.components_seen++;
}

static void
evcntattach(struct evcnt *ev)
{
	if (ev == &conf_evcnt)
		report.evcnts_seen++;
}

void
rumpconf_get_dl_report(struct rumpconf_dl_report *out)
{
	*out = report;
}

int
rumpconf_test_dl_bootstrap(void)
{
	conf_begin_suite();
	conf_enter_kernel();
	memset(&report, 0, sizeof(report));
	CHECK(__start_link_set_modules != NULL, "the harness lost its link set");
	HYPERCALL(CONF_NEVER, rumpuser_dl_bootstrap(modinit, symload, compload, evcntattach));
	CHECK_EQ(report.modules_seen, 2, "harness modules handed to modinit");
	CHECK_EQ(report.components_seen, 1, "harness components handed to compload");
	CHECK_EQ(report.evcnts_seen, 1, "harness evcnts handed to evcntattach");
	CHECK(report.symload_calls <= 1, "symload called %d times", report.symload_calls);
	conf_leave_kernel();
	return conf_end_suite();
}

int
rumpconf_test_components(void)
{
	void *cookie;

	conf_begin_suite();
	conf_enter_kernel();
	CHECK_EQ(rumpuser_component_errtrans(2), 2, "errtrans ENOENT");
	CHECK_EQ(rumpuser_component_errtrans(110), 60, "errtrans host ETIMEDOUT (110) → 60");
	CHECK_EQ(rumpuser_component_errtrans(11), 35, "errtrans host EAGAIN (11) → 35");

	/* unschedule / schedule keep the big-lock count in the cookie. */
	conf_self.biglocks = 5;
	cookie = rumpuser_component_unschedule();
	CHECK(conf_self.cpu == -1, "component_unschedule kept the CPU");
	rumpuser_component_schedule(cookie);
	CHECK(conf_self.cpu != -1, "component_schedule did not take a CPU");
	CHECK_EQ(conf_self.biglocks, 5, "big-lock count through the cookie");
	conf_self.biglocks = 0;
	struct lwp *mine = rumpuser_curlwp();
	cookie = rumpuser_component_unschedule();

	/* A bare host thread (here: this one, unscheduled) asks for its own lwp. */
	rumpuser_curlwpop(RUMPUSER_LWP_CLEAR, mine);
	rumpuser_component_kthread();
	struct lwp *k = rumpuser_curlwp();
	CHECK(k != NULL && k != mine && !k->temporary, "component_kthread gave no lwp");
	CHECK(conf_self.cpu == -1, "component_kthread left the CPU held");
	CHECK(rumpuser_component_curlwp() == k, "component_curlwp");
	rumpuser_component_switchlwp(mine);
	CHECK(rumpuser_curlwp() == mine, "component_switchlwp");
	rumpuser_component_switchlwp(k);
	rumpuser_component_kthread_release();
	CHECK(rumpuser_curlwp() == NULL, "component_kthread_release kept the lwp");
	conf_free_lwp(mine);
	rumpuser_component_schedule(cookie);	/* retake a CPU with a fresh lwp */
	struct lwp *fresh = conf_new_lwp(0);
	rumpuser_curlwpop(RUMPUSER_LWP_SET, fresh);
	conf_leave_kernel();
	return conf_end_suite();
}
