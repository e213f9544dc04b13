// XenBoot: the start-of-day sequences of the two Xen guest types, generic
// over the CPU and the hypercalls so host tests run them against a
// simulated hypervisor.
//
// - PVH/HVM (Xen public/arch-x86/cpuid.h, hvm/hvm_op.h, hvm/params.h,
//   memory.h): find Xen's CPUID leaves, have Xen fill the hypercall page
//   through the MSR of leaf base+2, put shared info at a guest frame with
//   XENMEM_add_to_physmap, read the xenstore and console pages and ports
//   from the HVM parameters, and choose the event upcall vector
//   (HVMOP_set_evtchn_upcall_vector, else HVM_PARAM_CALLBACK_IRQ of the
//   vector type).
// - PV (xen.h start_info): check start_info, then map shared info, the
//   console ring and the xenstore ring into reserved pages with
//   update_va_mapping (a PV guest's page tables are Xen's to write).
import BareMetalKit
import CXen

/// The instructions the PVH/HVM branch needs; the guest's conformer
/// executes them, tests fake them.
public protocol XenCPUAccess {
    /// CPUID `leaf` (subleaf 0): (eax, ebx, ecx, edx).
    mutating func cpuid(_ leaf: UInt32) -> (UInt32, UInt32, UInt32, UInt32)
    /// WRMSR.
    mutating func writeMSR(_ msr: UInt32, _ value: UInt64)
}

/// Why a Xen boot sequence stopped.
public enum XenBootError: Error, Equatable, Sendable {
    /// CPUID leaf base+2 offers no hypercall page.
    case noHypercallPage(XenCPUID)
    case startInfo(StartInfoError)
    case hypercall(HypercallError)
}

/// How event upcalls reach the guest (hvm_op.h, params.h).
public enum XenUpcallMethod: Equatable, Sendable {
    /// `HVMOP_set_evtchn_upcall_vector` for vCPU `vcpu`.
    case perVCPUVector(vector: UInt8)
    /// `HVM_PARAM_CALLBACK_IRQ` with `HVM_PARAM_CALLBACK_TYPE_VECTOR`
    /// (Xen versions without the per-vCPU call).
    case callbackParameter(vector: UInt8)
}

/// What the PVH/HVM sequence set up.
public struct XenHVMSession: Equatable, Sendable {
    public var cpuid: XenCPUID
    public var channels: XenBootChannels
    /// Guest frame now holding shared info.
    public var sharedInfoFrame: UInt64
    public var upcall: XenUpcallMethod
}

/// PTE bits of x86-64 4-level paging (Intel SDM vol. 3 §4.5) for the PV
/// mappings: present, writable, user (a 64-bit PV kernel runs in ring 3),
/// accessed, dirty, no-execute.
public enum PVPageTableEntry {
    public static let present: UInt64 = 1 << 0
    public static let writable: UInt64 = 1 << 1
    public static let user: UInt64 = 1 << 2
    public static let accessed: UInt64 = 1 << 5
    public static let dirty: UInt64 = 1 << 6
    public static let noExecute: UInt64 = 1 << 63

    /// A writable data mapping of machine frame `frame`.
    public static func data(frame: UInt64) -> UInt64 {
        frame << 12 | present | writable | user | accessed | dirty | noExecute
    }
}

/// Where the PV sequence mapped Xen's pages.
public struct XenPVSession: Equatable, Sendable {
    public var startInfo: XenStartInfo
    /// Virtual addresses of the mapped pages.
    public var sharedInfo: UInt64
    public var console: UInt64
    public var store: UInt64
}

extension Hypercalls {
    /// Writes an HVM parameter; `HVMOP_set_param`.
    public mutating func setHVMParameter(_ index: UInt32, _ value: UInt64) throws(HypercallError) {
        var argument = xen_hvm_param()
        argument.domid = cxen_domid_self
        argument.index = index
        argument.value = value
        _ = try check(hvmOp(HVMOP_set_param, &argument), .hvmOp, HVMOP_set_param)
    }

