// Tests of the interrupt layer's pure parts: vector allocation, I/O APIC
// redirection entries (and the register sequence against a model I/O APIC),
// MSI and ICR encodings, LAPIC timer counts, and routing decisions from
// QEMU's real MADT and MP tables (Fixtures/ACPI).
import Testing
@testable import BareMetalKit

struct InterruptVectorAllocatorTests {
    @Test func handsOutDeviceVectorsLowestFirstAndReusesFreedOnes() throws {
        var allocator = InterruptVectorAllocator()
        #expect(try allocator.allocate() == 0x30)
        #expect(try allocator.allocate() == 0x31)
        try allocator.free(0x30)
        #expect(try allocator.allocate() == 0x30)
        #expect(allocator.allocatedCount == 2)
        #expect(throws: InterruptError.vectorNotAllocated(0x40)) { try allocator.free(0x40) }
        #expect(throws: InterruptError.vectorNotAllocated(0xF0)) { try allocator.free(0xF0) }
    }

    @Test func multiMessageBlocksAreAlignedAndConsecutive() throws {
        var allocator = InterruptVectorAllocator()
        _ = try allocator.allocate()  // 0x30
        let block = try allocator.allocate(count: 4)
        #expect(block == 0x34)
        for vector in 0x34...0x37 { #expect(allocator.isAllocated(UInt8(vector))) }
        #expect(try allocator.allocate() == 0x31)
        let big = try allocator.allocate(count: 32)
        #expect(big == 0x40 && big % 32 == 0)
        #expect(throws: InterruptError.noFreeVector(requested: 3)) { try allocator.allocate(count: 3) }
        try allocator.free(block, count: 4)
        #expect(!allocator.isAllocated(0x35))
    }

    @Test func exhaustionIsAnErrorNotACrash() throws {
        var allocator = InterruptVectorAllocator()
        var seen = Set<UInt8>()
        for _ in 0..<(0xDF - 0x30 + 1) { seen.insert(try allocator.allocate()) }
        #expect(seen.count == 176 && seen.min() == 0x30 && seen.max() == 0xDF)
        #expect(throws: InterruptError.noFreeVector(requested: 1)) { try allocator.allocate() }
        #expect(!allocator.isAllocated(0xF0) && !allocator.isAllocated(0x2F))
    }
}

/// An 82093AA register file behind IOREGSEL/IOWIN, with a trace of writes.
final class IOAPICModel: RegisterBlock {
    var select: UInt32 = 0
    var registers: [UInt8: UInt32] = [0x01: 0x0017_0011]  // version 0x11, 24 entries
    var writes: [(UInt8, UInt32)] = []

    init() { for pin in 0..<24 { registers[UInt8(0x10 + 2 * pin)] = 1 << 16 } }

    func read8(at offset: Int) -> UInt8 { UInt8(truncatingIfNeeded: read32(at: offset)) }
    func read16(at offset: Int) -> UInt16 { UInt16(truncatingIfNeeded: read32(at: offset)) }
    func read32(at offset: Int) -> UInt32 { offset == 0 ? select : registers[UInt8(select), default: 0] }
    func write8(at offset: Int, _ value: UInt8) { write32(at: offset, UInt32(value)) }
    func write16(at offset: Int, _ value: UInt16) { write32(at: offset, UInt32(value)) }
    func write32(at offset: Int, _ value: UInt32) {
        if offset == 0 {
            select = value & 0xFF
            return
        }
        // Delivery status (12) and remote IRR (14) are read-only.
        let register = UInt8(select)
        let readOnly: UInt32 = register >= 0x10 && register & 1 == 0 ? (1 << 12 | 1 << 14) : 0
        registers[register] = value & ~readOnly | registers[register, default: 0] & readOnly
        writes.append((register, value))
    }
}

struct IOAPICTests {
    @Test func redirectionEntriesEncodeEveryField() {
        let entry = IOAPICRedirectionEntry(vector: 0x31, activeLow: true, levelTriggered: true, masked: false, destination: 3)
        #expect(entry.low == 0x31 | 1 << 13 | 1 << 15)
        #expect(entry.high == 0x0300_0000)
        var nmi = IOAPICRedirectionEntry(vector: 0, deliveryMode: .nmi)
        #expect(nmi.low == 4 << 8 | 1 << 16)
        nmi.logicalDestination = true
        #expect(nmi.low & 1 << 11 != 0)
        let decoded = IOAPICRedirectionEntry(low: entry.low | 1 << 14 | 1 << 12, high: entry.high)
        #expect(decoded?.vector == 0x31 && decoded?.remoteIRR == true && decoded?.deliveryPending == true)
        #expect(decoded?.activeLow == true && decoded?.levelTriggered == true && decoded?.masked == false && decoded?.destination == 3)
        #expect(IOAPICRedirectionEntry(low: 3 << 8, high: 0) == nil)  // reserved delivery mode
        #expect(IOAPICRedirectionEntry(vector: 0x40).low == 0x40 | 1 << 16)  // masked by default
    }

