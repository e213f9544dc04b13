// Boot-sequence tests: the PVH/HVM start of day (CPUID leaves, hypercall
// MSR, add_to_physmap, HVM parameters, upcall vector), PV start_info
// checking and mappings, console output reaching the ring, shutdown
// reasons, vCPU time and the configuration lookup, against the simulated
// hypervisor and xenstore model.
import BareMetalKit
import CXen
import Testing
@testable import XenPVKit

/// CPUID leaves of a Xen 4.17 host with Viridian leaves first, and a log
/// of MSR writes (shared with the hypervisor's, to check ordering).
struct FakeXenCPU: XenCPUAccess {
    var xenBase: UInt32? = 0x4000_0100
    var hypercallPages: UInt32 = 1
    let hypervisor: SimulatedHypervisor
    var leavesRead: [UInt32] = []

    mutating func cpuid(_ leaf: UInt32) -> (UInt32, UInt32, UInt32, UInt32) {
        leavesRead.append(leaf)
        guard let base = xenBase else { return (0, 0, 0, 0) }
        switch leaf {
        case 0x4000_0000 where base != 0x4000_0000: return (0x4000_0006, 0x7263_694D, 0x666F_736F, 0x7648_2074)
        case base: return (base + 5, UInt32(XEN_CPUID_SIGNATURE_EBX), UInt32(XEN_CPUID_SIGNATURE_ECX), UInt32(XEN_CPUID_SIGNATURE_EDX))
        case base + 1: return (4 << 16 | 17, 0, 0, 0)
        case base + 2: return (hypercallPages, 0x4000_0000, 0, 0)
        default: return (0, 0, 0, 0)
        }
    }

    mutating func writeMSR(_ msr: UInt32, _ value: UInt64) {
        hypervisor.log.append("wrmsr \(hypervisor.hex(msr)) \(hypervisor.hex(value))")
    }
}

@Suite struct XenHVMBootTests {
    let memory = SimulatedMemory()
    let hypervisor: SimulatedHypervisor
    let sharedPage: UnsafeMutableRawPointer

    init() {
        hypervisor = SimulatedHypervisor(memory: memory)
        hypervisor.hvmParameters = [
            UInt32(HVM_PARAM_STORE_PFN): 0xFEFFF, UInt32(HVM_PARAM_STORE_EVTCHN): 1,
            UInt32(HVM_PARAM_CONSOLE_PFN): 0xFEFFE, UInt32(HVM_PARAM_CONSOLE_EVTCHN): 2,
        ]
        sharedPage = memory.allocate()!
    }

    func boot(_ cpu: inout FakeXenCPU) throws(XenBootError) -> XenHVMSession? {
        var calls = hypervisor
        return try XenHVMBoot.start(
            cpu: &cpu, hypervisor: &calls, hypercallPageAddress: 0x12_8000, sharedInfoPage: sharedPage,
            sharedInfoFrame: memory.frame(of: sharedPage), upcallVector: 0xF3)
    }

