// XenRuntime: the PVH domain's devices once the hw platform has its heap,
// interrupts and threads (XenHooks.h `bmk_xen_start_devices`, called on the
// main thread before the application's main): the event upcall on vector
// 0xF3 dispatching event channels (Xen public/xen.h, hvm/hvm_op.h
// HVMOP_set_evtchn_upcall_vector), the grant table mapped through
// XENMEM_add_to_physmap (memory.h, grant_table.h), the xenstore client
// waiting on its port, xenbus discovery of the vif and vbd devices, their
// registration for Rumprun (DeviceInterfaces' PlatformDevices), and the
// thread that routes backend state changes and times requests out.
// Guest world only; not run from this repository's tests (no Xen host):
// the logic it wires is XenEventLoop.swift and XenDevices.swift, host-tested.
#if hasFeature(Embedded)
import BareMetalKit
import CXen
import DeviceInterfaces

/// A thread mutex as the Xen run time's lock (devices, xenstore).
final class XenThreadLock: XenLock {
    let mutex = ThreadMutex()
    func lock() { mutex.lock() }
    func unlock() { mutex.unlock() }
}

/// The event table's lock: the upcall takes it on CPU 0 with interrupts
/// off, so threads take it with interrupts masked (a spinning ticket lock).
final class XenUpcallLock: XenLock {
    let ticket = TicketLock()
    var interruptsWereEnabled = false
    func lock() {
        let enabled = ticket.lock()
        interruptsWereEnabled = enabled
    }
    func unlock() { ticket.unlock(restoring: interruptsWereEnabled) }
}

/// How the xenstore client waits between ring reads: on a semaphore the
/// store port's handler raises, at most 10 ms (so a lost or absent upcall
/// degrades to polling).
final class XenStoreEventWait: XenEventWait {
    static var interval: UInt64 { 10_000_000 }
    let semaphore = ThreadSemaphore(count: 0)
    func waitForEvent() {
        semaphore.down(deadline: SystemClock.monotonicNanoseconds &+ Self.interval)
        XenRuntime.collapse(semaphore)
    }
}

/// Frontend pages from the heap. PVH guests are identity-mapped: the
/// guest frame of a page is its address over 4096.
struct XenHeapPages: GuestMemory {
    mutating func allocatePage() -> UnsafeMutableRawPointer? {
        HeapDMAMemory().allocate(byteCount: xenPageSize, alignment: xenPageSize)
    }
    mutating func freePage(_ page: UnsafeMutableRawPointer) { HeapDMAMemory().deallocate(page) }
    func frameNumber(of page: UnsafeMutableRawPointer) -> UInt64 { UInt64(UInt(bitPattern: page)) >> 12 }
}

typealias XenRuntimeHypercalls = WaitingHypercalls<HypercallPage>

enum XenRuntime {
    /// Grant-table frames mapped at start (512 references each).
    static var grantFrames: UInt32 { 4 }
    /// How often the xenbus thread looks without being woken (timeouts).
    static var watchInterval: UInt64 { 1_000_000_000 }

    nonisolated(unsafe) static var events: XenEvents<XenRuntimeHypercalls>? = nil
    nonisolated(unsafe) static var devices: XenDevices<XenRuntimeHypercalls, XenHeapPages>? = nil
    nonisolated(unsafe) static var watchSignal: ThreadSemaphore? = nil
    nonisolated(unsafe) static var upcall: InterruptRegistration? = nil

    static func write(_ text: StaticString) { Platform.write(text) }
    static func write(_ text: String) { Platform.write(Array(text.utf8)) }

