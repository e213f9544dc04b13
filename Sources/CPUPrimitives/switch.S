/*
 * switch.S: the thread context switch of the hw platform and the thread
 * entry trampoline (System V AMD64 ABI §3.2.1: RBX, RBP, R12-R15, the
 * x87 control word and MXCSR's control bits are callee-saved; everything
 * else is already saved by the caller of bmk_context_switch). The FS base
 * (TLS, x86-64 ELF TLS variant II) is switched by the caller just before.
 *
 *     void bmk_context_switch(uint64_t *save_rsp, uint64_t next_rsp)
 *
 * A switched-out thread's stack holds, from its saved RSP upwards:
 *     [MXCSR:32 | FCW:16 | pad] r15 r14 r13 r12 rbx rbp return-address
 * A new thread's stack is prepared the same way by Swift with r12 = the
 * argument and the return address = bmk_thread_trampoline.
 */
    .section .text.threads, "ax"
    .code64

    .globl bmk_context_switch
    .type bmk_context_switch, @function
bmk_context_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size bmk_context_switch, . - bmk_context_switch

/* First instructions of every thread: reached by the RET above with
 * r12 = the thread's argument. Calls bmk_thread_entry(argument), which
 * never returns; a zero return address and RBP end frame-pointer walks. */
    .globl bmk_thread_trampoline
    .type bmk_thread_trampoline, @function
bmk_thread_trampoline:
    andq $-16, %rsp
    pushq $0
    xorl %ebp, %ebp
    movq %r12, %rdi
    jmp bmk_thread_entry
    .size bmk_thread_trampoline, . - bmk_thread_trampoline

/* A thread-local variable of the platform itself (.tdata, initial value
 * non-zero) and one in .tbss: every image has a PT_TLS segment, and the
 * thread tests read them through FS to check each thread's TLS block. */
    .section .tdata.bmk, "awT", @progbits
    .align 8
    .globl bmk_tls_marker
bmk_tls_marker:
    .quad 0x544C53424D4B0001        /* "\x01\0KMBSLT" */

    .section .tbss.bmk, "awT", @nobits
    .align 8
    .globl bmk_tls_scratch
bmk_tls_scratch:
    .skip 8
/* Slots for ThreadLocal keys of applications (zero in every new thread). */
    .align 8
    .globl bmk_tls_slots
bmk_tls_slots:
    .skip 8 * 64

    .section .text.threads, "ax"
/* uint64_t bmk_tls_marker_get(void) / void bmk_tls_scratch_set(uint64_t) /
 * uint64_t bmk_tls_scratch_get(void): local-exec accesses through %fs. */
    .globl bmk_tls_marker_get
bmk_tls_marker_get:
    movq %fs:bmk_tls_marker@tpoff, %rax
    ret
    .globl bmk_tls_scratch_get
bmk_tls_scratch_get:
    movq %fs:bmk_tls_scratch@tpoff, %rax
    ret
    .globl bmk_tls_scratch_set
bmk_tls_scratch_set:
    movq %rdi, %fs:bmk_tls_scratch@tpoff
    ret
    .globl bmk_tls_scratch_address
bmk_tls_scratch_address:
    movq %fs:0, %rax
    leaq bmk_tls_scratch@tpoff(%rax), %rax
    ret
/* uint64_t bmk_tls_slot_get(unsigned index) / void bmk_tls_slot_set(unsigned
 * index, uint64_t value): slot `index` (< 64) of the running thread. */
    .globl bmk_tls_slot_get
bmk_tls_slot_get:
    movl %edi, %edi
    movq %fs:0, %rax
    leaq bmk_tls_slots@tpoff(%rax), %rax
    movq (%rax, %rdi, 8), %rax
    ret
    .globl bmk_tls_slot_set
bmk_tls_slot_set:
    movl %edi, %edi
    movq %fs:0, %rax
    leaq bmk_tls_slots@tpoff(%rax), %rax
    movq %rsi, (%rax, %rdi, 8)
    ret
