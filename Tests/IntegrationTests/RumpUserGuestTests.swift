// RumpUserGuestTests: the guest rumpuser implementation (Sources/RumpUserGuest,
// Sources/CRumpUserGuest) under a fake rump kernel written in C
// (Tests/Guests/rumpuser/kernel.c), compiled for the guest triple, baked with
// the opt-in modules' objects and booted under QEMU (TCG) by rumprun-cli.
// The kernel checks the scheduling contract on every hypercall; these tests
// read its console and the exit status.
import Foundation
import Testing
import UnikernelBake

enum RumpUserGuestImage {
    /// Builds the opt-in modules, compiles the C kernel, bakes once per run.
    static let image: Result<String, Error> = Result {
        let root = Integration.sourceRoot
        let toolchain = try Toolchain.locate()
        let builder = try GuestBuilder(sourceRoot: root, toolchain: toolchain)
        let modules = try builder.buildPlatform(modules: ["CRumpUserGuest", "RumpUserGuest"])
        let object = Integration.imageDirectory + "/rumpuser-kernel.o"
        try Toolchain.run(toolchain.binDirectory + "/clang", [
            "--target=\(GuestBuilder.triple)", "-ffreestanding", "-fno-pic", "-mno-red-zone", "-mgeneral-regs-only",
            "-ffunction-sections", "-O2", "-Wall", "-Werror",
            "-I", root + "/Sources/CRumpUserGuest/include",
            "-c", root + "/Tests/Guests/rumpuser/kernel.c", "-o", object,
        ])
        let output = Integration.imageDirectory + "/rumpuser.img"
        let baker = try Baker(sourceRoot: root)
        _ = try baker.bake(BakeRequest(configuration: "hw_generic", output: output, inputs: [object] + modules.objects))
        return output
    }

    static func run(machine: String = "microvm", _ extra: [String] = []) throws -> (status: Int32, stdout: String, stderr: String) {
        let image = try image.get()
        return try Integration.run(
            ["run", "qemu", "-i", "--timeout", "600", "--machine", machine, "-N", "rumpbox",
             "-e", "RUMPTEST=value", "-e", "RUMPTEST_HOSTNAME=rumpbox"] + extra + [image])
    }
}

@Suite(.serialized) struct RumpUserGuestTests {
    @Test(arguments: ["microvm", "pc"])
    func theFakeKernelFindsTheContractKeptOnEveryHypercall(machine: String) throws {
        let run = try RumpUserGuestImage.run(machine: machine)
        let console = run.stdout
        #expect(run.status == 0, "status \(run.status)\n\(console)\n\(run.stderr)")
        #expect(!console.contains("FAIL"), "\(console)")
        for suite in ["init", "memory", "clocks", "params", "misc", "threads", "component", "mutex", "rwlock", "cv", "stress", "dl"] {
            #expect(console.contains("ok \(suite) ("), "suite \(suite) did not pass:\n\(console)")
        }
        #expect(console.contains(", 0 failures\n"))
        // Values the kernel saw, as it printed them.
        #expect(console.contains("getparam: hostname rumpbox\n"))
        #expect(console.contains("getparam: missing -> 2\n"))
        #expect(console.contains("cv: timedwait 50 ms -> 60 after "))
        #expect(console.contains("stress: mutex 20000 increments by 4 threads\n"))
        #expect(console.contains("stress: rwlock 4000 writes, 0 torn reads\n"))
        #expect(console.contains("stress: cv 2 x 2000 items, sums 2001000 2001000\n"))
        // The C varargs formatter of rumpuser_dprintf and rumpuser_putchar.
        #expect(console.contains("dprintf: -42 42 beef BEEF    ab|cd   | z -1234567890123 9876543210 77 0x1000 % 007\n"))
        #expect(console.contains("putchar: ok\n"))
        // rumpuser_component_*: two threads the kernel did not set up enter
        // it 40 times each; every lwp the kernel made for them is gone.
        #expect(console.contains("component: 2 threads x 40 rounds, counter 100, 6 kernel lwps made and dropped\n"))
        // rumpuser_dl_bootstrap hands over the image's link sets.
        #expect(console.contains("dl: 2 modules, 3 components from the link sets\n"))
    }