    /// Asks for event upcalls on `vector` of `vcpu`; `HVMOP_set_evtchn_upcall_vector`.
    public mutating func setUpcallVector(_ vector: UInt8, vcpu: UInt32 = 0) throws(HypercallError) {
        var argument = xen_hvm_evtchn_upcall_vector(vcpu: vcpu, vector: vector)
        _ = try check(hvmOp(HVMOP_set_evtchn_upcall_vector, &argument), .hvmOp, HVMOP_set_evtchn_upcall_vector)
    }
}

public enum XenHVMBoot {
    /// The `HVM_PARAM_CALLBACK_IRQ` value that delivers upcalls on `vector`
    /// (params.h: the type in the top byte, `HVM_PARAM_CALLBACK_TYPE_VECTOR`).
    public static func callbackParameter(vector: UInt8) -> UInt64 {
        let typeShift = UInt64(cxen_hvm_callback_irq_type_mask.trailingZeroBitCount)
        return UInt64(HVM_PARAM_CALLBACK_TYPE_VECTOR) << typeShift | UInt64(vector)
    }

    /// Sets every bit of shared info's `evtchn_mask` (2-level ABI), then
    /// clears vCPU 0's `evtchn_upcall_pending` and selector: an event that
    /// arrived before the mask (the toolstack binds the console and store
    /// ports before the domain runs) stays pending on its port, and is
    /// delivered when a frontend unmasks it (`EVTCHNOP_unmask`), not as an
    /// upcall nobody handles yet.
    public static func maskAllPorts(sharedInfo: UnsafeMutableRawPointer) {
        let bytes = MemoryLayout.size(ofValue: shared_info().evtchn_mask)
        for offset in stride(from: 0, to: bytes, by: 4) {
            cxen_store32(sharedInfo + CXEN_OFFSETOF_shared_info_evtchn_mask + offset, UInt32.max)
        }
        cxen_mb()
        let vcpu = sharedInfo + CXEN_OFFSETOF_shared_info_vcpu_info
        cxen_store8(vcpu + CXEN_OFFSETOF_vcpu_info_evtchn_upcall_pending, 0)
        _ = cxen_xchg64(vcpu + CXEN_OFFSETOF_vcpu_info_evtchn_pending_sel, 0)
        cxen_mb()
    }

    /// Runs the PVH/HVM start-of-day sequence. Returns nil, having done
    /// nothing but CPUID, when the CPU shows no Xen leaves.
    ///
    /// - Parameters:
    ///   - hypercallPageAddress: physical address of the (page-aligned)
    ///     `cxen_hypercall_page`; Xen writes the stubs there.
    ///   - sharedInfoPage, sharedInfoFrame: a page (and its guest frame)
    ///     Xen replaces with shared info; every event port is masked there
    ///     before the upcall vector is chosen, so no upcall arrives before
    ///     a frontend unmasks its port.
    ///   - upcallVector: the IDT vector for event upcalls.
    public static func start<CPU: XenCPUAccess, H: Hypercalls>(
        cpu: inout CPU, hypervisor: inout H, hypercallPageAddress: UInt64,
        sharedInfoPage: UnsafeMutableRawPointer, sharedInfoFrame: UInt64, upcallVector: UInt8
    ) throws(XenBootError) -> XenHVMSession? {
        guard let found = XenCPUID.detect({ leaf in cpu.cpuid(leaf) }) else { return nil }
        guard found.hypercallPages >= 1 else { throw .noHypercallPage(found) }
        // Xen fills the page when the MSR is written; from here on the
        // hypercalls below go through it.
        cpu.writeMSR(found.hypercallMSR, hypercallPageAddress)
        do throws(HypercallError) {
            try hypervisor.addToPhysmap(space: UInt32(XENMAPSPACE_shared_info), index: 0, gpfn: UInt(sharedInfoFrame))
            maskAllPorts(sharedInfo: sharedInfoPage)
            let channels = try XenBootChannels.fromHVMParameters(&hypervisor)
            let upcall: XenUpcallMethod
            do {
                try hypervisor.setUpcallVector(upcallVector)
                upcall = .perVCPUVector(vector: upcallVector)
            } catch {
                try hypervisor.setHVMParameter(UInt32(HVM_PARAM_CALLBACK_IRQ), callbackParameter(vector: upcallVector))
                upcall = .callbackParameter(vector: upcallVector)
            }
            return XenHVMSession(cpuid: found, channels: channels, sharedInfoFrame: sharedInfoFrame, upcall: upcall)
        } catch {
            throw .hypercall(error)
        }
    }
}

