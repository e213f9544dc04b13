// e1000: the 82540EM driver against a register-level model (8254x SDM
// §13 registers, §3.2/§3.3 descriptors), including descriptors with error bits.
import DeviceInterfaces
import Testing

@testable import BareMetalKit

/// An 82540EM: registers with the side effects the driver relies on, and
/// receive/transmit DMA through the test arena.
final class E1000Model: MMIOHandler {
    let arena: DMAArena
    var registers: [Int: UInt32] = [:]
    var eeprom: [UInt16] = [0x5452, 0x3400, 0x5612]  // 52:54:00:34:12:56
    var addressPreloaded = false
    var transmitted: [[UInt8]] = []
    var violations: [String] = []
    var resetReadsLeft = 0
    var resets = 0
    var overruns = 0
    /// Reads of STATUS (each one an exit to the hypervisor on a real machine).
    var statusReads = 0

    init(arena: DMAArena) {
        self.arena = arena
        registers[0x0008] = 0x2 | 0x1  // link up, full duplex
    }

    func read(_ offset: Int, width: Int) -> UInt64 {
        if width != 4 { violations.append("non-32-bit access") }
        switch offset {
        case 0x0000:
            if resetReadsLeft > 0 {
                resetReadsLeft -= 1
                if resetReadsLeft == 0 { registers[0] = registers[0, default: 0] & ~(1 << 26) }
            }
        case 0x0008:
            statusReads += 1
        case 0x00C0:
            let value = registers[0xC0, default: 0]
            registers[0xC0] = 0
            return UInt64(value)
        default: break
        }
        return UInt64(registers[offset, default: 0])
    }

    func write(_ offset: Int, width: Int, _ value: UInt64) {
        let value = UInt32(truncatingIfNeeded: value)
        switch offset {
        case 0x0000:
            if value & 1 << 26 != 0 {
                resets += 1
                let link = registers[0x0008, default: 0]
                registers = [0x0008: link]
                if addressPreloaded {
                    registers[0x5400] = UInt32(eeprom[0]) | UInt32(eeprom[1]) << 16
                    registers[0x5404] = UInt32(eeprom[2]) | 1 << 31
                }
                resetReadsLeft = 3
                registers[0] = value
                return
            }
            registers[0] = value
        case 0x0014:
            if value & 1 != 0 {
                let word = Int((value >> 8) & 0xFF)
                registers[0x14] = (word < eeprom.count ? UInt32(eeprom[word]) << 16 : 0xFFFF_0000) | 1 << 4 | (value & 0xFF00)
            }
        case 0x00C8: registers[0xC0, default: 0] |= value
        case 0x00D0: registers[0xD0, default: 0] |= value
        case 0x00D8: registers[0xD0, default: 0] &= ~value
        case 0x3818:
            registers[0x3818] = value
            transmit()
        default:
            registers[offset] = value
        }
    }

    var ringSize: Int { Int(registers[0x2808, default: 0]) / 16 }
    func base(_ low: Int) -> UInt64 { UInt64(registers[low, default: 0]) | UInt64(registers[low + 4, default: 0]) << 32 }

    func transmit() {
        let size = Int(registers[0x3808, default: 0]) / 16
        var head = Int(registers[0x3810, default: 0])
        var frame: [UInt8] = []
        while head != Int(registers[0x3818, default: 0]) {
            guard let descriptor = arena.pointer(physical: base(0x3800) + UInt64(head * 16), length: 16) else {
                violations.append("transmit ring outside DMA memory")
                return
            }
            let address = descriptor.loadUnaligned(as: UInt64.self)
            let length = Int(descriptor.loadUnaligned(fromByteOffset: 8, as: UInt16.self))
            let command = descriptor.load(fromByteOffset: 11, as: UInt8.self)
            guard let data = arena.pointer(physical: address, length: length) else {
                violations.append("transmit buffer outside DMA memory")
                return
            }
            frame += UnsafeRawBufferPointer(start: data, count: length)
            if command & 1 != 0 {
                transmitted.append(frame)
                frame = []
            }
            if command & 8 != 0 { descriptor.storeBytes(of: 1, toByteOffset: 12, as: UInt8.self) }
            head = (head + 1) % size
        }
        registers[0x3810] = UInt32(head)
        registers[0xC0, default: 0] |= 1 | 2
    }

    /// Receives a frame into the next free descriptor (§3.2): status DD|EOP,
    /// `errors` as given; `reportedLength` overrides the written length.
    @discardableResult
    func receive(_ frame: [UInt8], errors: UInt8 = 0, endOfPacket: Bool = true, reportedLength: Int? = nil) -> Bool {
        guard registers[0x0100, default: 0] & 2 != 0 else { return false }
        let head = Int(registers[0x2810, default: 0])
        guard head != Int(registers[0x2818, default: 0]) else {
            overruns += 1
            registers[0xC0, default: 0] |= 1 << 6
            return false
        }
        guard let descriptor = arena.pointer(physical: base(0x2800) + UInt64(head * 16), length: 16),
            let buffer = arena.pointer(physical: descriptor.loadUnaligned(as: UInt64.self), length: 2048)
        else {
            violations.append("receive ring outside DMA memory")
            return false
        }
        buffer.copyMemory(from: frame, byteCount: min(frame.count, 2048))
        descriptor.storeBytes(of: UInt16(reportedLength ?? frame.count), toByteOffset: 8, as: UInt16.self)
        descriptor.storeBytes(of: 1 | (endOfPacket ? 2 : 0), toByteOffset: 12, as: UInt8.self)
        descriptor.storeBytes(of: errors, toByteOffset: 13, as: UInt8.self)
        registers[0x2810] = UInt32((head + 1) % ringSize)
        registers[0xC0, default: 0] |= 1 << 7
        return true
    }