    @Test func theStartOfDayRunsInOrderWithItsArguments() throws {
        // The toolstack's console port fires before the domain masks anything.
        hypervisor.ports[2] = .interdomain(remote: 0, remotePort: 1)
        hypervisor.raise(2)
        #expect(hypervisor.upcallPending)
        var cpu = FakeXenCPU(hypervisor: hypervisor)
        let session = try #require(try boot(&cpu))
        let frame = memory.frame(of: sharedPage)
        #expect(hypervisor.log == [
            "wrmsr 0x40000000 0x128000",
            "memory_op add_to_physmap domid=0x7ff0 space=0 idx=0 gpfn=0x\(String(frame, radix: 16))",
            "hvm_op get_param domid=0x7ff0 index=\(HVM_PARAM_STORE_PFN)",
            "hvm_op get_param domid=0x7ff0 index=\(HVM_PARAM_STORE_EVTCHN)",
            "hvm_op get_param domid=0x7ff0 index=\(HVM_PARAM_CONSOLE_PFN)",
            "hvm_op get_param domid=0x7ff0 index=\(HVM_PARAM_CONSOLE_EVTCHN)",
            "hvm_op set_evtchn_upcall_vector vcpu=0 vector=0xf3",
        ])
        #expect(XENMAPSPACE_shared_info == 0 && cxen_domid_self == 0x7FF0)
        #expect(session.cpuid.baseLeaf == 0x4000_0100 && session.cpuid.majorVersion == 4 && session.cpuid.minorVersion == 17)
        #expect(session.channels == XenBootChannels(storeFrame: 0xFEFFF, storePort: 1, consoleFrame: 0xFEFFE, consolePort: 2))
        #expect(session.upcall == .perVCPUVector(vector: 0xF3))
        #expect(hypervisor.upcallVector == 0xF3)
        // Shared info now lives in the guest's page, and every port is masked there.
        #expect(hypervisor.sharedInfo == sharedPage)
        let maskBytes = MemoryLayout.size(ofValue: shared_info().evtchn_mask)
        let mask = UnsafeRawBufferPointer(start: sharedPage + CXEN_OFFSETOF_shared_info_evtchn_mask, count: maskBytes)
        #expect(mask.allSatisfy { $0 == 0xFF })
        // The early event stays pending on its port without an upcall, and
        // a masked port raised again does not reach the upcall either.
        #expect(!hypervisor.upcallPending)
        #expect(hypervisor.testBit(hypervisor.pendingOffset, 2))
        hypervisor.raise(2)
        #expect(!hypervisor.upcallPending)
        // Unmasking redelivers it (event_channel.h EVTCHNOP_unmask).
        var calls = hypervisor
        try calls.unmaskPort(2)
        #expect(hypervisor.upcallPending)
    }

    @Test func withoutXenLeavesNothingHappens() throws {
        var cpu = FakeXenCPU(xenBase: nil, hypervisor: hypervisor)
        #expect(try boot(&cpu) == nil)
        #expect(hypervisor.log.isEmpty)
        #expect(hypervisor.trace.isEmpty)
        // Every 0x100 step from 0x40000000 was looked at.
        #expect(cpu.leavesRead.first == 0x4000_0000 && cpu.leavesRead.count == 0x100)
        #expect(cpu.leavesRead.last == 0x4000_FF00)
    }

    @Test func xenAtTheFirstLeafIsFoundToo() throws {
        var cpu = FakeXenCPU(xenBase: 0x4000_0000, hypervisor: hypervisor)
        #expect(try boot(&cpu)?.cpuid.baseLeaf == 0x4000_0000)
    }

    @Test func noHypercallPageIsATypedError() throws {
        var cpu = FakeXenCPU(hypercallPages: 0, hypervisor: hypervisor)
        do {
            _ = try boot(&cpu)
            Issue.record("booted without a hypercall page")
        } catch {
            guard case .noHypercallPage(let found) = error else { Issue.record("wrong error \(error)"); return }
            #expect(found.hypercallPages == 0)
        }
        #expect(hypervisor.log.isEmpty, "no MSR write or hypercall without a page")
    }

    @Test func olderXenGetsTheCallbackParameterOfVectorType() throws {
        hypervisor.lacksUpcallVectorCall = true
        var cpu = FakeXenCPU(hypervisor: hypervisor)
        let session = try #require(try boot(&cpu))
        #expect(session.upcall == .callbackParameter(vector: 0xF3))
        // params.h: type HVM_PARAM_CALLBACK_TYPE_VECTOR (2) in the top byte.
        #expect(XenHVMBoot.callbackParameter(vector: 0xF3) == 0x0200_0000_0000_00F3)
        #expect(hypervisor.hvmParameters[UInt32(HVM_PARAM_CALLBACK_IRQ)] == 0x0200_0000_0000_00F3)
        #expect(hypervisor.log.suffix(2) == [
            "hvm_op set_evtchn_upcall_vector vcpu=0 vector=0xf3",
            "hvm_op set_param domid=0x7ff0 index=\(HVM_PARAM_CALLBACK_IRQ) value=0x2000000000000f3",
        ])
    }

    @Test func aMissingHVMParameterStopsTheSequence() {
        hypervisor.hvmParameters[UInt32(HVM_PARAM_CONSOLE_PFN)] = nil
        var cpu = FakeXenCPU(hypervisor: hypervisor)
        #expect(throws: XenBootError.hypercall(.failed(.hvmOp, command: HVMOP_get_param, status: -Int(XEN_EINVAL.rawValue)))) {
            _ = try boot(&cpu)
        }
        #expect(!hypervisor.log.contains { $0.hasPrefix("hvm_op set_evtchn_upcall_vector") })
    }

    @Test func aRefusedSharedInfoMappingIsReported() {
        var cpu = FakeXenCPU(hypervisor: hypervisor)
        var calls = hypervisor
        #expect(throws: XenBootError.hypercall(.failed(.memoryOp, command: XENMEM_add_to_physmap, status: -Int(XEN_EINVAL.rawValue)))) {
            _ = try XenHVMBoot.start(
                cpu: &cpu, hypervisor: &calls, hypercallPageAddress: 0x12_8000, sharedInfoPage: sharedPage,
                sharedInfoFrame: 0x1, upcallVector: 0xF3)
        }
    }
}

