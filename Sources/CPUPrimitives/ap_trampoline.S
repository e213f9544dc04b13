/*
 * ap_trampoline.S: how an application processor gets from the startup IPI to
 * Swift. The STARTUP IPI starts the AP in real mode at CS = vector << 8,
 * IP = 0 (Intel SDM vol. 3A §8.4.4.1, §10.6.1: the vector names a 4 KiB page
 * below 1 MiB). The blob between bmk_ap_trampoline_start and
 * bmk_ap_trampoline_end is position-independent: BareMetalKit copies it to
 * that page and fills in the slots below (CR3, EFER, the 64-bit entry). The
 * AP goes real mode -> 32-bit protected mode -> long mode on the kernel's own
 * page tables (SDM vol. 3A §9.8.5), so the page must be readable and
 * executable there while APs start.
 *
 * Per-CPU values (stack top, CPU index) are read from kernel variables once
 * the AP runs in the kernel's text, so one copy of the blob serves every AP
 * started one after the other.
 */

#define SLOT_CR3        0x08
#define SLOT_ENTRY      0x10
#define SLOT_EFER       0x18
#define SLOT_GDT_PTR    0x20    /* limit (2 bytes), base (4 bytes) */
#define SLOT_FAR32      0x28    /* offset (4 bytes), selector (2 bytes) */
#define SLOT_FAR64      0x30    /* offset (4 bytes), selector (2 bytes) */
#define GDT_OFFSET      0x38    /* four descriptors */
#define CODE_OFFSET     0x58

    .section .rodata.ap_trampoline, "a"
    .code16
    .globl bmk_ap_trampoline_start, bmk_ap_trampoline_end
bmk_ap_trampoline_start:
    jmp ap_real_mode                       /* 2 bytes */
    .org bmk_ap_trampoline_start + SLOT_CR3
    .quad 0                                /* kernel PML4 (below 4 GiB) */
    .quad 0                                /* 64-bit entry in kernel text */
    .quad 0                                /* EFER value (LME, NXE) */
    .word 4 * 8 - 1                        /* GDT limit */
    .long 0                                /* GDT base, set by the AP */
    .word 0
    .long 0                                /* far pointer to ap_protected */
    .word 0x18
    .word 0
    .long 0                                /* far pointer to ap_long */
    .word 0x08
    .word 0
    .org bmk_ap_trampoline_start + GDT_OFFSET
    .quad 0
    .quad 0x00AF9A000000FFFF               /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF               /* 0x10: data */
    .quad 0x00CF9A000000FFFF               /* 0x18: 32-bit code */
    .org bmk_ap_trampoline_start + CODE_OFFSET

ap_real_mode:
    cli
    cld
    /* EBX = the page's physical address (CS base). Paging is still off, so
     * the AP may patch the blob's pointers whatever the kernel's PTE says. */
    movw %cs, %bx
    movzwl %bx, %ebx
    shll $4, %ebx
    leal (GDT_OFFSET)(%ebx), %eax
    movl %eax, %cs:(SLOT_GDT_PTR + 2)
    leal (ap_protected - bmk_ap_trampoline_start)(%ebx), %eax
    movl %eax, %cs:(SLOT_FAR32)
    leal (ap_long - bmk_ap_trampoline_start)(%ebx), %eax
    movl %eax, %cs:(SLOT_FAR64)
    lgdtl %cs:(SLOT_GDT_PTR)
    movl %cr0, %eax
    orl $1, %eax                           /* PE */
    movl %eax, %cr0
    ljmpl *%cs:(SLOT_FAR32)

    .code32
ap_protected:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    /* CR4: PAE (5), OSFXSR (9), OSXMMEXCPT (10), as the BSP has them. */
    movl %cr4, %eax
    orl $((1 << 5) | (1 << 9) | (1 << 10)), %eax
    movl %eax, %cr4
    movl SLOT_CR3(%ebx), %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    movl SLOT_EFER(%ebx), %eax
    movl SLOT_EFER + 4(%ebx), %edx
    wrmsr
    /* CR0: PG (31), WP (16), MP (1); EM (2) cleared for SSE. */
    movl %cr0, %eax
    andl $~(1 << 2), %eax
    orl $((1 << 31) | (1 << 16) | (1 << 1)), %eax
    movl %eax, %cr0
    ljmpl *SLOT_FAR64(%ebx)

    .code64
ap_long:
    movl %ebx, %ebx                        /* zero the upper half */
    movq SLOT_ENTRY(%rbx), %rax
    jmp *%rax
bmk_ap_trampoline_end:

/* The AP's first instructions in kernel text: data segments, the stack the
 * BSP prepared, then bmk_ap_main(cpu_index), which never returns. */
    .section .text, "ax"
    .globl bmk_ap_entry64
bmk_ap_entry64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movq bmk_ap_stack_top(%rip), %rsp
    xorq %rbp, %rbp
    fninit
    movl bmk_ap_cpu_index(%rip), %edi
    call bmk_ap_main
1:  cli
    hlt
    jmp 1b

    .section .data, "aw"
    .align 8
    .globl bmk_ap_stack_top, bmk_ap_cpu_index
bmk_ap_stack_top: .quad 0
bmk_ap_cpu_index: .long 0
