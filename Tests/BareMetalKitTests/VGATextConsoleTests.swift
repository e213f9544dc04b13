// VGATextConsole on an array of cells: drawing, control characters,
// wrapping at the right edge and scrolling at the bottom.
import Testing
@testable import BareMetalKit

final class ArrayCells: TextCellBuffer {
    let columns: Int
    let rows: Int
    var cells: [UInt16]
    init(columns: Int = 80, rows: Int = 25) {
        self.columns = columns
        self.rows = rows
        cells = [UInt16](repeating: 0xFFFF, count: columns * rows)
    }
    func load(cell index: Int) -> UInt16 { cells[index] }
    func store(cell index: Int, _ value: UInt16) { cells[index] = value }

    func line(_ row: Int) -> String {
        let text = cells[(row * columns)..<((row + 1) * columns)].map { Character(UnicodeScalar(UInt8($0 & 0xFF))) }
        return String(text).replacingOccurrences(of: " +$", with: "", options: .regularExpression)
    }
}

@Test func theScreenStartsBlankAndDrawsText() {
    let cells = ArrayCells()
    var screen = VGATextConsole(cells: cells)
    #expect(cells.cells.allSatisfy { $0 == 0x0720 })
    screen.write(contentsOf: Array("hello\r\nworld".utf8))
    #expect(cells.line(0) == "hello")
    #expect(cells.line(1) == "world")
    #expect(cells.cells[0] == 0x0768)  // 'h', light grey on black
    #expect(screen.row == 1 && screen.column == 5)
}

@Test func controlCharactersMoveTheCursor() {
    let cells = ArrayCells()
    var screen = VGATextConsole(cells: cells)
    screen.write(contentsOf: Array("ab\tc".utf8))
    #expect(cells.line(0) == "ab      c")
    screen.write(contentsOf: [0x08, 0x08, 0x58])  // two backspaces, 'X'
    #expect(cells.line(0) == "ab     Xc")
    screen.write(contentsOf: Array("\rZ".utf8))
    #expect(cells.line(0) == "Zb     Xc")
    screen.write(contentsOf: [0x00, 0x1B, 0xC3, 0x7F])
    #expect(cells.line(0) == "Z????  Xc")
    screen.write(0x08)
    for _ in 0..<10 { screen.write(0x08) }
    #expect(screen.column == 0)
}

@Test func longLinesWrapAtTheRightEdge() {
    let cells = ArrayCells(columns: 10, rows: 4)
    var screen = VGATextConsole(cells: cells)
    screen.write(contentsOf: Array("0123456789abc".utf8))
    #expect(cells.line(0) == "0123456789")
    #expect(cells.line(1) == "abc")
    screen.write(contentsOf: Array("\t\tq".utf8))  // tab to 8, then past the edge
    #expect(cells.line(1) == "abc")
    #expect(cells.line(2) == "q")
}

@Test func theBottomLineScrollsUp() {
    let cells = ArrayCells(columns: 8, rows: 3)
    var screen = VGATextConsole(cells: cells)
    for index in 0..<5 { screen.write(contentsOf: Array("line \(index)\n".utf8)) }
    #expect(cells.line(0) == "line 3")
    #expect(cells.line(1) == "line 4")
    #expect(cells.line(2) == "")
    #expect(cells.cells[16..<24].allSatisfy { $0 == 0x0720 })
    #expect(screen.row == 2 && screen.column == 0)
}