/// A start_info as the domain builder writes it for a 64-bit PV domU.
func validStartInfo() -> start_info {
    var info = start_info()
    withUnsafeMutableBytes(of: &info.magic) { bytes in
        for (index, byte) in "xen-3.0-x86_64".utf8.enumerated() { bytes[index] = byte }
    }
    info.nr_pages = 32768
    info.shared_info = 0x1_2345_6000
    info.flags = 0
    info.store_mfn = 0x4_1001
    info.store_evtchn = 1
    info.console.domU.mfn = 0x4_1002
    info.console.domU.evtchn = 2
    info.mfn_list = 0x40_0000
    info.pt_base = 0x50_0000
    info.nr_pt_frames = 6
    withUnsafeMutableBytes(of: &info.cmd_line) { bytes in
        for (index, byte) in "{\"argv\":[\"hello\"]}".utf8.enumerated() { bytes[index] = byte }
    }
    return info
}

@Suite struct XenPVBootTests {
    func parse(_ info: start_info) throws(StartInfoError) -> XenStartInfo {
        var copy = info
        return try withUnsafePointer(to: &copy) { (pointer) throws(StartInfoError) -> XenStartInfo in try XenStartInfo(pointer) }
    }

    func magicError(_ info: start_info) -> [UInt8]? {
        do {
            _ = try parse(info)
            return nil
        } catch {
            guard case .badMagic(let found) = error else { return nil }
            return found.text
        }
    }

    @Test func aValidStartInfoIsRead() throws {
        let info = try parse(validStartInfo())
        #expect(info.pageCount == 32768)
        #expect(info.sharedInfoAddress == 0x1_2345_6000)
        #expect(info.channels == XenBootChannels(storeFrame: 0x4_1001, storePort: 1, consoleFrame: 0x4_1002, consolePort: 2))
        #expect(info.frameListAddress == 0x40_0000 && info.pageTableBase == 0x50_0000 && info.pageTableFrames == 6)
        var raw = validStartInfo()
        let line = withUnsafePointer(to: &raw) { Array(info.commandLine(in: $0)) }
        #expect(String(decoding: line, as: UTF8.self) == "{\"argv\":[\"hello\"]}")
        #expect(info.commandLineLength == 18)
        #expect(!info.isPrivileged && !info.isInitialDomain)
    }

