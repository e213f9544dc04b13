// Integration: bake real images and boot them under QEMU (TCG) through
// rumprun-cli, on microvm (PVH) and pc (SeaBIOS + multiboot), reading the
// serial console and the exit status.
import Foundation
import Testing
import UnikernelBake

final class DataBox: @unchecked Sendable {
    var data = Data()
    let done = DispatchSemaphore(value: 0)
}

enum Integration {
    static let sourceRoot = Baker.defaultSourceRoot()

    /// Where `swift test` put the executables (beside the test bundle).
    static func tool(_ name: String) throws -> String {
        let candidates = [
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(name).path,
            Bundle.main.bundleURL.appendingPathComponent(name).path,
            sourceRoot + "/.build/debug/" + name,
        ]
        return try #require(candidates.first { FileManager.default.isExecutableFile(atPath: $0) }, "\(name) not built")
    }

    static let imageDirectory: String = {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("rumprun-integration-\(getpid())").path
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }()

    /// Bakes an application once per test run (results are shared).
    static func bake(_ application: String, format: ImageFormat = .pvh) throws -> (path: String, result: BakeResult) {
        let output = imageDirectory + "/\(URL(fileURLWithPath: application).lastPathComponent)-\(format.rawValue).img"
        let baker = try Baker(sourceRoot: sourceRoot)
        let result = try baker.bake(BakeRequest(configuration: "hw_generic", output: output, inputs: [sourceRoot + "/" + application], format: format))
        return (output, result)
    }

    static let hello: Result<String, Error> = Result { try bake("Examples/hello").path }
    static let panic: Result<String, Error> = Result { try bake("Tests/Guests/panic").path }
    static let spin: Result<String, Error> = Result { try bake("Tests/Guests/spin").path }
    static let trap: Result<String, Error> = Result { try bake("Tests/Guests/trap").path }
    static let fault: Result<String, Error> = Result { try bake("Tests/Guests/fault").path }
    static let devices: Result<String, Error> = Result { try bake("Tests/Guests/devices").path }
    static let httpd: Result<String, Error> = Result { try bake("Examples/httpd").path }

    /// GETs `urls` with curl (one connection, keep-alive), giving up after
    /// `seconds`; nil until it answers.
    static func curl(_ urls: [String], seconds: Int = 10) -> String? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        process.arguments = ["-s", "-f", "-m", String(seconds)] + urls
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return nil }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return process.terminationStatus == 0 ? String(decoding: data, as: UTF8.self) : nil
    }

    /// Runs rumprun-cli; returns its exit status, console (stdout) and stderr.
    /// Runs a host tool (objdump, readelf, nm) to the end: its exit status
    /// and standard output.
    static func toolOutput(_ path: String, _ arguments: [String]) throws -> (status: Int32, data: Data) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, data)
    }

    static func run(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try tool("rumprun-cli"))
        process.arguments = arguments
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // Read stderr on another thread so neither pipe can fill and block QEMU.
        let errorBox = DataBox()
        let reader = Thread { errorBox.data = err.fileHandleForReading.readDataToEndOfFile(); errorBox.done.signal() }
        reader.start()
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        errorBox.done.wait()
        process.waitUntilExit()
        let errData = errorBox.data
        let clean = { (data: Data) in String(decoding: data, as: UTF8.self).replacingOccurrences(of: "\r", with: "") }
        return (process.terminationStatus, clean(outData), clean(errData))
    }
}

