// CPURandom: the hardware random-number instructions (Intel SDM vol. 2,
// RDRAND and RDSEED: CF=1 means a valid value was returned), the stack
// protector guard the platform reseeds from its CSPRNG, and the C heap
// faces (libc.c) for Swift callers in the guest.
#ifndef CPU_RANDOM_H
#define CPU_RANDOM_H

#include <stdint.h>
#include <stddef.h>

/// RDSEED: returns 1 and stores a value when the carry flag is set.
static inline int cpu_rdseed64(uint64_t *value) {
    unsigned char ok;
    __asm__ volatile("rdseed %0; setc %1" : "=r"(*value), "=qm"(ok) : : "cc");
    return ok;
}

#ifndef __linux__
/// The stack protector's guard (libc.c); entry.S sets a first value.
extern uintptr_t __stack_chk_guard;
static inline uintptr_t bmk_stack_guard(void) { return __stack_chk_guard; }
/// Only from a frame that never returns (bmk_boot_main): frames already
/// on the stack would compare their canary against the new value.
static inline void bmk_set_stack_guard(uintptr_t value) { __stack_chk_guard = value; }

/// The guest's C heap (libc.c over BareMetalKit's size-class heap).
int posix_memalign(void **result, size_t alignment, size_t size);
void *realloc(void *pointer, size_t size);
void free(void *pointer);
#endif

#endif
