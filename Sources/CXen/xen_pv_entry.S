/*
 * xen_pv_entry.S: the PV domain's entry points from Xen and the dispatch of
 * the shared runtime's privileged operations (guest world, Xen images only).
 *
 * - The strong definitions of PrivilegedOperations.h's bmk_* functions
 *   (CPUPrimitives defines them weakly as its bmk_hw_* ones): each jumps
 *   through cxen_privileged_operations, which holds the hw functions until
 *   a PV domain stores XenPVKit's there (before anything takes a lock). A
 *   PVH domain, or the same image on QEMU, keeps the hw ones.
 * - Trap entries for HYPERVISOR_set_trap_table (arch-x86/xen.h trap_info).
 *   A 64-bit PV kernel gets the hardware exception frame with RCX and R11
 *   pushed on top (Xen uses them for its SYSRET-style return): they are
 *   restored, then the frame is made the one isr.S builds (error code or 0,
 *   vector, the 15 general registers) for xen_pv_trap, which reports and
 *   shuts the domain down.
 * - The event callback (xen.h set_callbacks): entered with events masked,
 *   same RCX/R11 words; registers and SSE state are saved, xen_pv_event_upcall
 *   runs, and the return is HYPERVISOR_iret (xen-x86_64.h iret_context: the
 *   guest pushes `flags`, the hypercall page's iret stub pushes R11, RCX
 *   and RAX), which restores the event mask from the frame's RFLAGS.IF.
 * - The failsafe callback (Xen could not load a segment on return): report.
 * Nothing here is privileged: a PV kernel runs in ring 3.
 */

/* __HYPERVISOR_iret (xen.h); CXen.h checks the value against the header. */
    .set CXEN_HYPERVISOR_IRET, 23

    .section .text.xen_pv_dispatch, "ax", @progbits
    .code64
.macro dispatch name, slot
    .globl bmk_\name
    .type bmk_\name, @function
bmk_\name:
    jmp *cxen_privileged_operations + 8 * \slot(%rip)
    .size bmk_\name, . - bmk_\name
.endm
    dispatch interrupts_save_disable, 0
    dispatch interrupts_restore, 1
    dispatch interrupts_disable, 2
    dispatch interrupts_enable, 3
    dispatch interrupts_enabled, 4
    dispatch idle_enable_and_halt, 5
    dispatch set_fs_base, 6
    dispatch enable_fs_base_instructions, 7
    dispatch idle_wait, 8
    dispatch console_device_write, 9
    dispatch platform_stop, 10
    dispatch processor_halt_forever, 11
    dispatch signal_processor, 12
    dispatch tlb_answer, 13
    dispatch stack_allocate, 14
    dispatch stack_release, 15
    dispatch clock_start, 16
    dispatch clock_measure, 17
    dispatch rtc_read, 18

    .section .data.xen_pv_dispatch, "aw", @progbits
    .balign 8
    .globl cxen_privileged_operations
cxen_privileged_operations:
    .quad bmk_hw_interrupts_save_disable
    .quad bmk_hw_interrupts_restore
    .quad bmk_hw_interrupts_disable
    .quad bmk_hw_interrupts_enable
    .quad bmk_hw_interrupts_enabled
    .quad bmk_hw_idle_enable_and_halt
    .quad bmk_hw_set_fs_base
    .quad bmk_hw_enable_fs_base_instructions
    .quad bmk_hw_idle_wait
    .quad bmk_hw_console_device_write
    .quad bmk_hw_platform_stop
    .quad bmk_hw_processor_halt_forever
    .quad bmk_hw_signal_processor
    .quad bmk_hw_tlb_answer
    .quad bmk_hw_stack_allocate
    .quad bmk_hw_stack_release
    .quad bmk_hw_clock_start
    .quad bmk_hw_clock_measure
    .quad bmk_hw_rtc_read
    .size cxen_privileged_operations, . - cxen_privileged_operations

.macro save_general_registers
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
.endm

.macro restore_general_registers
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
.endm

/* Xen's two extra words off the stack, back into their registers. */
.macro pop_xen_words
    movq (%rsp), %rcx
    movq 8(%rsp), %r11
    addq $16, %rsp
.endm

    .section .text.xen_pv_traps, "ax", @progbits
.macro pv_trap vector, has_error_code
cxen_pv_trap_\vector:
    pop_xen_words
    .if \has_error_code == 0
    pushq $0
    .endif
    pushq $\vector
    jmp cxen_pv_trap_common
.endm
    pv_trap 0, 0
    pv_trap 1, 0
    pv_trap 3, 0
    pv_trap 4, 0
    pv_trap 5, 0
    pv_trap 6, 0
    pv_trap 7, 0
    pv_trap 8, 1
    pv_trap 9, 0
    pv_trap 10, 1
    pv_trap 11, 1
    pv_trap 12, 1
    pv_trap 13, 1
    pv_trap 14, 1
    pv_trap 16, 0
    pv_trap 17, 1
    pv_trap 18, 0
    pv_trap 19, 0

cxen_pv_trap_common:
    cld
    save_general_registers
    movq %rsp, %rdi
    andq $-16, %rsp
    call xen_pv_trap            /* does not return */
1:  jmp 1b

    .globl cxen_pv_event_callback
    .type cxen_pv_event_callback, @function
cxen_pv_event_callback:
    pop_xen_words
    cld
    save_general_registers
    movq %rsp, %rbx             /* callee-saved: the frame */
    subq $512, %rsp
    andq $-16, %rsp
    fxsave64 (%rsp)             /* the Swift handler may use XMM registers */
    call xen_pv_event_upcall
    fxrstor64 (%rsp)
    movq %rbx, %rsp
    restore_general_registers
    pushq $0                    /* iret_context.flags: not in a syscall */
    jmp cxen_hypercall_page + CXEN_HYPERVISOR_IRET * 32
    .size cxen_pv_event_callback, . - cxen_pv_event_callback

    .globl cxen_pv_failsafe_callback
    .type cxen_pv_failsafe_callback, @function
cxen_pv_failsafe_callback:
    pop_xen_words
    cld
    save_general_registers
    movq %rsp, %rdi
    andq $-16, %rsp
    call xen_pv_failsafe        /* does not return */
1:  jmp 1b
    .size cxen_pv_failsafe_callback, . - cxen_pv_failsafe_callback

    .section .rodata.xen_pv_traps, "a"
    .balign 8
/* Entry of vector v (0-19) at index v; 0 for the vectors without one. */
    .globl cxen_pv_trap_stubs
cxen_pv_trap_stubs:
    .quad cxen_pv_trap_0, cxen_pv_trap_1, 0, cxen_pv_trap_3, cxen_pv_trap_4
    .quad cxen_pv_trap_5, cxen_pv_trap_6, cxen_pv_trap_7, cxen_pv_trap_8, cxen_pv_trap_9
    .quad cxen_pv_trap_10, cxen_pv_trap_11, cxen_pv_trap_12, cxen_pv_trap_13, cxen_pv_trap_14
    .quad 0, cxen_pv_trap_16, cxen_pv_trap_17, cxen_pv_trap_18, cxen_pv_trap_19

/* The trap table handed to Xen and the mmu_update batch of the page-table
 * builder (both used before the heap exists). */
    .section .bss.xen_pv, "aw", @nobits
    .balign 16
    .globl cxen_pv_trap_table, cxen_pv_mmu_batch
cxen_pv_trap_table: .skip 19 * 16
cxen_pv_mmu_batch:  .skip 128 * 16
