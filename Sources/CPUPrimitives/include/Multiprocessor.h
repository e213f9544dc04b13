// Multiprocessor: what application-processor start-up and per-CPU data need
// from C: the trampoline blob and its kernel-side variables
// (ap_trampoline.S) and the GS-relative per-CPU load. Atomics come from
// Swift's Synchronization module.
#ifndef MULTIPROCESSOR_H
#define MULTIPROCESSOR_H

#include <stdint.h>

extern char bmk_ap_trampoline_start[], bmk_ap_trampoline_end[];
extern char bmk_ap_entry64[];
extern volatile uint64_t bmk_ap_stack_top;
extern volatile uint32_t bmk_ap_cpu_index;

static inline uintptr_t bmk_ap_trampoline_address(void) { return (uintptr_t)bmk_ap_trampoline_start; }
static inline uintptr_t bmk_ap_trampoline_size(void) { return (uintptr_t)(bmk_ap_trampoline_end - bmk_ap_trampoline_start); }
static inline uintptr_t bmk_ap_entry_address(void) { return (uintptr_t)bmk_ap_entry64; }
static inline void bmk_ap_prepare(uint64_t stack_top, uint32_t cpu_index) {
    bmk_ap_stack_top = stack_top;
    bmk_ap_cpu_index = cpu_index;
    __asm__ volatile("" ::: "memory");
}

/// STI; HLT: the interrupt shadow of STI keeps an interrupt from arriving
/// between the two, so a wake-up sent after the caller's last check ends
/// the HLT instead of being taken before it.
static inline void cpu_enable_interrupts_and_halt(void) { __asm__ volatile("sti; hlt" ::: "memory"); }

/// Interrupt gates in ap_trampoline.S: the wake-up IPI (EOI through
/// bmk_lapic_eoi_register, then IRET) and the spurious vector (IRET only).
extern char bmk_wake_ipi[], bmk_spurious_interrupt[];
extern volatile uint64_t bmk_lapic_eoi_register;
static inline void bmk_set_lapic_eoi_register(uint64_t address) { bmk_lapic_eoi_register = address; }
static inline uintptr_t bmk_wake_ipi_address(void) { return (uintptr_t)bmk_wake_ipi; }
static inline uintptr_t bmk_spurious_interrupt_address(void) { return (uintptr_t)bmk_spurious_interrupt; }

/// The 64-bit word at GS:offset (the per-CPU block's fields).
static inline uint64_t cpu_gs_load64(uint32_t offset) {
    uint64_t v;
    __asm__ volatile("movq %%gs:(%1), %0" : "=r"(v) : "r"((uint64_t)offset));
    return v;
}

#endif
