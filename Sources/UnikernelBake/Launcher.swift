// Launcher: starts a baked image under QEMU the way rumprun's launcher did:
// the guest's configuration (arguments, environment, host name) travels as a
// JSON object on the kernel command line, the guest's exit status comes back
// through QEMU's isa-debug-exit device.
import BareMetalKit
import Foundation

/// How and where a guest runs.
public struct LaunchOptions: Sendable {
    public enum Accelerator: String, CaseIterable, Sendable {
        /// QEMU's software emulation (TCG): always available.
        case qemu
        /// KVM through /dev/kvm.
        case kvm
        /// A Xen domain through the `xl` toolstack.
        case xen
    }

    public enum Machine: String, CaseIterable, Sendable {
        /// PVH boot, no firmware, no PCI: fastest.
        case microvm
        /// SeaBIOS and multiboot.
        case pc
    }

    public var image: String
    public var accelerator: Accelerator = .qemu
    public var machine: Machine = .microvm
    public var memoryMegabytes: Int = 64
    /// Virtual CPUs (QEMU `-smp`); the hw platform starts every one.
    public var processorCount: Int = 1
    /// `NAME=VALUE` entries for the guest's environment.
    public var environment: [String] = []
    public var extraQEMUArguments: [String] = []
    public var startPaused = false
    public var gdbPort: Int?
    public var name: String?
    public var applicationArguments: [String] = []
    /// Seconds before a foreground guest is killed.
    public var timeout: Double?
    public var networkInterfaces: [NetworkInterfaceOption] = []
    public var blockDevices: [BlockDeviceOption] = []
    /// microvm: add the PCIe host bridge (`pcie=on`) even without `-I`/`-b`,
    /// for PCI devices given as extra QEMU arguments.
    public var pcie = false

    public init(image: String) { self.image = image }

    /// The guest's name: `-N`, else the image file's name without extension.
    public var guestName: String {
        name ?? URL(fileURLWithPath: image).deletingPathExtension().lastPathComponent
    }
}

/// How a foreground guest ended, and the launcher's exit status for it.
public enum LaunchOutcome: Equatable, Sendable {
    case exited(status: Int32)
    case panicked(message: String?)
    case exception(message: String?)
    case stoppedWithoutStatus(qemuStatus: Int32)
    case timedOut(seconds: Double)

    /// The exit status `rumprun-cli run -i` ends with (Docs/rumprun-cli.md).
    public var launcherStatus: Int32 {
        switch self {
        case .exited(let status): return status
        case .panicked: return 120
        case .exception: return 121
        case .stoppedWithoutStatus: return 122
        case .timedOut: return 124
        }
    }

    /// Maps QEMU's exit status through the guest's debug-exit convention
    /// (BareMetalKit `GuestExit`).
    public static func from(qemuStatus: Int32, consoleTail: String) -> LaunchOutcome {
        switch GuestExit.outcome(qemuStatus: qemuStatus) {
        case .exited(let status): return .exited(status: status)
        case .panicked: return .panicked(message: lastLine(in: consoleTail, containing: "panic"))
        case .exception: return .exception(message: lastLine(in: consoleTail, containing: "exception"))
        case .noGuestStatus(let status): return .stoppedWithoutStatus(qemuStatus: status)
        }
    }

    static func lastLine(in text: String, containing word: String) -> String? {
        text.split(whereSeparator: \.isNewline).last { $0.contains(word) }.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
    }
}

/// Errors a launch can end with before or instead of running a guest.
public enum LaunchError: Error, Equatable, CustomStringConvertible {
    case qemuNotFound(String)
    case imageNotFound(String)
    case imageUnusable(path: String, reason: String)
    case kvmUnavailable(String)
    case invalidOption(String)
    case startFailed(String)
    case notAGuest(String)

    public var description: String {
        switch self {
        case .qemuNotFound(let name): return "\(name) not found on PATH (install it: apt-get install -y qemu-system-x86)"
        case .imageNotFound(let path): return "image not found: \(path)"
        case let .imageUnusable(path, reason): return "\(path): \(reason)"
        case .kvmUnavailable(let reason): return "KVM is not usable here (\(reason)); use the qemu platform"
        case .invalidOption(let text): return text
        case .startFailed(let text): return "QEMU did not start: \(text)"
        case .notAGuest(let text): return text
        }
    }
}

public enum Launcher {
    public static let qemuName = "qemu-system-x86_64"

