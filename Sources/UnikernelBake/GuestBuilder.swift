// GuestBuilder: compiles the platform's guest modules (once per change,
// through SwiftPM with GUEST=1) and an application's Swift sources (once per
// change, with swiftc) for x86_64-unknown-none-elf as Embedded Swift.
import Foundation

/// Guest compilation with content-addressed caching.
public struct GuestBuilder: Sendable {
    public static let triple = "x86_64-unknown-none-elf"

    public let sourceRoot: String
    public let scratchDirectory: String
    public let toolchain: Toolchain

    /// Flags every guest Swift compilation shares with the platform build.
    public static let swiftFlags = ["-enable-experimental-feature", "Embedded", "-wmo", "-Osize", "-Xcc", "-ffreestanding", "-Xcc", "-mno-red-zone"]

    public init(sourceRoot: String, scratchDirectory: String? = nil, toolchain: Toolchain) throws(BakeError) {
        guard FileManager.default.fileExists(atPath: sourceRoot + "/Package.swift"),
            FileManager.default.fileExists(atPath: sourceRoot + "/Sources/BareMetalKit")
        else { throw .sourceRootNotFound(sourceRoot) }
        self.sourceRoot = sourceRoot
        self.scratchDirectory = scratchDirectory ?? sourceRoot + "/.build-guest"
        self.toolchain = toolchain
    }

    var productDirectory: String { scratchDirectory + "/\(Self.triple)/release" }
    var moduleDirectory: String { productDirectory + "/Modules" }
    var cacheDirectory: String { scratchDirectory + "/bake-cache" }

    /// What the platform build depends on.
    func platformFingerprint(modules: [String]) throws(BakeError) -> String {
        var fingerprint = Fingerprint()
        fingerprint.add(try toolchain.versionString())
        fingerprint.add(Self.swiftFlags.joined(separator: " "))
        if let manifest = FileManager.default.contents(atPath: sourceRoot + "/Package.swift") { fingerprint.add([UInt8](manifest)) }
        for module in modules {
            fingerprint.add(module)
            fingerprint.addTree(sourceRoot + "/Sources/" + module)
        }
        return fingerprint.hex
    }

    /// The object files of the platform modules; builds them when their
    /// sources changed since the last build. Returns (objects, wasCached).
    public func buildPlatform(modules: [String]) throws(BakeError) -> (objects: [String], cached: Bool) {
        let stamp = scratchDirectory + "/platform-\(modules.joined(separator: "+")).stamp"
        let fingerprint = try platformFingerprint(modules: modules)
        let previous = (try? String(contentsOfFile: stamp, encoding: .utf8)) ?? ""
        if previous == fingerprint, isBuilt(modules), let objects = try? objectFiles(modules: modules), !objects.isEmpty {
            return (objects, true)
        }
        var environment = ProcessInfo.processInfo.environment
        environment["GUEST"] = "1"
        let arguments = [
            "build", "--triple", Self.triple, "-c", "release", "--scratch-path", scratchDirectory,
            "-Xswiftc", "-wmo", "-Xcc", "-ffreestanding", "-Xcc", "-mno-red-zone",
        ]
        // SwiftPM builds only the last of several --target options, so each
        // module gets its own (cheap when already built) invocation.
        for module in modules {
            try Toolchain.run(toolchain.swift, arguments + ["--target", module], environment: environment, currentDirectory: sourceRoot)
        }
        guard isBuilt(modules) else {
            throw .inputNotFound(moduleDirectory + " (a platform module is missing after the build)")
        }
        let objects = try objectFiles(modules: modules)
        do {
            try FileManager.default.createDirectory(atPath: scratchDirectory, withIntermediateDirectories: true)
            try fingerprint.write(toFile: stamp, atomically: true, encoding: .utf8)
        } catch {
            throw .outputNotWritable(path: stamp, detail: error.localizedDescription)
        }
        return (objects, false)
    }

    /// Whether every Swift module of the list has its interface in the
    /// module directory (an application cannot import it otherwise).
    func isBuilt(_ modules: [String]) -> Bool {
        modules.allSatisfy { module in
            let files = FileManager.default.enumerator(atPath: sourceRoot + "/Sources/" + module)?.allObjects as? [String] ?? []
            let isSwift = files.contains { $0.hasSuffix(".swift") }
            return !isSwift || FileManager.default.fileExists(atPath: moduleDirectory + "/\(module).swiftmodule")
        }
    }

    func objectFiles(modules: [String]) throws(BakeError) -> [String] {
        var objects: [String] = []
        for module in modules {
            let directory = productDirectory + "/\(module).build"
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else {
                throw .inputNotFound(directory)
            }
            objects += names.filter { $0.hasSuffix(".o") }.sorted().map { directory + "/" + $0 }
        }
        return objects
    }

    /// Compiles the `.swift` files under `directory` into one object; reuses
    /// the cached object when sources and platform are unchanged.
    public func compileApplication(directory: String, platformFingerprint: String) throws(BakeError) -> (object: String, cached: Bool) {
        guard let enumerator = FileManager.default.enumerator(atPath: directory) else { throw .inputNotFound(directory) }
        let sources = (enumerator.allObjects as? [String] ?? []).filter { $0.hasSuffix(".swift") }.sorted().map { directory + "/" + $0 }
        guard !sources.isEmpty else { throw .emptyApplication(path: directory) }
        let moduleName = Self.moduleName(for: directory)
        var fingerprint = Fingerprint()
        fingerprint.add(platformFingerprint)
        fingerprint.add(moduleName)
        for source in sources {
            fingerprint.add(URL(fileURLWithPath: source).lastPathComponent)
            if let data = FileManager.default.contents(atPath: source) { fingerprint.add([UInt8](data)) }
        }
        let object = cacheDirectory + "/\(moduleName)-\(fingerprint.hex).o"
        if FileManager.default.fileExists(atPath: object) { return (object, true) }
        do {
            try FileManager.default.createDirectory(atPath: cacheDirectory, withIntermediateDirectories: true)
        } catch {
            throw .outputNotWritable(path: cacheDirectory, detail: error.localizedDescription)
        }
        // Two bakes of the same application at once (parallel tests, two
        // shells) each compile into their own partial file; rename(2)
        // replaces atomically, so the cache never holds a torn object and
        // the later bake does not fail because the earlier one finished.
        let partial = object + ".partial-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: partial) }
        var arguments = ["-target", Self.triple] + Self.swiftFlags
        arguments += ["-module-name", moduleName, "-I", moduleDirectory, "-I", sourceRoot + "/Sources/CPUPrimitives/include"]
        arguments += ["-c"] + sources + ["-o", partial]
        try Toolchain.run(toolchain.swiftc, arguments)
        guard rename(partial, object) == 0 else {
            throw .outputNotWritable(path: object, detail: String(cString: strerror(errno)))
        }
        return (object, false)
    }

    /// A Swift module name from a directory name ("udp-echo" → "udp_echo").
    static func moduleName(for directory: String) -> String {
        let base = URL(fileURLWithPath: directory).standardizedFileURL.lastPathComponent
        var name = String(base.map { $0.isLetter || $0.isNumber || $0 == "_" ? $0 : "_" })
        if name.first?.isNumber ?? true { name = "app_" + name }
        return name
    }
}
