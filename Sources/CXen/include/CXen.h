// CXen: the Xen public headers of libxen-dev (Xen 4.17, interface version
// 0x00040e00) for Swift, plus the ABI shim's declarations. No layout here is
// copied: every structure comes from <xen/...> as installed.
//
// Include paths: the headers are found as <xen/...> through the compiler's
// default system directory (/usr/include on Debian). Only <stdint.h> and
// <stddef.h> are needed besides them, and both come from the compiler's own
// resource directory; with -ffreestanding (the guest world) clang does not
// chain to glibc's <stdint.h>, so no glibc header is read (checked with
// `clang -target x86_64-unknown-none-elf -ffreestanding -M`).
#ifndef CXEN_H
#define CXEN_H

#include <stdint.h>
#include <stddef.h>

// The interface these headers were written for; must precede xen-compat.h.
#ifndef __XEN_INTERFACE_VERSION__
#define __XEN_INTERFACE_VERSION__ 0x00040e00
#endif

#include <xen/xen.h>
#include <xen/event_channel.h>
#include <xen/grant_table.h>
#include <xen/memory.h>
#include <xen/sched.h>
#include <xen/vcpu.h>
#include <xen/hvm/hvm_op.h>
#include <xen/hvm/params.h>
#include <xen/arch-x86/hvm/start_info.h>
#include <xen/arch-x86/cpuid.h>
#include <xen/io/ring.h>
#include <xen/io/xs_wire.h>
#include <xen/io/netif.h>
#include <xen/io/blkif.h>
#include <xen/io/console.h>
#include <xen/io/xenbus.h>
#include <xen/io/protocols.h>
#include <xen/errno.h>
#include <xen/elfnote.h>
#include <xen/features.h>

// Field offsets the Swift code reads and writes through raw pointers
// (Embedded Swift has no key paths, so MemoryLayout.offset(of:) is out),
// each measured here by the compiler as CXEN_OFFSETOF_<struct>_<field>.
#define CXEN_OFFSETOF(type, field) CXEN_OFFSETOF_##type##_##field = offsetof(struct type, field)
enum {
    CXEN_OFFSETOF(shared_info, vcpu_info),
    CXEN_OFFSETOF(shared_info, evtchn_pending),
    CXEN_OFFSETOF(shared_info, evtchn_mask),
    CXEN_OFFSETOF(shared_info, wc_version),
    CXEN_OFFSETOF(shared_info, wc_sec),
    CXEN_OFFSETOF(shared_info, wc_nsec),
    CXEN_OFFSETOF(shared_info, wc_sec_hi),
    CXEN_OFFSETOF(vcpu_info, evtchn_upcall_pending),
    CXEN_OFFSETOF(vcpu_info, evtchn_pending_sel),
    CXEN_OFFSETOF(vcpu_info, evtchn_upcall_mask),
    CXEN_OFFSETOF(vcpu_info, time),
    CXEN_OFFSETOF(vcpu_time_info, version),
    CXEN_OFFSETOF(vcpu_time_info, tsc_timestamp),
    CXEN_OFFSETOF(vcpu_time_info, system_time),
    CXEN_OFFSETOF(vcpu_time_info, tsc_to_system_mul),
    CXEN_OFFSETOF(vcpu_time_info, tsc_shift),
    CXEN_OFFSETOF(start_info, magic),
    CXEN_OFFSETOF(start_info, cmd_line),
    CXEN_OFFSETOF(grant_entry_v1, flags),
    CXEN_OFFSETOF(grant_entry_v1, domid),
    CXEN_OFFSETOF(grant_entry_v1, frame),
    CXEN_OFFSETOF(xenstore_domain_interface, req),
    CXEN_OFFSETOF(xenstore_domain_interface, rsp),
    CXEN_OFFSETOF(xenstore_domain_interface, req_cons),
    CXEN_OFFSETOF(xenstore_domain_interface, req_prod),
    CXEN_OFFSETOF(xenstore_domain_interface, rsp_cons),
    CXEN_OFFSETOF(xenstore_domain_interface, rsp_prod),
    CXEN_OFFSETOF(xencons_interface, in),
    CXEN_OFFSETOF(xencons_interface, out),
    CXEN_OFFSETOF(xencons_interface, in_cons),
    CXEN_OFFSETOF(xencons_interface, in_prod),
    CXEN_OFFSETOF(xencons_interface, out_cons),
    CXEN_OFFSETOF(xencons_interface, out_prod),
    CXEN_OFFSETOF(netif_tx_sring, req_prod),
    CXEN_OFFSETOF(netif_tx_sring, req_event),
    CXEN_OFFSETOF(netif_tx_sring, rsp_prod),
    CXEN_OFFSETOF(netif_tx_sring, rsp_event),
    CXEN_OFFSETOF(netif_tx_sring, ring),
    CXEN_OFFSETOF(netif_rx_sring, req_prod),
    CXEN_OFFSETOF(netif_rx_sring, req_event),
    CXEN_OFFSETOF(netif_rx_sring, rsp_prod),
    CXEN_OFFSETOF(netif_rx_sring, rsp_event),
    CXEN_OFFSETOF(netif_rx_sring, ring),
    CXEN_OFFSETOF(blkif_sring, req_prod),
    CXEN_OFFSETOF(blkif_sring, req_event),
    CXEN_OFFSETOF(blkif_sring, rsp_prod),
    CXEN_OFFSETOF(blkif_sring, rsp_event),
    CXEN_OFFSETOF(blkif_sring, ring),
};
#undef CXEN_OFFSETOF

