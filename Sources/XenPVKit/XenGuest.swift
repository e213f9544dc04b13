// XenGuest: the guest-world glue of the Xen boot paths. The hw boot's
// hooks (CPUPrimitives XenHooks.h: attach, console byte, TSC scale, exit)
// for a PVH domain, and xen_pv_main, which xen_boot.S's PV entry calls.
// The PVH attach allocates nothing (it runs before the hw platform has a
// heap); the PV entry allocates nothing until it has made its own heap
// (see Docs/xen.md). Guest world only;
// not run from this repository's tests (no Xen host).
#if hasFeature(Embedded)
import BareMetalKit
import CXen

/// CPUID and WRMSR, executed.
struct HardwareXenCPU: XenCPUAccess {
    mutating func cpuid(_ leaf: UInt32) -> (UInt32, UInt32, UInt32, UInt32) {
        var eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0
        cxen_cpuid(leaf, &eax, &ebx, &ecx, &edx)
        return (eax, ebx, ecx, edx)
    }
    mutating func writeMSR(_ msr: UInt32, _ value: UInt64) { cxen_wrmsr(msr, value) }
}

/// State of the running Xen guest (one CPU at start of day).
enum XenGuest {
    /// BareMetalKit's vectors: 0x20 and up for devices, 0xF2 for TLB
    /// shootdowns; 0xF3 is left for Xen's event upcall.
    static var upcallVector: UInt8 { 0xF3 }
    nonisolated(unsafe) static var console: ConsoleRing<PollingHypercalls<HypercallPage>>? = nil
    nonisolated(unsafe) static var pending = LineBuffer()
    nonisolated(unsafe) static var attached = false
    /// PVH: the guest frame of shared info (0 for PV, which maps it elsewhere).
    nonisolated(unsafe) static var sharedInfoFrame: UInt64 = 0
    /// PVH: the store and console pages and ports, for the run time
    /// (XenRuntime.swift) once the platform has threads.
    nonisolated(unsafe) static var pvhChannels: XenBootChannels? = nil

    static func write(_ bytes: UnsafeRawBufferPointer) {
        if console != nil {
            do throws(ConsoleError) { try console!.write(bytes) } catch { console = nil }
        } else {
            // Before the ring (or after it failed): Xen's own console.
            var hypervisor = HypercallPage()
            _ = try? hypervisor.consoleWrite(bytes)
        }
    }

