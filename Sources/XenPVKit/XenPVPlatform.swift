// XenPVPlatform: the PV domain's implementations of the shared runtime's
// privileged operations (CPUPrimitives PrivilegedOperations.h, through
// xen_pv_entry.S's table) and of BareMetalKit's Paravirtualization hooks,
// and the Swift halves of the trap, event and failsafe entries. Guest
// world only; never run from this repository's tests (no Xen host).
#if hasFeature(Embedded)
import BareMetalKit
import CXen

/// State of the running PV domain (one vCPU).
enum XenPVRuntime {
    /// Set by `start` before `install`; every operation below needs it.
    nonisolated(unsafe) static var interruptFlag: XenPVInterruptFlag? = nil
    static var flag: XenPVInterruptFlag { interruptFlag.unsafelyUnwrapped }
    nonisolated(unsafe) static var sharedInfo: UnsafeMutableRawPointer? = nil
    nonisolated(unsafe) static var timer: XenPVTimer? = nil
    nonisolated(unsafe) static var frames: UnsafePointer<UInt64>? = nil
    nonisolated(unsafe) static var pageCount: UInt64 = 0
    /// The xenstore ring's channels and the virtual address XenPVBoot
    /// mapped it at (nil when start_info named no store page), for
    /// bmk_xen_start_devices.
    nonisolated(unsafe) static var storeRing: (channels: XenBootChannels, address: UInt64)? = nil
    /// Events seen by the callback (statistics).
    nonisolated(unsafe) static var upcalls: UInt64 = 0

    /// Points the runtime's privileged operations and hooks at the PV ones.
    /// Called once, with events masked, before anything takes a lock.
    static func install() {
        cxen_set_privileged_operations(
            cxen_privileged_operations(
                interrupts_save_disable: xenPVInterruptsSaveDisable, interrupts_restore: xenPVInterruptsRestore,
                interrupts_disable: xenPVInterruptsDisable, interrupts_enable: xenPVInterruptsEnable,
                interrupts_enabled: xenPVInterruptsEnabled, idle_enable_and_halt: xenPVIdleEnableAndHalt,
                set_fs_base: xenPVSetFSBase, enable_fs_base_instructions: xenPVEnableFSBaseInstructions,
                idle_wait: xenPVIdleWait, console_device_write: xenPVConsoleDeviceWrite, platform_stop: xenPVPlatformStop,
                processor_halt_forever: xenPVProcessorHaltForever, signal_processor: xenPVSignalProcessor,
                tlb_answer: xenPVTLBAnswer, stack_allocate: xenPVStackAllocate, stack_release: xenPVStackRelease,
                clock_start: xenPVClockStart, clock_measure: xenPVClockMeasure, rtc_read: xenPVRTCRead))
    }

    static func writeHex(_ value: UInt64) {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 18 bytes: "0x" and 16 digits
        withUnsafeMutableBytes(of: &digits) { buffer in
            buffer[0] = 0x30
            buffer[1] = 0x78
            for index in 0..<16 {
                let digit = UInt8((value >> UInt64(60 - 4 * index)) & 0xF)
                buffer[2 + index] = digit < 10 ? 0x30 + digit : 0x57 + digit
            }
            XenGuest.write(UnsafeRawBufferPointer(rebasing: buffer[0..<18]))
        }
    }
}

// MARK: PrivilegedOperations.h

func xenPVInterruptsSaveDisable() -> UInt64 { XenPVRuntime.flag.saveAndDisable() }

func xenPVInterruptsRestore(_ flags: UInt64) {
    var hypervisor = HypercallPage()
    XenPVRuntime.flag.restore(flags, hypervisor: &hypervisor)
}

func xenPVInterruptsDisable() { XenPVRuntime.flag.disable() }

func xenPVInterruptsEnable() {
    var hypervisor = HypercallPage()
    XenPVRuntime.flag.enable(hypervisor: &hypervisor)
}