    public static func findQEMU(environment: [String: String] = ProcessInfo.processInfo.environment) throws(LaunchError) -> String {
        if let explicit = environment["RUMPRUN_QEMU"] {
            guard FileManager.default.isExecutableFile(atPath: explicit) else { throw .qemuNotFound(explicit) }
            return explicit
        }
        for directory in (environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let path = "\(directory)/\(qemuName)"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        throw .qemuNotFound(qemuName)
    }

    /// The JSON object the guest parses from its command line
    /// (Docs/guest-configuration.md).
    public static func guestConfigurationJSON(_ options: LaunchOptions) -> String {
        func quote(_ string: String) -> String {
            var result = "\""
            for scalar in string.unicodeScalars {
                switch scalar {
                case "\"": result += "\\\""
                case "\\": result += "\\\\"
                case "\n": result += "\\n"
                case "\r": result += "\\r"
                case "\t": result += "\\t"
                case _ where scalar.value < 0x20:
                    result += "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count) + String(scalar.value, radix: 16)
                default: result.unicodeScalars.append(scalar)
                }
            }
            return result + "\""
        }
        let argv = ([options.guestName] + options.applicationArguments).map(quote).joined(separator: ",")
        let env = options.environment.map(quote).joined(separator: ",")
        var json = "{\"argv\":[\(argv)],\"env\":[\(env)],\"hostname\":\(quote(options.guestName))"
        if !options.networkInterfaces.isEmpty {
            let entries = options.networkInterfaces.map { interface -> String in
                var entry = "{\"tag\":\(quote(interface.tag)),\"driver\":\(quote(interface.driver.rawValue)),\"mac\":\(quote(interface.mac))"
                switch interface.address {
                case nil: break
                case .dhcp: entry += ",\"inet\":{\"method\":\"dhcp\"}"
                case let .staticAddress(address, prefixLength, gateway):
                    entry += ",\"inet\":{\"method\":\"static\",\"address\":\(quote(address)),\"prefix\":\(prefixLength)"
                    if let gateway { entry += ",\"gateway\":\(quote(gateway))" }
                    entry += "}"
                }
                return entry + "}"
            }
            json += ",\"net\":[\(entries.joined(separator: ","))]"
        }
        if !options.blockDevices.isEmpty {
            let entries = options.blockDevices.map { device -> String in
                var entry = "{\"tag\":\(quote(device.tag)),\"driver\":\(quote(options.accelerator == .xen ? "xen-blkfront" : "virtio-blk"))"
                if let mountPoint = device.mountPoint { entry += ",\"mountpoint\":\(quote(mountPoint))" }
                return entry + "}"
            }
            json += ",\"blk\":[\(entries.joined(separator: ","))]"
        }
        return json + "}"
    }

    /// Checks options that do not need the file system.
    public static func validate(_ options: LaunchOptions) throws(LaunchError) {
        guard (16...3072).contains(options.memoryMegabytes) else {
            throw .invalidOption("memory must be 16 to 3072 MiB (the hw platform maps the first 4 GiB), not \(options.memoryMegabytes)")
        }
        guard (1...64).contains(options.processorCount) else {
            throw .invalidOption("--smp must be 1 to 64 CPUs (the hw platform's limit), not \(options.processorCount)")
        }
        for entry in options.environment where !entry.contains("=") || entry.hasPrefix("=") {
            throw .invalidOption("environment entry '\(entry)' is not NAME=VALUE")
        }
        if let port = options.gdbPort, !(1...65535).contains(port) {
            throw .invalidOption("gdb port must be 1 to 65535, not \(port)")
        }
        if let timeout = options.timeout, !(timeout > 0) {
            throw .invalidOption("timeout must be a positive number of seconds")
        }
        for interface in options.networkInterfaces {
            let xenDriver = interface.driver == .xenNetfront
            if xenDriver != (options.accelerator == .xen) {
                throw .invalidOption("-I \(interface.tag): driver \(interface.driver.rawValue) does not work on the \(options.accelerator.rawValue) platform")
            }
        }
        var tags = Set<String>()
        for interface in options.networkInterfaces where !tags.insert(interface.tag).inserted {
            throw .invalidOption("-I: tag '\(interface.tag)' is used twice")
        }
        let configuration = guestConfigurationJSON(options)
        guard configuration.utf8.count < 4000 else {
            throw .invalidOption("the guest configuration (arguments and environment) is \(configuration.utf8.count) bytes; the limit is 4000")
        }
    }

    /// Returns the image path QEMU should load for the machine, converting
    /// a PVH image to multiboot for `pc` into `scratchDirectory`.
    public static func prepareImage(_ options: LaunchOptions, scratchDirectory: String) throws(LaunchError) -> String {
        guard FileManager.default.fileExists(atPath: options.image) else { throw .imageNotFound(options.image) }
        for device in options.blockDevices where !FileManager.default.fileExists(atPath: device.hostPath) {
            throw .invalidOption("-b: no such file: \(device.hostPath)")
        }
        let file: ELFFile
        do {
            file = try ELFFile(path: options.image)
        } catch {
            throw .imageUnusable(path: options.image, reason: "\(error)")
        }
        let report = ImageChecker.inspect(file)
        guard report.isValid, let format = report.format else {
            throw .imageUnusable(path: options.image, reason: "not a bootable image: " + report.problems.joined(separator: "; "))
        }
        switch (options.machine, format) {
        case (.microvm, .pvh), (.pc, .multiboot):
            return options.image
        case (.microvm, .multiboot):
            throw .imageUnusable(path: options.image, reason: "a multiboot (ELF32) image cannot boot on microvm; use --machine pc or bake with --format pvh")
        case (.pc, .pvh):
            do {
                let converted = try ImageWriter.multibootImage(from: file)
                let path = scratchDirectory + "/" + options.guestName + "-multiboot.img"
                try ImageWriter.write(converted, to: path)
                return path
            } catch {
                throw .imageUnusable(path: options.image, reason: "conversion to multiboot failed: \(error)")
            }
        }
    }

    /// The QEMU arguments for a guest; `console` is a QEMU chardev
    /// ("stdio" or "file:PATH").
    public static func qemuArguments(_ options: LaunchOptions, kernel: String, console: String) -> [String] {
        let hasPCIDevices = !options.networkInterfaces.isEmpty || !options.blockDevices.isEmpty
        // microvm has no PCI bus unless asked for one; the drivers are PCI drivers.
        var arguments = ["-M", options.machine == .microvm && (hasPCIDevices || options.pcie) ? "microvm,pcie=on" : options.machine.rawValue]
        arguments += ["-accel", options.accelerator == .kvm ? "kvm" : "tcg"]
        arguments += ["-m", String(options.memoryMegabytes)]
        if options.processorCount > 1 { arguments += ["-smp", String(options.processorCount)] }
        arguments += ["-nodefaults", "-no-reboot", "-display", "none", "-serial", console]
        arguments += ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
        arguments += ["-name", options.guestName]
        arguments += ["-kernel", kernel, "-append", guestConfigurationJSON(options)]
        for interface in options.networkInterfaces {
            let backend = interface.backend.split(separator: ",", maxSplits: 1).map(String.init)
            let netdev = ([backend[0], "id=\(interface.tag)"] + backend.dropFirst()).joined(separator: ",")
            let model = interface.driver == .e1000 ? "e1000" : "virtio-net-pci"
            arguments += ["-netdev", netdev, "-device", "\(model),netdev=\(interface.tag),mac=\(interface.mac)"]
        }
        for device in options.blockDevices {
            let file = device.hostPath.replacingOccurrences(of: ",", with: ",,")
            arguments += ["-drive", "file=\(file),if=none,id=\(device.tag),format=raw", "-device", "virtio-blk-pci,drive=\(device.tag)"]
        }
        if options.startPaused || options.gdbPort != nil { arguments.append("-S") }
        if let port = options.gdbPort { arguments += ["-gdb", "tcp:127.0.0.1:\(port)"] }
        return arguments + options.extraQEMUArguments
    }

    static func checkKVM(_ options: LaunchOptions) throws(LaunchError) {
        if options.accelerator == .xen { throw .invalidOption("the xen platform runs through `XenLauncher`, not QEMU") }
        guard options.accelerator == .kvm else { return }
        let descriptor = open("/dev/kvm", O_RDWR)
        guard descriptor >= 0 else { throw .kvmUnavailable("/dev/kvm: \(String(cString: strerror(errno)))") }
        close(descriptor)
    }

    /// Runs a guest in the foreground with its console on `output` and
    /// returns how it ended.
    public static func runForeground(
        _ options: LaunchOptions, output: FileHandle = .standardOutput, input: FileHandle? = nil
    ) throws(LaunchError) -> LaunchOutcome {
        try validate(options)
        try checkKVM(options)
        let qemu = try findQEMU()
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("rumprun-run-\(UUID().uuidString)").path
        try? FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let kernel = try prepareImage(options, scratchDirectory: scratch)

        let process = Process()
        process.executableURL = URL(fileURLWithPath: qemu)
        process.arguments = qemuArguments(options, kernel: kernel, console: "stdio")
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = input ?? FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            throw .startFailed(error.localizedDescription)
        }
        let timedOut = TimeoutFlag()
        if let timeout = options.timeout {
            let pid = process.processIdentifier
            DispatchQueue.global().asyncAfter(deadline: .now() + timeout) {
                if process.isRunning {
                    timedOut.set()
                    kill(pid, SIGKILL)
                }
            }
        }
        // Echo the console and keep its tail for panic reports.
        var tail = Data()
        let reader = pipe.fileHandleForReading
        while true {
            let chunk = reader.availableData
            if chunk.isEmpty { break }
            output.write(chunk)
            tail.append(chunk)
            if tail.count > 16384 { tail = tail.suffix(8192) }
        }
        process.waitForExit()
        if timedOut.isSet, let timeout = options.timeout { return .timedOut(seconds: timeout) }
        let text = String(decoding: tail, as: UTF8.self).replacingOccurrences(of: "\r", with: "")
        if process.terminationReason == .uncaughtSignal { return .stoppedWithoutStatus(qemuStatus: 128 + process.terminationStatus) }
        return LaunchOutcome.from(qemuStatus: process.terminationStatus, consoleTail: text)
    }