public enum XenPVBoot {
    /// Checks `start_info` and maps shared info, the console ring and the
    /// xenstore ring at the given page-aligned virtual addresses (pages the
    /// image reserved, whose previous contents are given up).
    public static func start<H: Hypercalls>(
        startInfo info: UnsafePointer<start_info>, hypervisor: inout H,
        sharedInfoPage: UInt64, consolePage: UInt64, storePage: UInt64
    ) throws(XenBootError) -> XenPVSession {
        let startInfo: XenStartInfo
        do { startInfo = try XenStartInfo(info) } catch { throw .startInfo(error) }
        do throws(HypercallError) {
            try hypervisor.updateMapping(
                virtualAddress: sharedInfoPage, entry: PVPageTableEntry.data(frame: startInfo.sharedInfoAddress >> 12))
            if startInfo.channels.consoleFrame != 0 {
                try hypervisor.updateMapping(
                    virtualAddress: consolePage, entry: PVPageTableEntry.data(frame: startInfo.channels.consoleFrame))
            }
            if startInfo.channels.storeFrame != 0 {
                try hypervisor.updateMapping(
                    virtualAddress: storePage, entry: PVPageTableEntry.data(frame: startInfo.channels.storeFrame))
            }
        } catch {
            throw .hypercall(error)
        }
        return XenPVSession(startInfo: startInfo, sharedInfo: sharedInfoPage, console: consolePage, store: storePage)
    }
}

/// The end of a Xen guest: how BareMetalKit's exit values (`GuestExit`)
/// become a `SCHEDOP_shutdown` reason and a recorded status.
public enum XenExit: Equatable, Sendable {
    case exited(status: Int32)
    case panicked
    case exception

    /// From the value the hw platform would write to the debug-exit port.
    public init(portValue: UInt8) {
        switch portValue {
        case GuestExit.panicValue: self = .panicked
        case GuestExit.exceptionValue: self = .exception
        default: self = .exited(status: Int32(portValue) - 1)
        }
    }

    /// Poweroff for an application's exit, crash for a panic or exception
    /// (so `on_crash` in the xl configuration applies).
    public var reason: ShutdownReason {
        switch self {
        case .exited: return .poweroff
        case .panicked, .exception: return .crash
        }
    }

    /// Writes the console line that records the outcome ("rumprun: exit
    /// status N"), in pieces, allocating nothing.
    public func writeReport(to console: (UnsafeRawBufferPointer) -> Void) {
        func put(_ text: StaticString) { console(UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount)) }
        switch self {
        case .exited(let status):
            put("rumprun: exit status ")
            XenExit.withDecimal(Int64(status), console)
            put("\n")
        case .panicked: put("rumprun: shutting down after a panic (crash)\n")
        case .exception: put("rumprun: shutting down after a CPU exception (crash)\n")
        }
    }

    /// Calls `body` with the decimal digits of `value`, from a stack buffer.
    public static func withDecimal(_ value: Int64, _ body: (UnsafeRawBufferPointer) -> Void) {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)
        withUnsafeMutableBytes(of: &digits) { bytes in
            var magnitude = value.magnitude
            var start = bytes.count
            repeat {
                start -= 1
                bytes[start] = 0x30 + UInt8(magnitude % 10)
                magnitude /= 10
            } while magnitude > 0
            if value < 0 {
                start -= 1
                bytes[start] = 0x2D
            }
            body(UnsafeRawBufferPointer(rebasing: bytes[start...]))
        }
    }

    /// Records the outcome on `console` (when there is one) and shuts the
    /// domain down. Returns only if Xen refuses the shutdown.
    public func shutdown<H: Hypercalls>(
        hypervisor: inout H, console: ((UnsafeRawBufferPointer) -> Void)?
    ) throws(HypercallError) {
        if let console { writeReport(to: console) }
        try hypervisor.shutdown(reason)
    }
}

