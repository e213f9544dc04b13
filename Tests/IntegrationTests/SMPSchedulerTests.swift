// SMP scheduler integration: Tests/Guests/smpsched booted with --smp N
// under TCG. Threads must run on every CPU: exact shared counters under the
// mutex and with atomics, condition ping-pong between threads bound to CPU 0
// and CPU 1, bound threads that never run elsewhere, unbound threads that
// spread over all CPUs, semaphores and read-write locks under contention,
// block/wake across CPUs, and console lines printed at once from every CPU
// arriving whole. The guest exits with its failure count.
import Foundation
import Testing

extension Integration {
    static let smpsched: Result<String, Error> = Result { try bake("Tests/Guests/smpsched").path }
}

@Suite(.serialized) struct SMPSchedulerTests {
    @Test(arguments: [("pc", 1), ("pc", 2), ("pc", 4), ("pc", 8), ("microvm", 2)])
    func threadsRunOnEveryProcessor(machine: String, processors: Int) throws {
        let image = try Integration.smpsched.get()
        let run = try Integration.run(["run", "qemu", "-i", "--timeout", "600", "--machine", machine, "--smp", String(processors), image])
        let console = "\(run.stdout)\n\(run.stderr)"
        #expect(run.stdout.contains("smpsched: \(processors) cpus online, threads run on \(processors)\n"), "\(console)")
        let locked = 2 * processors * 400
        let atomic = 2 * processors * 20_000
        #expect(run.stdout.contains("smpsched: mutex total \(locked) of \(locked), atomic total \(atomic) of \(atomic)\n"), "\(console)")
        let pong = processors > 1 ? 1 : 0
        #expect(run.stdout.contains("smpsched: ping-pong cpu 0 and cpu \(pong): 1000 turns of 1000, 0 on the wrong cpu\n"), "\(console)")
        #expect(run.stdout.contains("smpsched: bound threads: \(processors * 40) runs recorded, 0 on another cpu\n"), "\(console)")
        #expect(run.stdout.contains("smpsched: \(processors) busy unbound threads ran on \(processors) of \(processors) cpus, \(processors) at once\n"), "\(console)")
        #expect(run.stdout.contains("smpsched: semaphore of 2: \(3 * processors * 60) passes of \(3 * processors * 60), at most "), "\(console)")
        #expect(run.stdout.contains("smpsched: rwlock: value \(processors * 60) of \(processors * 60), 0 violations\n"), "\(console)")
        #expect(run.stdout.contains("smpsched: block/wake on cpu \(processors - 1): 200 of 200 wakes seen\n"), "\(console)")
        // Lines printed at once by threads on every CPU arrive whole.
        let printed = run.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
            .filter { $0.contains("smpsched-line") }
        #expect(printed.count == processors * 40, "\(console)")
        let whole = printed.filter { $0.hasPrefix("smpsched-line cpu ") && $0.hasSuffix(" abcdefghijklmnopqrstuvwxyz0123456789 end") }
        #expect(whole.count == processors * 40, "\(console)")
        #expect(!run.stdout.contains("FAIL"), "\(console)")
        #expect(run.stdout.contains("smpsched: 0 failures\n"), "\(console)")
        #expect(run.status == 0, "\(console)")
    }

    /// The one-CPU thread guest on two CPUs, with FSGSBASE offered: its
    /// threads move between the CPUs, and every thread keeps its own TLS
    /// (FS base loaded with WRFSBASE on the AP too), mutex and read-write
    /// lock counts stay exact. Its ordering checks assume one CPU and are
    /// not looked at here.
    @Test(arguments: ["", "-cpu max"])
    func threadLocalStorageAndLocksHoldOnTwoProcessors(cpu: String) throws {
        let image = try Integration.threads.get()
        var arguments = ["run", "qemu", "-i", "--timeout", "300", "--machine", "pc", "--smp", "2"]
        if !cpu.isEmpty { arguments += ["-g", cpu] }
        let run = try Integration.run(arguments + [image])
        let console = "\(run.stdout)\n\(run.stderr)"
        #expect(run.stdout.contains("tls: 10 threads x 1000 yields kept their values (mismatches 0)"), "\(console)")
        #expect(run.stdout.contains("tls: FS base written with " + (cpu.isEmpty ? "wrmsr" : "wrfsbase")), "\(console)")
        #expect(run.stdout.contains("mutex: count 5000 of 5000"), "\(console)")
        #expect(run.stdout.contains("rwlock: count 1200 of 1200, violations 0"), "\(console)")
        #expect(run.stdout.contains("semaphore: 1000 produced, 1000 consumed"), "\(console)")
        #expect(run.stdout.contains("threads: "), "\(console)")
        #expect(run.status == 0 || run.status == 1, "\(console)")  // 1: the one-CPU ordering checks
        #expect(!run.stdout.contains("panic") && !run.stdout.contains("exception"), "\(console)")
    }

    /// The rumpuser conformance guest (its fake kernel's threads, locks,
    /// condition variables, block I/O and a PCI interrupt handled on the
    /// interrupt thread) on 3 and 4 CPUs. Its one check written for one CPU
    /// is `_RUMPUSER_NCPU == "1"`: here it must report N instead, and be the
    /// only failure. Before the interrupt layer sent device lines to the
    /// boot CPU's APIC ID (not the ID of the CPU that registered them), a
    /// driver set up by a thread on an AP never saw an interrupt (0 of 100).
    @Test(arguments: [3, 4])
    func rumpuserConformanceOnSeveralProcessors(processors: Int) throws {
        let run = try RumpUserGuestImage.run(machine: "pc", ["--smp", String(processors), "-e", "RUMPTEST_PCI_IRQ=1", "-I", "net0,e1000,user"])
        let console = "\(run.stdout)\n\(run.stderr)"
        #expect(run.stdout.contains("NCPU: 0 '\(processors)'"), "\(console)")
        #expect(run.stdout.contains("pci: 100 interrupts handled on the interrupt thread, 0 unclaimed calls"), "\(console)")
        #expect(run.stdout.contains(" checks, 1 failures"), "\(console)")
        #expect(run.status == 1, "\(console)")
    }
}