    /// Starts a guest in the background, in its own session, with its
    /// console in `consoleLog`; returns QEMU's process id. QEMU's own
    /// messages go to `consoleLog` + ".qemu".
    public static func startBackground(_ options: LaunchOptions, consoleLog: String) throws(LaunchError) -> Int32 {
        try validate(options)
        try checkKVM(options)
        let qemu = try findQEMU()
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("rumprun-\(options.guestName)-\(UUID().uuidString.prefix(8))").path
        try? FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        let kernel = try prepareImage(options, scratchDirectory: scratch)
        let messages = consoleLog + ".qemu"
        let arguments = [qemu] + qemuArguments(options, kernel: kernel, console: "file:\(consoleLog)")

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, messages, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // Close every other inherited descriptor: a parent's pipe or
        // process-monitoring socket kept open by a long-lived guest would
        // make the parent wait for the guest instead of for rumprun-cli.
        for descriptor in Self.openDescriptors() where descriptor > 2 {
            posix_spawn_file_actions_addclose(&actions, descriptor)
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // A new session, an empty signal mask and default dispositions: a
        // parent that blocks SIGTERM (test runners do) must not pass that on,
        // or `rumprun-cli stop` could not end the guest.
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        // POSIX_SPAWN_SETSID (0x80, glibc) | SETSIGMASK (0x08) | SETSIGDEF (0x04)
        posix_spawnattr_setflags(&attributes, 0x80 | 0x08 | 0x04)

        var pid: pid_t = 0
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let status = posix_spawn(&pid, qemu, &actions, &attributes, argv, environ)
        guard status == 0 else { throw .startFailed(String(cString: strerror(status))) }

        // QEMU rejects bad options at once; give it a moment to do so.
        var waitStatus: Int32 = 0
        for _ in 0..<40 {
            usleep(25_000)
            if waitpid(pid, &waitStatus, WNOHANG) == pid {
                let exitCode = (waitStatus >> 8) & 0xFF
                if waitStatus & 0x7F == 0, case .exited = GuestExit.outcome(qemuStatus: exitCode) { return pid }  // already finished
                let text = (try? String(contentsOfFile: messages, encoding: .utf8)) ?? ""
                throw .startFailed(text.trimmingCharacters(in: .whitespacesAndNewlines))
            }
        }
        return pid
    }

    /// This process's open file descriptors, from /proc/self/fd.
    static func openDescriptors() -> [Int32] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return names.compactMap { Int32($0) }.filter { fcntl($0, F_GETFD) != -1 }
    }