    @Test func entriesAreWrittenMaskedFirstThenHighThenLow() {
        let model = IOAPICModel()
        let ioAPIC = IOAPIC(registers: model, globalSystemInterruptBase: 0)
        #expect(ioAPIC.pinCount == 24)
        ioAPIC.setEntry(pin: 9, IOAPICRedirectionEntry(vector: 0x42, levelTriggered: true, masked: false, destination: 1))
        #expect(model.writes.map(\.0) == [0x22, 0x23, 0x22])
        #expect(model.writes[0].1 & 1 << 16 != 0)
        #expect(model.writes[1].1 == 0x0100_0000)
        #expect(model.writes[2].1 == 0x42 | 1 << 15)
        #expect(ioAPIC.entry(pin: 9)?.masked == false)
        ioAPIC.setMasked(pin: 9, true)
        #expect(ioAPIC.entry(pin: 9) == IOAPICRedirectionEntry(vector: 0x42, levelTriggered: true, masked: true, destination: 1))
        ioAPIC.setMasked(pin: 9, false)
        ioAPIC.maskAll()
        #expect((0..<24).allSatisfy { ioAPIC.entry(pin: $0)?.masked == true })
    }
}

struct InterruptEncodingTests {
    @Test func msiMessagesTargetTheLocalAPICWindow() {
        let message = MSIMessage(vector: 0x45)
        #expect(message.address == 0xFEE0_0000 && message.data == 0x45)
        let other = MSIMessage(vector: 0x51, destination: 3, levelTriggered: true)
        #expect(other.address == 0xFEE0_3000)
        #expect(other.data == 0x51 | 1 << 14 | 1 << 15)
        #expect(other.vector == 0x51 && other.destination == 3)
        #expect(MSIMessage(vector: 0x60, deliveryMode: .lowestPriority).data == 0x160)
    }

    @Test func interruptCommandsForSelfIPIInitAndStartup() {
        #expect(InterruptCommand(vector: 0x40, shorthand: .this).low == 0x40 | 1 << 14 | 1 << 18)
        let initialize = InterruptCommand(vector: 0, deliveryMode: .initialize, destination: 1, levelTriggered: true)
        #expect(initialize.low == 0xC500)
        #expect(initialize.xAPICHigh == 0x0100_0000)
        let startup = InterruptCommand(vector: 0x08, deliveryMode: .startup, destination: 0x1_0002)
        #expect(startup.low == 0x4608)
        #expect(startup.xAPICHigh == 0x0200_0000)  // xAPIC keeps 8 bits
        #expect(startup.x2APICValue == 0x1_0002 << 32 | 0x4608)
        #expect(InterruptCommand(vector: 0xF1, shorthand: .allExcludingSelf).low == 0xF1 | 1 << 14 | 3 << 18)
    }

    @Test func localAPICRegistersAndTimerValues() {
        #expect(LocalAPICRegister.msr(LocalAPICRegister.endOfInterrupt) == 0x80B)
        #expect(LocalAPICRegister.msr(LocalAPICRegister.timerVector) == 0x832)
        #expect(LocalAPICRegister.msr(LocalAPICRegister.interruptCommandLow) == 0x830)
        #expect(LocalAPICTimerMode.tscDeadline.lvt(vector: 0xF0) == 0x4_00F0)
        #expect(LocalAPICTimerMode.oneShot.lvt(vector: 0xF0, masked: true) == 0x1_00F0)
        #expect(LocalAPICTimerMode.periodic.lvt(vector: 0x20) == 0x2_0020)
    }