    @Test func malformedStartInfosGiveTypedErrors() throws {
        var info = validStartInfo()
        withUnsafeMutableBytes(of: &info.magic) { $0[12] = UInt8(ascii: "3"); $0[13] = UInt8(ascii: "2") }
        #expect(magicError(info) == Array("xen-3.0-x86_32".utf8))

        info = validStartInfo()
        withUnsafeMutableBytes(of: &info.magic) { $0.initializeMemory(as: UInt8.self, repeating: 0) }
        #expect(magicError(info) == [])
        // A suffix after the ABI name is allowed (xen.h: "xen-<version>-<platform>").
        info = validStartInfo()
        withUnsafeMutableBytes(of: &info.magic) { $0[14] = UInt8(ascii: "p") }
        #expect(magicError(info) == nil)

        info = validStartInfo()
        info.nr_pages = 0
        #expect(throws: StartInfoError.tooFewPages(0)) { _ = try parse(info) }

        info = validStartInfo()
        info.shared_info = 0x1_2345_6008
        #expect(throws: StartInfoError.badSharedInfo(0x1_2345_6008)) { _ = try parse(info) }
        info.shared_info = 0
        #expect(throws: StartInfoError.badSharedInfo(0)) { _ = try parse(info) }

        info = validStartInfo()
        info.store_mfn = 0
        #expect(throws: StartInfoError.missingStore) { _ = try parse(info) }
        info = validStartInfo()
        info.console.domU.mfn = 0
        #expect(throws: StartInfoError.missingConsole) { _ = try parse(info) }
        // dom0 has neither page (xen.h: console.dom0 instead).
        info.store_mfn = 0
        info.flags = cxen_sif_initdomain | cxen_sif_privileged
        #expect(try parse(info).isInitialDomain)

        info = validStartInfo()
        info.mfn_list = 0
        #expect(throws: StartInfoError.missingFrameList) { _ = try parse(info) }

        info = validStartInfo()
        withUnsafeMutableBytes(of: &info.cmd_line) { $0.initializeMemory(as: UInt8.self, repeating: UInt8(ascii: "x")) }
        #expect(MemoryLayout.size(ofValue: info.cmd_line) == Int(MAX_GUEST_CMDLINE))
        #expect(throws: StartInfoError.commandLineNotTerminated) { _ = try parse(info) }
    }

    @Test func pvStartOfDayMapsXensPagesWithUpdateVAMapping() throws {
        let hypervisor = SimulatedHypervisor(memory: SimulatedMemory())
        var calls = hypervisor
        var info = validStartInfo()
        let session = try withUnsafePointer(to: &info) { pointer throws(XenBootError) in
            try XenPVBoot.start(startInfo: pointer, hypervisor: &calls, sharedInfoPage: 0x14_c000, consolePage: 0x14_d000, storePage: 0x14_e000)
        }
        #expect(session.sharedInfo == 0x14_c000 && session.console == 0x14_d000 && session.store == 0x14_e000)
        // Present, writable, user, accessed, dirty, NX; INVLPG after each.
        let flags = cxen_uvmf_invlpg
        #expect(hypervisor.log == [
            "update_va_mapping va=0x14c000 pte=0x8000000123456067 flags=\(flags)",
            "update_va_mapping va=0x14d000 pte=0x8000000041002067 flags=\(flags)",
            "update_va_mapping va=0x14e000 pte=0x8000000041001067 flags=\(flags)",
        ])
    }

    @Test func aBadStartInfoMakesNoHypercall() {
        let hypervisor = SimulatedHypervisor(memory: SimulatedMemory())
        var calls = hypervisor
        var info = validStartInfo()
        info.nr_pages = 0
        #expect(throws: XenBootError.startInfo(.tooFewPages(0))) {
            _ = try withUnsafePointer(to: &info) { pointer throws(XenBootError) in
                try XenPVBoot.start(startInfo: pointer, hypervisor: &calls, sharedInfoPage: 0x1000, consolePage: 0x2000, storePage: 0x3000)
            }
        }
        #expect(hypervisor.trace.isEmpty)
    }
}

