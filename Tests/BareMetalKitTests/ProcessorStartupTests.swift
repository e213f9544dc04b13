// ProcessorStartup: which CPUs the platform starts (from QEMU's real MADTs
// and hostile synthetic ones) and the ICR words of the start-up IPIs.
import Testing
@testable import BareMetalKit

@Suite struct ProcessorStartupTests {
    func processor(_ apicID: UInt32, enabled: Bool = true, onlineCapable: Bool = false, uid: UInt32? = nil) -> MADTProcessor {
        MADTProcessor(processorUID: uid ?? apicID, apicID: apicID, isEnabled: enabled, isOnlineCapable: onlineCapable, isX2APIC: false)
    }

    @Test(arguments: [("qemu-7.2-pc-smp1", 1), ("qemu-7.2-pc-smp2", 2), ("qemu-7.2-pc-smp4", 4), ("qemu-7.2-pc-smp8", 8),
                      ("qemu-7.2-microvm-smp1", 1), ("qemu-7.2-microvm-smp2", 2), ("qemu-7.2-microvm-smp4", 4),
                      ("qemu-7.2-microvm-smp8", 8), ("qemu-7.2-q35-smp4", 4)])
    func qemuTablesStartEveryListedCPU(fixture name: String, cpus: Int) throws {
        let fixture = try MemoryFixture(name)
        let rsdp = try #require(ACPITables.findRSDP(memory: fixture.memory) ?? (fixture.rsdpAddress == 0 ? nil : fixture.rsdpAddress))
        let madt = try #require(try ACPITables(memory: fixture.memory, rsdpAddress: rsdp).madt())
        let plan = ProcessorStartupPlan(processors: madt.processors, bootAPICID: 0, limit: 64)
        #expect(plan.processorCount == cpus)
        #expect(plan.applicationProcessors.map(\.apicID) == (1..<UInt32(cpus)).map { $0 })
        #expect(plan.applicationProcessors.map(\.index) == Array(1..<cpus))
        #expect(plan.skipped.isEmpty)
    }

    @Test func hotPluggableCPUsAreNotStarted() throws {
        let fixture = try MemoryFixture("qemu-7.2-pc-smp2-max4")
        let madt = try #require(try ACPITables(memory: fixture.memory, rsdpAddress: fixture.rsdpAddress).madt())
        let plan = ProcessorStartupPlan(processors: madt.processors, bootAPICID: 0, limit: 64)
        #expect(plan.processorCount == 2)
        #expect(plan.skipped.map(\.apicID) == [2, 3])
        // QEMU 7.2 marks them neither enabled nor online capable (ACPI 6.5
        // would set Online Capable); either way they are not started.
        #expect(plan.skipped.allSatisfy { $0.reason == .disabled || $0.reason == .notPresent })
    }

    @Test func theBootProcessorNeedNotBeFirstOrListed() {
        let plan = ProcessorStartupPlan(processors: [processor(0), processor(1), processor(2)], bootAPICID: 2, limit: 8)
        #expect(plan.bootProcessor == ProcessorSlot(index: 0, apicID: 2, processorUID: 2))
        #expect(plan.applicationProcessors.map(\.apicID) == [0, 1])
        let unlisted = ProcessorStartupPlan(processors: [processor(1)], bootAPICID: 7, limit: 8)
        #expect(unlisted.bootProcessor.apicID == 7 && unlisted.applicationProcessors.map(\.apicID) == [1])
    }

    @Test func hostileEntriesAreSkippedWithReasons() {
        let entries = [
            processor(0), processor(1), processor(1, uid: 9), processor(2, enabled: false),
            processor(3, enabled: false, onlineCapable: true), processor(300), processor(4), processor(5),
        ]
        let plan = ProcessorStartupPlan(processors: entries, bootAPICID: 0, limit: 3)
        #expect(plan.applicationProcessors.map(\.apicID) == [1, 4])
        #expect(plan.skipped.map(\.apicID) == [1, 2, 3, 300, 5])
        #expect(plan.skipped.map(\.reason) == [.duplicateAPICID, .disabled, .notPresent, .needsX2APIC, .beyondLimit])
        let withX2APIC = ProcessorStartupPlan(processors: [processor(0), processor(300)], bootAPICID: 0, limit: 8, x2APIC: true)
        #expect(withX2APIC.applicationProcessors.map(\.apicID) == [300])
    }

    @Test func startupInterruptCommandWords() {
        // SDM vol. 3A Figure 10-12: delivery mode bits 8-10, level bit 14,
        // shorthand bits 18-19, xAPIC destination in ICR bits 56-63.
        let initIPI = InterruptCommand.initialize(apicID: 3)
        #expect(initIPI.xAPICHigh == 0x0300_0000 && initIPI.low == 0x0000_4500)
        let sipi = InterruptCommand.startup(apicID: 0x12, page: 0x08)
        #expect(sipi.xAPICHigh == 0x1200_0000 && sipi.low == 0x0000_4608)
        #expect(sipi.x2APICValue == 0x0000_0012_0000_4608)
        #expect(InterruptCommand.wakeUp(apicID: 1).low == 0x0000_40F1)
        #expect(InterruptCommand.nonMaskableToAllOthers.low == 0x000C_4400)
    }
}