func xenPVInterruptsEnabled() -> Int32 { XenPVRuntime.flag.isEnabled ? 1 : 0 }

/// SCHEDOP_block: unmasks, sleeps until an event, which the callback has
/// handled when it returns; events stay enabled, as after STI;HLT.
func xenPVIdleEnableAndHalt() {
    var hypervisor = HypercallPage()
    hypervisor.block()
}

func xenPVSetFSBase(_ value: UInt64) {
    var hypervisor = HypercallPage()
    do throws(XenPVError) {
        try hypervisor.setBase(.fs, value)
    } catch {
        XenGuest.write("rumprun: panic: Xen refused set_segment_base for the thread pointer\n")
        XenGuest.shutdown(.panicked)
    }
}

/// PV kernels may not set CR4.FSGSBASE.
func xenPVEnableFSBaseInstructions() -> Int32 { 0 }

/// The idle wait (events masked): the one-shot timer at the deadline (or
/// after ProcessorIdle.unboundedWaitLimit ticks, so polled drivers keep
/// being polled), then SCHEDOP_block; returns with events masked.
func xenPVIdleWait(_ deadline: UInt64, _ hasDeadline: Int32) {
    let now = cxen_rdtsc()
    let target = hasDeadline != 0 ? deadline : now &+ ProcessorIdle.unboundedWaitLimit
    if target <= now { return }
    var hypervisor = HypercallPage()
    if var timer = XenPVRuntime.timer, let sharedInfo = XenPVRuntime.sharedInfo {
        do throws(XenPVTimerError) {
            try timer.arm(tsc: target, sharedInfo: sharedInfo, hypervisor: &hypervisor)
            XenPVRuntime.timer = timer
        } catch {
            // Without a timer a block could last forever: yield instead.
            hypervisor.yield()
            return
        }
    }
    XenPVRuntime.flag.block(hypervisor: &hypervisor)
}

/// No UART or text screen: console bytes reach the ring through
/// bmk_xen_console_putc (XenGuest.swift).
func xenPVConsoleDeviceWrite(_ byte: UInt8) {}

/// Reached only if bmk_xen_exit's SCHEDOP_shutdown returned.
func xenPVPlatformStop(_ portValue: UInt8) {
    XenGuest.shutdown(XenExit(portValue: portValue))
}

/// One vCPU: nothing else runs; block for good.
func xenPVProcessorHaltForever() {
    var hypervisor = HypercallPage()
    while true { XenPVRuntime.flag.block(hypervisor: &hypervisor) }
}

/// The clock is vCPU 0's vcpu_time_info scale over the TSC (the same
/// record Xen keeps current; no calibration needed).
func xenPVClockStart() {
    guard let sharedInfo = XenPVRuntime.sharedInfo, let record = XenTime.record(sharedInfo: sharedInfo),
        record.scale.multiplier != 0
    else {
        XenGuest.write("rumprun: panic: clock: Xen published no vcpu_time_info\n")
        XenGuest.shutdown(.panicked)
    }
    Paravirtualization.startClock(scale: record.scale)
}

/// Only Xen's own record answers in a PV domain (no PIT, HPET or kvmclock).
func xenPVClockMeasure(_ index: UInt32) -> UInt64 {
    guard index == ClockSource.xen.index, let sharedInfo = XenPVRuntime.sharedInfo,
        let record = XenTime.record(sharedInfo: sharedInfo), record.scale.multiplier != 0
    else { return 0 }
    return record.scale.ticksPerSecond
}

/// No CMOS clock: the wall clock is shared info's (bmk_xen_wall_clock).
func xenPVRTCRead(_ centuryRegister: UInt8, _ seconds: UnsafeMutablePointer<Int64>?) -> Int32 { 0 }

/// One vCPU: there is no other CPU to signal.
func xenPVSignalProcessor(_ kind: UInt32, _ apicID: UInt32) {}

