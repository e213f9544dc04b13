// Baker: the whole bake, step by step: platform build, application build,
// link, image check, format writing. The `bake` tool is a thin shell on it.
import Foundation

/// What to bake.
public struct BakeRequest: Sendable {
    public var configuration: String
    public var output: String
    /// A directory of Swift sources and/or x86-64 `.o` / `.a` files.
    public var inputs: [String]
    /// nil: the configuration's default format.
    public var format: ImageFormat?
    /// Keep the symbol table in a PVH image (for gdb and llvm-symbolizer);
    /// by default it is stripped, since no loader reads it.
    public var keepSymbols: Bool

    public init(configuration: String, output: String, inputs: [String], format: ImageFormat? = nil, keepSymbols: Bool = false) {
        self.configuration = configuration
        self.output = output
        self.inputs = inputs
        self.format = format
        self.keepSymbols = keepSymbols
    }
}

/// What a bake produced.
public struct BakeResult: Sendable {
    public var output: String
    public var format: ImageFormat
    public var report: ImageReport
    public var platformWasCached: Bool
    public var applicationWasCached: Bool
}

public struct Baker: Sendable {
    public let builder: GuestBuilder
    public let progress: @Sendable (String) -> Void

    /// The default source root: SWIFT_RUMPRUN_ROOT, else the checkout this
    /// library was built from.
    public static func defaultSourceRoot(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let root = environment["SWIFT_RUMPRUN_ROOT"] { return root }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }

    public init(sourceRoot: String? = nil, scratchDirectory: String? = nil, progress: @escaping @Sendable (String) -> Void = { _ in }) throws(BakeError) {
        let toolchain = try Toolchain.locate()
        builder = try GuestBuilder(sourceRoot: sourceRoot ?? Self.defaultSourceRoot(), scratchDirectory: scratchDirectory, toolchain: toolchain)
        self.progress = progress
    }

    public func bake(_ request: BakeRequest) throws(BakeError) -> BakeResult {
        let configuration = try PlatformConfiguration.named(request.configuration)
        if let reason = configuration.unavailableReason {
            throw .configurationNotBakeable(configuration.name, reason: reason)
        }
        let format = request.format ?? configuration.defaultFormat
        if configuration.platform == .xen && format != .pvh {
            throw .imageCheckFailed(path: request.output, problems: ["Xen loads ELF64 images: configuration \(configuration.name) takes --format pvh, not \(format.rawValue)"])
        }

        // Sort and check the inputs before any slow step.
        guard !request.inputs.isEmpty else { throw .noInputs }
        var sourceDirectories: [String] = []
        var objects: [String] = []
        for input in request.inputs {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: input, isDirectory: &isDirectory) else { throw .inputNotFound(input) }
            if isDirectory.boolValue {
                sourceDirectories.append(input)
            } else {
                try InputValidator.validateObject(at: input)
                objects.append(input)
            }
        }
        guard sourceDirectories.count <= 1 else {
            throw .wrongObjectType(path: sourceDirectories[1], expected: "single application source directory", found: "second source directory")
        }

        progress("[1/5] platform \(configuration.name): building \(configuration.modules.joined(separator: ", ")) for \(GuestBuilder.triple)")
        let platform = try builder.buildPlatform(modules: configuration.modules)
        progress(platform.cached ? "      platform unchanged: using cached objects" : "      platform built (\(platform.objects.count) objects)")

        var applicationCached = true
        if let directory = sourceDirectories.first {
            progress("[2/5] application: compiling \(directory)")
            let fingerprint = try builder.platformFingerprint(modules: configuration.modules)
            let compiled = try builder.compileApplication(directory: directory, platformFingerprint: fingerprint)
            applicationCached = compiled.cached
            progress(compiled.cached ? "      application unchanged: using cached object" : "      application compiled")
            objects.insert(compiled.object, at: 0)
        } else {
            progress("[2/5] application: \(objects.count) prebuilt object file(s)")
        }

        progress("[3/5] linking with \(builder.toolchain.linker)")
        let linkedPath = try link(objects: objects + platform.objects)
        defer { try? FileManager.default.removeItem(atPath: URL(fileURLWithPath: linkedPath).deletingLastPathComponent().path) }
        let linked = try ELFFile(path: linkedPath)

        progress("[4/5] checking the image with libelf")
        // Every check, undefined symbols included, runs on the unstripped
        // ELF64 image; the written file is checked again.
        let pvh = try ImageWriter.pvhImage(from: linked)
        _ = try ImageChecker.check(try ELFFile(bytes: pvh, path: request.output))
        let bytes: [UInt8]
        switch format {
        case .pvh: bytes = request.keepSymbols ? pvh : try strip(pvh, directory: URL(fileURLWithPath: linkedPath).deletingLastPathComponent().path)
        case .multiboot: bytes = try ImageWriter.multibootImage(from: linked)
        }
        let report = try ImageChecker.check(try ELFFile(bytes: bytes, path: request.output))
        if configuration.platform == .xen {
            let written = try ELFFile(bytes: bytes, path: request.output)
            let problems = XenImageNotes(written).problems(in: written)
            guard problems.isEmpty else { throw .imageCheckFailed(path: request.output, problems: problems) }
        }
        guard report.format == format else {
            throw .imageCheckFailed(path: request.output, problems: ["wrote \(report.format?.rawValue ?? "unknown") instead of \(format.rawValue)"])
        }

        progress("[5/5] writing \(format.rawValue) image \(request.output) (\(bytes.count) bytes)")
        try ImageWriter.write(bytes, to: request.output)
        return BakeResult(output: request.output, format: format, report: report, platformWasCached: platform.cached, applicationWasCached: applicationCached)
    }

    /// Removes the symbol and string tables with llvm-objcopy.
    func strip(_ image: [UInt8], directory: String) throws(BakeError) -> [UInt8] {
        let input = directory + "/unstripped.elf"
        let output = directory + "/stripped.elf"
        try ImageWriter.write(image, to: input)
        try Toolchain.run(builder.toolchain.binDirectory + "/llvm-objcopy", ["--strip-all", input, output])
        guard let data = FileManager.default.contents(atPath: output) else { throw .inputNotFound(output) }
        return [UInt8](data)
    }

    /// Links into a fresh temporary directory; returns the ELF64 path.
    func link(objects: [String]) throws(BakeError) -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("rumprun-bake-\(UUID().uuidString)").path
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try LinkerScript().text.write(toFile: directory + "/image.ld", atomically: true, encoding: .utf8)
        } catch {
            throw .outputNotWritable(path: directory, detail: error.localizedDescription)
        }
        let output = directory + "/image.elf"
        var arguments = ["-T", directory + "/image.ld", "-nostdlib", "-static", "-z", "max-page-size=4096", "-z", "noexecstack"]
        // -z nostart-stop-gc: a section that code finds through the
        // linker's __start_/__stop_ symbols (NetBSD link sets in a rump
        // kernel) survives --gc-sections; LLD's default would drop it and
        // fail the link with an undefined __start_ symbol.
        arguments += ["--gc-sections", "-z", "nostart-stop-gc", "--strip-debug", "--no-undefined", "-o", output]
        arguments += objects
        let unicodeTables = builder.toolchain.embeddedLibraryDirectory + "/libswiftUnicodeDataTables.a"
        if FileManager.default.fileExists(atPath: unicodeTables) { arguments.append(unicodeTables) }
        do {
            try Toolchain.run(builder.toolchain.linker, arguments)
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
        return output
    }
}