    @Test func oneShotCountsRoundUpAndSaturate() {
        let one: UInt64 = 1 << 32
        #expect(LocalAPICTimerMode.oneShotCount(forTSCTicks: 1000, ratio: one) == 1000)
        #expect(LocalAPICTimerMode.oneShotCount(forTSCTicks: 3, ratio: one / 2) == 2)  // 1.5 rounds up
        #expect(LocalAPICTimerMode.oneShotCount(forTSCTicks: 0, ratio: one) == 1)
        #expect(LocalAPICTimerMode.oneShotCount(forTSCTicks: 1 << 40, ratio: one) == 0xFFFF_FFFF)
        #expect(LocalAPICTimerMode.oneShotCount(forTSCTicks: UInt64.max, ratio: UInt64.max) == 0xFFFF_FFFF)
        // 16 APIC ticks per 100 TSC ticks: 1 ms at 2 GHz is 320,000 counts.
        #expect(LocalAPICTimerMode.oneShotCount(forTSCTicks: 2_000_000, ratio: (16 << 32) / 100) == 320_000)
    }
}

struct InterruptRoutingTests {
    @Test(arguments: [1, 2, 4, 8])
    func pcRoutesThePITThroughItsOverrideAndPCILinksAsLevel(cpus: Int) throws {
        let fixture = try MemoryFixture("qemu-7.2-pc-smp\(cpus)")
        let firmware = FirmwareDescription.discover(memory: fixture.memory, rsdpAddress: nil)
        #expect(firmware.source == .acpi && firmware.error == nil)
        #expect(firmware.hpet != nil && firmware.fadt != nil && firmware.pciConfigurationRegions == nil)
        let routing = try #require(firmware.interruptRouting)
        #expect(routing.controllers == [.init(id: 0, address: 0xFEC0_0000, globalSystemInterruptBase: 0, pinCount: 24)])
        #expect(routing.hasLegacyPICs && routing.localAPICAddress == 0xFEE0_0000)
        #expect(routing.line(isaIRQ: 0) == InterruptLine(globalSystemInterrupt: 2, controller: 0, pin: 2, activeLow: false, levelTriggered: false))
        #expect(routing.line(isaIRQ: 8) == InterruptLine(globalSystemInterrupt: 8, controller: 0, pin: 8, activeLow: false, levelTriggered: false))
        for irq: UInt8 in [5, 9, 10, 11] {
            #expect(routing.line(isaIRQ: irq)?.levelTriggered == true)
            // A PCI function whose Interrupt Line register says `irq`.
            #expect(routing.line(pciInterruptLine: irq) == InterruptLine(
                globalSystemInterrupt: UInt32(irq), controller: 0, pin: Int(irq), activeLow: false, levelTriggered: true))
        }
        #expect(routing.line(pciInterruptLine: 0xFF) == nil)
        #expect(routing.line(globalSystemInterrupt: 24, activeLow: false, levelTriggered: false) == nil)
    }

    @Test func microvmHasTwoIOAPICsAndNoOverrides() throws {
        let fixture = try MemoryFixture("qemu-7.2-microvm-smp2")
        let firmware = FirmwareDescription.discover(memory: fixture.memory, rsdpAddress: fixture.rsdpAddress)
        let routing = try #require(firmware.interruptRouting)
        #expect(routing.controllers.map(\.globalSystemInterruptBase) == [0, 24])
        #expect(routing.isaOverrides.isEmpty)
        #expect(routing.line(isaIRQ: 0)?.globalSystemInterrupt == 0)
        #expect(routing.line(globalSystemInterrupt: 30, activeLow: true, levelTriggered: true)
            == InterruptLine(globalSystemInterrupt: 30, controller: 1, pin: 6, activeLow: true, levelTriggered: true))
        #expect(routing.line(globalSystemInterrupt: 48, activeLow: false, levelTriggered: false) == nil)
        #expect(firmware.fadt?.isHardwareReduced == true && firmware.hpet == nil)
    }

    /// Without an RSDP the MP table is the fallback and gives the same
    /// routing for the ISA lines as the MADT.
    @Test func theMPTableIsTheFallbackWithoutACPI() throws {
        let fixture = try MemoryFixture("qemu-7.2-pc-smp2")
        let rsdp = try #require(ACPITables.findRSDP(memory: fixture.memory))
        var memory = fixture.memory
        for offset in 0..<8 { memory.poke(rsdp + UInt64(offset), 0x20) }  // no "RSD PTR " left
        let firmware = FirmwareDescription.discover(memory: memory, rsdpAddress: nil)
        #expect(firmware.source == .multiprocessorTable && firmware.madt == nil)
        let fromMP = try #require(firmware.interruptRouting)
        let fromMADT = try #require(FirmwareDescription.discover(memory: fixture.memory, rsdpAddress: nil).interruptRouting)
        #expect(fromMP.controllers == fromMADT.controllers)
        #expect(fromMP.line(isaIRQ: 0)?.globalSystemInterrupt == 2)
        for irq: UInt8 in [1, 3, 4, 8, 12, 14, 15] {
            #expect(fromMP.line(isaIRQ: irq) == fromMADT.line(isaIRQ: irq), "IRQ \(irq)")
        }
    }

    @Test func aBrokenTableIsRecordedNotFatal() throws {
        let fixture = try MemoryFixture("qemu-7.2-pc-smp1")
        let tables = try ACPITables(memory: fixture.memory, rsdpAddress: fixture.rsdpAddress)
        let madt = try #require(try tables.header(.madt))
        var memory = fixture.memory
        memory.poke(madt.address + 40, 0xFF)  // flags: checksum now wrong
        let firmware = FirmwareDescription.discover(memory: memory, rsdpAddress: fixture.rsdpAddress)
        #expect(firmware.source == .acpi)
        #expect(firmware.madt == nil)
        if case .badChecksum = firmware.error {} else { Issue.record("expected a checksum error, got \(String(describing: firmware.error))") }
        #expect(firmware.hpet != nil)
        // No MADT: the MP table still routes.
        #expect(firmware.interruptRouting?.line(isaIRQ: 0)?.globalSystemInterrupt == 2)
    }
}
