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
}
