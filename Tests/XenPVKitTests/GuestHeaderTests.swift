// Guest-world include check: CXen's headers must compile for the guest
// triple with no system include directory at all, so no glibc header can
// slip in (the libxen-dev headers are reached through include/xen).
import Foundation
import Testing

@Suite struct GuestHeaderTests {
    static let package = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    func run(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["clang"] + arguments
        process.currentDirectoryURL = Self.package
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    @Test func cxenCompilesFreestandingWithoutSystemHeaders() throws {
        let result = try run([
            "-target", "x86_64-unknown-none-elf", "-ffreestanding", "-Xclang", "-nostdsysteminc",
            "-I", "Sources/CXen/include", "-M", "Sources/CXen/abi.c",
        ])
        #expect(result.status == 0, "\(result.output)")
        let dependencies = result.output.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\\" })
            .map(String.init).filter { $0.hasSuffix(".h") }
        #expect(dependencies.contains { $0.hasSuffix("include/xen/io/xs_wire.h") })
        let foreign = dependencies.filter { !$0.hasPrefix("Sources/CXen/include/") && !$0.contains("/lib/clang/") }
        #expect(foreign.isEmpty, "headers from outside CXen and the compiler: \(foreign)")
    }
}
