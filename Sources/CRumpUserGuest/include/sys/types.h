/*
 * sys/types.h for the guest world (x86_64-unknown-none-elf, freestanding):
 * the few POSIX types rumpuser.h names.  Only targets that depend on
 * CRumpUserGuest see this directory; host builds use the C library's.
 */
#ifndef _RUMPUSER_GUEST_SYS_TYPES_H_
#define _RUMPUSER_GUEST_SYS_TYPES_H_

#include <stddef.h>
#include <stdint.h>

typedef int pid_t;
typedef long ssize_t;
typedef long off_t;

#endif
