// CPUStructures: instructions that load or use CPU structures: descriptor
// tables, the task register, CR3 and TLB control, FS/GS base (Intel SDM
// vol. 2 for each instruction; vol. 3A §3.5.1, §4.10.4, §8.2.4).
// Static inline so the header compiles in both worlds; only the guest
// executes them.
#ifndef CPU_STRUCTURES_H
#define CPU_STRUCTURES_H

#include <stdint.h>
#include "PrivilegedOperations.h"

/// LGDT with a 10-byte pseudo-descriptor, then reloads CS (far return) and
/// the data segment registers with the given selectors.
static inline void cpu_load_gdt(uint64_t base, uint16_t limit, uint16_t code_selector, uint16_t data_selector) {
    struct __attribute__((packed)) { uint16_t limit; uint64_t base; } pointer = { limit, base };
    __asm__ volatile("lgdt %0" : : "m"(pointer) : "memory");
    __asm__ volatile(
        "pushq %q0\n\t"
        "leaq 1f(%%rip), %%rax\n\t"
        "pushq %%rax\n\t"
        "lretq\n"
        "1:\n\t"
        "movw %w1, %%ds\n\t"
        "movw %w1, %%es\n\t"
        "movw %w1, %%ss\n\t"
        : : "r"((uint64_t)code_selector), "r"(data_selector) : "rax", "memory");
}

/// LIDT with a 10-byte pseudo-descriptor.
static inline void cpu_load_idt(uint64_t base, uint16_t limit) {
    struct __attribute__((packed)) { uint16_t limit; uint64_t base; } pointer = { limit, base };
    __asm__ volatile("lidt %0" : : "m"(pointer) : "memory");
}

/// LTR: loads the task register (marks the TSS descriptor busy).
static inline void cpu_load_task_register(uint16_t selector) {
    __asm__ volatile("ltr %0" : : "r"(selector) : "memory");
}

/// MOV to CR3: switches page tables (flushes non-global TLB entries).
static inline void cpu_write_cr3(uint64_t value) { __asm__ volatile("mov %0, %%cr3" : : "r"(value) : "memory"); }
static inline void cpu_write_cr0(uint64_t value) { __asm__ volatile("mov %0, %%cr0" : : "r"(value) : "memory"); }
static inline void cpu_write_cr4(uint64_t value) { __asm__ volatile("mov %0, %%cr4" : : "r"(value) : "memory"); }

/// INVLPG: drops the TLB entries for the page holding `address`.
static inline void cpu_invalidate_page(uint64_t address) {
    __asm__ volatile("invlpg (%0)" : : "r"(address) : "memory");
}

/// WRFSBASE / WRGSBASE (need CR4.FSGSBASE, CPUID.7.0:EBX[0]); otherwise
/// write MSRs IA32_FS_BASE (0xC0000100) / IA32_GS_BASE (0xC0000101).
static inline void cpu_write_fs_base(uint64_t value) { __asm__ volatile("wrfsbase %0" : : "r"(value) : "memory"); }
static inline void cpu_write_gs_base(uint64_t value) { __asm__ volatile("wrgsbase %0" : : "r"(value) : "memory"); }
static inline uint64_t cpu_read_fs_base(void) { uint64_t v; __asm__ volatile("rdfsbase %0" : "=r"(v)); return v; }

/// Reads the interrupt flag (RFLAGS bit 9). Declared with the seam's symbol
/// (PrivilegedOperations.h), so a call goes straight to the operation: the
/// importer emits static inline functions out of line, and a wrapper would
/// add a jump to every lock.
int cpu_interrupts_enabled(void) __asm__("bmk_interrupts_enabled");

/// Section boundaries from the linker script (hw.ld), for the page tables.
static inline uintptr_t bmk_text_end(void) { extern char __text_end[]; return (uintptr_t)__text_end; }
static inline uintptr_t bmk_rodata_start(void) { extern char __rodata_start[]; return (uintptr_t)__rodata_start; }
static inline uintptr_t bmk_rodata_end(void) { extern char __rodata_end[]; return (uintptr_t)__rodata_end; }
static inline uintptr_t bmk_data_start(void) { extern char __data_start[]; return (uintptr_t)__data_start; }

// Threads and TLS (switch.S, linker script; guest only).

/// Saves the callee-saved registers on the current stack, stores RSP in
/// *save_rsp and continues the thread whose saved RSP is next_rsp.
void bmk_context_switch(uint64_t *save_rsp, uint64_t next_rsp);

/// Address of the first instructions of a new thread (see switch.S).
static inline uint64_t bmk_thread_trampoline_address(void) {
    extern char bmk_thread_trampoline[];
    return (uint64_t)(uintptr_t)bmk_thread_trampoline;
}

/// The platform's own thread-local variables, read and written through FS.
uint64_t bmk_tls_marker_get(void);
uint64_t bmk_tls_scratch_get(void);
void bmk_tls_scratch_set(uint64_t value);
uint64_t bmk_tls_scratch_address(void);
/// 64 thread-local slots for application keys (index < 64).
uint64_t bmk_tls_slot_get(unsigned index);
void bmk_tls_slot_set(unsigned index, uint64_t value);

/// The TLS initialisation image (.tdata) and the size of the whole TLS
/// segment (.tdata + .tbss), from the linker script.
static inline uintptr_t bmk_tls_image_start(void) { extern char __tdata_start[]; return (uintptr_t)__tdata_start; }
static inline uintptr_t bmk_tls_image_end(void) { extern char __tdata_end[]; return (uintptr_t)__tdata_end; }
static inline uintptr_t bmk_tls_segment_end(void) { extern char __tbss_end[]; return (uintptr_t)__tbss_end; }

/// The FS base for CPUs without FSGSBASE (hw: WRMSR IA32_FS_BASE,
/// 0xC0000100); bmk_set_fs_base in PrivilegedOperations.h.
void cpu_write_fs_base_msr(uint64_t value) __asm__("bmk_set_fs_base");

/// Saves RFLAGS and clears IF; returns the saved flags for restore
/// (bmk_interrupts_save_disable).
uint64_t cpu_save_and_disable_interrupts(void) __asm__("bmk_interrupts_save_disable");

/// Sets IF again if it was set in `flags` (bmk_interrupts_restore).
void cpu_restore_interrupts(uint64_t flags) __asm__("bmk_interrupts_restore");

#endif
