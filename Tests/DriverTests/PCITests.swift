// PCI: enumeration through both configuration mechanisms, BAR sizing,
// capability walks (including malformed lists), MSI and MSI-X programming.
import Testing

@testable import BareMetalKit

/// Plain memory behind the bus (MSI-X tables, PBAs).
final class MemoryRegionModel: MMIOHandler {
    var bytes: [UInt8]
    init(size: Int) { bytes = [UInt8](repeating: 0, count: size) }
    func read(_ offset: Int, width: Int) -> UInt64 {
        (0..<width).reduce(UInt64(0)) { $0 | UInt64(bytes[offset + $1]) << (8 * UInt64($1)) }
    }
    func write(_ offset: Int, width: Int, _ value: UInt64) {
        for index in 0..<width { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(index))) }
    }
}

/// A `pc`-like machine: host bridge, multi-function ISA/IDE, e1000, a
/// modern virtio-net with MSI-X, a bridge to bus 1 with a transitional
/// virtio-blk (MSI), and two functions with broken capability lists.
func makeMachine() -> PCIConfigurationModel {
    let space = PCIConfigurationModel()
    space.add(0, 0, 0, PCIFunctionModel(vendor: 0x8086, device: 0x1237, classCode: 0x06_00_00))
    space.add(0, 1, 0, PCIFunctionModel(vendor: 0x8086, device: 0x7000, classCode: 0x06_01_00, multiFunction: true))
    let ide = PCIFunctionModel(vendor: 0x8086, device: 0x7010, classCode: 0x01_01_80)
    ide.setBAR(4, .io16, size: 0x10, address: 0xC0A0)
    space.add(0, 1, 1, ide)
    space.add(0, 1, 3, PCIFunctionModel(vendor: 0x8086, device: 0x7113, classCode: 0x06_80_00))

    let e1000 = PCIFunctionModel(vendor: 0x8086, device: 0x100E, classCode: 0x02_00_00, subsystemVendor: 0x1AF4, subsystem: 0x1100)
    e1000.setBAR(0, .memory32, size: 0x20000, address: 0xFEB8_0000)
    e1000.setBAR(1, .io32, size: 0x40, address: 0xC000)
    space.add(0, 2, 0, e1000)

    let net = PCIFunctionModel(vendor: 0x1AF4, device: 0x1041, classCode: 0x02_00_00, subsystemVendor: 0x1AF4, subsystem: 0x1100)
    net.setBAR(1, .memory32, size: 0x1000, address: 0xFEBD_1000)
    net.setBAR(4, .memory64, size: 0x4000, address: 0x8_0000_0000, prefetchable: true)
    // MSI-X: 3 vectors, table BAR 1 offset 0, PBA BAR 1 offset 0x800.
    net.addCapability(id: 0x11, body: [0x02, 0x00, 0x01, 0, 0, 0, 0x01, 0x08, 0, 0], writableBody: [0, 0xC0])
    space.add(0, 3, 0, net)

    let bridge = PCIFunctionModel(vendor: 0x1B36, device: 0x0001, classCode: 0x06_04_00, headerType: 1)
    bridge.bytes[0x18] = 0
    bridge.bytes[0x19] = 1
    bridge.bytes[0x1A] = 1
    space.add(0, 4, 0, bridge)
    let blk = PCIFunctionModel(vendor: 0x1AF4, device: 0x1001, classCode: 0x01_00_00, subsystemVendor: 0x1AF4, subsystem: 2)
    blk.setBAR(0, .io32, size: 0x40, address: 0xC040)
    // MSI: 64-bit, per-vector masking, 4 vectors requested.
    blk.addCapability(
        id: 0x05, body: [0x84, 0x01] + [UInt8](repeating: 0, count: 20),
        writableBody: [0x71, 0x00] + [UInt8](repeating: 0xFF, count: 14) + [0, 0, 0, 0])
    space.add(1, 0, 0, blk)
    // A bridge on bus 1 that claims bus 1 again: must not be rescanned.
    let loopBridge = PCIFunctionModel(vendor: 0x1B36, device: 0x0001, classCode: 0x06_04_00, headerType: 1)
    loopBridge.bytes[0x19] = 1
    space.add(1, 1, 0, loopBridge)

    let looping = PCIFunctionModel(vendor: 0x1234, device: 0x0001, classCode: 0xFF_00_00)
    let first = looping.addCapability(id: 0x09, body: [0, 0])
    looping.addCapability(id: 0x01, body: [0, 0])
    looping.bytes[looping.lastCapability! + 1] = UInt8(first)
    space.add(0, 5, 0, looping)

    let outOfRange = PCIFunctionModel(vendor: 0x1234, device: 0x0002, classCode: 0xFF_00_00)
    outOfRange.addCapability(id: 0x09, body: [0, 0])
    outOfRange.bytes[0x41] = 0x3C  // into the header
    space.add(0, 6, 0, outOfRange)
    return space
}

let machineAddresses: [[UInt8]] = [
    [0, 0, 0], [0, 1, 0], [0, 1, 1], [0, 1, 3], [0, 2, 0], [0, 3, 0], [0, 4, 0], [0, 5, 0], [0, 6, 0], [1, 0, 0], [1, 1, 0],
]

func addresses(_ functions: [PCIFunctionInfo]) -> [[UInt8]] {
    functions.map { [$0.address.bus, $0.address.device, $0.address.function] }
}

@Test func enumerationFindsFunctionsBehindBridgesAndMultiFunctionDevices() {
    let space = makeMachine()
    let found = PCIEnumerator.enumerate(space)
    #expect(addresses(found) == machineAddresses)
    let blk = found.first { $0.address.bus == 1 && $0.address.device == 0 }!
    #expect(blk.vendorID == 0x1AF4 && blk.deviceID == 0x1001 && blk.subsystemID == 2)
    #expect(blk.baseClass == 0x01 && blk.subclass == 0x00)
    #expect(VirtioPCI.deviceType(of: blk) == VirtioPCI.blockType)
    let net = found.first { $0.address.device == 3 }!
    #expect(VirtioPCI.deviceType(of: net) == VirtioPCI.networkType && VirtioPCI.isModernOnly(net))
    let bridge = found.first { $0.address.device == 4 }!
    #expect(bridge.isBridge && bridge.secondaryBus == 1)
    #expect(found[1].isMultiFunction && found[0].interruptPin == 1)
}

@Test func portMechanismAndECAMSeeTheSameMachine() {
    let space = makeMachine()
    let bus = MMIOBus()
    bus.add(base: 0xCF8, length: 8, ConfigurationPortsModel(space: space))
    let ports = PortConfigurationAccess(ports: BusPorts(bus: bus).ports(at: 0xCF8, length: 8))
    #expect(addresses(PCIEnumerator.enumerate(ports)) == machineAddresses)
    // Byte and word accesses land on the right lanes of 0xCFC.
    let e1000 = PCIAddress(bus: 0, device: 2, function: 0)
    #expect(ports.read8(e1000, offset: 0x0B) == 0x02)
    #expect(ports.read16(e1000, offset: 0x02) == 0x100E)
    ports.write8(e1000, offset: 0x3C, 5)
    #expect(space.functions[e1000]!.bytes[0x3C] == 5)

    bus.add(base: 0xB000_0000, length: 2 << 20, ECAMModel(space: space, startBus: 0))
    let ecam = ECAMConfigurationAccess(window: BusMapper(bus: bus).map(physicalAddress: 0xB000_0000, length: 2 << 20), startBus: 0, endBus: 1)
    #expect(addresses(PCIEnumerator.enumerate(ecam)) == machineAddresses)
    #expect(ecam.read32(PCIAddress(bus: 2, device: 0, function: 0), offset: 0) == 0xFFFF_FFFF)
    #expect(bus.unmappedAccesses.isEmpty)
}

@Test func barsAreDecodedAndSizedWithDecodingOff() throws {
    let space = makeMachine()
    let e1000 = PCIAddress(bus: 0, device: 2, function: 0)
    space.write16(e1000, offset: 0x04, 0x0007)
    #expect(try PCIBAR.read(e1000, index: 0, access: space) == .memory(address: 0xFEB8_0000, size: 0x20000, is64Bit: false, isPrefetchable: false))
    #expect(try PCIBAR.read(e1000, index: 1, access: space) == .io(port: 0xC000, size: 0x40))
    #expect(try PCIBAR.read(e1000, index: 2, access: space) == nil)
    #expect(space.functions[e1000]!.sizingWhileDecoding.isEmpty)
    #expect(space.read16(e1000, offset: 0x04) == 0x0007)
    #expect(space.read32(e1000, offset: 0x10) == 0xFEB8_0000)

    let net = PCIAddress(bus: 0, device: 3, function: 0)
    let bars = try PCIBAR.readAll(net, access: space)
    #expect(bars.count == 6)
    #expect(bars[4] == .memory(address: 0x8_0000_0000, size: 0x4000, is64Bit: true, isPrefetchable: true))
    #expect(bars[5] == nil)
    #expect(space.read32(net, offset: 0x24) == 0x8)

    let ide = PCIAddress(bus: 0, device: 1, function: 1)
    #expect(try PCIBAR.read(ide, index: 4, access: space) == .io(port: 0xC0A0, size: 0x10))
    #expect(throws: PCIError.invalidBARIndex(function: ide, index: 6)) { try PCIBAR.read(ide, index: 6, access: space) }
}

@Test func malformedBARsGiveTypedErrors() {
    let space = PCIConfigurationModel()
    let function = PCIFunctionModel(vendor: 0x1234, device: 1, classCode: 0)
    function.setBAR(5, .memory64, size: 0x1000, address: 0xE000_0000)
    function.set32(0x10, 0xE000_0002)  // type 0b01: reserved
    function.mask32(0x10, 0xFFFF_F000)
    space.add(0, 0, 0, function)
    let address = PCIAddress(bus: 0, device: 0, function: 0)
    #expect(throws: PCIError.reservedBARType(function: address, index: 0, value: 0xE000_0002)) {
        try PCIBAR.read(address, index: 0, access: space)
    }
    #expect(throws: PCIError.truncatedSixtyFourBitBAR(function: address, index: 5)) {
        try PCIBAR.read(address, index: 5, access: space)
    }
}

@Test func capabilityListsAreWalkedAndMalformedOnesRejected() throws {
    let space = makeMachine()
    let net = PCIAddress(bus: 0, device: 3, function: 0)
    #expect(try PCICapability.list(net, access: space) == [PCICapability(id: 0x11, offset: 0x40)])
    #expect(try PCICapability.list(PCIAddress(bus: 0, device: 0, function: 0), access: space).isEmpty)
    let looping = PCIAddress(bus: 0, device: 5, function: 0)
    #expect(throws: PCIError.capabilityLoop(function: looping, pointer: 0x40)) { try PCICapability.list(looping, access: space) }
    let outOfRange = PCIAddress(bus: 0, device: 6, function: 0)
    #expect(throws: PCIError.capabilityPointerOutOfRange(function: outOfRange, pointer: 0x3C)) {
        try PCICapability.list(outOfRange, access: space)
    }
    // The MSI-X lookup reports the walk's error rather than "absent".
    #expect(throws: PCIError.capabilityLoop(function: looping, pointer: 0x40)) { try MSIXCapability.find(looping, access: space) }
    let absent = PCIAddress(bus: 0, device: 9, function: 0)
    #expect(throws: PCIError.noFunction(absent)) { try PCICapability.list(absent, access: space) }
}

@Test func msiIsProgrammedMaskedAndEnabled() throws {
    let space = makeMachine()
    let blk = PCIAddress(bus: 1, device: 0, function: 0)
    let msi = try #require(try MSICapability.find(blk, access: space))
    #expect(msi.is64Bit && msi.hasPerVectorMasking && msi.vectorCount == 4)
    try msi.program(address: 0x1_FEE0_0000, data: 0x40, vectorCount: 2, access: space)
    #expect(space.read32(blk, offset: 0x44) == 0xFEE0_0000)
    #expect(space.read32(blk, offset: 0x48) == 0x1)
    #expect(space.read16(blk, offset: 0x4C) == 0x40)
    #expect(space.read16(blk, offset: 0x42) & 0x70 == 0x10)  // two vectors enabled
    try msi.setMasked(vector: 1, true, access: space)
    #expect(space.read32(blk, offset: 0x50) == 0x2)
    try msi.setMasked(vector: 1, false, access: space)
    #expect(space.read32(blk, offset: 0x50) == 0)
    #expect(throws: PCIError.vectorOutOfRange(index: 4, count: 4)) { try msi.setMasked(vector: 4, true, access: space) }
    #expect(throws: PCIError.vectorOutOfRange(index: 3, count: 4)) { try msi.program(address: 0xFEE0_0000, data: 0, vectorCount: 3, access: space) }
    msi.setEnabled(true, access: space)
    #expect(space.read16(blk, offset: 0x42) & 1 == 1)
    #expect(space.read16(blk, offset: 0x04) & PCIHeader.commandInterruptDisable != 0)
    msi.setEnabled(false, access: space)
    #expect(space.read16(blk, offset: 0x04) & PCIHeader.commandInterruptDisable == 0)
}

@Test func msixTableEntriesAreProgrammedAndMasked() throws {
    let space = makeMachine()
    let net = PCIAddress(bus: 0, device: 3, function: 0)
    let capability = try #require(try MSIXCapability.find(net, access: space))
    #expect(capability.tableSize == 3 && capability.tableBAR == 1 && capability.tableOffset == 0)
    #expect(capability.pendingBitArrayBAR == 1 && capability.pendingBitArrayOffset == 0x800)
    let bus = MMIOBus()
    let region = MemoryRegionModel(size: 0x1000)
    bus.add(base: 0xFEBD_1000, length: 0x1000, region)
    let table = try MSIXTable(capability: capability, bars: try PCIBAR.readAll(net, access: space), mapper: BusMapper(bus: bus))
    capability.setControl(enabled: true, functionMasked: true, access: space)
    #expect(space.read16(net, offset: 0x42) & 0xC000 == 0xC000)
    try table.program(vector: 2, address: 0xFEE0_1000, data: 0x4021)
    #expect(region.read(0x20, width: 4) == 0xFEE0_1000 && region.read(0x28, width: 4) == 0x4021)
    #expect(try table.isMasked(vector: 2))
    try table.setMasked(vector: 2, false)
    #expect(try !table.isMasked(vector: 2))
    region.bytes[0x800] = 0x4
    #expect(try table.isPending(vector: 2) && !table.isPending(vector: 1))
    table.maskAll()
    #expect(try table.isMasked(vector: 0) && table.isMasked(vector: 2))
    #expect(throws: PCIError.vectorOutOfRange(index: 3, count: 3)) { try table.program(vector: 3, address: 0, data: 0) }
    capability.setControl(enabled: true, functionMasked: false, access: space)
    #expect(space.read16(net, offset: 0x42) & 0xC000 == 0x8000)

    // A table that does not fit its BAR.
    let big = MSIXCapability(function: net, offset: 0x40, tableSize: 300, tableBAR: 1, tableOffset: 0, pendingBitArrayBAR: 1, pendingBitArrayOffset: 0x800)
    #expect(throws: PCIError.regionOutsideBAR(function: net, bar: 1, offset: 0, length: 4800, barSize: 0x1000)) {
        try MSIXTable(capability: big, bars: try PCIBAR.readAll(net, access: space), mapper: BusMapper(bus: bus))
    }
}

@Test func probeReportDescribesEachFunction() {
    let space = makeMachine()
    let lines = PCIProbeReport.lines(access: space).map { String(decoding: $0, as: UTF8.self) }
    #expect(lines.count == machineAddresses.count)
    #expect(lines[4] == "pci 00:02.0 8086:100e class 02.00.00 e1000 bar0 mem32 0xfeb80000+0x20000 bar1 io 0xc000+0x40")
    #expect(lines[5] == "pci 00:03.0 1af4:1041 class 02.00.00 virtio-net bar1 mem32 0xfebd1000+0x1000 bar4 mem64p 0x800000000+0x4000")
    #expect(lines[6] == "pci 00:04.0 1b36:0001 class 06.04.00 bridge to bus 01")
    #expect(lines[9] == "pci 01:00.0 1af4:1001 class 01.00.00 virtio-blk bar0 io 0xc040+0x40")
}
