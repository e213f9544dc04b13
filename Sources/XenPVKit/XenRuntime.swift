// XenRuntime: a Xen domain's devices once the platform has its heap and
// threads (XenHooks.h `bmk_xen_start_devices`, called on the main thread
// before the application's main), for PVH and PV alike: event channels
// dispatched through one `XenEvents` table (PVH: the upcall on vector 0xF3,
// HVMOP_set_evtchn_upcall_vector; PV: the event callback, xen.h), the grant
// table (PVH: XENMEM_add_to_physmap over heap pages, memory.h; PV:
// GNTTABOP_setup_table's machine frames mapped with update_va_mapping,
// grant_table.h), the xenstore client waiting on its port, xenbus
// discovery of the vif and vbd devices with frontend pages named by guest
// frame (PVH) or machine frame (PV), their registration for Rumprun
// (DeviceInterfaces' PlatformDevices), and the thread that routes backend
// state changes and times requests out.
// Guest world only; not run from this repository's tests (no Xen host):
// the logic it wires is XenEventLoop.swift, XenRuntimeSetup.swift,
// XenPVEvents.swift and XenDevices.swift, host-tested.
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
/// guest frame of a page is its address over 4096. PV guests name a page
/// by its machine frame, from the P2M list (`machineFrames`).
struct XenHeapPages: GuestMemory {
    var machineFrames: XenPVFrames<XenHeapPageSource>? = nil

    mutating func allocatePage() -> UnsafeMutableRawPointer? {
        var source = XenHeapPageSource()
        return source.allocatePage()
    }
    mutating func freePage(_ page: UnsafeMutableRawPointer) {
        var source = XenHeapPageSource()
        source.freePage(page)
    }
    func frameNumber(of page: UnsafeMutableRawPointer) -> UInt64 {
        if let machineFrames { return machineFrames.frameNumber(of: page) }
        return UInt64(UInt(bitPattern: page)) >> 12
    }
}

/// Heap pages and their pseudo-physical frames (PV: VIRT_BASE 0, so the
/// page at virtual address a is frame a >> 12).
struct XenHeapPageSource: XenPVPageSource {
    mutating func allocatePage() -> UnsafeMutableRawPointer? {
        HeapDMAMemory().allocate(byteCount: xenPageSize, alignment: xenPageSize)
    }
    mutating func freePage(_ page: UnsafeMutableRawPointer) { HeapDMAMemory().deallocate(page) }
    func pseudoPhysicalFrame(of page: UnsafeMutableRawPointer) -> UInt64 { UInt64(UInt(bitPattern: page)) >> 12 }
}

/// What differs between the two kinds of domain at run time.
enum XenDomainDevices {
    /// PVH: the upcall vector, grant frames placed with add_to_physmap.
    case pvh
    /// PV: the event callback (its timer port kept bound), grant frames
    /// from GNTTABOP_setup_table, machine frames from the P2M list.
    case pv(timer: XenPVTimer, frames: UnsafePointer<UInt64>, pageCount: UInt64)
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

    /// Starts the devices of the domain whose shared info and xenstore
    /// ring are mapped at `sharedInfo` and `storeInterface`.
    static func start(
        channels: XenBootChannels, sharedInfo: UnsafeMutableRawPointer, storeInterface: UnsafeMutableRawPointer,
        kind: XenDomainDevices
    ) {
        let storeWait = XenStoreEventWait()
        let hypercalls = WaitingHypercalls(HypercallPage(), waiter: storeWait)
        let events = XenEvents(sharedInfo: sharedInfo, hypervisor: hypercalls, lock: XenUpcallLock())
        var memory = XenHeapPages()
        switch kind {
        case .pvh:
            // Only PV guests use the per-vCPU mask; cleared so nothing depends on it.
            cxen_store8(sharedInfo + CXEN_OFFSETOF_shared_info_vcpu_info + CXEN_OFFSETOF_vcpu_info_evtchn_upcall_mask, 0)
            self.events = events
            registerUpcall()
        case .pv(let timer, let frames, let pageCount):
            // The table masked every port: the timer's gets a handler (and is
            // unmasked) before the callback dispatches through the table.
            do throws(EventChannelError) {
                try XenPVEventCallback.keepTimer(timer, in: events)
            } catch {
                write("rumprun: xen: cannot keep the timer port in the event table; no paravirtual devices\n")
                return
            }
            self.events = events
            memory.machineFrames = XenPVFrames(pages: XenHeapPageSource(), frames: frames, pageCount: pageCount)
            write("rumprun: xen: events through the PV callback\n")
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
            switch kind {
            case .pvh:
                grants = try XenRuntimeSetup.mapGrantTable(
                    hypervisor: &hypervisor, frames: grantFrames,
                    allocate: { HeapDMAMemory().allocate(byteCount: $0 * xenPageSize, alignment: xenPageSize) },
                    frameNumber: { UInt64(UInt(bitPattern: $0)) >> 12 })
            case .pv:
                // Heap pages become the grant frames' virtual home; their own
                // machine frames are given up with them.
                grants = try XenRuntimeSetup.setUpGrantTable(
                    hypervisor: &hypervisor, frames: grantFrames,
                    reserve: { HeapDMAMemory().allocate(byteCount: $0 * xenPageSize, alignment: xenPageSize) })
            }
        } catch {
            write("rumprun: xen: no grant table; no paravirtual devices\n")
            return
        }
        startDevices(
            channels: channels, storeInterface: storeInterface, hypercalls: hypercalls, events: events, grants: grants,
            memory: memory)
    }

    /// PVH: the upcall. bmk_xen_attach asked Xen for vector 0xF3 (or the
    /// callback-via vector); the hw interrupt layer sends it here.
    static func registerUpcall() {
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
    }

    /// The xenstore client, discovery, registration and the xenbus thread.
    static func startDevices(
        channels: XenBootChannels, storeInterface: UnsafeMutableRawPointer, hypercalls: XenRuntimeHypercalls,
        events: XenEvents<XenRuntimeHypercalls>, grants: GrantTable, memory: XenHeapPages
    ) {
        let store = XenStore(interface: storeInterface, port: channels.storePort, hypervisor: hypercalls, maximumWaits: 500)
        let devices: XenDevices<XenRuntimeHypercalls, XenHeapPages>
        do throws(XenRuntimeError) {
            devices = try XenRuntimeSetup.startDevices(
                store: store, events: events, grants: grants, memory: memory, storeLock: XenThreadLock(),
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
    guard XenGuest.attached else { return }
    if let channels = XenGuest.pvhChannels {
        // PVH: guest frames are identity-mapped addresses.
        guard XenGuest.sharedInfoFrame != 0,
            let sharedInfo = UnsafeMutableRawPointer(bitPattern: UInt(XenGuest.sharedInfoFrame << 12)),
            let store = UnsafeMutableRawPointer(bitPattern: UInt(channels.storeFrame << 12))
        else { return }
        XenRuntime.start(channels: channels, sharedInfo: sharedInfo, storeInterface: store, kind: .pvh)
    } else if let ring = XenPVRuntime.storeRing, let sharedInfo = XenPVRuntime.sharedInfo, let timer = XenPVRuntime.timer,
        let frames = XenPVRuntime.frames
    {
        // PV: shared info and the store ring where XenPVBoot mapped them.
        guard let store = UnsafeMutableRawPointer(bitPattern: UInt(ring.address)) else { return }
        XenRuntime.start(
            channels: ring.channels, sharedInfo: sharedInfo, storeInterface: store,
            kind: .pv(timer: timer, frames: frames, pageCount: XenPVRuntime.pageCount))
    }
}
#endif