@Suite struct XenConsoleAndShutdownTests {
    /// The console ring's output bytes as the console daemon would read them.
    func ringOutput(_ page: UnsafeMutableRawPointer) -> [UInt8] {
        let consumer = cxen_load32(page + CXEN_OFFSETOF_xencons_interface_out_cons)
        let producer = cxen_load32(page + CXEN_OFFSETOF_xencons_interface_out_prod)
        let size = UInt32(MemoryLayout.size(ofValue: xencons_interface().out))
        return (consumer..<producer).map { (page + CXEN_OFFSETOF_xencons_interface_out + Int($0 % size)).load(as: UInt8.self) }
    }

    @Test func consoleBytesReachTheRingALineAtATime() throws {
        let memory = SimulatedMemory()
        let hypervisor = SimulatedHypervisor(memory: memory)
        let page = memory.allocate()!
        let port = hypervisor.preconnectedPort(domain: 0) {}
        var ring = ConsoleRing(interface: page, port: port, hypervisor: hypervisor)
        var buffer = LineBuffer()
        var writes = 0
        for byte in "Hello from swift-rumprun!\nsecond".utf8 {
            buffer.append(byte) { bytes in
                writes += 1
                try? ring.write(bytes)
            }
        }
        #expect(writes == 1, "one ring write for the first line; the second waits for its newline")
        #expect(String(decoding: ringOutput(page), as: UTF8.self) == "Hello from swift-rumprun!\n")
        #expect(hypervisor.deliveries == [port], "one notification per line")
        buffer.flush { try? ring.write($0) }
        #expect(String(decoding: ringOutput(page), as: UTF8.self) == "Hello from swift-rumprun!\nsecond")
        // A line longer than the buffer goes out in full-buffer pieces.
        for _ in 0..<(LineBuffer.capacity * 2) { buffer.append(UInt8(ascii: "x")) { writes += 1; try? ring.write($0) } }
        #expect(writes == 3 && buffer.count == 0)
    }

    @Test func exitsBecomeShutdownReasonsWithTheStatusRecorded() throws {
        for (portValue, outcome, reason, line) in [
            (UInt8(1), XenExit.exited(status: 0), SHUTDOWN_poweroff, "rumprun: exit status 0\n"),
            (UInt8(43), XenExit.exited(status: 42), SHUTDOWN_poweroff, "rumprun: exit status 42\n"),
            (GuestExit.panicValue, XenExit.panicked, SHUTDOWN_crash, "rumprun: shutting down after a panic (crash)\n"),
            (GuestExit.exceptionValue, XenExit.exception, SHUTDOWN_crash, "rumprun: shutting down after a CPU exception (crash)\n"),
        ] {
            #expect(XenExit(portValue: portValue) == outcome)
            #expect(GuestExit.portValue(forStatus: 42) == 43)
            let hypervisor = SimulatedHypervisor(memory: SimulatedMemory())
            var calls = hypervisor
            var console: [UInt8] = []
            try outcome.shutdown(hypervisor: &calls, console: { console += $0 })
            #expect(!console.isEmpty)
            #expect(String(decoding: console, as: UTF8.self) == line)
            #expect(hypervisor.shutdownReason == UInt32(reason))
            #expect(hypervisor.log == ["sched_op shutdown reason=\(reason)"])
        }
    }

