// CPUInterrupts: the instructions and symbols of the interrupt layer: the
// isr.S entry stubs of vectors 32-255, the interrupt flag (Intel SDM vol. 2:
// STI, CLI, HLT, PUSHF) and the atomic "enable and halt" of the idle path.
// Static inline so the header compiles in both worlds; only the guest
// executes them.
#ifndef CPU_INTERRUPTS_H
#define CPU_INTERRUPTS_H

#include <stdint.h>
#include "PrivilegedOperations.h"

/// The entry stub of external vector `vector` (32-255, isr.S, guest only).
static inline uint64_t bmk_interrupt_stub(unsigned vector) {
    extern const uint64_t bmk_interrupt_stubs[];
    return bmk_interrupt_stubs[(vector - 32) % 224];
}

/// STI; HLT as one sequence. STI delays interrupt recognition until after
/// the next instruction, so an interrupt that became pending before the STI
/// (while IF was 0) wakes the HLT instead of being taken before it: no lost
/// wake-up. Returns with interrupts enabled, after the handler ran.
/// (bmk_idle_enable_and_halt in PrivilegedOperations.h: a Xen PV domain
/// blocks in the hypervisor instead.)
void cpu_idle_enable_interrupts_and_halt(void) __asm__("bmk_idle_enable_and_halt");

/// RFLAGS, for saving and restoring the interrupt flag.
static inline uint64_t cpu_read_flags(void) {
    uint64_t flags;
    __asm__ volatile("pushfq; popq %0" : "=r"(flags) : : "memory");
    return flags;
}

// cpu_save_and_disable_interrupts / cpu_restore_interrupts: CPUStructures.h.

/// Volatile 32-bit store and load for the LAPIC and IOAPIC windows.
static inline void cpu_mmio_write32(uintptr_t address, uint32_t value) { *(volatile uint32_t *)address = value; }
static inline uint32_t cpu_mmio_read32(uintptr_t address) { return *(volatile uint32_t *)address; }

#endif
