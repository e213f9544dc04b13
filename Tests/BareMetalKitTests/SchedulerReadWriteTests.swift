// Tests of the scheduler's read-write locks (shared readers, exclusive
// writer, FIFO hand-off, downgrade/upgrade, misuse), park/unpark (block and
// wake with a pending-wake token, timeouts) and mutex-free wait queues, plus
// a seeded random read-write workload checked against a reference model.
import Testing
@testable import BareMetalKit

struct SchedulerReadWriteTests {
    /// Makes `thread` the running thread (it must be runnable and first in line).
    func run(_ scheduler: inout Scheduler, _ thread: ThreadID) {
        #expect(scheduler.schedule() == thread)
    }

    @Test func readersShareWritersExclude() throws {
        var scheduler = Scheduler()
        let lock = scheduler.createReadWriteLock()
        let r1 = scheduler.createThread()
        let r2 = scheduler.createThread()
        let w = scheduler.createThread()
        run(&scheduler, r1)
        #expect(try scheduler.enter(lock, write: false))
        try scheduler.yield()
        run(&scheduler, r2)
        #expect(try scheduler.enter(lock, write: false))
        #expect(scheduler.holders(of: lock)?.readers == 2)
        try scheduler.yield()
        run(&scheduler, w)
        #expect(try !scheduler.tryEnter(lock, write: true))
        #expect(try !scheduler.enter(lock, write: true))  // blocks
        #expect(scheduler.state(of: w) == .blocked(.readWrite(lock), deadline: nil))
        run(&scheduler, r1)
        try scheduler.exit(lock)
        #expect(scheduler.state(of: w) == .blocked(.readWrite(lock), deadline: nil))  // r2 still reads
        try scheduler.yield()
        run(&scheduler, r2)
        try scheduler.exit(lock)
        #expect(scheduler.state(of: w) == .runnable)
        #expect(scheduler.holders(of: lock)?.writer == w)
        #expect(scheduler.holders(of: lock)?.readers == 0)
    }

    @Test func aQueuedWriterHoldsBackLaterReadersAndUnlockWakesAllQueuedReaders() throws {
        var scheduler = Scheduler()
        let lock = scheduler.createReadWriteLock()
        let first = scheduler.createThread()
        let writer = scheduler.createThread()
        let late1 = scheduler.createThread()
        let late2 = scheduler.createThread()
        run(&scheduler, first)
        #expect(try scheduler.enter(lock, write: false))
        try scheduler.yield()
        run(&scheduler, writer)
        #expect(try !scheduler.enter(lock, write: true))
        run(&scheduler, late1)
        #expect(try !scheduler.tryEnter(lock, write: false))  // FIFO: behind the writer
        #expect(try !scheduler.enter(lock, write: false))
        run(&scheduler, late2)
        #expect(try !scheduler.enter(lock, write: false))
        run(&scheduler, first)
        try scheduler.exit(lock)
        #expect(scheduler.holders(of: lock)?.writer == writer)
        try scheduler.yield()
        run(&scheduler, writer)
        try scheduler.exit(lock)
        #expect(scheduler.holders(of: lock)?.readers == 2)
        #expect(scheduler.state(of: late1) == .runnable)
        #expect(scheduler.state(of: late2) == .runnable)
    }

    @Test func downgradeAndUpgrade() throws {
        var scheduler = Scheduler()
        let lock = scheduler.createReadWriteLock()
        let owner = scheduler.createThread()
        let reader = scheduler.createThread()
        run(&scheduler, owner)
        #expect(try scheduler.enter(lock, write: true))
        try scheduler.yield()
        run(&scheduler, reader)
        #expect(try !scheduler.enter(lock, write: false))
        run(&scheduler, owner)
        try scheduler.downgrade(lock)
        #expect(scheduler.holders(of: lock)?.readers == 2)
        #expect(scheduler.state(of: reader) == .runnable)
        #expect(try !scheduler.tryUpgrade(lock))  // two readers
        try scheduler.exit(lock)
        try scheduler.yield()
        run(&scheduler, reader)
        #expect(try scheduler.tryUpgrade(lock))
        #expect(scheduler.holders(of: lock)?.writer == reader)
    }

    @Test func misuseIsReported() throws {
        var scheduler = Scheduler()
        let lock = scheduler.createReadWriteLock()
        let mutex = scheduler.createMutex()
        let a = scheduler.createThread()
        let b = scheduler.createThread()
        run(&scheduler, a)
        #expect(throws: SchedulerError.notHeld(lock: lock)) { try scheduler.exit(lock) }
        #expect(throws: SchedulerError.wrongObject(mutex)) { _ = try scheduler.enter(mutex, write: true) }
        #expect(try scheduler.enter(lock, write: true))
        #expect(throws: SchedulerError.relock(mutex: lock)) { _ = try scheduler.enter(lock, write: false) }
        try scheduler.yield()
        run(&scheduler, b)
        #expect(throws: SchedulerError.notOwner(mutex: lock, thread: b)) { try scheduler.exit(lock) }
        #expect(throws: SchedulerError.notOwner(mutex: lock, thread: b)) { try scheduler.downgrade(lock) }
    }