    /// Block I/O against QEMU's virtio-blk-pci over a host file: the guest
    /// checks what it reads, the test checks what it wrote and that nothing
    /// else in the file changed.
    @Test func blockIOReachesTheHostFileThroughVirtioBlk() throws {
        let size = 1 << 20
        func original(_ index: Int) -> UInt8 { UInt8(truncatingIfNeeded: (index &* 13 &+ 5) ^ (index >> 9)) }
        let file = Integration.imageDirectory + "/rumpuser-disk-\(UUID().uuidString).img"
        try Data((0..<size).map(original)).write(to: URL(fileURLWithPath: file))
        defer { try? FileManager.default.removeItem(atPath: file) }
        let run = try RumpUserGuestImage.run(machine: "pc", ["-e", "RUMPTEST_BLK=\(size)", "-b", file])
        #expect(run.status == 0, "status \(run.status)\n\(run.stdout)\n\(run.stderr)")
        #expect(!run.stdout.contains("FAIL"), "\(run.stdout)")
        #expect(run.stdout.contains("ok blk ("), "\(run.stdout)")
        let data = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
        try #require(data.count == size)
        let written = 65536..<(65536 + 8192)
        let lastSector = (size - 512)..<size
        var unexpected = 0
        for index in 0..<size where !written.contains(index) && !lastSector.contains(index) && data[index] != original(index) { unexpected += 1 }
        #expect(unexpected == 0, "\(unexpected) bytes outside the written ranges changed")
        #expect(written.allSatisfy { data[$0] == UInt8(truncatingIfNeeded: ($0 - 65536) &* 3 &+ 1) })
        let marker = Array("rumpuser guest was here".utf8)
        #expect(Array(data[lastSector.lowerBound..<(lastSector.lowerBound + marker.count)]) == marker)
        #expect(data[(lastSector.lowerBound + marker.count)...].allSatisfy { $0 == 0 })
    }

    /// rumpcomp_pci_irq_establish on QEMU's e1000 (INTx through the IOAPIC):
    /// the fake kernel raises the interrupt 100 times through the device's
    /// ICS register; the handler must run each time, on the interrupt thread
    /// with a rump CPU held, and never without a cause.
    @Test func pciInterruptsReachAnEstablishedHandlerOnTheInterruptThread() throws {
        let run = try RumpUserGuestImage.run(machine: "pc", ["-e", "RUMPTEST_PCI_IRQ=1", "-I", "net0,e1000,user"])
        #expect(run.status == 0, "status \(run.status)\n\(run.stdout)\n\(run.stderr)")
        #expect(!run.stdout.contains("FAIL"), "\(run.stdout)")
        #expect(run.stdout.contains("ok pci_irq ("), "\(run.stdout)")
        #expect(run.stdout.contains("pci: 100 interrupts handled on the interrupt thread"), "\(run.stdout)")
    }

    @Test func theGuestModulesDefineEveryFunctionOfTheSharedHeaders() throws {
        _ = try RumpUserGuestImage.image.get()
        let root = Integration.sourceRoot
        var declared = Set<String>()
        var lines: [Substring] = []
        for header in ["rumpuser.h", "rumpuser_component.h"] {
            lines += try String(contentsOfFile: root + "/Sources/CRumpUser/include/" + header, encoding: .utf8).split(separator: "\n")
        }
        for line in lines where !line.hasPrefix("#") && !line.hasPrefix(" *") {
            var rest = Substring(line)
            while let start = rest.range(of: "rumpuser_") {
                let name = rest[start.lowerBound...].prefix { $0.isLetter || $0.isNumber || $0 == "_" }
                let after = rest[start.lowerBound...].dropFirst(name.count)
                if after.first == "(" { declared.insert(String(name)) }
                rest = after
            }
        }
        let toolchain = try Toolchain.locate()
        let builder = try GuestBuilder(sourceRoot: root, toolchain: toolchain)
        let objects = try builder.buildPlatform(modules: ["CRumpUserGuest", "RumpUserGuest"]).objects
        let symbols = try Toolchain.run(toolchain.binDirectory + "/llvm-nm", ["--defined-only", "-j"] + objects).output
        let defined = Set(symbols.split(separator: "\n").map(String.init))
        #expect(declared.count >= 69, "parsed \(declared.count) declarations")
        #expect(declared.contains("rumpuser_component_schedule_intr"))
        #expect(declared.subtracting(defined).isEmpty, "not defined in the guest: \(declared.subtracting(defined).sorted())")
    }

    @Test func rumpuserExitEndsTheGuestWithItsStatus() throws {
        let run = try RumpUserGuestImage.run(["-e", "RUMPTEST_MODE=exit"])
        #expect(run.status == 7, "status \(run.status)\n\(run.stdout)")
        #expect(run.stdout.contains("mode exit\n"))
    }

    @Test func rumpuserExitPanicGivesThePanicStatus() throws {
        let run = try RumpUserGuestImage.run(["-e", "RUMPTEST_MODE=panic"])
        #expect(run.status == 120, "status \(run.status)\n\(run.stdout)")
        #expect(run.stdout.contains("rump kernel panic (rumpuser_exit)"))
    }

    @Test func aKillingSignalEndsTheGuestWithAPanicNamingIt() throws {
        let run = try RumpUserGuestImage.run(["-e", "RUMPTEST_MODE=kill"])
        #expect(run.status == 120, "status \(run.status)\n\(run.stdout)")
        #expect(run.stdout.contains("rumpuser: killed by signal 9\n"))
    }
}
