// Toolchain: finds the Swift toolchain's compilers and ld.lld and runs
// external commands, capturing their output for error reports.
import Foundation

/// The result of a finished command.
public struct CommandResult: Sendable {
    public var status: Int32
    public var output: String
}

/// Locations of the tools bake drives.
public struct Toolchain: Sendable {
    public var binDirectory: String
    public var swift: String { binDirectory + "/swift" }
    public var swiftc: String { binDirectory + "/swiftc" }
    public var linker: String { binDirectory + "/ld.lld" }
    /// Embedded Swift libraries for the guest triple.
    public var embeddedLibraryDirectory: String {
        URL(fileURLWithPath: binDirectory).deletingLastPathComponent().appendingPathComponent("lib/swift/embedded/x86_64-unknown-none-elf").path
    }

    /// Finds the toolchain holding `swiftc` on PATH (or SWIFT_TOOLCHAIN_BIN).
    public static func locate(environment: [String: String] = ProcessInfo.processInfo.environment) throws(BakeError) -> Toolchain {
        var candidates: [String] = []
        if let explicit = environment["SWIFT_TOOLCHAIN_BIN"] { candidates.append(explicit) }
        for directory in (environment["PATH"] ?? "").split(separator: ":") {
            let path = String(directory) + "/swiftc"
            if FileManager.default.isExecutableFile(atPath: path) {
                candidates.append(URL(fileURLWithPath: path).resolvingSymlinksInPath().deletingLastPathComponent().path)
            }
        }
        candidates.append("/opt/swift/usr/bin")
        for directory in candidates {
            let toolchain = Toolchain(binDirectory: directory)
            if FileManager.default.isExecutableFile(atPath: toolchain.swiftc) && FileManager.default.isExecutableFile(atPath: toolchain.linker) {
                return toolchain
            }
        }
        throw .toolNotFound("swiftc with ld.lld", hint: "install a Swift 6.3 toolchain and put its bin directory on PATH (or set SWIFT_TOOLCHAIN_BIN)")
    }

    /// The compiler's version line, part of every cache key.
    public func versionString() throws(BakeError) -> String {
        let result = try Self.run(swiftc, ["--version"])
        return result.output.split(separator: "\n").first.map(String.init) ?? result.output
    }

    /// Runs a command to completion, output and errors merged.
    @discardableResult
    public static func run(
        _ executable: String, _ arguments: [String], environment: [String: String]? = nil,
        currentDirectory: String? = nil, requireSuccess: Bool = true
    ) throws(BakeError) -> CommandResult {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let environment { process.environment = environment }
        if let currentDirectory { process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            throw .toolNotFound(executable, hint: error.localizedDescription)
        }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitForExit()
        let output = String(decoding: data, as: UTF8.self)
        let rendered = ([executable] + arguments).joined(separator: " ")
        if requireSuccess && (process.terminationReason != .exit || process.terminationStatus != 0) {
            throw .commandFailed(command: rendered, status: process.terminationStatus, output: output)
        }
        return CommandResult(status: process.terminationStatus, output: output)
    }
}

/// FNV-1a, 64 bit: a fast content fingerprint for build caches (not a
/// security boundary: the cache is the user's own directory).
struct Fingerprint {
    private(set) var value: UInt64 = 0xCBF2_9CE4_8422_2325

    mutating func add<Bytes: Sequence>(_ bytes: Bytes) where Bytes.Element == UInt8 {
        for byte in bytes {
            value ^= UInt64(byte)
            value &*= 0x0000_0100_0000_01B3
        }
        value ^= 0xFF  // separator, so ("ab","c") differs from ("a","bc")
        value &*= 0x0000_0100_0000_01B3
    }

    mutating func add(_ string: String) { add(Array(string.utf8)) }

    /// Adds every regular file below `directory`, in path order.
    mutating func addTree(_ directory: String) {
        guard let enumerator = FileManager.default.enumerator(atPath: directory) else { return }
        let files = (enumerator.allObjects as? [String] ?? []).sorted()
        for relative in files {
            let path = directory + "/" + relative
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue else { continue }
            add(relative)
            if let data = FileManager.default.contents(atPath: path) { add([UInt8](data)) }
        }
    }

    var hex: String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}