    static func start(channels: XenBootChannels, sharedInfoFrame: UInt64) {
        guard let sharedInfo = UnsafeMutableRawPointer(bitPattern: UInt(sharedInfoFrame << 12)) else { return }
        let storeWait = XenStoreEventWait()
        let hypercalls = WaitingHypercalls(HypercallPage(), waiter: storeWait)
        let events = XenEvents(sharedInfo: sharedInfo, hypervisor: hypercalls, lock: XenUpcallLock())
        // Only PV guests use the per-vCPU mask; cleared so nothing depends on it.
        cxen_store8(sharedInfo + CXEN_OFFSETOF_shared_info_vcpu_info + CXEN_OFFSETOF_vcpu_info_evtchn_upcall_mask, 0)
        self.events = events

        // The upcall: bmk_xen_attach asked Xen for vector 0xF3 (or the
        // callback-via vector); the hw interrupt layer sends it here.
        if Interrupts.isRunning {
            do throws(InterruptError) {
                upcall = try Interrupts.register(fixedVector: XenGuest.upcallVector) { _ in
                    _ = XenRuntime.events?.dispatch()
                    return true
                }
                write("rumprun: xen: event upcall on vector 0xf3\n")
            } catch {
                write("rumprun: xen: no upcall handler (vector busy); event channels are polled\n")
            }
        } else {
            write("rumprun: xen: no interrupt layer; event channels are polled\n")
        }

        let watchSignal = ThreadSemaphore(count: 0)
        self.watchSignal = watchSignal
        do throws(EventChannelError) {
            try events.bind(channels.storePort) { _ in
                storeWait.semaphore.up()
                watchSignal.up()
            }
        } catch {
            write("rumprun: xen: cannot bind the xenstore port; polling it\n")
        }

        var hypervisor = HypercallPage()
        let grants: GrantTable
        do throws(XenRuntimeError) {
            grants = try XenRuntimeSetup.mapGrantTable(
                hypervisor: &hypervisor, frames: grantFrames,
                allocate: { HeapDMAMemory().allocate(byteCount: $0 * xenPageSize, alignment: xenPageSize) },
                frameNumber: { UInt64(UInt(bitPattern: $0)) >> 12 })
        } catch {
            write("rumprun: xen: no grant table; no paravirtual devices\n")
            return
        }
        guard let interface = UnsafeMutableRawPointer(bitPattern: UInt(channels.storeFrame << 12)) else { return }
        let store = XenStore(interface: interface, port: channels.storePort, hypervisor: hypercalls, maximumWaits: 500)
        let devices: XenDevices<XenRuntimeHypercalls, XenHeapPages>
        do throws(XenRuntimeError) {
            devices = try XenRuntimeSetup.startDevices(
                store: store, events: events, grants: grants, memory: XenHeapPages(), storeLock: XenThreadLock(),
                makeLock: { XenThreadLock() }, clock: { SystemClock.monotonicNanoseconds })
        } catch {
            write("rumprun: xen: cannot read domid from xenstore; no paravirtual devices\n")
            return
        }
        for nic in devices.networkInterfaces {
            write("rumprun: xen: " + nic.name + " attached (xen-netfront)\n")
        }
        for disk in devices.blockDevices {
            write("rumprun: xen: " + disk.name + " attached (xen-blkfront)\n")
        }
        for failure in devices.failures { write("rumprun: xen: " + failure.description + "\n") }
        devices.registerWithPlatform()
        self.devices = devices

        do throws(ThreadError) {
            _ = try ThreadRuntime.spawn(name: Array("xenbus".utf8)) {
                XenRuntime.watchLoop()
                return 0
            }
        } catch {
            write("rumprun: xen: no xenbus thread; backend changes are not followed\n")
        }
    }

    /// Takes the units a semaphore gathered while nobody waited: the
    /// waiter looks at the whole ring (or every watch) anyway, and stale
    /// units would otherwise use up a client's bounded waits at once.
    static func collapse(_ semaphore: ThreadSemaphore) {
        while semaphore.count > 0 { semaphore.down(deadline: SystemClock.monotonicNanoseconds) }
    }

    /// The xenbus thread: routes backend state changes (woken by the store
    /// port) and gives up on silent backends.
    static func watchLoop() {
        while true {
            if let watchSignal {
                watchSignal.down(deadline: SystemClock.monotonicNanoseconds &+ watchInterval)
                collapse(watchSignal)
            }
            guard let devices else { continue }
            devices.routeWatchEvents()
            devices.checkTimeouts(now: SystemClock.monotonicNanoseconds)
        }
    }
}

@_cdecl("bmk_xen_start_devices")
public func xenStartDevices() {
    guard XenGuest.attached, XenGuest.sharedInfoFrame != 0, let channels = XenGuest.pvhChannels else { return }
    XenRuntime.start(channels: channels, sharedInfoFrame: XenGuest.sharedInfoFrame)
}
#endif