/// One vCPU: no shootdown is ever requested of this one.
func xenPVTLBAnswer(_ whileSpinning: Int32) {}

/// A stack from the heap's allocator, its lowest page unmapped with
/// update_va_mapping (entry 0).
func xenPVStackAllocate(_ pages: UInt64) -> UInt64 {
    guard let base = Paravirtualization.allocateFrames(count: pages + 1) else { return 0 }
    guard setPVMapping(base, mapped: false) else {
        _ = Paravirtualization.freeFrames(at: base)
        return 0
    }
    return base + (pages + 1) * 4096
}

func xenPVStackRelease(_ guardPage: UInt64) {
    guard setPVMapping(guardPage, mapped: true), Paravirtualization.freeFrames(at: guardPage) else {
        XenGuest.write("rumprun: panic: threads: a stack's guard page could not be mapped again or freed\n")
        XenGuest.shutdown(.panicked)
    }
}

/// The page at `address` unmapped, or mapped again writable with its
/// machine frame from the P2M list.
func setPVMapping(_ address: UInt64, mapped: Bool) -> Bool {
    let pfn = address >> 12
    guard let frames = XenPVRuntime.frames, pfn < XenPVRuntime.pageCount else { return false }
    var hypervisor = HypercallPage()
    let entry = mapped ? PVPageTableEntry.data(frame: frames[Int(pfn)]) : 0
    do throws(HypercallError) {
        try hypervisor.updateMapping(virtualAddress: address, entry: entry)
        return true
    } catch {
        return false
    }
}

// MARK: Entries from xen_pv_entry.S

/// The event callback (events masked): once bmk_xen_start_devices has
/// made the event table, every pending port goes through it (the same
/// `XenEvents` the PVH upcall dispatches: handlers wake the threads of
/// the xenstore client, the xenbus thread and the frontends; the timer's
/// handler does nothing); before that the upcall is acknowledged and the
/// pending unmasked ports cleared (xen.h 2-level ABI). Either way a
/// blocked idle loop resumes and rechecks its deadline and run queue.
@_cdecl("xen_pv_event_upcall")
public func xenPVEventUpcall() {
    guard let sharedInfo = XenPVRuntime.sharedInfo else { return }
    XenPVRuntime.upcalls &+= 1
    XenPVEventCallback.handle(sharedInfo: sharedInfo, events: XenRuntime.events)
}

/// A CPU exception (frame as isr.S's: 15 registers, vector, error code,
/// then RIP, CS, RFLAGS, RSP, SS): reported like the hw one, with CR2 from
/// vcpu_info (a PV kernel cannot read CR2), then SHUTDOWN_crash.
@_cdecl("xen_pv_trap")
public func xenPVTrap(_ frame: UnsafePointer<UInt64>) -> Never {
    XenGuest.write("rumprun: exception: vector ")
    XenGuest.write(decimal: frame[15])
    XenGuest.write(" error code ")
    XenPVRuntime.writeHex(frame[16])
    XenGuest.write(" RIP ")
    XenPVRuntime.writeHex(frame[17])
    XenGuest.write(" RSP ")
    XenPVRuntime.writeHex(frame[20])
    if let sharedInfo = XenPVRuntime.sharedInfo {
        XenGuest.write(" CR2 ")
        XenPVRuntime.writeHex(cxen_vcpu_info_cr2(XenPVInterruptFlag.vcpuInfo(sharedInfo: sharedInfo)))
    }
    XenGuest.write("\n")
    XenGuest.shutdown(.exception)
}

/// Xen could not load a segment register on a return to the guest.
@_cdecl("xen_pv_failsafe")
public func xenPVFailsafe(_ frame: UnsafePointer<UInt64>) -> Never {
    XenGuest.write("rumprun: Xen failsafe callback (a segment could not be loaded)\n")
    XenGuest.shutdown(.exception)
}
#endif
