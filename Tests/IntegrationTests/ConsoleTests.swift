// The console on a VGA text screen: a pc guest with QEMU's standard VGA
// (SeaBIOS runs its VGA BIOS, which leaves 80×25 colour text mode) draws
// what it prints; the test reads the text memory through QEMU's monitor.
import Foundation
import Testing

@Suite struct ConsoleTests {
    /// Reads `cells` text cells from 0xB8000 through the human monitor.
    static func readScreen(monitor socket: String, cells: Int) throws -> [UInt16] {
        let script = """
            import socket, sys, time
            s = socket.socket(socket.AF_UNIX)
            s.connect(sys.argv[1])
            s.settimeout(10)
            def drain():
                data = b""
                while not data.endswith(b"(qemu) "):
                    data += s.recv(65536)
                return data
            drain()
            s.sendall(("xp /%shx 0xb8000\\n" % sys.argv[2]).encode())
            sys.stdout.write(drain().decode(errors="replace"))
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, socket, String(cells)]
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        var words: [UInt16] = []
        // Lines end in "\r\n" (one Character in Swift), hence isNewline.
        for line in String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline) where line.hasPrefix("00000000000b8") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            words += line[line.index(after: colon)...].split(separator: " ").compactMap { UInt16($0.dropFirst(2), radix: 16) }
        }
        return words
    }

    @Test func whatTheGuestPrintsAlsoAppearsOnAVGATextScreen() throws {
        let image = try Integration.spin.get()
        let tag = UUID().uuidString.prefix(8)
        let socket = "/tmp/rumprun-vga-\(tag).sock"
        let log = Integration.imageDirectory + "/vga-\(tag).log"
        defer { try? FileManager.default.removeItem(atPath: socket) }
        let run = try Integration.run([
            "run", "qemu", "--machine", "pc", "--console-log", log,
            "-g", "-vga std -monitor unix:\(socket),server,nowait", image,
        ])
        #expect(run.status == 0, "stderr: \(run.stderr)")
        let identifier = run.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { _ = try? Integration.run(["stop", identifier]) }
        // The serial line says the guest has printed. Each byte goes to the
        // serial port first and then to the screen, so seeing the text alone
        // left the last letter's screen write still to come (a host stall of
        // QEMU's vCPU thread right there made row 0 read "spinning foreve");
        // the line end, sent after it, means the screen holds the line.
        var waited = 0
        while waited < 600, !((try? String(contentsOfFile: log, encoding: .utf8))?.contains("spinning forever\r\n") ?? false) {
            usleep(100_000)
            waited += 1
        }
        try #require(waited < 600, "no console output within 60 s")
        let cells = try Self.readScreen(monitor: socket, cells: 160)
        try #require(cells.count == 160, "monitor answer: \(cells.count) cells")
        let firstRow = String(decoding: cells[0..<80].map { UInt8($0 & 0xFF) }, as: UTF8.self)
        #expect(firstRow.hasPrefix("spinning forever   "), "row 0: \(firstRow)")
        #expect(cells[0..<80].allSatisfy { $0 >> 8 == 0x07 }, "attributes")
        #expect(cells[80..<160].allSatisfy { $0 == 0x0720 }, "row 1 is blank")
    }
}