/// The vCPU time record in shared info (xen.h `vcpu_time_info`: the
/// pvclock layout, so BareMetalKit's `PVClockTimeInfo` reads it).
public enum XenTime {
    /// A consistent copy of vCPU `vcpu`'s record; retries while Xen is
    /// updating it (odd or changed version). Nil after `attempts` tries.
    public static func record(sharedInfo: UnsafeRawPointer, vcpu: Int = 0, attempts: Int = 1000) -> PVClockTimeInfo? {
        let record = sharedInfo + CXEN_OFFSETOF_shared_info_vcpu_info + vcpu * MemoryLayout<vcpu_info>.size
            + CXEN_OFFSETOF_vcpu_info_time
        for _ in 0..<attempts {
            let before = cxen_load32(record + CXEN_OFFSETOF_vcpu_time_info_version)
            cxen_rmb()
            let copy = PVClockTimeInfo(from: record)
            cxen_rmb()
            let after = cxen_load32(record + CXEN_OFFSETOF_vcpu_time_info_version)
            if before == after && before & 1 == 0 { return copy }
        }
        return nil
    }
}

extension XenTime {
    /// Unix time in nanoseconds at TSC value `tsc`: shared info's wall
    /// clock (`wc_sec_hi:wc_sec`, `wc_nsec`: the Unix time at Xen system
    /// time 0, xen.h) plus vCPU `vcpu`'s system time at `tsc`. Nil while
    /// either record is being updated after `attempts` tries, or when Xen
    /// has published no wall clock (all zero).
    public static func unixNanoseconds(
        sharedInfo: UnsafeRawPointer, tsc: UInt64, vcpu: Int = 0, attempts: Int = 1000
    ) -> UInt64? {
        guard let time = record(sharedInfo: sharedInfo, vcpu: vcpu, attempts: attempts) else { return nil }
        for _ in 0..<attempts {
            let before = cxen_load32(sharedInfo + CXEN_OFFSETOF_shared_info_wc_version)
            cxen_rmb()
            let seconds = UInt64(cxen_load32(sharedInfo + CXEN_OFFSETOF_shared_info_wc_sec_hi)) << 32
                | UInt64(cxen_load32(sharedInfo + CXEN_OFFSETOF_shared_info_wc_sec))
            let nanoseconds = UInt64(cxen_load32(sharedInfo + CXEN_OFFSETOF_shared_info_wc_nsec))
            cxen_rmb()
            let after = cxen_load32(sharedInfo + CXEN_OFFSETOF_shared_info_wc_version)
            guard before == after && before & 1 == 0 else { continue }
            guard seconds != 0 || nanoseconds != 0 else { return nil }
            return seconds &* 1_000_000_000 &+ nanoseconds &+ time.nanoseconds(atTSC: tsc)
        }
        return nil
    }
}

/// Console output that collects bytes and hands them on a line at a time
/// (or when full), so each ring write and notification carries a line
/// rather than one byte.
public struct LineBuffer {
    var bytes: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
                UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) =
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    public private(set) var count = 0
    public static var capacity: Int { 128 }

    public init() {}

    /// Adds `byte`; calls `flush` with the collected bytes after a newline
    /// or when the buffer is full.
    public mutating func append(_ byte: UInt8, flush: (UnsafeRawBufferPointer) -> Void) {
        withUnsafeMutableBytes(of: &bytes) { $0[count] = byte }
        count += 1
        if byte == 0x0A || count == Self.capacity { self.flush(flush) }
    }

    public mutating func flush(_ flush: (UnsafeRawBufferPointer) -> Void) {
        guard count > 0 else { return }
        let used = count
        withUnsafeBytes(of: &bytes) { flush(UnsafeRawBufferPointer(rebasing: $0[0..<used])) }
        count = 0
    }
}
