// PV runtime tests: the interrupt flag in vcpu_info (mask, unmask with the
// pending check, SCHEDOP_block as the idle halt), the VIRQ_TIMER one-shot
// timer, trap table and callback registration and set_segment_base,
// against the PV machine model (XenPVMemoryTests.swift), each with the
// hypervisor refusing.
import BareMetalKit
import CXen
import Testing
@testable import XenPVKit

@Suite struct XenPVRuntimeTests {
    let machine = PVMachine(pageCount: 900, pageTableBase: 20)
    let sharedInfo = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)

    init() {
        sharedInfo.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
        machine.vcpuInfo = XenPVInterruptFlag.vcpuInfo(sharedInfo: sharedInfo)
    }

    var mask: UInt8 { machine.vcpuInfo!.load(fromByteOffset: CXEN_OFFSETOF_vcpu_info_evtchn_upcall_mask, as: UInt8.self) }
    func setPending(_ value: UInt8) {
        machine.vcpuInfo!.storeBytes(of: value, toByteOffset: CXEN_OFFSETOF_vcpu_info_evtchn_upcall_pending, as: UInt8.self)
    }

    @Test func theFlagIsVCPU0sMaskByteInRFLAGSForm() {
        defer { sharedInfo.deallocate() }
        let flag = XenPVInterruptFlag(vcpuInfo: XenPVInterruptFlag.vcpuInfo(sharedInfo: sharedInfo))
        // vcpu_info[0] is at the start of shared info; the mask is its second byte.
        #expect(CXEN_OFFSETOF_shared_info_vcpu_info == 0 && CXEN_OFFSETOF_vcpu_info_evtchn_upcall_mask == 1)
        #expect(flag.isEnabled)
        #expect(flag.saveAndDisable() == 1 << 9)
        #expect(mask == 1 && !flag.isEnabled)
        #expect(flag.saveAndDisable() == 0)
        var hypervisor = machine
        flag.restore(0, hypervisor: &hypervisor)
        #expect(mask == 1, "restoring a masked state leaves events masked")
        flag.restore(1 << 9, hypervisor: &hypervisor)
        #expect(mask == 0 && machine.xenVersionCalls == 0, "nothing pending: no hypercall")
        // The vCPU of index 1 is one vcpu_info further.
        #expect(XenPVInterruptFlag.vcpuInfo(sharedInfo: sharedInfo, vcpu: 1) - sharedInfo == MemoryLayout<vcpu_info>.size)
    }

    @Test func unmaskingWithAnEventPendingMakesXenDeliverIt() {
        defer { sharedInfo.deallocate() }
        let flag = XenPVInterruptFlag(vcpuInfo: machine.vcpuInfo!)
        flag.disable()
        setPending(1)
        var hypervisor = machine
        flag.enable(hypervisor: &hypervisor)
        #expect(mask == 0)
        #expect(machine.xenVersionCalls == 1)
        #expect(!flag.upcallPending, "the model's callback ran on the hypercall's return")
        flag.enable(hypervisor: &hypervisor)
        #expect(machine.xenVersionCalls == 1)
    }

    @Test func idleBlocksWithEventsMaskedAndReturnsMasked() {
        defer { sharedInfo.deallocate() }
        let flag = XenPVInterruptFlag(vcpuInfo: machine.vcpuInfo!)
        flag.disable()
        var hypervisor = machine
        flag.block(hypervisor: &hypervisor)
        #expect(machine.blocks == 1)
        #expect(mask == 1)
    }

    @Test func theEventCallbackClearsPendingUnmaskedPortsOnly() {
        defer { sharedInfo.deallocate() }
        let vcpu = machine.vcpuInfo!
        let pending = sharedInfo + CXEN_OFFSETOF_shared_info_evtchn_pending
        let mask = sharedInfo + CXEN_OFFSETOF_shared_info_evtchn_mask
        // Ports 7 (the timer) and 70 pending, 70 masked; Xen set the selector bits and the upcall.
        pending.storeBytes(of: 1 << 7, as: UInt64.self)
        (pending + 8).storeBytes(of: 1 << 6, as: UInt64.self)
        (mask + 8).storeBytes(of: 1 << 6, as: UInt64.self)
        vcpu.storeBytes(of: 0b11, toByteOffset: CXEN_OFFSETOF_vcpu_info_evtchn_pending_sel, as: UInt64.self)
        setPending(1)
        #expect(XenPVEventAcknowledgement.acknowledge(sharedInfo: sharedInfo) == 1)
        #expect(pending.load(as: UInt64.self) == 0)
        #expect((pending + 8).load(as: UInt64.self) == 1 << 6, "a masked port stays pending")
        #expect(vcpu.load(fromByteOffset: CXEN_OFFSETOF_vcpu_info_evtchn_pending_sel, as: UInt64.self) == 0)
        #expect(!XenPVInterruptFlag(vcpuInfo: vcpu).upcallPending)
        // Nothing pending: nothing cleared.
        #expect(XenPVEventAcknowledgement.acknowledge(sharedInfo: sharedInfo) == 0)
    }

    @Test func theTimerIsVIRQTimerAndTheSingleshotCall() throws {
        defer { sharedInfo.deallocate() }
        var hypervisor = machine
        var timer = try XenPVTimer.start(hypervisor: &hypervisor)
        #expect(machine.boundVIRQs == [UInt32(VIRQ_TIMER)] && timer.port == 7)
        try timer.arm(systemTime: 5_000_000, hypervisor: &hypervisor)
        try timer.arm(systemTime: 0, hypervisor: &hypervisor)
        #expect(machine.singleshot == [5_000_000, 1], "0 would cancel: the earliest time instead")
        #expect(machine.legacyTimer.isEmpty && !timer.usesLegacyTimerOp)
    }

    @Test func aXenWithoutTheSingleshotCallGetsSetTimerOp() throws {
        defer { sharedInfo.deallocate() }
        var hypervisor = machine
        var timer = try XenPVTimer.start(hypervisor: &hypervisor)
        machine.singleshotStatus = -Int(XEN_ENOSYS.rawValue)
        try timer.arm(systemTime: 7_000, hypervisor: &hypervisor)
        try timer.arm(systemTime: 8_000, hypervisor: &hypervisor)
        #expect(timer.usesLegacyTimerOp)
        #expect(machine.legacyTimer == [7_000, 8_000])
    }

    @Test func aRefusedTimerIsATypedError() throws {
        defer { sharedInfo.deallocate() }
        var hypervisor = machine
        var timer = try XenPVTimer.start(hypervisor: &hypervisor)
        machine.singleshotStatus = -Int(XEN_EINVAL.rawValue)
        #expect(throws: XenPVTimerError.singleshot(.failed(.vcpuOp, command: VCPUOP_set_singleshot_timer, status: -Int(XEN_EINVAL.rawValue)))) {
            try timer.arm(systemTime: 1_000, hypervisor: &hypervisor)
        }
        machine.singleshotStatus = -Int(XEN_ENOSYS.rawValue)
        machine.legacyStatus = -Int(XEN_EPERM.rawValue)
        #expect(throws: XenPVTimerError.legacy(.failed(.setTimerOp, command: 0, status: -Int(XEN_EPERM.rawValue)))) {
            try timer.arm(systemTime: 1_000, hypervisor: &hypervisor)
        }
    }

    @Test func aTSCDeadlineBecomesXenSystemTime() throws {
        defer { sharedInfo.deallocate() }
        // 2 GHz TSC: multiplier 2^31 with shift 0 is 0.5 ns per tick.
        let record = PVClockTimeInfo(
            version: 2, tscTimestamp: 1_000_000, systemTime: 50_000, scale: TickScale(multiplier: 1 << 31, shift: 0), flags: 0)
        #expect(XenPVTimer.systemTime(atTSC: 3_000_000, record: record) == 50_000 + 1_000_000)
        #expect(XenPVTimer.systemTime(atTSC: 10, record: record) == 50_000, "a TSC before the stamp is the stamp's time")
        // Through shared info: the record Xen keeps in vcpu_info[0].time.
        let time = sharedInfo + CXEN_OFFSETOF_vcpu_info_time
        time.storeBytes(of: 2, toByteOffset: CXEN_OFFSETOF_vcpu_time_info_version, as: UInt32.self)
        time.storeBytes(of: 1_000_000, toByteOffset: CXEN_OFFSETOF_vcpu_time_info_tsc_timestamp, as: UInt64.self)
        time.storeBytes(of: 50_000, toByteOffset: CXEN_OFFSETOF_vcpu_time_info_system_time, as: UInt64.self)
        time.storeBytes(of: 1 << 31, toByteOffset: CXEN_OFFSETOF_vcpu_time_info_tsc_to_system_mul, as: UInt32.self)
        var hypervisor = machine
        var timer = try XenPVTimer.start(hypervisor: &hypervisor)
        try timer.arm(tsc: 3_000_000, sharedInfo: sharedInfo, hypervisor: &hypervisor)
        #expect(machine.singleshot == [1_050_000])
        // Xen in the middle of an update (odd version) for good: no deadline.
        time.storeBytes(of: 3, toByteOffset: CXEN_OFFSETOF_vcpu_time_info_version, as: UInt32.self)
        #expect(throws: XenPVTimerError.noTimeRecord) { try timer.arm(tsc: 3_000_000, sharedInfo: sharedInfo, hypervisor: &hypervisor) }
    }

    @Test func aRefusedVIRQBindIsATypedError() {
        defer { sharedInfo.deallocate() }
        final class NoVIRQ: XenPVHypercalls {
            let base: PVMachine
            init(_ base: PVMachine) { self.base = base }
            func eventChannelOp(_ command: Int32, _ argument: UnsafeMutableRawPointer) -> Int { -Int(XEN_EBUSY.rawValue) }
            func schedOp(_ command: Int32, _ argument: UnsafeMutableRawPointer?) -> Int { base.schedOp(command, argument) }
            func grantTableOp(_ command: UInt32, _ arguments: UnsafeMutableRawPointer, count: UInt32) -> Int { -38 }
            func memoryOp(_ command: Int32, _ argument: UnsafeMutableRawPointer) -> Int { -38 }
            func hvmOp(_ operation: Int32, _ argument: UnsafeMutableRawPointer) -> Int { -38 }
            func consoleIO(_ command: Int32, count: Int32, _ buffer: UnsafeMutableRawPointer) -> Int { -38 }
            func setTimerOp(_ timeout: UInt64) -> Int { -38 }
            func vcpuOp(_ command: Int32, vcpu: UInt32, _ argument: UnsafeMutableRawPointer?) -> Int { -38 }
            func mmuUpdate(_ requests: UnsafeMutablePointer<mmu_update>, count: UInt32, successCount: UnsafeMutablePointer<UInt32>?, domain: domid_t) -> Int { -38 }
            func updateVAMapping(_ virtualAddress: UInt64, _ entry: UInt64, flags: UInt64) -> Int { -38 }
            func setTrapTable(_ traps: UnsafePointer<trap_info>) -> Int { -38 }
            func setCallbacks(event: UInt64, failsafe: UInt64, syscall: UInt64) -> Int { -38 }
            func setSegmentBase(_ which: UInt32, _ base: UInt64) -> Int { -38 }
            func xenVersion() -> Int { 0 }
        }
        var hypervisor = NoVIRQ(machine)
        #expect(throws: XenPVTimerError.bind(.failed(.eventChannelOp, command: EVTCHNOP_bind_virq, status: -Int(XEN_EBUSY.rawValue)))) {
            try XenPVTimer.start(hypervisor: &hypervisor)
        }
    }

    @Test func theTrapTableAndCallbacksReachXen() throws {
        defer { sharedInfo.deallocate() }
        var table = Array(repeating: trap_info(), count: XenPVTraps.entryCount)
        let count = table.withUnsafeMutableBufferPointer { XenPVTraps.fill($0) { 0x10_0000 + UInt64($0) * 16 } }
        #expect(count == 19)
        var hypervisor = machine
        try table.withUnsafeBufferPointer { table throws(XenPVError) in
            try XenPVTraps.install(table: table, eventCallback: 0x20_0000, failsafeCallback: 0x20_0100, hypervisor: &hypervisor)
        }
        let installed = machine.trapTable
        #expect(installed.map(\.vector) == [0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19, 0])
        #expect(installed.dropLast().allSatisfy { $0.cs == 0xE033 && $0.address == 0x10_0000 + UInt(UInt($0.vector) * 16) })
        #expect(installed.dropLast().allSatisfy { $0.flags == ($0.vector == 3 ? 7 : 4) }, "events masked on entry; INT3 allowed")
        #expect(installed.last!.address == 0)
        #expect(machine.callbacks! == (0x20_0000, 0x20_0100, 0))
    }

    @Test func aRefusedTrapTableOrCallbackIsATypedError() {
        defer { sharedInfo.deallocate() }
        var table = Array(repeating: trap_info(), count: XenPVTraps.entryCount)
        _ = table.withUnsafeMutableBufferPointer { XenPVTraps.fill($0) { 0x10_0000 + UInt64($0) } }
        var hypervisor = machine
        machine.trapStatus = -Int(XEN_EFAULT.rawValue)
        #expect(throws: XenPVError.refused(.setTrapTable, status: -Int(XEN_EFAULT.rawValue))) {
            try table.withUnsafeBufferPointer { table throws(XenPVError) in
                try XenPVTraps.install(table: table, eventCallback: 1, failsafeCallback: 2, hypervisor: &hypervisor)
            }
        }
        #expect(machine.callbacks == nil, "no callbacks after a refused trap table")
        machine.trapStatus = 0
        machine.callbackStatus = -Int(XEN_EINVAL.rawValue)
        #expect(throws: XenPVError.refused(.setCallbacks, status: -Int(XEN_EINVAL.rawValue))) {
            try table.withUnsafeBufferPointer { table throws(XenPVError) in
                try XenPVTraps.install(table: table, eventCallback: 1, failsafeCallback: 2, hypervisor: &hypervisor)
            }
        }
        // A table without its sentinel never reaches Xen.
        machine.trapTable = []
        var unterminated = [trap_info(vector: 0, flags: 0, cs: 0xE033, address: 0x1000)]
        #expect(throws: XenPVError.refused(.setTrapTable, status: -Int(XEN_EINVAL.rawValue))) {
            try unterminated.withUnsafeMutableBufferPointer { table throws(XenPVError) in
                try hypervisor.installTrapTable(UnsafeBufferPointer(table))
            }
        }
        #expect(machine.trapTable.isEmpty)
    }

    @Test func theThreadPointerIsSetThroughSetSegmentBase() throws {
        defer { sharedInfo.deallocate() }
        var hypervisor = machine
        try hypervisor.setBase(.fs, 0x40_1000)
        try hypervisor.setBase(.gsKernel, 0x50_0000)
        #expect(machine.segmentBases.map(\.0) == [UInt32(SEGBASE_FS), UInt32(SEGBASE_GS_KERNEL)])
        #expect(machine.segmentBases.map(\.1) == [0x40_1000, 0x50_0000])
        machine.segmentStatus = -Int(XEN_EINVAL.rawValue)
        #expect(throws: XenPVError.refused(.setSegmentBase, status: -Int(XEN_EINVAL.rawValue))) { try hypervisor.setBase(.fs, 1) }
    }
}
