// CPUStructures: instructions that load or use CPU structures: descriptor
// tables, the task register, CR3 and TLB control, FS/GS base (Intel SDM
// vol. 2 for each instruction; vol. 3A §3.5.1, §4.10.4, §8.2.4).
// Static inline so the header compiles in both worlds; only the guest
// executes them.
#ifndef CPU_STRUCTURES_H
#define CPU_STRUCTURES_H

#include <stdint.h>

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

/// Reads the interrupt flag (RFLAGS bit 9).
static inline int cpu_interrupts_enabled(void) {
    uint64_t flags;
    __asm__ volatile("pushfq; popq %0" : "=r"(flags));
    return (flags >> 9) & 1;
}

/// Section boundaries from the linker script (hw.ld), for the page tables.
static inline uintptr_t bmk_text_end(void) { extern char __text_end[]; return (uintptr_t)__text_end; }
static inline uintptr_t bmk_rodata_start(void) { extern char __rodata_start[]; return (uintptr_t)__rodata_start; }
static inline uintptr_t bmk_rodata_end(void) { extern char __rodata_end[]; return (uintptr_t)__rodata_end; }
static inline uintptr_t bmk_data_start(void) { extern char __data_start[]; return (uintptr_t)__data_start; }

#endif
