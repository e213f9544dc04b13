// VGATextConsole: the console on a VGA text screen (80×25 cells of a
// character byte and an attribute byte, colour text memory at 0xB8000; IBM
// VGA Technical Reference, "Alphanumeric modes"). It mirrors what goes to
// the serial port: printable ASCII is drawn, "\r" returns to the first
// column, "\n" starts the next line, "\t" advances to the next multiple of
// eight, backspace moves left; the screen scrolls up at the bottom. Other
// bytes are drawn as '?'. Generic over the cell memory so host tests run it
// on an array.

/// The screen's cell memory: `columns × rows` 16-bit cells (character in
/// the low byte, attribute in the high byte), row by row.
public protocol TextCellBuffer {
    var columns: Int { get }
    var rows: Int { get }
    func load(cell index: Int) -> UInt16
    func store(cell index: Int, _ value: UInt16)
}

public struct VGATextConsole<Cells: TextCellBuffer> {
    public let cells: Cells
    /// Light grey on black.
    public var attribute: UInt8 = 0x07
    public private(set) var row = 0
    public private(set) var column = 0

    /// Takes over the screen from the top, cleared.
    public init(cells: Cells) {
        self.cells = cells
        clear()
    }

    public func clear() {
        for index in 0..<(cells.columns * cells.rows) { cells.store(cell: index, blank) }
    }

    var blank: UInt16 { UInt16(attribute) << 8 | 0x20 }

    /// The character byte at a cell (tests and diagnostics).
    public func character(row: Int, column: Int) -> UInt8 {
        UInt8(truncatingIfNeeded: cells.load(cell: row * cells.columns + column))
    }

    public mutating func write(_ byte: UInt8) {
        switch byte {
        case 0x0D:
            column = 0
        case 0x0A:
            newLine()
        case 0x09:
            let next = (column / 8 + 1) * 8
            while column < next && column < cells.columns { put(0x20) }
            if column >= cells.columns { newLine() }
        case 0x08:
            if column > 0 { column -= 1 }
        default:
            put(byte >= 0x20 && byte < 0x7F ? byte : 0x3F)
            if column >= cells.columns { newLine() }
        }
    }

    public mutating func write<Bytes: Sequence>(contentsOf bytes: Bytes) where Bytes.Element == UInt8 {
        for byte in bytes { write(byte) }
    }

    mutating func put(_ character: UInt8) {
        cells.store(cell: row * cells.columns + column, UInt16(attribute) << 8 | UInt16(character))
        column += 1
    }

    mutating func newLine() {
        column = 0
        if row + 1 < cells.rows {
            row += 1
            return
        }
        let width = cells.columns
        for index in 0..<(width * (cells.rows - 1)) { cells.store(cell: index, cells.load(cell: index + width)) }
        for index in (width * (cells.rows - 1))..<(width * cells.rows) { cells.store(cell: index, blank) }
    }
}

#if hasFeature(Embedded)
import CPUPrimitives

/// Colour text memory at 0xB8000 (identity-mapped, uncached).
public struct VGATextMemory: TextCellBuffer {
    public var columns: Int { 80 }
    public var rows: Int { 25 }
    public func load(cell index: Int) -> UInt16 { cpu_load16(UInt(0xB8000 + 2 * index)) }
    public func store(cell index: Int, _ value: UInt16) { cpu_store16(UInt(0xB8000 + 2 * index), value) }

    /// Whether the BIOS left an 80×25 colour text mode (BIOS data area:
    /// video mode 3 at 0x449, CRTC base 0x3D4 at 0x463). Without a VGA BIOS
    /// (no VGA device, PVH or microvm boots) these read zero. Needs page 0
    /// mapped: call before the kernel page tables go live.
    public static func isPresent() -> Bool {
        cpu_load8(0x449) & 0x7F == 3 && cpu_load16(0x463) == 0x3D4
    }

    /// Hides the hardware cursor (CRTC cursor start register, bit 5).
    public static func hideCursor() {
        cpu_outb(0x3D4, 0x0A)
        cpu_outb(0x3D5, 0x20)
    }
}
#endif