    func setLink(up: Bool) {
        registers[0x0008] = up ? 0x3 : 0x1
        registers[0xC0, default: 0] |= 1 << 2
    }
}

final class E1000Rig {
    let arena = DMAArena()
    let bus = MMIOBus()
    let model: E1000Model
    let space = PCIConfigurationModel()
    init() {
        model = E1000Model(arena: arena)
        bus.add(base: 0xFEB8_0000, length: 0x20000, model)
        let function = PCIFunctionModel(vendor: 0x8086, device: 0x100E, classCode: 0x02_00_00)
        function.setBAR(0, .memory32, size: 0x20000, address: 0xFEB8_0000)
        function.setBAR(1, .io32, size: 0x40, address: 0xC000)
        space.add(0, 2, 0, function)
    }
    func driver(ringSize: Int = 16) throws -> E1000<BusWindow, TestDMA> {
        try E1000(function: PCIAddress(bus: 0, device: 2, function: 0), access: space, mapper: BusMapper(bus: bus), dma: TestDMA(arena: arena), ringSize: ringSize)
    }
}

@Test func e1000ResetsAndReadsTheAddressFromTheEEPROMOrRAL() throws {
    let rig = E1000Rig()
    let nic = try rig.driver()
    #expect(rig.model.resets == 1 && rig.model.resetReadsLeft == 0)
    #expect(nic.macAddress == MACAddress(0x52, 0x54, 0x00, 0x34, 0x12, 0x56))
    #expect(rig.model.registers[0x5404]! == 0x8000_5612 && rig.model.registers[0x5400]! == 0x3400_5452)
    #expect(rig.model.registers[0x0100]! & 0x0400_8002 == 0x0400_8002)  // EN, BAM, SECRC
    #expect(rig.model.registers[0x2818] == 15 && rig.model.registers[0x2808] == 256)
    #expect(rig.model.registers[0x00D0, default: 0] == 0)  // polled: all masked
    #expect(rig.space.read16(PCIAddress(bus: 0, device: 2, function: 0), offset: 4) & 0x6 == 0x6)

    let preloaded = E1000Rig()
    preloaded.model.addressPreloaded = true
    preloaded.model.eeprom = [0x0102, 0x0304, 0x0506]
    #expect(try preloaded.driver().macAddress == MACAddress(0x02, 0x01, 0x04, 0x03, 0x06, 0x05))
    #expect(rig.model.violations.isEmpty && rig.bus.unmappedAccesses.isEmpty)
}

@Test func e1000SendsAndReceivesAndKeepsTheRingsTurning() throws {
    let rig = E1000Rig()
    var nic = try rig.driver(ringSize: 8)
    var sent: [[UInt8]] = []
    var received: [[UInt8]] = []
    // Several laps of both rings.
    for (index, size) in stride(from: 60, through: 1514, by: 61).enumerated() {
        let outgoing = frame(size: size, seed: UInt64(index))
        try outgoing.withUnsafeBytes { try nic.send(frame: $0) }
        sent.append(outgoing)
        #expect(rig.model.receive(frame(size: size, seed: UInt64(index) + 900)))
        _ = try nic.receive(limit: 4) { received.append(Array($0)) }
    }
    #expect(rig.model.transmitted == sent)
    #expect(received == sent.indices.map { frame(size: sent[$0].count, seed: UInt64($0) + 900) })
    #expect(nic.statistics.framesReceived == sent.count && nic.statistics.framesSent == sent.count)
    #expect(nic.interruptCauses().contains(.receiveTimer))
    #expect(rig.model.violations.isEmpty)
}

