/*
 * CRumpUserGuest: the rumpuser version 17 C ABI for the guest world.
 *
 * The contract itself is the one header shared with the host library
 * (Sources/CRumpUser/include/rumpuser.h); this module makes it usable in a
 * freestanding guest (include/sys/types.h supplies pid_t) and adds the few
 * guest-only C pieces: the thread-local curlwp and errno slots and the
 * varargs rumpuser_dprintf (rumpuser_guest.c).  The other rumpuser_*
 * functions, and the rumpuser_component_* helpers of the shared
 * rumpuser_component.h, are defined in Swift by the RumpUserGuest module.
 */
#ifndef _CRUMPUSER_GUEST_H_
#define _CRUMPUSER_GUEST_H_

#include <stddef.h>
#include <stdint.h>
#include "../../CRumpUser/include/rumpuser.h"
#include "../../CRumpUser/include/rumpuser_component.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The calling guest thread's errno as last set by rumpuser_seterrno. */
int rumpuser_guest_errno(void);

#ifdef __cplusplus
}
#endif

#endif