    @Test func vcpuTimeIsReadWithThePVClockMath() throws {
        let memory = SimulatedMemory()
        let shared = memory.allocate()!
        let record = shared + CXEN_OFFSETOF_shared_info_vcpu_info + CXEN_OFFSETOF_vcpu_info_time
        var time = vcpu_time_info()
        time.version = 4
        time.tsc_timestamp = 1_000_000
        time.system_time = 5_000_000_000
        // A 2 GHz TSC: 0.5 ns per tick = 2^31 / 2^32.
        time.tsc_to_system_mul = 0x8000_0000
        time.tsc_shift = 0
        record.storeBytes(of: time, as: vcpu_time_info.self)
        let copy = try #require(XenTime.record(sharedInfo: shared))
        #expect(copy.nanoseconds(atTSC: 3_000_000) == 5_001_000_000)
        #expect(copy.scale.ticksPerSecond == 2_000_000_000)
        // An update in progress (odd version) is never returned.
        cxen_store32(record + CXEN_OFFSETOF_vcpu_time_info_version, 5)
        #expect(XenTime.record(sharedInfo: shared, attempts: 3) == nil)
    }
}

@Suite struct XenWallClockTests {
    @Test func wallTimeIsXensBaseAndTheSystemTime() throws {
        let memory = SimulatedMemory()
        let shared = memory.allocate()!
        let record = shared + CXEN_OFFSETOF_shared_info_vcpu_info + CXEN_OFFSETOF_vcpu_info_time
        var time = vcpu_time_info()
        time.version = 2
        time.tsc_timestamp = 1_000
        time.system_time = 7_000_000_000
        time.tsc_to_system_mul = 0x8000_0000  // 2 GHz
        record.storeBytes(of: time, as: vcpu_time_info.self)
        #expect(XenTime.unixNanoseconds(sharedInfo: shared, tsc: 1_000) == nil, "no wall clock published yet")
        // 2106-02-07 06:28:16 UTC needs wc_sec_hi: 2^32 seconds.
        cxen_store32(shared + CXEN_OFFSETOF_shared_info_wc_sec_hi, 1)
        cxen_store32(shared + CXEN_OFFSETOF_shared_info_wc_sec, 5)
        cxen_store32(shared + CXEN_OFFSETOF_shared_info_wc_nsec, 250)
        cxen_store32(shared + CXEN_OFFSETOF_shared_info_wc_version, 4)
        let base: UInt64 = ((1 << 32) + 5) * 1_000_000_000 + 250
        #expect(XenTime.unixNanoseconds(sharedInfo: shared, tsc: 1_000) == base + 7_000_000_000)
        #expect(XenTime.unixNanoseconds(sharedInfo: shared, tsc: 3_001_000) == base + 7_001_500_000)
        cxen_store32(shared + CXEN_OFFSETOF_shared_info_wc_version, 5)
        #expect(XenTime.unixNanoseconds(sharedInfo: shared, tsc: 1_000, attempts: 3) == nil, "update in progress")
    }
}

@Suite struct XenConfigurationTests {
    func reader(_ daemon: XenStoreDaemonModel, waits: Int = 64) -> XenStoreBootReader<SimulatedHypervisor> {
        XenStoreBootReader(interface: daemon.page, port: daemon.port, hypervisor: daemon.hypervisor, maximumWaits: waits)
    }

