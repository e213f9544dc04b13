/*
 * rumpuser_guest.c: the C-only pieces of the guest rumpuser implementation:
 * the thread-local curlwp and errno slots (ELF TLS through FS, so one load),
 * rumpuser_curlwp/rumpuser_curlwpop, the varargs rumpuser_dprintf with
 * a small printf formatter (the guest has no C library printf), and
 * rumpuser_dl_bootstrap over the image's link sets.
 */
#include <stdarg.h>
#include "CRumpUserGuest.h"

extern int putchar(int);

static __thread struct lwp *guest_curlwp;
static __thread int guest_errno;

struct lwp *
rumpuser_curlwp(void)
{
	return guest_curlwp;
}

void
rumpuser_seterrno(int error)
{
	guest_errno = error;
}

int
rumpuser_guest_errno(void)
{
	return guest_errno;
}

/*
 * NetBSD semantics: CREATE and DESTROY need no host state (the slot is per
 * thread); SET binds an lwp to a thread that has none, CLEAR unbinds the
 * thread's own lwp.  Anything else is a kernel bug and stops the guest.
 */
void
rumpuser_curlwpop(int op, struct lwp *l)
{
	switch (op) {
	case RUMPUSER_LWP_CREATE:
	case RUMPUSER_LWP_DESTROY:
		break;
	case RUMPUSER_LWP_SET:
		if (guest_curlwp != NULL) {
			rumpuser_dprintf("rumpuser: curlwpop SET %p on a thread that has lwp %p\n", (void *)l, (void *)guest_curlwp);
			rumpuser_exit(RUMPUSER_PANIC);
		}
		guest_curlwp = l;
		break;
	case RUMPUSER_LWP_CLEAR:
		if (guest_curlwp != l) {
			rumpuser_dprintf("rumpuser: curlwpop CLEAR %p on a thread that has lwp %p\n", (void *)l, (void *)guest_curlwp);
			rumpuser_exit(RUMPUSER_PANIC);
		}
		guest_curlwp = NULL;
		break;
	default:
		rumpuser_dprintf("rumpuser: curlwpop with unknown operation %d\n", op);
		rumpuser_exit(RUMPUSER_PANIC);
	}
}

/* ---- printf formatter ---------------------------------------------------- */

static void
emit_padding(int count, char pad)
{
	while (count-- > 0)
		putchar(pad);
}

static void
emit_number(uintmax_t value, int negative, unsigned base, int upper, int width, int zero, int left, const char *prefix)
{
	char digits[24];
	int n = 0;
	const char *set = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	do {
		digits[n++] = set[value % base];
		value /= base;
	} while (value != 0);
	int prefixlen = 0;
	while (prefix[prefixlen] != '\0')
		prefixlen++;
	int length = n + negative + prefixlen;
	if (!left && !zero)
		emit_padding(width - length, ' ');
	if (negative)
		putchar('-');
	for (int i = 0; i < prefixlen; i++)
		putchar(prefix[i]);
	if (!left && zero)
		emit_padding(width - length, '0');
	while (n > 0)
		putchar(digits[--n]);
	if (left)
		emit_padding(width - length, ' ');
}