@Suite(.serialized) struct BootTests {
    @Test(arguments: ["microvm", "pc"])
    func helloPrintsItsConfigurationAndExitsWithItsStatus(machine: String) throws {
        let image = try Integration.hello.get()
        let run = try Integration.run(["run", "qemu", "-i", "--timeout", "120", "--machine", machine, "-e", "GREETING=hello from the host", "-N", "box", image, "--", "7", "two words"])
        #expect(run.stdout.split(separator: "\n").map(String.init) == [
            "Hello from swift-rumprun!",
            "argv[0] = box",
            "argv[1] = 7",
            "argv[2] = two words",
            "GREETING = hello from the host",
            "hostname = box",
            "exiting with status 7",
        ])
        #expect(run.status == 7, "stderr: \(run.stderr)")
    }

    @Test func helloWithoutArgumentsExitsZero() throws {
        let image = try Integration.hello.get()
        let run = try Integration.run(["run", "qemu", "-i", "--timeout", "120", image])
        #expect(run.stdout.contains("GREETING is not set\n"))
        #expect(run.stdout.contains("argv[0] = hello-pvh\n"))
        #expect(run.status == 0, "stderr: \(run.stderr)")
    }

    @Test func aPanicGivesItsOwnStatusAndText() throws {
        let image = try Integration.panic.get()
        let run = try Integration.run(["run", "qemu", "-i", "--timeout", "120", image])
        #expect(run.stdout.contains("about to panic\nrumprun: panic: integration test panic\n"))
        #expect(run.stderr.contains("rumprun-cli: guest panicked: rumprun: panic: integration test panic"))
        #expect(run.status == 120)
    }

    @Test(arguments: ["microvm", "pc"])
    func aRuntimeTrapGivesAnExceptionReport(machine: String) throws {
        let image = try Integration.trap.get()
        let run = try Integration.run(["run", "qemu", "-i", "--timeout", "120", "--machine", machine, image])
        #expect(run.stdout.hasPrefix("about to index out of bounds\nrumprun: exception: #UD (vector 6) error code 0x0 RIP 0x1"))
        #expect(run.stdout.contains("rumprun:   #0 0x1"))
        #expect(run.stderr.contains("rumprun-cli: guest stopped on a CPU exception: rumprun: exception: #UD (vector 6)"))
        #expect(run.status == 121)
    }

    /// The page tables built at boot: the null page is unmapped and text is
    /// read-only, so both accesses give a page-fault report.
    @Test(arguments: [("null", "microvm", "error code 0x0", "CR2 0x8\n"), ("text", "pc", "error code 0x3", "CR2 0x100100\n")])
    func forbiddenAccessesGivePageFaultReports(mode: String, machine: String, errorCode: String, faultAddress: String) throws {
        let image = try Integration.fault.get()
        let run = try Integration.run(["run", "qemu", "-i", "--timeout", "120", "--machine", machine, image, "--", mode])
        #expect(run.stdout.hasPrefix("fault: \(mode)\nrumprun: exception: #PF (vector 14) \(errorCode) RIP 0x"))
        #expect(run.stdout.contains(faultAddress))
        #expect(!run.stdout.contains("fault: survived"))
        #expect(run.status == 121)
    }

    @Test func aHungGuestIsKilledAtTheTimeout() throws {
        let image = try Integration.spin.get()
        let run = try Integration.run(["run", "qemu", "-i", "--timeout", "3", image])
        #expect(run.stdout.contains("spinning forever"))
        #expect(run.stderr.contains("guest killed after the 3.0 s timeout"))
        #expect(run.status == 124)
    }

    @Test func backgroundGuestsCanBeStopped() throws {
        let image = try Integration.spin.get()
        let log = Integration.imageDirectory + "/spin-background.log"
        let run = try Integration.run(["run", "qemu", "--console-log", log, image])
        #expect(run.status == 0, "stderr: \(run.stderr)")
        let identifier = run.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(identifier.hasPrefix("qemu:"))
        let pid = try #require(Int32(identifier.dropFirst(5)))
        // The spin guest never ends and has no timeout here: if a check
        // below fails, it must not spin on (taking a CPU from every later
        // test on a 2-core CI machine).
        defer { if Launcher.isGuestRunning(pid: pid) { kill(pid, SIGKILL) } }
        #expect(Launcher.isGuestRunning(pid: pid))
        let stop = try Integration.run(["stop", identifier])
        #expect(stop.status == 0, "stderr: \(stop.stderr)")
        #expect(!Launcher.isGuestRunning(pid: pid))
        let again = try Integration.run(["stop", identifier])
        #expect(again.status == 1)
        #expect(again.stderr.contains("no QEMU guest with process id \(pid)"))
    }

    @Test func launcherErrorsAreOneClearLine() throws {
        let missing = try Integration.run(["run", "qemu", "-i", "/nonexistent/app.img"])
        #expect(missing.status == 125)
        #expect(missing.stderr == "rumprun-cli: error: image not found: /nonexistent/app.img\n")
        let badOption = try Integration.run(["run", "qemu", "-i", "-M", "abc", "x.img"])
        #expect(badOption.status == 64)
        let badPlatform = try Integration.run(["run", "vmware", "x.img"])
        #expect(badPlatform.status == 64)
    }

    @Test func aMultibootImageBootsOnPC() throws {
        let baked = try Integration.bake("Examples/hello", format: .multiboot)
        #expect(baked.result.report.format == .multiboot)
        let run = try Integration.run(["run", "qemu", "-i", "--timeout", "120", "--machine", "pc", baked.path, "--", "3"])
        #expect(run.stdout.contains("exiting with status 3\n"))
        #expect(run.status == 3)
        let wrongMachine = try Integration.run(["run", "qemu", "-i", baked.path])
        #expect(wrongMachine.status == 125)
        #expect(wrongMachine.stderr.contains("cannot boot on microvm"))
    }
}