    @Test func parkUnparkKeepsAnEarlyWakeAndTimesOut() throws {
        var scheduler = Scheduler()
        let t = scheduler.createThread()
        run(&scheduler, t)
        #expect(try scheduler.park())
        #expect(scheduler.state(of: t) == .blocked(.parked, deadline: nil))
        #expect(scheduler.schedule() == nil)
        let woken = scheduler.unpark(t)
        #expect(woken)
        run(&scheduler, t)
        #expect(scheduler.wakeReason(of: t) == .signaled)
        // A wake while running is kept for the next park.
        let pending = scheduler.unpark(t)
        #expect(pending)
        #expect(try !scheduler.park())
        #expect(scheduler.state(of: t) == .running)
        // Timed park.
        #expect(try scheduler.park(deadline: 500))
        #expect(scheduler.advanceTime(to: 499) == 0)
        #expect(scheduler.advanceTime(to: 500) == 1)
        run(&scheduler, t)
        #expect(scheduler.wakeReason(of: t) == .timedOut)
        // A later unpark does not resurrect the cancelled timer.
        #expect(scheduler.nextDeadline == nil)
        try scheduler.exit(status: 3)
        let exitedWoken = scheduler.unpark(t)
        let unknownWoken = scheduler.unpark(ThreadID(rawValue: 99))
        #expect(!exitedWoken)
        #expect(!unknownWoken)
    }

    @Test func waitQueuesWithoutAMutex() throws {
        var scheduler = Scheduler()
        let queue = scheduler.createCondition()
        let a = scheduler.createThread()
        let b = scheduler.createThread()
        let c = scheduler.createThread()
        run(&scheduler, a)
        try scheduler.wait(queue, deadline: nil)
        run(&scheduler, b)
        try scheduler.wait(queue, deadline: 1_000)
        run(&scheduler, c)
        try scheduler.signal(queue)
        #expect(scheduler.state(of: a) == .runnable)
        #expect(scheduler.state(of: b) == .blocked(.condition(queue), deadline: 1_000))
        #expect(scheduler.advanceTime(to: 1_000) == 1)
        #expect(scheduler.wakeReason(of: b) == .timedOut)
        try scheduler.broadcast(queue)  // nobody left: no effect
        #expect(scheduler.state(of: a) == .runnable)
    }

    /// Random enters and exits by 6 threads against a model of who holds
    /// the lock: never a writer together with anyone else, every thread
    /// eventually gets through, counts match.
    @Test(arguments: [1, 2, 3, 4, 5] as [UInt64])
    func randomWorkloadAgainstModel(seed: UInt64) throws {
        var random = SplitMixRandom(seed: seed)
        var scheduler = Scheduler()
        let lock = scheduler.createReadWriteLock()
        let threads = (0..<6).map { _ in scheduler.createThread() }
        // Per thread: nil = outside, false = reading, true = writing; pending = queued.
        var holding: [ThreadID: Bool] = [:]
        var wants: [ThreadID: Bool] = [:]
        var completed = 0
        for _ in 0..<4000 {
            guard let me = scheduler.schedule() else {
                Issue.record("deadlock: nothing runnable, holders \(String(describing: scheduler.holders(of: lock)))")
                return
            }
            if let wanted = wants.removeValue(forKey: me) {
                holding[me] = wanted  // woken holding the lock
            }
            if let writing = holding[me] {
                if !writing, random.next() % 4 == 0 {
                    if try scheduler.tryUpgrade(lock) { holding[me] = true }
                } else {
                    try scheduler.exit(lock)
                    holding[me] = nil
                    completed += 1
                }
            } else {
                let write = random.next() % 3 == 0
                if try scheduler.enter(lock, write: write) { holding[me] = write } else { wants[me] = write }
            }
            // Invariants against the model: holders are those inside plus
            // queued threads the lock was handed to (runnable again).
            let state = try #require(scheduler.holders(of: lock))
            var effective = holding
            for (thread, write) in wants where scheduler.state(of: thread) == .runnable { effective[thread] = write }
            let writers = effective.filter { $0.value }.map(\.key)
            let readers = effective.filter { !$0.value }.count
            #expect(writers.count <= 1)
            #expect(state.writer == writers.first)
            #expect(state.readers == (writers.isEmpty ? readers : 0))
            if let _ = writers.first { #expect(readers == 0) }
            if scheduler.current == me, scheduler.state(of: me) == .running { try scheduler.yield() }
        }
        #expect(completed > 500)
        _ = threads
    }
}