@Test func e1000DropsDescriptorsWithErrorBitsAndBogusLengths() throws {
    let rig = E1000Rig()
    var nic = try rig.driver()
    let good = frame(size: 200, seed: 1)
    rig.model.receive(good, errors: 0x01)  // CRC error
    rig.model.receive(good, errors: 0x80)  // RX data error
    rig.model.receive(good, reportedLength: 4000)  // longer than the buffer
    rig.model.receive(good, endOfPacket: false)  // a frame spanning buffers
    rig.model.receive(good)  // ...its end
    rig.model.receive(good, errors: 0x20)  // TCP checksum error only: not a frame error
    var received: [[UInt8]] = []
    #expect(try nic.receive(limit: 10) { received.append(Array($0)) } == 1)
    #expect(received == [good])
    #expect(nic.statistics.receiveErrors == 4)
    // Every descriptor went back to the hardware.
    for seed in 0..<15 { #expect(rig.model.receive(frame(size: 100, seed: UInt64(seed)))) }
    #expect(try nic.receive(limit: 100) { _ in } == 15)
}

/// `send` reads STATUS once per `linkCheckInterval` frames, not per frame;
/// a link that goes down is noticed at once after ICR reports the change,
/// and within that many sends when nobody reads ICR (polled mode).
@Test func e1000SendReadsTheLinkStatusOnlyNowAndThen() throws {
    let rig = E1000Rig()
    var nic = try rig.driver(ringSize: 16)
    let interval = E1000<BusWindow, TestDMA>.linkCheckInterval
    let outgoing = frame(size: 64, seed: 3)
    let readsBefore = rig.model.statusReads
    for _ in 0..<(10 * interval) {
        try outgoing.withUnsafeBytes { try nic.send(frame: $0) }
        nic.reclaimTransmitted()
    }
    #expect(rig.model.statusReads - readsBefore <= 10)
    rig.model.setLink(up: false)
    var sentWhileDown = 0
    while sentWhileDown <= interval {
        do {
            try outgoing.withUnsafeBytes { try nic.send(frame: $0) }
            nic.reclaimTransmitted()
            sentWhileDown += 1
        } catch NetworkInterfaceError.linkDown {
            break
        }
    }
    #expect(sentWhileDown < interval, "the link going down was not noticed within \(interval) sends")
}

@Test func e1000ReportsOverrunsFullRingsAndLinkChanges() throws {
    let rig = E1000Rig()
    var nic = try rig.driver(ringSize: 8)
    for seed in 0..<7 { #expect(rig.model.receive(frame(size: 60, seed: UInt64(seed)))) }
    #expect(!rig.model.receive(frame(size: 60, seed: 9)))
    #expect(nic.interruptCauses().contains(.receiveOverrun))
    #expect(nic.statistics.receiveDropped == 1)
    #expect(try nic.receive(limit: 3) { _ in } == 3)
    #expect(try nic.receive(limit: 100) { _ in } == 4)

    rig.model.setLink(up: false)
    #expect(nic.interruptCauses() == [.linkStatusChange])
    #expect(!nic.isLinkUp && nic.linkChanges == 1)
    #expect(throws: NetworkInterfaceError.linkDown) { try frame(size: 60, seed: 0).withUnsafeBytes { try nic.send(frame: $0) } }
    rig.model.setLink(up: true)
    #expect(nic.interruptCauses().contains(.linkStatusChange) && nic.isLinkUp)

    // A transmit ring whose descriptors are never written back fills up.
    rig.model.registers[0x0100] = 0
    let stalled = E1000Rig()
    var stuck = try stalled.driver(ringSize: 8)
    stalled.bus.regions.removeAll()
    stalled.bus.add(base: 0xFEB8_0000, length: 0x20000, StatusOnly())
    for _ in 0..<7 { try frame(size: 60, seed: 0).withUnsafeBytes { try stuck.send(frame: $0) } }
    #expect(throws: NetworkInterfaceError.transmitQueueFull) { try frame(size: 60, seed: 0).withUnsafeBytes { try stuck.send(frame: $0) } }
    nic.enableInterrupts()
    #expect(rig.model.registers[0x00D0]! == 0xD5)
}

/// A controller that reports link up and ignores everything else.
final class StatusOnly: MMIOHandler {
    func read(_ offset: Int, width: Int) -> UInt64 { offset == 0x0008 ? 0x3 : 0 }
    func write(_ offset: Int, width: Int, _ value: UInt64) {}
}

/// In a transmit batch the e1000 driver writes TDT once, at the end; a
/// ring that fills inside a batch gets its tail written before the driver
/// reports it full.
@Test func e1000TransmitBatchesWriteTheTailOnce() throws {
    let rig = E1000Rig()
    var nic = try rig.driver(ringSize: 8)
    let outgoing = frame(size: 64, seed: 5)
    nic.beginTransmitBatch()
    for _ in 0..<5 { try outgoing.withUnsafeBytes { try nic.send(frame: $0) } }
    #expect(rig.model.transmitted.isEmpty)
    nic.endTransmitBatch()
    #expect(rig.model.transmitted.count == 5)
    nic.reclaimTransmitted()

    // Inside a batch the controller has not seen the new descriptors, so
    // none finishes and the ring fills; TDH moves once the tail is written.
    let headBefore = rig.model.registers[0x3810, default: 0]
    nic.beginTransmitBatch()
    var queued = 0
    while queued < 8 {
        do {
            try outgoing.withUnsafeBytes { try nic.send(frame: $0) }
            queued += 1
        } catch NetworkInterfaceError.transmitQueueFull {
            break
        }
    }
    #expect(queued == 7)  // one descriptor always stays empty
    #expect(rig.model.transmitted.count == 12, "the tail of a full batch was not written")
    #expect(rig.model.registers[0x3810, default: 0] != headBefore)
    nic.endTransmitBatch()
    #expect(rig.model.transmitted.count == 12)
}