@Suite(.serialized) struct DeviceTests {
    /// The BareMetalKit drivers against QEMU's own device models on `pc`:
    /// virtio-net and e1000 get an ARP reply from QEMU's user-mode network,
    /// virtio-blk's writes land in the host file, virtio-rng delivers bytes.
    @Test func driversWorkAgainstQEMUDevices() throws {
        let image = try Integration.devices.get()
        let disk = Integration.imageDirectory + "/disk-\(UUID().uuidString).img"
        try Data(count: 1 << 20).write(to: URL(fileURLWithPath: disk))
        defer { try? FileManager.default.removeItem(atPath: disk) }
        let run = try Integration.run([
            "run", "qemu", "-i", "--timeout", "300", "--machine", "pc",
            "-I", "net0,virtio-net,user", "-I", "net1,e1000,user", "-b", disk, "-g", "-device virtio-rng-pci", image,
        ])
        #expect(run.stdout.contains("virtio-net: mac 525400123456, ARP reply from 10.0.2.2: yes\n"))
        #expect(run.stdout.contains("e1000: mac 525400123457, ARP reply from 10.0.2.2: yes\n"))
        #expect(run.stdout.contains("virtio-blk: 2048 sectors, wrote, flushed and read back 66048 bytes: match\n"))
        #expect(run.stdout.contains("virtio-rng: 16 bytes\n"))
        #expect(run.status == 0, "stdout: \(run.stdout) stderr: \(run.stderr)")
        // The guest's writes reached the host file: sector 8 onwards holds the pattern.
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: disk)))
        let written = bytes[(8 * 512)..<(8 * 512 + 66048)]
        #expect(written.enumerated().allSatisfy { $0.element == UInt8(truncatingIfNeeded: $0.offset &* 7 &+ 3) })
        #expect(bytes[0..<(8 * 512)].allSatisfy { $0 == 0 })
    }
}

// HTTPServerTests moved to NetworkTests.swift.

@Suite struct BakeToolTests {
    @Test func secondBakeOfAnUnchangedApplicationRebuildsNothing() throws {
        _ = try Integration.hello.get()
        let again = try Integration.bake("Examples/hello")
        #expect(again.result.platformWasCached)
        #expect(again.result.applicationWasCached)
    }

    @Test func bakeToolListsDescribesAndFailsClearly() throws {
        func bake(_ arguments: [String]) throws -> (Int32, String, String) {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: try Integration.tool("bake"))
            process.arguments = arguments
            let out = Pipe()
            let err = Pipe()
            process.standardOutput = out
            process.standardError = err
            try process.run()
            let o = out.fileHandleForReading.readDataToEndOfFile()
            let e = err.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return (process.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
        }
        let list = try bake(["--list"])
        #expect(list.0 == 0)
        #expect(list.1.split(separator: "\n").map { String($0.prefix(while: { $0 != " " })) } == ["hw_generic", "hw_virtio", "xen_pv"])
        let describe = try bake(["--describe", "hw_generic"])
        #expect(describe.0 == 0 && describe.1.contains("multiboot"))
        let unknown = try bake(["hw_nope", "/tmp/x.img", "Examples/hello"])
        #expect(unknown.0 == 1)
        #expect(unknown.2.hasPrefix("bake: error: unknown platform configuration 'hw_nope'"))
        let text = Integration.imageDirectory + "/notelf.o"
        try "hello".write(toFile: text, atomically: true, encoding: .utf8)
        let notELF = try bake(["hw_generic", "/tmp/x.img", text])
        #expect(notELF.0 == 1)
        #expect(notELF.2 == "bake: error: \(text): not an ELF file or archive\n")
        let usage = try bake(["hw_generic"])
        #expect(usage.0 == 64)
    }
}
