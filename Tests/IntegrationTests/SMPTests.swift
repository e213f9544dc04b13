// SMP integration: Tests/Guests/smp booted with --smp N under TCG on pc
// (SeaBIOS, multiboot) and microvm (PVH); every CPU must come up and the
// cross-CPU counters must be exact.
import Foundation
import Testing

extension Integration {
    static let smp: Result<String, Error> = Result { try bake("Tests/Guests/smp").path }
}

@Suite(.serialized) struct SMPTests {
    @Test(arguments: [("pc", 1), ("pc", 2), ("pc", 4), ("pc", 8), ("microvm", 2), ("microvm", 4)])
    func everyProcessorComesUpAndCountsExactly(machine: String, processors: Int) throws {
        let image = try Integration.smp.get()
        let run = try Integration.run(["run", "qemu", "-i", "--timeout", "300", "--machine", machine, "--smp", String(processors), image])
        #expect(run.stdout.contains("smp: \(processors) cpus online\n"), "\(run.stdout)\n\(run.stderr)")
        #expect(run.stdout.contains("smp: pinned work ran where it was sent\n"))
        let total = 100_000 * processors
        #expect(run.stdout.contains("smp: atomic total \(total) of \(total)\n"))
        let locked = 16_000 / processors * processors
        #expect(run.stdout.contains("smp: locked total \(locked) of \(locked)\n"))
        #expect(run.stdout.contains("smp: heap churn on \(processors) cpus: 0 corrupted blocks, bytes in use back to start\n"), "\(run.stdout)")
        #expect(run.status == 0, "\(run.stdout)\n\(run.stderr)")
    }

    @Test func aPanicOnAnApplicationProcessorStopsTheGuestOnce() throws {
        let image = try Integration.smp.get()
        let run = try Integration.run(["run", "qemu", "-i", "--timeout", "300", "--machine", "pc", "--smp", "2", image, "--", "panic-ap"])
        #expect(run.status == 120, "\(run.stdout)\n\(run.stderr)")
        let reports = run.stdout.components(separatedBy: "rumprun: panic: panic on an application processor").count - 1
        #expect(reports == 1, "\(run.stdout)")
    }

    @Test func smpOptionOutsideTheLimitIsAClearError() throws {
        let run = try Integration.run(["run", "qemu", "-i", "--smp", "65", "/nonexistent.img"])
        #expect(run.status == 64)
        #expect(run.stderr.contains("--smp must be 1 to 64"), "\(run.stderr)")
    }
}
