// The 16550 console against a UART model, and the debug-exit convention.
import Testing

@testable import BareMetalKit

/// A 16550 model: records register writes, reports the transmitter empty
/// only every other poll so the driver's wait loop is exercised.
struct UARTModel: PortIO {
    var writes: [(UInt16, UInt8)] = []
    var transmitted: [UInt8] = []
    var polls = 0
    var present = true

    mutating func read8(_ port: UInt16) -> UInt8 {
        guard present else { return 0xFF }
        if port == 0x3FD {
            polls += 1
            return polls % 2 == 0 ? 0x20 : 0x00
        }
        return 0
    }

    mutating func write8(_ port: UInt16, _ value: UInt8) {
        writes.append((port, value))
        if port == 0x3F8 && writes.contains(where: { $0.0 == 0x3FB && $0.1 == 0x03 }) { transmitted.append(value) }
    }

    mutating func write32(_ port: UInt16, _ value: UInt32) {}
}

@Test func serialConsoleProgramsTheLineAndTranslatesNewlines() {
    var serial = Serial16550(ports: UARTModel())
    serial.configure()
    // DLAB set, divisor 1 (115200 baud), then 8N1 with DLAB cleared.
    let writes = serial.ports.writes.map { [$0.0, UInt16($0.1)] }
    #expect(writes.prefix(5) == [[0x3F9, 0], [0x3FB, 0x80], [0x3F8, 1], [0x3F9, 0], [0x3FB, 3]])
    serial.write(contentsOf: Array("a\nb".utf8))
    #expect(serial.ports.transmitted == [0x61, 0x0D, 0x0A, 0x62])
    #expect(serial.ports.polls >= 8)
}

@Test func missingUARTDoesNotHang() {
    var model = UARTModel()
    model.present = false
    var serial = Serial16550(ports: model)
    serial.write(0x41)  // 0xFF reads as "transmitter empty": returns at once
    #expect(serial.ports.writes.count == 1)
}

@Test func exitValuesRoundTripThroughQEMUStatus() {
    for status: Int32 in [0, 1, 7, 119] {
        let qemu = Int32(GuestExit.portValue(forStatus: status)) << 1 | 1
        #expect(GuestExit.outcome(qemuStatus: qemu) == .exited(status: status))
    }
    #expect(GuestExit.portValue(forStatus: 200) == GuestExit.portValue(forStatus: 1))
    #expect(GuestExit.outcome(qemuStatus: Int32(GuestExit.panicValue) << 1 | 1) == .panicked)
    #expect(GuestExit.outcome(qemuStatus: Int32(GuestExit.exceptionValue) << 1 | 1) == .exception)
    // QEMU's own error status and a clean QEMU exit are not guest statuses.
    #expect(GuestExit.outcome(qemuStatus: 1) == .noGuestStatus(qemuStatus: 1))
    #expect(GuestExit.outcome(qemuStatus: 0) == .noGuestStatus(qemuStatus: 0))
}
