// CPUPrimitives: x86-64 instructions Swift cannot express (port I/O, MSRs,
// control registers, CPUID, hlt), plus the symbols the boot code exports.
// Intel SDM vol. 2 for each instruction. Every function is static inline so
// the header compiles in both worlds; only the guest ever executes them.
#ifndef CPU_PRIMITIVES_H
#define CPU_PRIMITIVES_H

#include <stdint.h>
#include "CPUStructures.h"
#include "CPUInterrupts.h"
#include "CPURandom.h"
#include "XenHooks.h"

static inline void cpu_outb(uint16_t port, uint8_t value) {
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}
static inline void cpu_outw(uint16_t port, uint16_t value) {
    __asm__ volatile("outw %0, %1" : : "a"(value), "Nd"(port));
}
static inline void cpu_outl(uint16_t port, uint32_t value) {
    __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port));
}
static inline uint8_t cpu_inb(uint16_t port) {
    uint8_t value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}
static inline uint16_t cpu_inw(uint16_t port) {
    uint16_t value;
    __asm__ volatile("inw %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}
static inline uint32_t cpu_inl(uint16_t port) {
    uint32_t value;
    __asm__ volatile("inl %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}
static inline uint64_t cpu_rdmsr(uint32_t msr) {
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((uint64_t)hi << 32) | lo;
}
static inline void cpu_wrmsr(uint32_t msr, uint64_t value) {
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)value), "d"((uint32_t)(value >> 32)));
}
static inline uint64_t cpu_rdtsc(void) {
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}
/// CPUID leaf/subleaf; results in out[0..3] = eax, ebx, ecx, edx.
static inline void cpu_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) {
    __asm__ volatile("cpuid"
                     : "=a"(out[0]), "=b"(out[1]), "=c"(out[2]), "=d"(out[3])
                     : "a"(leaf), "c"(subleaf));
}
static inline uint64_t cpu_read_cr0(void) { uint64_t v; __asm__ volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static inline uint64_t cpu_read_cr2(void) { uint64_t v; __asm__ volatile("mov %%cr2, %0" : "=r"(v)); return v; }
static inline uint64_t cpu_read_cr3(void) { uint64_t v; __asm__ volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static inline uint64_t cpu_read_cr4(void) { uint64_t v; __asm__ volatile("mov %%cr4, %0" : "=r"(v)); return v; }
/// RDRAND (Intel SDM vol. 2): returns 1 and stores a value on success.
static inline int cpu_rdrand64(uint64_t *value) {
    unsigned char ok;
    __asm__ volatile("rdrand %0; setc %1" : "=r"(*value), "=qm"(ok) : : "cc");
    return ok;
}
static inline void cpu_halt(void) { __asm__ volatile("hlt"); }
/// CLI and STI for the shared runtime: bmk_interrupts_disable/enable in
/// PrivilegedOperations.h, called directly under these names.
void cpu_disable_interrupts(void) __asm__("bmk_interrupts_disable");
void cpu_enable_interrupts(void) __asm__("bmk_interrupts_enable");
static inline void cpu_pause(void) { __asm__ volatile("pause"); }
static inline void cpu_memory_barrier(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline void cpu_compiler_barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline uint64_t cpu_read_rbp(void) { uint64_t v; __asm__ volatile("mov %%rbp, %0" : "=r"(v)); return v; }

/// Volatile accesses for memory-mapped I/O and loader-provided structures.
static inline uint8_t cpu_load8(uintptr_t address) { return *(volatile uint8_t *)address; }
static inline uint16_t cpu_load16(uintptr_t address) { return *(volatile uint16_t *)address; }
static inline void cpu_store16(uintptr_t address, uint16_t value) { *(volatile uint16_t *)address = value; }
static inline uint32_t cpu_load32(uintptr_t address) { return *(volatile uint32_t *)address; }
static inline uint64_t cpu_load64(uintptr_t address) { return *(volatile uint64_t *)address; }
static inline void cpu_store32(uintptr_t address, uint32_t value) { *(volatile uint32_t *)address = value; }

// Symbols defined by entry.S and the linker script (guest world only).
extern char __image_start[], __text_end[], __rodata_start[], __rodata_end[];
extern char __data_start[], __bss_start[], __image_end[];

/// TSC at the first instruction, recorded by entry.S.
uint64_t bmk_boot_timestamp(void);

/// Addresses of the image's parts, from the linker script.
static inline uintptr_t bmk_image_start(void) { return (uintptr_t)__image_start; }
static inline uintptr_t bmk_image_end(void) { return (uintptr_t)__image_end; }

/// The entry stub of exception vector `vector` (0-31, isr.S, guest only).
static inline uint64_t bmk_exception_stub(unsigned vector) {
    extern const uint64_t bmk_exception_stubs[];
    return bmk_exception_stubs[vector & 31];
}

/// Address of the 256-gate interrupt descriptor table (libc.c, guest only).
uintptr_t bmk_idt_address(void);

/// Calls the application's `main` (defined by the application, guest only).
int bmk_call_main(void);

#endif
