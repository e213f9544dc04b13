// The launcher's pure parts: the guest configuration it writes (read back
// with the guest's own parser), QEMU arguments, option checks, outcomes.
import BareMetalKit
import Foundation
import Testing

@testable import UnikernelBake

@Suite struct LauncherTests {
    @Test func configurationRoundTripsThroughTheGuestParser() throws {
        var options = LaunchOptions(image: "/images/hello.img")
        options.environment = ["GREETING=hi \"there\"", "PATH=/bin:/x\\y"]
        options.applicationArguments = ["one", "two words", "tab\there", "ünïcödé"]
        let json = Launcher.guestConfigurationJSON(options)
        let configuration = try GuestConfiguration(commandLine: Array(("/images/hello.img " + json).utf8))
        #expect(configuration.arguments == ["hello", "one", "two words", "tab\there", "ünïcödé"])
        #expect(configuration.environmentValue("GREETING") == "hi \"there\"")
        #expect(configuration.environmentValue("PATH") == "/bin:/x\\y")
        #expect(configuration.hostname == "hello")
    }

    @Test func qemuArgumentsFollowTheOptions() {
        var options = LaunchOptions(image: "a.img")
        options.memoryMegabytes = 128
        options.gdbPort = 1234
        options.name = "box"
        options.extraQEMUArguments = ["-smp", "2"]
        let arguments = Launcher.qemuArguments(options, kernel: "k.img", console: "stdio")
        #expect(Array(arguments.prefix(6)) == ["-M", "microvm", "-accel", "tcg", "-m", "128"])
        #expect(arguments.contains("isa-debug-exit,iobase=0xf4,iosize=0x04"))
        #expect(arguments.contains("-S"))
        #expect(arguments.contains("tcp:127.0.0.1:1234"))
        #expect(arguments[arguments.firstIndex(of: "-kernel")! + 1] == "k.img")
        #expect(arguments[arguments.firstIndex(of: "-name")! + 1] == "box")
        #expect(Array(arguments.suffix(2)) == ["-smp", "2"])
        options.machine = .pc
        options.accelerator = .kvm
        options.gdbPort = nil
        let pc = Launcher.qemuArguments(options, kernel: "k.img", console: "file:/tmp/x")
        #expect(Array(pc.prefix(4)) == ["-M", "pc", "-accel", "kvm"])
        #expect(!pc.contains("-S"))
        #expect(pc.contains("file:/tmp/x"))
    }

    @Test func badOptionsAreRefused() {
        var options = LaunchOptions(image: "a.img")
        options.memoryMegabytes = 8
        #expect(throws: LaunchError.self) { try Launcher.validate(options) }
        options.memoryMegabytes = 64
        options.environment = ["NOEQUALS"]
        #expect(throws: LaunchError.invalidOption("environment entry 'NOEQUALS' is not NAME=VALUE")) { try Launcher.validate(options) }
        options.environment = []
        options.gdbPort = 70000
        #expect(throws: LaunchError.invalidOption("gdb port must be 1 to 65535, not 70000")) { try Launcher.validate(options) }
        options.gdbPort = nil
        options.timeout = 0
        #expect(throws: LaunchError.invalidOption("timeout must be a positive number of seconds")) { try Launcher.validate(options) }
        options.timeout = nil
        options.applicationArguments = [String(repeating: "x", count: 5000)]
        #expect(throws: LaunchError.self) { try Launcher.validate(options) }
    }

    @Test func imagesAreMatchedToMachines() throws {
        let directory = Fixtures.temporaryDirectory()
        let linked = try Fixtures.linkedImage(in: directory)
        let pvh = directory + "/app.img"
        try ImageWriter.write(try ImageWriter.pvhImage(from: linked), to: pvh)
        var options = LaunchOptions(image: pvh)
        #expect(try Launcher.prepareImage(options, scratchDirectory: directory) == pvh)
        options.machine = .pc
        let converted = try Launcher.prepareImage(options, scratchDirectory: directory)
        #expect(converted != pvh)
        #expect(ImageChecker.inspect(try ELFFile(path: converted)).format == .multiboot)
        options.image = converted
        options.machine = .microvm
        #expect(throws: LaunchError.self) { try Launcher.prepareImage(options, scratchDirectory: directory) }
        options.image = directory + "/missing.img"
        #expect(throws: LaunchError.imageNotFound(directory + "/missing.img")) { try Launcher.prepareImage(options, scratchDirectory: directory) }
        let text = directory + "/text.img"
        try "not an image".write(toFile: text, atomically: true, encoding: .utf8)
        options.image = text
        #expect(throws: LaunchError.imageUnusable(path: text, reason: "\(BakeError.notELF(path: text))")) {
            try Launcher.prepareImage(options, scratchDirectory: directory)
        }
    }

    @Test func qemuStatusesMapToOutcomes() {
        #expect(LaunchOutcome.from(qemuStatus: 3, consoleTail: "") == .exited(status: 0))
        #expect(LaunchOutcome.from(qemuStatus: 17, consoleTail: "") == .exited(status: 7))
        #expect(LaunchOutcome.from(qemuStatus: 255, consoleTail: "x\nrumprun: panic: boom\n") == .panicked(message: "rumprun: panic: boom"))
        #expect(LaunchOutcome.from(qemuStatus: 1, consoleTail: "") == .stoppedWithoutStatus(qemuStatus: 1))
        #expect(LaunchOutcome.from(qemuStatus: 0, consoleTail: "") == .stoppedWithoutStatus(qemuStatus: 0))
        #expect(LaunchOutcome.panicked(message: nil).launcherStatus == 120)
        #expect(LaunchOutcome.timedOut(seconds: 1).launcherStatus == 124)
    }

    @Test func stopRefusesWhatIsNotAGuest() {
        #expect(throws: LaunchError.self) { try Launcher.stop("12345") }
        #expect(throws: LaunchError.notAGuest("no QEMU guest with process id 1")) { try Launcher.stop("qemu:1") }
    }
}
