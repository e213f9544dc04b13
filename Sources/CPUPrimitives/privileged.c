// privileged.c: the hw platform's privileged operations (Intel SDM vol. 2:
// CLI, STI, HLT, PUSHF, WRMSR, MOV to CR4) behind PrivilegedOperations.h,
// each bmk_* name a weak alias of its bmk_hw_* function so that a Xen
// image can put a dispatcher in its place. Guest world only.
#include "PrivilegedOperations.h"

uint64_t bmk_hw_interrupts_save_disable(void) {
    uint64_t flags;
    __asm__ volatile("pushfq; popq %0; cli" : "=r"(flags) : : "memory");
    return flags;
}

void bmk_hw_interrupts_restore(uint64_t flags) {
    if (flags & (1u << 9)) __asm__ volatile("sti" : : : "memory");
}

void bmk_hw_interrupts_disable(void) { __asm__ volatile("cli" ::: "memory"); }

void bmk_hw_interrupts_enable(void) { __asm__ volatile("sti" ::: "memory"); }

int bmk_hw_interrupts_enabled(void) {
    uint64_t flags;
    __asm__ volatile("pushfq; popq %0" : "=r"(flags));
    return (flags >> 9) & 1;
}

// STI delays interrupt recognition by one instruction, so an interrupt
// pending before the STI wakes the HLT instead of being taken before it.
void bmk_hw_idle_enable_and_halt(void) { __asm__ volatile("sti; hlt" ::: "memory"); }

void bmk_hw_set_fs_base(uint64_t value) {
    __asm__ volatile("wrmsr" : : "c"(0xC0000100u), "a"((uint32_t)value), "d"((uint32_t)(value >> 32)) : "memory");
}

int bmk_hw_enable_fs_base_instructions(void) {
    uint64_t cr4;
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    __asm__ volatile("mov %0, %%cr4" : : "r"(cr4 | (1u << 16)) : "memory");
    return 1;
}

void bmk_hw_processor_halt_forever(void) {
    for (;;) __asm__ volatile("cli; hlt" ::: "memory");
}

#define BMK_WEAK_ALIAS(name) __attribute__((weak, alias("bmk_hw_" #name)))
uint64_t bmk_interrupts_save_disable(void) BMK_WEAK_ALIAS(interrupts_save_disable);
void bmk_interrupts_restore(uint64_t flags) BMK_WEAK_ALIAS(interrupts_restore);
void bmk_interrupts_disable(void) BMK_WEAK_ALIAS(interrupts_disable);
void bmk_interrupts_enable(void) BMK_WEAK_ALIAS(interrupts_enable);
int bmk_interrupts_enabled(void) BMK_WEAK_ALIAS(interrupts_enabled);
void bmk_idle_enable_and_halt(void) BMK_WEAK_ALIAS(idle_enable_and_halt);
void bmk_set_fs_base(uint64_t value) BMK_WEAK_ALIAS(set_fs_base);
int bmk_enable_fs_base_instructions(void) BMK_WEAK_ALIAS(enable_fs_base_instructions);
void bmk_processor_halt_forever(void) BMK_WEAK_ALIAS(processor_halt_forever);

// Operations whose hw side is Swift (BareMetalKit): a weak forwarder each.
__attribute__((weak)) void bmk_idle_wait(uint64_t deadline, int has_deadline) { bmk_hw_idle_wait(deadline, has_deadline); }
__attribute__((weak)) void bmk_console_device_write(uint8_t byte) { bmk_hw_console_device_write(byte); }
__attribute__((weak)) void bmk_platform_stop(uint8_t port_value) { bmk_hw_platform_stop(port_value); }
__attribute__((weak)) void bmk_signal_processor(uint32_t kind, uint32_t apic_id) { bmk_hw_signal_processor(kind, apic_id); }
__attribute__((weak)) void bmk_tlb_answer(int while_spinning) { bmk_hw_tlb_answer(while_spinning); }
__attribute__((weak)) uint64_t bmk_stack_allocate(uint64_t pages) { return bmk_hw_stack_allocate(pages); }
__attribute__((weak)) void bmk_stack_release(uint64_t guard_page) { bmk_hw_stack_release(guard_page); }
__attribute__((weak)) void bmk_clock_start(void) { bmk_hw_clock_start(); }
__attribute__((weak)) uint64_t bmk_clock_measure(uint32_t source) { return bmk_hw_clock_measure(source); }
__attribute__((weak)) int bmk_rtc_read(uint8_t century_register, int64_t *seconds) { return bmk_hw_rtc_read(century_register, seconds); }
