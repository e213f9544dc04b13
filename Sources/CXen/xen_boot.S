/*
 * xen_boot.S: what Xen reads from a swift-rumprun Xen image, and where a
 * PV domain enters it (guest world only; excluded from host builds).
 *
 * - ELF notes of Xen public/elfnote.h, owner "Xen", in section .note.Xen,
 *   which the linker script places in the image's PT_NOTE segment. Note
 *   numbers come from <xen/elfnote.h>; the PVH note (XEN_ELFNOTE_PHYS32_ENTRY
 *   -> _start_pvh) is entry.S's, shared with the hw images.
 * - cxen_hypercall_page: the page of 32-byte hypercall stubs. A PV domain
 *   gets it filled by the domain builder (XEN_ELFNOTE_HYPERCALL_PAGE); a
 *   PVH/HVM domain asks for it by writing its physical address to the MSR
 *   that CPUID leaf base+2 names (XenHVMBoot in XenPVKit). Until then every
 *   byte is int3, so a premature hypercall traps instead of running garbage.
 * - _start_xen_pv: the 64-bit PV entry (xen.h "start of day" layout: long
 *   mode on Xen's own page tables, the image mapped at VIRT_BASE + its
 *   physical address, RSI = virtual address of start_info, event upcalls
 *   masked). It sets a stack, the boot TSC and the stack-protector guard
 *   and calls xen_pv_main(start_info) in XenPVKit, which sets up the PV
 *   runtime (xen_pv_entry.S has its trap and event entries) and runs main. PV runs the kernel in ring 3, so
 *   no privileged instruction (cli, hlt, lgdt, mov to CR) may appear here.
 */
#include <xen/elfnote.h>

/* One note: 4-byte-aligned header, name "Xen\0", descriptor, padding.
 * The assembler strips the quotes of a macro argument, so string
 * descriptors are quoted inside xen_note_string. */
.macro xen_note_begin type
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 2f - 1f
    .long 4f - 3f
    .long \type
1:  .asciz "Xen"
2:  .balign 4
3:
.endm
.macro xen_note_end
4:  .balign 4
    .popsection
.endm
.macro xen_note_string type, text
    xen_note_begin \type
    .asciz "\text"
    xen_note_end
.endm
.macro xen_note_quad type, value
    xen_note_begin \type
    .quad \value
    xen_note_end
.endm

    xen_note_string XEN_ELFNOTE_GUEST_OS,       "swift-rumprun"
    xen_note_string XEN_ELFNOTE_GUEST_VERSION,  "0.1"
    xen_note_string XEN_ELFNOTE_XEN_VERSION,    "xen-3.0"
    xen_note_string XEN_ELFNOTE_LOADER,         "generic"
    /* Virtual = physical: the image is linked at 1 MiB and Xen maps a PV
     * domain's pseudo-physical page n at VIRT_BASE + n * 4096. */
    xen_note_quad   XEN_ELFNOTE_VIRT_BASE,      0
    xen_note_quad   XEN_ELFNOTE_PADDR_OFFSET,   0
    xen_note_quad   XEN_ELFNOTE_ENTRY,          _start_xen_pv
    xen_note_quad   XEN_ELFNOTE_HYPERCALL_PAGE, cxen_hypercall_page
    /* "!" marks a feature the kernel requires; the PV code updates page
     * tables only through mmu_update/update_va_mapping. */
    xen_note_string XEN_ELFNOTE_FEATURES,       "!writable_page_tables"
    xen_note_string XEN_ELFNOTE_PAE_MODE,       "yes"

    .section .text.xen_hypercall_page, "ax", @progbits
    .balign 4096
    .globl cxen_hypercall_page
cxen_hypercall_page:
    .fill 4096, 1, 0xcc
    .size cxen_hypercall_page, 4096

    .section .text.xen_pv_entry, "ax", @progbits
    .code64
    .globl _start_xen_pv
_start_xen_pv:
    cld
    leaq cxen_pv_stack_top(%rip), %rsp
    xorl %ebp, %ebp
    movq %rsi, %r12                 /* start_info, kept across rdtsc */
    /* Stack-protector guard before any Swift runs (entry.S does the same
     * for the hw entries): the TSC spread by a multiplicative hash. */
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    movq %rax, bmk_boot_tsc(%rip)   /* the clock's origin, as entry.S records it */
    movabsq $0x9E3779B97F4A7C15, %rcx
    imulq %rcx, %rax
    movq %rax, __stack_chk_guard(%rip)
    movq %r12, %rdi
    call xen_pv_main
1:  ud2                             /* xen_pv_main does not return */
    jmp 1b

/* Pages a PV domain maps machine frames into with update_va_mapping
 * (shared info, console ring, xenstore ring), and the PV boot stack. A
 * PVH domain puts shared info at cxen_shared_info_page's frame with
 * XENMEM_add_to_physmap. */
    .section .bss.xen_pages, "aw", @nobits
    .balign 4096
    .globl cxen_shared_info_page, cxen_pv_console_page, cxen_pv_store_page
cxen_shared_info_page:  .skip 4096
cxen_pv_console_page:   .skip 4096
cxen_pv_store_page:     .skip 4096
cxen_pv_stack:          .skip 65536
cxen_pv_stack_top:
/* A PVH domain's configuration from xenstore (XENSTORE_PAYLOAD_MAX bytes
 * and a NUL), handed to the hw boot as its command line. */
    .globl cxen_configuration_buffer
cxen_configuration_buffer: .skip 4096 + 1
    .size cxen_configuration_buffer, 4096 + 1