    /// Stops a background guest named `qemu:<pid>`: SIGTERM, then SIGKILL
    /// after `grace` seconds. Refuses processes that are not QEMU.
    public static func stop(_ identifier: String, grace: Double = 5) throws(LaunchError) {
        let parts = identifier.split(separator: ":", maxSplits: 1)
        guard parts.count == 2, parts[0] == "qemu", let pid = Int32(parts[1]), pid > 0 else {
            throw .invalidOption("expected qemu:<pid>, as printed by `rumprun-cli run`, not '\(identifier)'")
        }
        guard isGuestRunning(pid: pid) else { throw .notAGuest("no QEMU guest with process id \(pid)") }
        kill(pid, SIGTERM)
        let deadline = Date().addingTimeInterval(grace)
        while Date() < deadline {
            if !isGuestRunning(pid: pid) { return }
            usleep(50_000)
        }
        kill(pid, SIGKILL)
        let killDeadline = Date().addingTimeInterval(5)
        while Date() < killDeadline {
            if !isGuestRunning(pid: pid) { return }
            usleep(20_000)
        }
        throw .notAGuest("QEMU process \(pid) survived SIGKILL")
    }

    /// Whether `pid` is a live QEMU process. A background guest's parent
    /// has exited, so once QEMU ends it may linger as a zombie until its new
    /// parent reaps it; a zombie counts as ended.
    public static func isGuestRunning(pid: Int32) -> Bool {
        guard let command = try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8),
            command.hasPrefix("qemu-system"),
            let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return false }
        let state = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).first
        return state != "Z" && state != "X"
    }
}

/// A flag set from the timeout queue and read after the guest ended.
final class TimeoutFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}