// Function-like macros do not import into Swift; these carry their values.
static const domid_t cxen_domid_self = DOMID_SELF;
static const domid_t cxen_domid_invalid = DOMID_INVALID;
static const uint64_t cxen_uvmf_invlpg = UVMF_INVLPG;
static const uint64_t cxen_uvmf_tlb_flush = UVMF_TLB_FLUSH;
static const uint32_t cxen_sif_privileged = SIF_PRIVILEGED;
static const uint32_t cxen_sif_initdomain = SIF_INITDOMAIN;
static const uint64_t cxen_hvm_callback_irq_type_mask = HVM_PARAM_CALLBACK_IRQ_TYPE_MASK;
static const size_t cxen_max_guest_cmdline = MAX_GUEST_CMDLINE;

extern char cxen_hypercall_page[];  // see "The hypercall page" below

// Boot-time CPU access for the PVH/HVM Xen branch (Intel SDM vol. 2:
// CPUID, WRMSR, RDTSC). Static inline like CPUPrimitives' own, so the
// header compiles in both worlds; only the guest executes them.
static inline void cxen_cpuid(uint32_t leaf, uint32_t *eax, uint32_t *ebx, uint32_t *ecx, uint32_t *edx) {
    __asm__ volatile("cpuid" : "=a"(*eax), "=b"(*ebx), "=c"(*ecx), "=d"(*edx) : "a"(leaf), "c"(0));
}
static inline void cxen_wrmsr(uint32_t msr, uint64_t value) {
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)value), "d"((uint32_t)(value >> 32)) : "memory");
}
static inline uint64_t cxen_rdtsc(void) {
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

// Pages xen_boot.S reserves (guest world): shared info (PVH: its frame is
// handed to XENMEM_add_to_physmap; PV: remapped onto shared_info's machine
// frame), and the PV console and xenstore mapping slots.
extern char cxen_shared_info_page[];
extern char cxen_pv_console_page[];
extern char cxen_pv_store_page[];
extern char cxen_configuration_buffer[];
static const size_t cxen_configuration_buffer_size = XENSTORE_PAYLOAD_MAX + 1;
static inline uintptr_t cxen_configuration_buffer_address(void) { return (uintptr_t)cxen_configuration_buffer; }
static inline uintptr_t cxen_hypercall_page_address(void) { return (uintptr_t)cxen_hypercall_page; }
static inline uintptr_t cxen_shared_info_page_address(void) { return (uintptr_t)cxen_shared_info_page; }
static inline uintptr_t cxen_pv_console_page_address(void) { return (uintptr_t)cxen_pv_console_page; }
static inline uintptr_t cxen_pv_store_page_address(void) { return (uintptr_t)cxen_pv_store_page; }

// Shared-memory primitives for pages another domain writes concurrently:
// single loads/stores the compiler may not merge or hoist (the READ_ONCE
// idea), the barriers io/ring.h asks for (xen_mb/xen_rmb/xen_wmb), and the
// compare-exchange that ends a grant atomically (grant_table.h: the guest
// may clear a v1 entry's flags only while GTF_reading|GTF_writing are 0).
static inline uint32_t cxen_load32(const void *p) { return __atomic_load_n((const uint32_t *)p, __ATOMIC_RELAXED); }
static inline void cxen_store32(void *p, uint32_t v) { __atomic_store_n((uint32_t *)p, v, __ATOMIC_RELAXED); }
static inline uint16_t cxen_load16(const void *p) { return __atomic_load_n((const uint16_t *)p, __ATOMIC_RELAXED); }
static inline void cxen_store16(void *p, uint16_t v) { __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELAXED); }
static inline uint8_t cxen_load8(const void *p) { return __atomic_load_n((const uint8_t *)p, __ATOMIC_RELAXED); }
static inline void cxen_store8(void *p, uint8_t v) { __atomic_store_n((uint8_t *)p, v, __ATOMIC_RELAXED); }
static inline uint64_t cxen_load64(const void *p) { return __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED); }
static inline void cxen_mb(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void cxen_rmb(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
static inline void cxen_wmb(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
/// Replaces *p with `desired` if it equals `expected`; returns the old value.
static inline uint16_t cxen_cmpxchg16(void *p, uint16_t expected, uint16_t desired) {
    __atomic_compare_exchange_n((uint16_t *)p, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return expected;
}
static inline uint64_t cxen_xchg64(void *p, uint64_t v) { return __atomic_exchange_n((uint64_t *)p, v, __ATOMIC_SEQ_CST); }
static inline void cxen_or64(void *p, uint64_t v) { __atomic_fetch_or((uint64_t *)p, v, __ATOMIC_SEQ_CST); }
static inline void cxen_and64(void *p, uint64_t v) { __atomic_fetch_and((uint64_t *)p, v, __ATOMIC_SEQ_CST); }

// The hypercall page: 32-byte stubs Xen fills in (a PV kernel names it
// with XEN_ELFNOTE_HYPERCALL_PAGE; an HVM/PVH guest writes its physical
// address to the MSR that CPUID leaf 0x40000x02 EBX names). xen_boot.S
// defines the symbol (guest world, Xen images only); nothing here
// references it unless a guest calls cxen_hypercall. x86-64 ABI: arguments in rdi, rsi, rdx, r10, r8, result
// in rax; rcx and r11 are clobbered (the PV stubs use syscall).
extern char cxen_hypercall_page[];
static inline long cxen_hypercall(unsigned int op, unsigned long a1, unsigned long a2, unsigned long a3,
                                  unsigned long a4, unsigned long a5) {
    register unsigned long r10 __asm__("r10") = a4;
    register unsigned long r8 __asm__("r8") = a5;
    long result;
    unsigned long d1, d2, d3;
    __asm__ volatile("call *%[entry]"
                     : "=a"(result), "=D"(d1), "=S"(d2), "=d"(d3), "+r"(r10), "+r"(r8)
                     : [entry] "r"(cxen_hypercall_page + op * 32), "1"(a1), "2"(a2), "3"(a3)
                     : "memory", "rcx", "r11");
    return result;
}

// The PV domain's entry points and buffers (xen_pv_entry.S, guest world,
// Xen images only).
_Static_assert(__HYPERVISOR_iret == 23, "xen_pv_entry.S jumps to the iret stub at 23 * 32");
/// Where PrivilegedOperations.h's bmk_* functions jump (CPUPrimitives' hw
/// functions until a PV domain stores its own).
struct cxen_privileged_operations {
    uint64_t (*interrupts_save_disable)(void);
    void (*interrupts_restore)(uint64_t flags);
    void (*interrupts_disable)(void);
    void (*interrupts_enable)(void);
    int (*interrupts_enabled)(void);
    void (*idle_enable_and_halt)(void);
    void (*set_fs_base)(uint64_t value);
    int (*enable_fs_base_instructions)(void);
    void (*idle_wait)(uint64_t deadline, int has_deadline);
    void (*console_device_write)(uint8_t byte);
    void (*platform_stop)(uint8_t port_value);
    void (*processor_halt_forever)(void);
    void (*signal_processor)(uint32_t kind, uint32_t apic_id);
    void (*tlb_answer)(int while_spinning);
    uint64_t (*stack_allocate)(uint64_t pages);
    void (*stack_release)(uint64_t guard_page);
    void (*clock_start)(void);
    uint64_t (*clock_measure)(uint32_t source);
    int (*rtc_read)(uint8_t century_register, int64_t *seconds);
};
extern struct cxen_privileged_operations cxen_privileged_operations;
/// Replaces the table (once, with interrupts masked, before any lock).
static inline void cxen_set_privileged_operations(struct cxen_privileged_operations operations) {
    cxen_privileged_operations = operations;
}
extern char cxen_pv_event_callback[], cxen_pv_failsafe_callback[];
extern const uint64_t cxen_pv_trap_stubs[20];
extern struct trap_info cxen_pv_trap_table[19];
extern struct mmu_update cxen_pv_mmu_batch[128];
static const int cxen_pv_mmu_batch_count = 128;
static inline struct mmu_update *cxen_pv_mmu_batch_address(void) { return cxen_pv_mmu_batch; }
static inline struct trap_info *cxen_pv_trap_table_address(void) { return cxen_pv_trap_table; }
static inline uint64_t cxen_pv_event_callback_address(void) { return (uint64_t)(uintptr_t)cxen_pv_event_callback; }
static inline uint64_t cxen_pv_failsafe_callback_address(void) { return (uint64_t)(uintptr_t)cxen_pv_failsafe_callback; }
/// The faulting address Xen records for a PV vCPU's page fault (a PV
/// kernel cannot read CR2; arch-x86/xen-x86_64.h arch_vcpu_info).
static inline uint64_t cxen_vcpu_info_cr2(const void *vcpu_info) {
    return ((const struct vcpu_info *)vcpu_info)->arch.cr2;
}
/// The trap entry of vector `vector` (below 20), 0 where none exists.
static inline uint64_t cxen_pv_trap_stub(unsigned vector) { return vector < 20 ? cxen_pv_trap_stubs[vector] : 0; }

/// One layout fact measured by the C compiler: `name` is "struct" for a
/// size or "struct.field" for an offset.
struct cxen_layout_fact {
    const char *name;
    size_t value;
};

/// How many layout facts the shim reports (abi.c).
size_t cxen_layout_fact_count(void);
/// Fact `index`, below `cxen_layout_fact_count()`.
const struct cxen_layout_fact *cxen_layout_fact_at(size_t index);

#endif
