/*
 * isr.S: entry stubs for the 32 architectural exception vectors (Intel SDM
 * vol. 3A §6.3.1, §6.14.2) and for the external vectors 32-255. Each stub makes the stack uniform (a zero error
 * code where the CPU pushes none, then the vector number), saves the
 * general-purpose registers and calls bmk_exception(frame) in Swift, which
 * reports the fault and stops the guest. Frame layout, in 8-byte slots from
 * the frame pointer: r15 r14 r13 r12 r11 r10 r9 r8 rbp rdi rsi rdx rcx rbx
 * rax, vector, error code, then the CPU's RIP CS RFLAGS RSP SS.
 */
    .section .text.exceptions, "ax"
    .code64

/* The general-purpose registers in the frame order above (rax pushed first). */
.macro SAVE_GENERAL_REGISTERS
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

.macro EXCEPTION_STUB vector, has_error_code
bmk_exception_stub_\vector:
    .if \has_error_code == 0
    pushq $0
    .endif
    pushq $\vector
    jmp bmk_exception_common
.endm

EXCEPTION_STUB 0, 0
EXCEPTION_STUB 1, 0
EXCEPTION_STUB 2, 0
EXCEPTION_STUB 3, 0
EXCEPTION_STUB 4, 0
EXCEPTION_STUB 5, 0
EXCEPTION_STUB 6, 0
EXCEPTION_STUB 7, 0
EXCEPTION_STUB 8, 1
EXCEPTION_STUB 9, 0
EXCEPTION_STUB 10, 1
EXCEPTION_STUB 11, 1
EXCEPTION_STUB 12, 1
EXCEPTION_STUB 13, 1
EXCEPTION_STUB 14, 1
EXCEPTION_STUB 15, 0
EXCEPTION_STUB 16, 0
EXCEPTION_STUB 17, 1
EXCEPTION_STUB 18, 0
EXCEPTION_STUB 19, 0
EXCEPTION_STUB 20, 0
EXCEPTION_STUB 21, 1
EXCEPTION_STUB 22, 0
EXCEPTION_STUB 23, 0
EXCEPTION_STUB 24, 0
EXCEPTION_STUB 25, 0
EXCEPTION_STUB 26, 0
EXCEPTION_STUB 27, 0
EXCEPTION_STUB 28, 0
EXCEPTION_STUB 29, 1
EXCEPTION_STUB 30, 1
EXCEPTION_STUB 31, 0

bmk_exception_common:
    cld                      /* the ABI's direction flag for the Swift handler */
    SAVE_GENERAL_REGISTERS
    movq %rsp, %rdi
    andq $-16, %rsp
    call bmk_exception
1:  cli
    hlt
    jmp 1b

    .section .rodata.exceptions, "a"
    .align 8
    .globl bmk_exception_stubs
bmk_exception_stubs:
    .irp vector, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad bmk_exception_stub_\vector
    .endr

/*
 * External interrupts, vectors 32-255 (Intel SDM vol. 3A §6.12.1): the same
 * frame as an exception (a zero error code, the vector, the general-purpose
 * registers), then the SSE state is saved with FXSAVE (handlers are Swift
 * code that may use XMM registers), bmk_interrupt(frame) runs, and
 * everything is restored for IRETQ. The gate is an interrupt gate, so the
 * handler runs with IF clear; the IRETQ restores the interrupted IF.
 */
    .section .text.interrupts, "ax"
    .code64

/* One 16-byte stub per vector, so stub v sits at bmk_interrupt_stub_base + (v - 32) * 16. */
    .align 16
bmk_interrupt_stub_base:
    .set vector, 32
    .rept 224
    .align 16
    pushq $0
    pushq $vector
    jmp bmk_interrupt_common
    .set vector, vector + 1
    .endr

bmk_interrupt_common:
    cld
    SAVE_GENERAL_REGISTERS
    movq %rsp, %rdi
    movq %rsp, %r12          /* callee-saved: survives the call */
    andq $-16, %rsp
    subq $512, %rsp
    fxsave64 (%rsp)
    xorl %ebp, %ebp          /* ends frame-pointer backtraces here */
    call bmk_interrupt
    fxrstor64 (%rsp)
    movq %r12, %rsp
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
    addq $16, %rsp           /* vector and error code */
    iretq

    .section .rodata.interrupts, "a"
    .align 8
    .globl bmk_interrupt_stubs
bmk_interrupt_stubs:
    .set vector, 0
    .rept 224
    .quad bmk_interrupt_stub_base + vector * 16
    .set vector, vector + 1
    .endr