    static func write(_ text: StaticString) {
        write(UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    static func write(decimal value: UInt64) {
        XenExit.withDecimal(Int64(truncatingIfNeeded: value)) { write($0) }
    }

    static func shutdown(_ outcome: XenExit) -> Never {
        pending.flush { write($0) }
        var hypervisor = HypercallPage()
        try? outcome.shutdown(hypervisor: &hypervisor, console: { write($0) })
        // Xen refused: nothing else can end the domain.
        write("rumprun: SCHEDOP_shutdown refused\n")
        while true { hypervisor.block() }
    }
}

@_cdecl("bmk_xen_attach")
public func xenAttach(_ protocolNumber: UInt32, _ infoAddress: UInt32) -> Int32 {
    // Only the PVH entry (protocol 2) can be a Xen domain.
    guard protocolNumber == 2 else { return 0 }
    var cpu = HardwareXenCPU()
    var hypervisor = HypercallPage()
    let sharedInfo = UInt64(cxen_shared_info_page_address())
    let session: XenHVMSession
    do throws(XenBootError) {
        guard let started = try XenHVMBoot.start(
            cpu: &cpu, hypervisor: &hypervisor, hypercallPageAddress: UInt64(cxen_hypercall_page_address()),
            sharedInfoPage: UnsafeMutableRawPointer(bitPattern: UInt(sharedInfo))!, sharedInfoFrame: sharedInfo >> 12,
            upcallVector: XenGuest.upcallVector)
        else { return 0 }
        session = started
    } catch {
        // Without a hypercall page there is no way to say anything (its
        // bytes are int3); otherwise Xen's own console is the only outlet.
        if case .noHypercallPage = error { return 0 }
        XenGuest.write("rumprun: Xen PVH start of day failed\n")
        return 0
    }
    XenGuest.attached = true
    XenGuest.sharedInfoFrame = session.sharedInfoFrame
    XenGuest.pvhChannels = session.channels
    // PVH: guest frames are physical addresses, identity-mapped at boot
    // and later inside the hw platform's device window (3-4 GiB).
    XenGuest.console = ConsoleRing(
        interface: UnsafeMutableRawPointer(bitPattern: UInt(session.channels.consoleFrame << 12))!,
        port: session.channels.consolePort, hypervisor: PollingHypercalls(HypercallPage()), maximumWaits: 100_000)
    XenGuest.write("rumprun: Xen PVH domain (Xen ")
    XenGuest.write(decimal: UInt64(session.cpuid.majorVersion))
    XenGuest.write(".")
    XenGuest.write(decimal: UInt64(session.cpuid.minorVersion))
    XenGuest.write("): console ring, shared info, upcall vector set\n")
    provideConfiguration(startInfoAddress: UInt64(infoAddress), channels: session.channels)
    return 1
}

/// The launcher's JSON from xenstore onto the hw boot's command line
/// (XenPVHConfiguration); boot goes on without it if the store fails.
func provideConfiguration(startInfoAddress: UInt64, channels: XenBootChannels) {
    guard let info = UnsafeMutablePointer<hvm_start_info>(bitPattern: UInt(startInfoAddress)),
        info.pointee.magic == UInt32(XEN_HVM_START_MAGIC_VALUE)
    else { return }
    var length = 0
    let line = UnsafePointer<UInt8>(bitPattern: UInt(info.pointee.cmdline_paddr))
    if let line {
        while length < Int(XENSTORE_PAYLOAD_MAX) && line[length] != 0 { length += 1 }
    }
    var reader = XenStoreBootReader(
        interface: UnsafeMutableRawPointer(bitPattern: UInt(channels.storeFrame << 12))!, port: channels.storePort,
        hypervisor: PollingHypercalls(HypercallPage()))
    let buffer = UnsafeMutableRawBufferPointer(
        start: UnsafeMutableRawPointer(bitPattern: cxen_configuration_buffer_address()), count: cxen_configuration_buffer_size)
    do throws(XenStoreBootReadError) {
        if try XenPVHConfiguration.provide(
            startInfo: info, commandLine: UnsafeRawBufferPointer(start: line, count: length), buffer: buffer,
            bufferAddress: UInt64(cxen_configuration_buffer_address()), reader: &reader)
        {
            XenGuest.write("rumprun: configuration from xenstore rumprun/cfg\n")
        }
    } catch {
        XenGuest.write("rumprun: no configuration from xenstore (store error)\n")
    }
}

@_cdecl("bmk_xen_console_putc")
public func xenConsolePut(_ byte: UInt8) {
    guard XenGuest.console != nil else { return }
    XenGuest.pending.append(byte) { XenGuest.write($0) }
}

@_cdecl("bmk_xen_tsc_scale")
public func xenTSCScale(_ multiplier: UnsafeMutablePointer<UInt32>, _ shift: UnsafeMutablePointer<Int8>) -> Int32 {
    guard XenGuest.attached, XenGuest.sharedInfoFrame != 0,
        let sharedInfo = UnsafeRawPointer(bitPattern: UInt(XenGuest.sharedInfoFrame << 12)),
        let record = XenTime.record(sharedInfo: sharedInfo), record.scale.multiplier != 0
    else { return 0 }
    multiplier.pointee = record.scale.multiplier
    shift.pointee = record.scale.shift
    return 1
}

@_cdecl("bmk_xen_wall_clock")
public func xenWallClock(_ unixNanoseconds: UnsafeMutablePointer<UInt64>) -> Int32 {
    guard XenGuest.attached, XenGuest.sharedInfoFrame != 0,
        let sharedInfo = UnsafeRawPointer(bitPattern: UInt(XenGuest.sharedInfoFrame << 12)),
        let now = XenTime.unixNanoseconds(sharedInfo: sharedInfo, tsc: cxen_rdtsc())
    else { return 0 }
    unixNanoseconds.pointee = now
    return 1
}

@_cdecl("bmk_xen_exit")
public func xenExit(_ portValue: UInt8) {
    guard XenGuest.attached else { return }
    XenGuest.shutdown(XenExit(portValue: portValue))
}

/// The 64-bit PV entry's Swift half: start_info checked, Xen's pages
/// mapped, the console ring up, the configuration found; then the rest of
/// memory mapped (XenPVPageTableBuilder), the heap, trap table, callbacks
/// and timer set up, the runtime's privileged operations pointed at the PV
/// ones (XenPVPlatform), and the shared runtime started: threads, clock
/// (vcpu_time_info) and the application's main. Its exit shuts the domain
/// down (bmk_xen_exit: poweroff with the status, crash on panic).
@_cdecl("xen_pv_main")
public func xenPVMain(_ startInfo: UnsafeMutableRawPointer) -> Never {
    var hypervisor = HypercallPage()
    let info = UnsafePointer(startInfo.assumingMemoryBound(to: start_info.self))
    let session: XenPVSession
    do throws(XenBootError) {
        session = try XenPVBoot.start(
            startInfo: info, hypervisor: &hypervisor, sharedInfoPage: UInt64(cxen_shared_info_page_address()),
            consolePage: UInt64(cxen_pv_console_page_address()), storePage: UInt64(cxen_pv_store_page_address()))
    } catch {
        XenGuest.write("rumprun: Xen PV start_info rejected\n")
        XenGuest.shutdown(.panicked)
    }
    XenGuest.attached = true
    XenGuest.console = ConsoleRing(
        interface: UnsafeMutableRawPointer(bitPattern: UInt(session.console))!, port: session.startInfo.channels.consolePort,
        hypervisor: PollingHypercalls(HypercallPage()), maximumWaits: 100_000)
    XenGuest.write("rumprun: Xen PV domain, ")
    XenGuest.write(decimal: session.startInfo.pageCount)
    XenGuest.write(" pages\n")
    let commandLine = session.startInfo.commandLine(in: info)
    var configuration = UnsafeRawBufferPointer(start: nil, count: 0)
    if XenBootConfiguration.commandLineHasConfiguration(commandLine) {
        XenGuest.write("rumprun: configuration on the command line\n")
        configuration = commandLine
    } else {
        var reader = XenStoreBootReader(
            interface: UnsafeMutableRawPointer(bitPattern: UInt(session.store))!, port: session.startInfo.channels.storePort,
            hypervisor: PollingHypercalls(HypercallPage()))
        let buffer = UnsafeMutableRawBufferPointer(
            start: UnsafeMutableRawPointer(bitPattern: cxen_configuration_buffer_address()), count: cxen_configuration_buffer_size)
        do throws(XenStoreBootReadError) {
            if let length = try XenBootConfiguration.readFromStore(into: buffer, reader: &reader) {
                XenGuest.write("rumprun: configuration from xenstore rumprun/cfg, ")
                XenGuest.write(decimal: UInt64(length))
                XenGuest.write(" bytes\n")
                configuration = UnsafeRawBufferPointer(rebasing: buffer[0..<length])
            } else {
                XenGuest.write("rumprun: no configuration\n")
            }
        } catch {
            XenGuest.write("rumprun: reading the configuration from xenstore failed\n")
            XenGuest.shutdown(.panicked)
        }
    }
    guard let frames = UnsafePointer<UInt64>(bitPattern: UInt(session.startInfo.frameListAddress)) else {
        XenGuest.write("rumprun: panic: start_info has no P2M list\n")
        XenGuest.shutdown(.panicked)
    }
    let map = mapPVMemory(startInfo: session.startInfo, frames: frames, hypervisor: &hypervisor)
    startPVRuntime(session: session, configuration: configuration, frames: frames, map: map, hypervisor: &hypervisor)
}

/// The frames past Xen's bootstrap region mapped with machine frames
/// (nothing allocated: the heap does not exist yet).
@inline(never)
func mapPVMemory(startInfo: XenStartInfo, frames: UnsafePointer<UInt64>, hypervisor: inout HypercallPage) -> XenPVMemoryMap {
    let layout = XenPVMemoryLayout(startInfo)
    var builder = XenPVPageTableBuilder<HypercallPage, XenPVIdentityPages>(
        layout: layout, frames: frames, access: XenPVIdentityPages(),
        batch: UnsafeMutableBufferPointer(start: cxen_pv_mmu_batch_address(), count: Int(cxen_pv_mmu_batch_count)))
    do throws(XenPVError) {
        return try builder.mapRemainingPages(hypervisor: &hypervisor)
    } catch {
        XenGuest.write("rumprun: panic: mapping the domain's memory through mmu_update failed\n")
        XenGuest.shutdown(.panicked)
    }
}

/// The heap, traps, events and timer, then the shared runtime.
@inline(never)
func startPVRuntime(
    session: XenPVSession, configuration: UnsafeRawBufferPointer, frames: UnsafePointer<UInt64>, map: XenPVMemoryMap,
    hypervisor: inout HypercallPage
) -> Never {
    let startInfo = session.startInfo
    XenGuest.write("rumprun: mapped ")
    XenGuest.write(decimal: map.newlyMapped)
    XenGuest.write(" pages with ")
    XenGuest.write(decimal: map.newTables)
    XenGuest.write(" new page tables; heap from frame ")
    XenGuest.write(decimal: map.firstFree)
    XenGuest.write("\n")
    do throws(PageAllocatorError) {
        try Paravirtualization.installHeap(firstFrame: map.firstFree, endFrame: map.pageCount)
    } catch {
        XenGuest.write("rumprun: panic: the heap's page allocator refused the free frames\n")
        XenGuest.shutdown(.panicked)
    }
    XenPVRuntime.frames = frames
    XenPVRuntime.pageCount = startInfo.pageCount
    // Traps and callbacks instead of an IDT.
    let table = UnsafeMutableBufferPointer(start: cxen_pv_trap_table_address(), count: XenPVTraps.entryCount)
    let entries = XenPVTraps.fill(table) { cxen_pv_trap_stub(UInt32($0)) }
    do throws(XenPVError) {
        try XenPVTraps.install(
            table: UnsafeBufferPointer(rebasing: table[0..<entries]), eventCallback: cxen_pv_event_callback_address(),
            failsafeCallback: cxen_pv_failsafe_callback_address(), hypervisor: &hypervisor)
    } catch {
        XenGuest.write("rumprun: panic: Xen refused the trap table or the callbacks\n")
        XenGuest.shutdown(.panicked)
    }
    // Events: every port masked but the timer's; delivery still masked in vcpu_info.
    let sharedInfo = UnsafeMutableRawPointer(bitPattern: UInt(session.sharedInfo))!
    XenPVRuntime.sharedInfo = sharedInfo
    XenPVRuntime.interruptFlag = XenPVInterruptFlag(vcpuInfo: XenPVInterruptFlag.vcpuInfo(sharedInfo: sharedInfo))
    XenPVRuntime.flag.disable()
    XenHVMBoot.maskAllPorts(sharedInfo: sharedInfo)
    do throws(XenPVTimerError) {
        let timer = try XenPVTimer.start(hypervisor: &hypervisor)
        try? hypervisor.unmaskPort(timer.port)
        XenPVRuntime.timer = timer
    } catch {
        XenGuest.write("rumprun: panic: binding VIRQ_TIMER failed\n")
        XenGuest.shutdown(.panicked)
    }
    if startInfo.channels.storeFrame != 0 {
        XenPVRuntime.storeRing = (startInfo.channels, session.store)
    }
    // The clock hooks read vcpu_time_info at frame << 12 (VIRT_BASE 0).
    XenGuest.sharedInfoFrame = session.sharedInfo >> 12
    XenPVRuntime.install()
    do throws(GuestConfiguration.Error) {
        try Paravirtualization.setConfiguration(commandLine: Array(configuration))
    } catch {
        XenGuest.write("rumprun: panic: bad configuration (not a JSON object)\n")
        XenGuest.shutdown(.panicked)
    }
    XenGuest.write("rumprun: PV runtime up (trap table, event callback, VIRQ_TIMER); starting main\n")
    ThreadRuntime.runMain()
}

/// Page-table pages at their pseudo-physical addresses (VIRT_BASE 0).
struct XenPVIdentityPages: XenPVPageAccess {
    func page(pfn: UInt64) -> UnsafeMutableRawPointer { UnsafeMutableRawPointer(bitPattern: UInt(pfn << 12))! }
}
#endif
