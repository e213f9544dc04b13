/*
 * isr.S: entry stubs for the 32 architectural exception vectors (Intel SDM
 * vol. 3A §6.3.1, §6.14.2). Each stub makes the stack uniform (a zero error
 * code where the CPU pushes none, then the vector number), saves the
 * general-purpose registers and calls bmk_exception(frame) in Swift, which
 * reports the fault and stops the guest. Frame layout, in 8-byte slots from
 * the frame pointer: r15 r14 r13 r12 r11 r10 r9 r8 rbp rdi rsi rdx rcx rbx
 * rax, vector, error code, then the CPU's RIP CS RFLAGS RSP SS.
 */
    .section .text.exceptions, "ax"
    .code64

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