static void
rumpuser_guest_vprintf(const char *format, va_list ap)
{
	for (const char *p = format; *p != '\0'; p++) {
		if (*p != '%') {
			putchar(*p);
			continue;
		}
		p++;
		int left = 0, zero = 0, alternate = 0, width = 0, precision = -1;
		for (;; p++) {
			if (*p == '-')
				left = 1;
			else if (*p == '0')
				zero = 1;
			else if (*p == '#')
				alternate = 1;
			else if (*p != ' ' && *p != '+')
				break;
		}
		if (*p == '*') {
			width = va_arg(ap, int);
			if (width < 0) {
				left = 1;
				width = -width;
			}
			p++;
		} else {
			while (*p >= '0' && *p <= '9')
				width = width * 10 + (*p++ - '0');
		}
		if (*p == '.') {
			p++;
			precision = 0;
			if (*p == '*') {
				precision = va_arg(ap, int);
				p++;
			} else {
				while (*p >= '0' && *p <= '9')
					precision = precision * 10 + (*p++ - '0');
			}
		}
		int size = 0; /* 0 int, 1 long, 2 long long, -1 short, -2 char, 3 size_t/intmax/ptrdiff */
		for (;; p++) {
			if (*p == 'l')
				size = size == 1 ? 2 : 1;
			else if (*p == 'h')
				size = size == -1 ? -2 : -1;
			else if (*p == 'z' || *p == 'j' || *p == 't')
				size = 3;
			else
				break;
		}
		switch (*p) {
		case 'd':
		case 'i': {
			intmax_t v;
			if (size >= 1)
				v = size == 1 ? va_arg(ap, long) : va_arg(ap, long long);
			else
				v = va_arg(ap, int);
			if (size == -1)
				v = (short)v;
			else if (size == -2)
				v = (signed char)v;
			uintmax_t magnitude = v < 0 ? (uintmax_t)0 - (uintmax_t)v : (uintmax_t)v;
			emit_number(magnitude, v < 0, 10, 0, width, zero, left, "");
			break;
		}
		case 'u':
		case 'x':
		case 'X':
		case 'o': {
			uintmax_t v;
			if (size >= 1)
				v = size == 1 ? va_arg(ap, unsigned long) : va_arg(ap, unsigned long long);
			else
				v = va_arg(ap, unsigned int);
			if (size == -1)
				v = (unsigned short)v;
			else if (size == -2)
				v = (unsigned char)v;
			unsigned base = *p == 'o' ? 8 : (*p == 'u' ? 10 : 16);
			const char *prefix = "";
			if (alternate && v != 0)
				prefix = base == 8 ? "0" : (base == 16 ? (*p == 'X' ? "0X" : "0x") : "");
			emit_number(v, 0, base, *p == 'X', width, zero, left, prefix);
			break;
		}
		case 'p':
			emit_number((uintptr_t)va_arg(ap, void *), 0, 16, 0, width, 0, left, "0x");
			break;
		case 'c': {
			if (!left)
				emit_padding(width - 1, ' ');
			putchar(va_arg(ap, int));
			if (left)
				emit_padding(width - 1, ' ');
			break;
		}
		case 's': {
			const char *s = va_arg(ap, const char *);
			if (s == NULL)
				s = "(null)";
			int length = 0;
			while (s[length] != '\0' && (precision < 0 || length < precision))
				length++;
			if (!left)
				emit_padding(width - length, ' ');
			for (int i = 0; i < length; i++)
				putchar(s[i]);
			if (left)
				emit_padding(width - length, ' ');
			break;
		}
		case '%':
			putchar('%');
			break;
		case '\0':
			return;
		default:
			/* Unknown conversion: show it as written. */
			putchar('%');
			putchar(*p);
			break;
		}
	}
}

void
rumpuser_dprintf(const char *format, ...)
{
	va_list ap;
	va_start(ap, format);
	rumpuser_guest_vprintf(format, ap);
	va_end(ap);
}

/*
 * A static image has no dynamic linker: the kernel's modules and components
 * are the entries of its link sets, the sections link_set_modules and
 * link_set_rump_components, whose bounds the linker provides as
 * __start_<section> and __stop_<section>.  Weak, so an image without them
 * links (the symbols are then zero).  A kernel built with RUMP_USE_CTOR has
 * no link sets and registers from constructors instead; then nothing is
 * handed over.  There is no symbol table to load (symload) and no event
 * counter link set to attach (evcntattach) in a static image.
 */
extern const struct modinfo *const __start_link_set_modules[] __attribute__((weak));
extern const struct modinfo *const __stop_link_set_modules[] __attribute__((weak));
extern const struct rump_component *const __start_link_set_rump_components[] __attribute__((weak));
extern const struct rump_component *const __stop_link_set_rump_components[] __attribute__((weak));

void
rumpuser_dl_bootstrap(rump_modinit_fn domodinit, rump_symload_fn symload,
    rump_compload_fn compload, rump_evcntattach_fn evcntattach)
{
	(void)symload;
	(void)evcntattach;
	if (domodinit != NULL && __start_link_set_modules != NULL &&
	    __stop_link_set_modules > __start_link_set_modules)
		domodinit(__start_link_set_modules,
		    (size_t)(__stop_link_set_modules - __start_link_set_modules));
	if (compload != NULL && __start_link_set_rump_components != NULL) {
		for (const struct rump_component *const *c = __start_link_set_rump_components;
		    c < __stop_link_set_rump_components; c++)
			compload(*c);
	}
}
