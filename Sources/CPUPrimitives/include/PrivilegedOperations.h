// PrivilegedOperations: the seam between the shared runtime (locks, the
// scheduler, idle, TLS) and the instructions only a ring-0 kernel may
// execute. privileged.c defines each operation for the hw platform
// (bmk_hw_*), and each bmk_* name as a weak alias of it, so a hw image
// calls the instruction's function directly (link-time selection, no
// table). A Xen image links CXen's xen_pv_entry.S, whose strong bmk_*
// definitions jump through a table that starts out holding the hw
// functions (a PVH domain or QEMU) and that a PV domain points at its
// own implementations before anything else runs (XenPVKit).
// Guest world only.
#ifndef CPU_PRIVILEGED_OPERATIONS_H
#define CPU_PRIVILEGED_OPERATIONS_H

#include <stdint.h>

/// RFLAGS with IF (bit 9) as it was; interrupts masked afterwards.
uint64_t bmk_interrupts_save_disable(void);
/// Unmasks if bit 9 of `flags` (from bmk_interrupts_save_disable) is set.
void bmk_interrupts_restore(uint64_t flags);
void bmk_interrupts_disable(void);
void bmk_interrupts_enable(void);
/// 1 when interrupts are enabled.
int bmk_interrupts_enabled(void);
/// Enables interrupts and waits for one without losing a wake-up (hw:
/// STI;HLT); returns with interrupts enabled, after the handler ran.
void bmk_idle_enable_and_halt(void);
/// Sets the FS base (the thread pointer) without FSGSBASE instructions.
void bmk_set_fs_base(uint64_t value);
/// Enables the FSGSBASE instructions if the platform may (hw: CR4 bit 16);
/// 1 when they may be used.
int bmk_enable_fs_base_instructions(void);

/// The idle wait, entered with interrupts masked: returns when an
/// interrupt was claimed or the TSC reached `deadline` (when `has_deadline`).
void bmk_idle_wait(uint64_t deadline, int has_deadline);
/// One console byte to the platform's own devices (hw: COM1, VGA text).
void bmk_console_device_write(uint8_t byte);
/// Ends the guest with debug-exit value `port_value` (hw: port 0xf4,
/// then halts); does not return.
void bmk_platform_stop(uint8_t port_value);
/// Stops this CPU for good (hw: CLI;HLT forever).
void bmk_processor_halt_forever(void);
/// Signals another CPU (hw: an IPI): `kind` 0 wake-up to `apic_id`, 1 NMI
/// to all others, 2 TLB shootdown to `apic_id`.
void bmk_signal_processor(uint32_t kind, uint32_t apic_id);
/// Answers the TLB shootdown pending for this CPU (hw: INVLPG or CR3).
void bmk_tlb_answer(int while_spinning);
/// A stack of `pages` pages under a guard page; returns its top, 0 when out
/// of memory.
uint64_t bmk_stack_allocate(uint64_t pages);
/// Frees a stack from bmk_stack_allocate by its guard page.
void bmk_stack_release(uint64_t guard_page);
/// Starts the monotonic clock (hw: TSC calibration against kvmclock, the
/// PIT or the HPET).
void bmk_clock_start(void);
/// The TSC frequency (Hz) measured with one clock source (SystemClock's
/// ClockSource, in declaration order), 0 when it does not answer.
uint64_t bmk_clock_measure(uint32_t source);
/// One read of the battery-backed clock (hw: the CMOS RTC through ports
/// 0x70/0x71): Unix seconds in *seconds and 1, or 0 when the read failed.
int bmk_rtc_read(uint8_t century_register, int64_t *seconds);

// The hw implementations (privileged.c; the bmk_hw_* of the second group
// are Swift, in BareMetalKit).
uint64_t bmk_hw_interrupts_save_disable(void);
void bmk_hw_interrupts_restore(uint64_t flags);
void bmk_hw_interrupts_disable(void);
void bmk_hw_interrupts_enable(void);
int bmk_hw_interrupts_enabled(void);
void bmk_hw_idle_enable_and_halt(void);
void bmk_hw_set_fs_base(uint64_t value);
int bmk_hw_enable_fs_base_instructions(void);
void bmk_hw_processor_halt_forever(void);
void bmk_hw_idle_wait(uint64_t deadline, int has_deadline);
void bmk_hw_console_device_write(uint8_t byte);
void bmk_hw_platform_stop(uint8_t port_value);
void bmk_hw_signal_processor(uint32_t kind, uint32_t apic_id);
void bmk_hw_tlb_answer(int while_spinning);
uint64_t bmk_hw_stack_allocate(uint64_t pages);
void bmk_hw_stack_release(uint64_t guard_page);
void bmk_hw_clock_start(void);
uint64_t bmk_hw_clock_measure(uint32_t source);
int bmk_hw_rtc_read(uint8_t century_register, int64_t *seconds);

#endif
