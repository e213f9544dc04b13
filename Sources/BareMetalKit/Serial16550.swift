// Serial16550: the PC serial port (National Semiconductor PC16550D data
// sheet; register offsets from the port base), used as the console.

/// A 16550-compatible UART at an I/O port base (COM1 is 0x3F8).
public struct Serial16550<Ports: PortIO> {
    /// 0x0 Transmit holding / receive buffer (DLAB=0), divisor low (DLAB=1)
    static var transmitHolding: UInt16 { 0 }
    /// 0x1 Interrupt enable (DLAB=0), divisor high (DLAB=1)
    static var interruptEnable: UInt16 { 1 }
    /// 0x2 FIFO control
    static var fifoControl: UInt16 { 2 }
    /// 0x3 Line control
    static var lineControl: UInt16 { 3 }
    /// 0x4 Modem control
    static var modemControl: UInt16 { 4 }
    /// 0x5 Line status
    static var lineStatus: UInt16 { 5 }
    /// Line status bit 5: transmit holding register empty.
    static var transmitHoldingEmpty: UInt8 { 0x20 }

    public let base: UInt16
    public var ports: Ports

    public init(base: UInt16 = 0x3F8, ports: Ports) {
        self.base = base
        self.ports = ports
    }

    /// Programs 115200 baud, 8N1, FIFOs on, interrupts off.
    public mutating func configure() {
        ports.write8(base + Self.interruptEnable, 0x00)
        ports.write8(base + Self.lineControl, 0x80)  // DLAB on
        ports.write8(base + Self.transmitHolding, 0x01)  // divisor 1: 115200 baud
        ports.write8(base + Self.interruptEnable, 0x00)
        ports.write8(base + Self.lineControl, 0x03)  // 8 bits, no parity, 1 stop
        ports.write8(base + Self.fifoControl, 0xC7)  // enable and clear FIFOs
        ports.write8(base + Self.modemControl, 0x03)  // DTR, RTS
    }

    /// Writes one byte, waiting (bounded) for room in the transmitter.
    /// A missing UART reads as 0xFF; the bound keeps that from hanging.
    public mutating func write(_ byte: UInt8) {
        var spins = 0
        while ports.read8(base + Self.lineStatus) & Self.transmitHoldingEmpty == 0 && spins < 100_000 {
            spins += 1
        }
        ports.write8(base + Self.transmitHolding, byte)
    }

    /// Writes bytes, turning "\n" into "\r\n" as terminals expect.
    public mutating func write<Bytes: Sequence>(contentsOf bytes: Bytes) where Bytes.Element == UInt8 {
        for byte in bytes {
            if byte == 0x0A { write(0x0D) }
            write(byte)
        }
    }
}
