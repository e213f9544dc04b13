// XenHooks: where the hw boot hands over to the Xen platform when it runs
// as a Xen PVH guest. CPUPrimitives defines each function weakly as "not on
// Xen" (xen_hooks.c); an image that links XenPVKit gets its strong
// definitions instead, so hw images are unchanged.
#ifndef CPU_XEN_HOOKS_H
#define CPU_XEN_HOOKS_H

#include <stdint.h>

/// Called once, early in bmk_boot_main: detects Xen and sets up the
/// hypercall page, shared info and the console ring. Nonzero when on Xen.
int32_t bmk_xen_attach(uint32_t protocol, uint32_t info);
/// One console byte, also sent to the Xen console ring once attached.
void bmk_xen_console_putc(uint8_t byte);
/// The TSC-to-nanoseconds scale of Xen's vcpu_time_info (pvclock form);
/// nonzero when attached and Xen has published one.
int32_t bmk_xen_tsc_scale(uint32_t *multiplier, int8_t *shift);
/// The current Unix time in nanoseconds from Xen's wall clock in shared
/// info; nonzero when attached and Xen has published one.
int32_t bmk_xen_wall_clock(uint64_t *unix_nanoseconds);
/// Called once on the main thread before the application's main, when
/// the platform has its heap, interrupts and threads: on Xen (PVH), binds
/// the event upcall, connects the xenbus devices and registers them for
/// Rumprun.
void bmk_xen_start_devices(void);
/// The guest ends with debug-exit value `port_value` (GuestExit); on Xen
/// this records the outcome and shuts the domain down.
void bmk_xen_exit(uint8_t port_value);

#endif
