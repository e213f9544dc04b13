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

/// The 64-bit word at GS:offset (the per-CPU block's fields).
static inline uint64_t cpu_gs_load64(uint32_t offset) {
    uint64_t v;
    __asm__ volatile("movq %%gs:(%1), %0" : "=r"(v) : "r"((uint64_t)offset));
    return v;
}

#endif