    func read(_ path: String, _ reader: inout XenStoreBootReader<SimulatedHypervisor>, capacity: Int = 64) throws(XenStoreBootReadError) -> String {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 1)
        defer { buffer.deallocate() }
        let pathBytes = UnsafeMutableRawBufferPointer.allocate(byteCount: path.utf8.count, alignment: 1)
        defer { pathBytes.deallocate() }
        pathBytes.copyBytes(from: path.utf8)
        let length = try reader.read(path: UnsafeRawBufferPointer(pathBytes), into: buffer)
        return String(decoding: buffer.prefix(length), as: UTF8.self)
    }

    @Test func theBootReaderSpeaksXsWireWithoutTheHeap() throws {
        let hypervisor = SimulatedHypervisor(memory: SimulatedMemory())
        let daemon = XenStoreDaemonModel(hypervisor: hypervisor)
        daemon.set("/local/domain/7/name", "guest")
        // A value longer than the 1 KiB ring, handed over 7 bytes per step.
        let long = String(repeating: "0123456789", count: 300)
        daemon.set("/local/domain/7/long", long)
        daemon.chunkLimit = 7
        var reader = reader(daemon, waits: 10_000)
        #expect(try read("/local/domain/7/name", &reader) == "guest")
        #expect(try read("/local/domain/7/long", &reader, capacity: 4096) == long)
        #expect(daemon.requestsSeen.map(\.type) == [UInt32(XS_READ.rawValue), UInt32(XS_READ.rawValue)])
        #expect(daemon.requestsSeen.map(\.req_id) == [0x8000_0001, 0x8000_0002])
        #expect(throws: XenStoreBootReadError.store(.noEntry)) { _ = try read("/nowhere", &reader) }
        #expect(throws: XenStoreBootReadError.valueTooLong(length: 3000, capacity: 16)) {
            _ = try read("/local/domain/7/long", &reader, capacity: 16)
        }
        // The overlong value was drained: the next read still works.
        #expect(try read("/local/domain/7/name", &reader) == "guest")
        daemon.answers = false
        var silent = self.reader(daemon, waits: 5)
        #expect(throws: XenStoreBootReadError.noResponse(waits: 5)) { _ = try read("/local/domain/7/name", &silent) }
    }

    func configuration(_ daemon: XenStoreDaemonModel, capacity: Int = 4097) throws(XenStoreBootReadError) -> String? {
        var reader = reader(daemon)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 1)
        defer { buffer.deallocate() }
        guard let length = try XenBootConfiguration.readFromStore(into: buffer, reader: &reader) else { return nil }
        #expect(buffer[length] == 0, "NUL-terminated")
        return String(decoding: buffer.prefix(length), as: UTF8.self)
    }

    @Test func theLaunchersXenstoreKeyIsFoundThroughDomid() throws {
        let hypervisor = SimulatedHypervisor(memory: SimulatedMemory())
        let daemon = XenStoreDaemonModel(hypervisor: hypervisor)
        daemon.home = "/local/domain/7"
        daemon.set("/local/domain/7/domid", "7")
        // What XenLauncher writes with xenstore-write.
        daemon.set("/local/domain/7/rumprun/cfg", "{\"argv\":[\"hello\",\"3\"]}")
        let text = try #require(try configuration(daemon))
        #expect(text == "{\"argv\":[\"hello\",\"3\"]}")
        #expect(try GuestConfiguration(commandLine: Array(text.utf8)).arguments == ["hello", "3"])
        #expect(daemon.requestsSeen.count == 2)
    }

    @Test func noKeyMeansNoConfigurationButOtherFailuresSurface() throws {
        let hypervisor = SimulatedHypervisor(memory: SimulatedMemory())
        let daemon = XenStoreDaemonModel(hypervisor: hypervisor)
        // No domid at all, then a domid without the key.
        #expect(try configuration(daemon) == nil)
        daemon.home = "/local/domain/7"
        daemon.set("/local/domain/7/domid", "7")
        #expect(try configuration(daemon) == nil)
        daemon.set("/local/domain/7/domid", "7x")
        #expect(throws: XenStoreBootReadError.malformedValue) { _ = try configuration(daemon) }
        daemon.set("/local/domain/7/domid", "7")
        daemon.set("/local/domain/7/rumprun/cfg", "{\"argv\":[\"hello\"]}")
        #expect(throws: XenStoreBootReadError.valueTooLong(length: 18, capacity: 9)) { _ = try configuration(daemon, capacity: 10) }
    }

    @Test func aPVHDomainsStoreConfigurationBecomesItsCommandLine() throws {
        let hypervisor = SimulatedHypervisor(memory: SimulatedMemory())
        let daemon = XenStoreDaemonModel(hypervisor: hypervisor)
        daemon.home = "/local/domain/9"
        daemon.set("/local/domain/9/domid", "9")
        daemon.set("/local/domain/9/rumprun/cfg", "{\"argv\":[\"web\"],\"hostname\":\"box\"}")
        var reader = reader(daemon)
        var info = hvm_start_info()
        info.magic = UInt32(XEN_HVM_START_MAGIC_VALUE)
        info.cmdline_paddr = 0
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: cxen_configuration_buffer_size, alignment: 1)
        defer { buffer.deallocate() }
        #expect(cxen_configuration_buffer_size == Int(XENSTORE_PAYLOAD_MAX) + 1)
        #expect(try XenPVHConfiguration.provide(
            startInfo: &info, commandLine: UnsafeRawBufferPointer(start: nil, count: 0), buffer: buffer, bufferAddress: 0x14_f000,
            reader: &reader))
        #expect(info.cmdline_paddr == 0x14_f000)
        let text = Array(buffer.prefix { $0 != 0 })
        #expect(String(decoding: text, as: UTF8.self) == "{\"argv\":[\"web\"],\"hostname\":\"box\"}")
        // What bmk_boot_main then parses.
        let configuration = try GuestConfiguration(commandLine: text)
        #expect(configuration.arguments == ["web"] && configuration.hostname == "box")

        // The hw boot takes 4095 bytes and a NUL: a longer value is refused
        // here rather than failing the boot later.
        #expect(XenPVHConfiguration.commandLineCapacity == BootInfoParser<XenPVHConfiguration.NoPhysicalMemory>.commandLineLimit)
        daemon.set("/local/domain/9/rumprun/cfg", "{" + String(repeating: " ", count: 4093) + "}")
        info.cmdline_paddr = 0
        #expect(try XenPVHConfiguration.provide(
            startInfo: &info, commandLine: UnsafeRawBufferPointer(start: nil, count: 0), buffer: buffer, bufferAddress: 0x14_f000,
            reader: &reader))
        #expect(buffer[4095] == 0)
        daemon.set("/local/domain/9/rumprun/cfg", "{" + String(repeating: " ", count: 4094) + "}")
        info.cmdline_paddr = 0
        #expect(throws: XenStoreBootReadError.valueTooLong(length: 4096, capacity: 4095)) {
            _ = try XenPVHConfiguration.provide(
                startInfo: &info, commandLine: UnsafeRawBufferPointer(start: nil, count: 0), buffer: buffer, bufferAddress: 0x14_f000,
                reader: &reader)
        }
        #expect(info.cmdline_paddr == 0)

        // A command line that already has JSON is left alone, unread.
        let seen = daemon.requestsSeen.count
        var other = hvm_start_info()
        other.cmdline_paddr = 0x9000
        let json = Array("quiet {}".utf8)
        let provided = try json.withUnsafeBytes { line in
            try XenPVHConfiguration.provide(startInfo: &other, commandLine: line, buffer: buffer, bufferAddress: 0x14_f000, reader: &reader)
        }
        #expect(!provided)
        #expect(other.cmdline_paddr == 0x9000 && daemon.requestsSeen.count == seen)
    }

    @Test func exitReportsAreWrittenFromTheStack() {
        var text: [UInt8] = []
        XenExit.exited(status: -17).writeReport { text += $0 }
        #expect(String(decoding: text, as: UTF8.self) == "rumprun: exit status -17\n")
        text = []
        XenExit.withDecimal(Int64.min) { text += $0 }
        #expect(String(decoding: text, as: UTF8.self) == "-9223372036854775808")
    }

    @Test func startOfDayPollingTurnsBlockIntoYield() {
        let hypervisor = SimulatedHypervisor(memory: SimulatedMemory())
        var polling = PollingHypercalls(hypervisor)
        polling.block()
        polling.yield()
        #expect(hypervisor.blockCount == 0 && hypervisor.yieldCount == 2)
    }
}
