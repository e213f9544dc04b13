/*
 * entry.S: the image's first instructions. Two 32-bit entry points, one for
 * multiboot 1 loaders (Multiboot Specification 0.6.96 §3.2: EAX = 0x2BADB002,
 * EBX = multiboot info) and one for PVH loaders (Xen arch-x86/hvm/start_info.h:
 * EBX = hvm_start_info), both flat 32-bit protected mode with paging off.
 * The common path identity-maps the first 4 GiB with 2 MiB pages, enables
 * PAE, SSE, long mode and NX (when CPUID offers it), and calls Swift:
 *     bmk_boot_main(protocol, info_address)   protocol: 1 multiboot, 2 PVH
 * BareMetalKit later replaces these boot tables with finer-grained ones.
 */

#define MULTIBOOT_LOADER  0x2BADB002
#define XEN_ELFNOTE_PHYS32_ENTRY 18

/* Multiboot header slot (magic, flags, checksum). The linker script puts
 * .multiboot first in .text, inside the first 8 KiB of the file. bake's
 * multiboot writer fills it in; PVH images keep it zero, because QEMU tries
 * multiboot before PVH and refuses 64-bit multiboot ELF files. */
    .section .multiboot, "a"
    .align 4
    .globl multiboot_header
multiboot_header:
    .long 0, 0, 0

/* PVH entry note (Xen public/elfnote.h). */
    .section .note.Xen, "a", @note
    .align 4
    .long 4                         /* name size: "Xen\0" */
    .long 4                         /* descriptor size */
    .long XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .align 4
    .long _start_pvh
    .align 4

    .section .text.boot, "ax"
    .code32

    .globl _start_multiboot
_start_multiboot:
    cli
    cld
    movl $1, %ecx
    cmpl $MULTIBOOT_LOADER, %eax
    je 1f
    xorl %ecx, %ecx                 /* unknown loader: Swift reports it */
1:  jmp boot32

    .globl _start_pvh
_start_pvh:
    cli
    cld
    movl $2, %ecx

boot32:
    movl %ecx, bmk_boot_protocol
    movl %ebx, bmk_boot_info
    rdtsc
    movl %eax, bmk_boot_tsc
    movl %edx, bmk_boot_tsc + 4
    movl $boot_stack_top, %esp

    /* PD entries: 2048 x 2 MiB pages = 4 GiB, present + writable + PS. */
    movl $boot_pd, %edi
    xorl %eax, %eax
2:  movl %eax, %edx
    shll $21, %edx
    orl $0x83, %edx
    movl %edx, (%edi, %eax, 8)
    movl $0, 4(%edi, %eax, 8)
    incl %eax
    cmpl $2048, %eax
    jne 2b

    /* PDPT[0..3] -> the four PD pages; PML4[0] -> PDPT. */
    movl $boot_pdpt, %edi
    movl $boot_pd + 3, %edx
    xorl %eax, %eax
3:  movl %edx, (%edi, %eax, 8)
    movl $0, 4(%edi, %eax, 8)
    addl $4096, %edx
    incl %eax
    cmpl $4, %eax
    jne 3b
    movl $boot_pdpt + 3, boot_pml4
    movl $0, boot_pml4 + 4

    /* CR4: PAE (bit 5), OSFXSR (9), OSXMMEXCPT (10). */
    movl %cr4, %eax
    orl $((1 << 5) | (1 << 9) | (1 << 10)), %eax
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3

    /* NX support: CPUID 0x80000001 EDX bit 20. */
    movl $0x80000001, %eax
    cpuid
    xorl %esi, %esi
    testl $(1 << 20), %edx
    jz 4f
    movl $(1 << 11), %esi
4:  /* EFER: LME (bit 8), NXE (bit 11) if supported. */
    movl $0xC0000080, %ecx
    rdmsr
    orl $(1 << 8), %eax
    orl %esi, %eax
    wrmsr

    /* CR0: PG (31), WP (16), MP (1); clear EM (2) for SSE. */
    movl %cr0, %eax
    andl $~(1 << 2), %eax
    orl $((1 << 31) | (1 << 16) | (1 << 1)), %eax
    movl %eax, %cr0

    lgdt boot_gdt_pointer
    ljmp $0x08, $boot64

    .code64
boot64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movabsq $boot_stack_top, %rsp
    xorq %rbp, %rbp
    fninit

    /* Stack protector guard, set once before any C or Swift runs: the
     * boot TSC mixed with RDRAND when CPUID.1:ECX[30] offers it. */
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    movabsq $0x9E3779B97F4A7C15, %rcx
    imulq %rcx, %rax
    movq %rax, %r8
    movl $1, %eax
    cpuid
    testl $(1 << 30), %ecx
    jz 6f
    rdrand %rax
    jnc 6f
    xorq %rax, %r8
6:  movq %r8, __stack_chk_guard(%rip)

    movl bmk_boot_protocol(%rip), %edi
    movl bmk_boot_info(%rip), %esi
    call bmk_boot_main
5:  cli
    hlt
    jmp 5b

    .section .rodata.boot, "a"
    .align 16
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF        /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00CF92000000FFFF        /* 0x10: data, DPL 0 */
boot_gdt_end:
boot_gdt_pointer:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .data.boot, "aw"
    .align 8
    .globl bmk_boot_protocol, bmk_boot_info, bmk_boot_tsc
bmk_boot_protocol: .long 0
bmk_boot_info:     .long 0
bmk_boot_tsc:      .quad 0

    .section .bss.boot, "aw", @nobits
    .align 4096
boot_pml4:  .skip 4096
boot_pdpt:  .skip 4096
boot_pd:    .skip 4 * 4096
    .globl boot_stack_bottom
boot_stack_bottom:
    .skip 65536
boot_stack_top:
