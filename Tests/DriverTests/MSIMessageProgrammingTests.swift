// MSI and MSI-X programmed from the interrupt layer's MSIMessage (the values
// a device writes to raise a vector on a local APIC), on the PCI model
// machine of PCITests.
import Testing
@testable import BareMetalKit

@Test func msixEntriesTakeAnMSIMessage() throws {
    let space = makeMachine()
    let net = PCIAddress(bus: 0, device: 3, function: 0)
    let capability = try #require(try MSIXCapability.find(net, access: space))
    let bus = MMIOBus()
    let region = MemoryRegionModel(size: 0x1000)
    bus.add(base: 0xFEBD_1000, length: 0x1000, region)
    let table = try MSIXTable(capability: capability, bars: try PCIBAR.readAll(net, access: space), mapper: BusMapper(bus: bus))
    // Entry 0 for configuration changes, 1 and 2 for the queues, as the
    // virtio attach lays them out.
    for (entry, vector) in [(0, UInt8(0x30)), (1, 0x31), (2, 0x32)] {
        try table.program(vector: entry, message: MSIMessage(vector: vector, destination: 2))
    }
    for entry in 0..<3 {
        #expect(region.read(entry * 16, width: 4) == 0xFEE0_2000)
        #expect(region.read(entry * 16 + 4, width: 4) == 0)
        #expect(region.read(entry * 16 + 8, width: 4) == UInt64(0x30 + entry))
        #expect(try table.isMasked(vector: entry))  // stays masked until unmasked
    }
    #expect(throws: PCIError.vectorOutOfRange(index: 3, count: 3)) {
        try table.program(vector: 3, message: MSIMessage(vector: 0x33))
    }
}

@Test func msiTakesAnMSIMessageAsOneVector() throws {
    let space = makeMachine()
    let blk = PCIAddress(bus: 1, device: 0, function: 0)
    let msi = try #require(try MSICapability.find(blk, access: space))
    try msi.program(message: MSIMessage(vector: 0x47), access: space)
    #expect(space.read32(blk, offset: 0x44) == 0xFEE0_0000)
    #expect(space.read32(blk, offset: 0x48) == 0)
    #expect(space.read16(blk, offset: 0x4C) == 0x47)
    #expect(space.read16(blk, offset: 0x42) & 0x70 == 0)  // one vector
}
