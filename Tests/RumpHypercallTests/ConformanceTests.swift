// Runs the C conformance harness (Sources/RumpUserConformance), a stand-in
// rump kernel, against the Swift implementation linked into this process.

import Foundation
import RumpUserConformance
import Testing

@testable import RumpHypercall

/// Installs the harness kernel once per process.
let harnessReady: Bool = rumpconf_setup(2) == 0

/// A scratch directory for file and block I/O.
let scratchDirectory: String = {
    let path = NSTemporaryDirectory() + "rumphypercall-\(getpid())"
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}()

func expectSuite(_ failures: Int32, _ name: String, sourceLocation: SourceLocation = #_sourceLocation) {
    let log = String(cString: rumpconf_failure_log())
    #expect(failures == 0, "\(name): \(failures) failed checks\n\(log)", sourceLocation: sourceLocation)
    #expect(rumpconf_checks() > 0, "\(name) checked nothing", sourceLocation: sourceLocation)
}

/// All hypercall tests share the harness kernel, so they run one at a time.
@Suite("rumpuser conformance", .serialized)
struct RumpuserConformanceTests {
    init() { #expect(harnessReady) }

    @Test func initialization() { expectSuite(rumpconf_test_init(), "init") }
    @Test func memory() { expectSuite(rumpconf_test_memory(), "memory") }
    @Test func files() { expectSuite(rumpconf_test_files(scratchDirectory), "files") }
    @Test func clocks() { expectSuite(rumpconf_test_clocks(), "clocks") }
    @Test func parameters() { expectSuite(rumpconf_test_params(), "params") }
    @Test func errnoAndKill() { expectSuite(rumpconf_test_errno_and_kill(), "errno and kill") }
    @Test func random() { expectSuite(rumpconf_test_random(), "random") }
    @Test func threads() { expectSuite(rumpconf_test_threads(), "threads") }
    @Test func curlwp() { expectSuite(rumpconf_test_curlwp(), "curlwp") }
    @Test func mutexes() { expectSuite(rumpconf_test_mutex(), "mutex") }
    @Test func rwlocks() { expectSuite(rumpconf_test_rwlock(), "rwlock") }
    @Test func conditionVariables() { expectSuite(rumpconf_test_condvar(), "condvar") }
    @Test func components() { expectSuite(rumpconf_test_components(), "components") }
    @Test func console() { expectSuite(rumpconf_test_console(), "console") }
    @Test func exitAndPanic() { expectSuite(rumpconf_test_exit(), "exit") }
    @Test func daemonize() { expectSuite(rumpconf_test_daemonize(), "daemonize") }

    @Test("10 000 asynchronous bios, each completion checked")
    func blockIO() {
        let before = counters()
        expectSuite(rumpconf_test_bio(scratchDirectory, 10_000), "bio")
        // 10 000 writes + 10 000 reads + the short read + the failed write.
        #expect(counters().biodones - before.biodones == 20_002)
    }

    @Test("dl_bootstrap hands over the harness's link sets")
    func dynamicLoader() {
        expectSuite(rumpconf_test_dl_bootstrap(), "dl_bootstrap")
        var report = rumpconf_dl_report()
        rumpconf_get_dl_report(&report)
        #expect(report.modules_seen == 2)
        #expect(report.components_seen == 1)
        #expect(report.evcnts_seen == 1)
    }

    @Test("stress: mutexes, exact counts") func stressMutex() {
        expectSuite(rumpconf_stress_mutex(4, 20_000), "stress mutex")
    }
    @Test("stress: rwlocks with upgrade and downgrade") func stressRWLock() {
        expectSuite(rumpconf_stress_rwlock(4, 20_000), "stress rwlock")
    }
    @Test("stress: producer/consumer on condition variables") func stressCondvar() {
        expectSuite(rumpconf_stress_condvar(3, 20_000), "stress condvar")
    }
    @Test("stress: thread create/join storms") func stressThreads() {
        expectSuite(rumpconf_stress_threads(10, 50), "stress threads")
    }

    @Test("no thread ever waited seconds for a CPU")
    func noCPUStarvation() {
        #expect(counters().cpu_waits_over_limit == 0)
        #expect(counters().backend_unschedules == counters().backend_schedules)
    }
}

func counters() -> rumpconf_counters {
    var value = rumpconf_counters()
    rumpconf_get_counters(&value)
    return value
}
