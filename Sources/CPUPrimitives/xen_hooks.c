// xen_hooks.c: the "not on Xen" defaults of XenHooks.h, weak so that
// XenPVKit's definitions replace them in Xen images.
#include "XenHooks.h"

__attribute__((weak)) int32_t bmk_xen_attach(uint32_t protocol, uint32_t info) {
    (void)protocol;
    (void)info;
    return 0;
}

__attribute__((weak)) void bmk_xen_console_putc(uint8_t byte) { (void)byte; }

__attribute__((weak)) void bmk_xen_exit(uint8_t port_value) { (void)port_value; }

__attribute__((weak)) void bmk_xen_start_devices(void) {}

__attribute__((weak)) int32_t bmk_xen_tsc_scale(uint32_t *multiplier, int8_t *shift) {
    (void)multiplier;
    (void)shift;
    return 0;
}

__attribute__((weak)) int32_t bmk_xen_wall_clock(uint64_t *unix_nanoseconds) {
    (void)unix_nanoseconds;
    return 0;
}
