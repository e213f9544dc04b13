/*
 * host.c: thin wrappers over host interfaces that Swift cannot import
 * portably (GNU extensions, ioctl request macros, dl_iterate_phdr's
 * callback), used by the Swift implementation of librumpuser.
 */

#define _GNU_SOURCE
#include "CRumpUser.h"

#include <fcntl.h>
#include <link.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <linux/futex.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef BLKGETSIZE64
#define BLKGETSIZE64 _IOR(0x12, 114, size_t)
#endif

int
crumpuser_set_thread_name(pthread_t thread, const char *name)
{
	char truncated[16];

	strncpy(truncated, name, sizeof(truncated) - 1);
	truncated[sizeof(truncated) - 1] = '\0';
	return pthread_setname_np(thread, truncated);
}

void
crumpuser_set_own_thread_name(const char *name)
{
	(void)prctl(PR_SET_NAME, name, 0, 0, 0);
}

long
crumpuser_host_getrandom(void *buffer, size_t length, int nonblocking, int hard)
{
	unsigned int flags = 0;

	if (nonblocking)
		flags |= GRND_NONBLOCK;
	if (hard)
		flags |= GRND_RANDOM;
	return (long)getrandom(buffer, length, flags);
}

int
crumpuser_device_size(int fd, uint64_t *size)
{
	uint64_t bytes = 0;

	if (ioctl(fd, BLKGETSIZE64, &bytes) == 0) {
		*size = bytes;
		return 0;
	}
	off_t end = lseek(fd, 0, SEEK_END);
	if (end == (off_t)-1)
		return -1;
	*size = (uint64_t)end;
	return 0;
}

struct collect {
	struct crumpuser_object *objects;
	size_t capacity;
	size_t count;
};

static int
collect_object(struct dl_phdr_info *info, size_t size, void *arg)
{
	struct collect *c = arg;

	(void)size;
	if (c->count < c->capacity) {
		struct crumpuser_object *o = &c->objects[c->count];
		o->base = (uintptr_t)info->dlpi_addr;
		o->name = info->dlpi_name != NULL ? info->dlpi_name : "";
		o->phdr = info->dlpi_phdr;
		o->phnum = info->dlpi_phnum;
	}
	c->count++;
	return 0;
}

size_t
crumpuser_loaded_objects(struct crumpuser_object *objects, size_t capacity)
{
	struct collect c = { objects, capacity, 0 };

	dl_iterate_phdr(collect_object, &c);
	return c.count;
}

int
crumpuser_futex_wait(uint32_t *word, uint32_t value, const struct timespec *deadline)
{
	long rv;

	if (deadline == NULL)
		rv = syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0);
	else
		rv = syscall(SYS_futex, word, FUTEX_WAIT_BITSET_PRIVATE, value,
		    deadline, NULL, FUTEX_BITSET_MATCH_ANY);
	return rv == 0 ? 0 : errno;
}

void
crumpuser_futex_wake(uint32_t *word, int count)
{
	syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, count, NULL, NULL, 0);
}

/*
 * rumpuser_curlwp is the one hypercall that is nothing but a thread-local
 * load; defined here it compiles to exactly that (a Swift @_cdecl entry
 * adds a thunk).  rumpuser_curlwpop, which checks the contract, is Swift.
 */
struct lwp *
rumpuser_curlwp(void)
{
	return crumpuser_curlwp_slot;
}
