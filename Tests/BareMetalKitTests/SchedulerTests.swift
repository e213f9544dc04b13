// Tests of the scheduler state machine: run order, sleep and timeouts,
// join, mutex hand-off, condition variables (timed wait), semaphores, and a
// seeded random workload checked against invariants.
import Testing
@testable import BareMetalKit

struct SchedulerTests {
    @Test func priorityThenFIFOAndYield() throws {
        var scheduler = Scheduler(priorityLevels: 3)
        let low = scheduler.createThread(priority: 0)
        let a = scheduler.createThread(priority: 1)
        let b = scheduler.createThread(priority: 1)
        #expect(scheduler.schedule() == a)
        #expect(scheduler.schedule() == a)  // keeps the CPU: nothing higher
        try scheduler.yield()
        #expect(scheduler.schedule() == b)
        try scheduler.yield()
        #expect(scheduler.schedule() == a)
        try scheduler.exit(status: 0)
        #expect(scheduler.schedule() == b)
        try scheduler.exit(status: 0)
        #expect(scheduler.schedule() == low)
        let high = scheduler.createThread(priority: 2)
        #expect(scheduler.schedule() == high)  // preempts at the next scheduling point
        #expect(scheduler.state(of: low) == .runnable)
    }

    @Test func sleepWakesAtTheDeadlineAndIdleInBetween() throws {
        var scheduler = Scheduler()
        let sleeper = scheduler.createThread()
        #expect(scheduler.schedule() == sleeper)
        try scheduler.sleep(until: 1_000)
        #expect(scheduler.state(of: sleeper) == .blocked(.sleep, deadline: 1_000))
        #expect(scheduler.schedule() == nil)
        #expect(scheduler.nextDeadline == 1_000)
        #expect(scheduler.advanceTime(to: 999) == 0)
        #expect(scheduler.advanceTime(to: 1_000) == 1)
        #expect(scheduler.schedule() == sleeper)
        #expect(scheduler.nextDeadline == nil)
        #expect(throws: SchedulerError.noCurrentThread) {
            var idle = Scheduler()
            try idle.yield()
        }
    }

    @Test func joinReturnsTheExitStatus() throws {
        var scheduler = Scheduler()
        let parent = scheduler.createThread()
        let child = scheduler.createThread()
        #expect(scheduler.schedule() == parent)
        #expect(try scheduler.join(child) == nil)
        #expect(scheduler.state(of: parent) == .blocked(.join(child), deadline: nil))
        #expect(scheduler.schedule() == child)
        try scheduler.exit(status: 42)
        #expect(scheduler.schedule() == parent)
        #expect(scheduler.exitStatus(of: child) == 42)
        #expect(throws: SchedulerError.alreadyJoined(child)) { _ = try scheduler.join(child) }
        #expect(throws: SchedulerError.joinSelf) { _ = try scheduler.join(parent) }
        // Joining a thread that already exited returns at once.
        let quick = scheduler.createThread()
        try scheduler.yield()
        #expect(scheduler.schedule() == quick)
        try scheduler.exit(status: 7)
        #expect(scheduler.schedule() == parent)
        #expect(try scheduler.join(quick) == 7)
    }

    @Test func mutexHandsOffInFIFOOrder() throws {
        var scheduler = Scheduler()
        let t1 = scheduler.createThread(), t2 = scheduler.createThread(), t3 = scheduler.createThread()
        let mutex = scheduler.createMutex()
        #expect(scheduler.schedule() == t1)
        #expect(try scheduler.lock(mutex))
        #expect(throws: SchedulerError.relock(mutex: mutex)) { _ = try scheduler.lock(mutex) }
        try scheduler.yield()
        #expect(scheduler.schedule() == t2)
        #expect(try !scheduler.lock(mutex))
        #expect(scheduler.schedule() == t3)
        #expect(try !scheduler.tryLock(mutex))
        #expect(try !scheduler.lock(mutex))
        #expect(scheduler.schedule() == t1)
        try scheduler.unlock(mutex)
        #expect(scheduler.owner(of: mutex) == t2)  // handed over, not grabbed by whoever runs first
        try scheduler.exit(status: 0)
        #expect(scheduler.schedule() == t2)
        try scheduler.unlock(mutex)
        #expect(scheduler.owner(of: mutex) == t3)
        #expect(throws: SchedulerError.notOwner(mutex: mutex, thread: t2)) { try scheduler.unlock(mutex) }
    }

    @Test func conditionTimedWaitTimesOutAndReacquires() throws {
        var scheduler = Scheduler()
        let waiter = scheduler.createThread(), other = scheduler.createThread()
        let mutex = scheduler.createMutex(), condition = scheduler.createCondition()
        #expect(scheduler.schedule() == waiter)
        #expect(try scheduler.lock(mutex))
        try scheduler.wait(condition, mutex: mutex, deadline: 100_000_000)
        #expect(scheduler.owner(of: mutex) == nil)
        #expect(scheduler.schedule() == other)
        #expect(try scheduler.lock(mutex))
        // The timeout fires while `other` holds the mutex: the waiter queues for it.
        scheduler.advanceTime(to: 100_000_000)
        #expect(scheduler.state(of: waiter) == .blocked(.mutex(mutex), deadline: nil))
        try scheduler.unlock(mutex)
        #expect(scheduler.owner(of: mutex) == waiter)
        try scheduler.exit(status: 0)
        #expect(scheduler.schedule() == waiter)
        #expect(scheduler.wakeReason(of: waiter) == .timedOut)
    }

    @Test func signalAndBroadcast() throws {
        var scheduler = Scheduler()
        let a = scheduler.createThread(), b = scheduler.createThread(), signaller = scheduler.createThread()
        let mutex = scheduler.createMutex(), condition = scheduler.createCondition()
        for thread in [a, b] {
            #expect(scheduler.schedule() == thread)
            #expect(try scheduler.lock(mutex))
            try scheduler.wait(condition, mutex: mutex, deadline: 5_000)
        }
        #expect(scheduler.schedule() == signaller)
        try scheduler.signal(condition)
        #expect(scheduler.owner(of: mutex) == a && scheduler.state(of: a) == .runnable)
        try scheduler.broadcast(condition)
        #expect(scheduler.state(of: b) == .blocked(.mutex(mutex), deadline: nil))
        scheduler.advanceTime(to: 10_000)  // timers were cancelled: nothing changes
        #expect(scheduler.wakeReason(of: b) == .signaled)
        try scheduler.exit(status: 0)
        #expect(scheduler.schedule() == a)
        #expect(scheduler.wakeReason(of: a) == .signaled)
        try scheduler.unlock(mutex)
        #expect(scheduler.owner(of: mutex) == b)
    }

    @Test func semaphoreCountsAndTimesOut() throws {
        var scheduler = Scheduler()
        let consumer = scheduler.createThread(), producer = scheduler.createThread()
        let semaphore = scheduler.createSemaphore(count: 1)
        #expect(scheduler.schedule() == consumer)
        #expect(try scheduler.down(semaphore))
        #expect(try !scheduler.down(semaphore, deadline: 50))
        #expect(scheduler.schedule() == producer)
        try scheduler.up(semaphore)
        #expect(scheduler.count(of: semaphore) == 0)  // the unit went to the waiter
        #expect(scheduler.state(of: consumer) == .runnable)
        try scheduler.yield()
        #expect(scheduler.schedule() == consumer)
        #expect(try !scheduler.down(semaphore, deadline: 80))
        #expect(scheduler.schedule() == producer)
        scheduler.advanceTime(to: 80)
        #expect(scheduler.wakeReason(of: consumer) == .timedOut)
        try scheduler.up(semaphore)
        #expect(scheduler.count(of: semaphore) == 1)
    }

    /// Random operations by whichever thread runs; after each step every
    /// thread is in exactly one place and mutual exclusion holds.
    @Test(arguments: [51, 52, 53] as [UInt64])
    func randomWorkloadKeepsInvariants(seed: UInt64) throws {
        var generator = SplitMixRandom(seed: seed)
        var scheduler = Scheduler(priorityLevels: 2)
        let threads = (0..<8).map { scheduler.createThread(priority: $0 % 2) }
        let mutexes = (0..<2).map { _ in scheduler.createMutex() }
        let condition = scheduler.createCondition()
        let semaphore = scheduler.createSemaphore(count: 2)
        var holding: [ThreadID: Set<Int>] = [:]
        var semaphoreUnits: [ThreadID: Int] = [:]
        for _ in 0..<3000 {
            guard let me = scheduler.schedule() else {
                scheduler.advanceTime(to: scheduler.nextDeadline ?? scheduler.now + 1)
                if scheduler.nextDeadline == nil && !scheduler.hasRunnableThreads { break }  // deadlock-free end
                continue
            }
            // A thread woken into a mutex or semaphore it waited for now owns it.
            for (index, mutex) in mutexes.enumerated() where scheduler.owner(of: mutex) == me {
                holding[me, default: []].insert(index)
            }
            let roll = generator.next() % 10
            let index = Int(generator.next() % 2)
            switch roll {
            case 0, 1:
                if holding[me]?.contains(index) != true && holding[me]?.isEmpty ?? true {
                    if try scheduler.lock(mutexes[index]) { holding[me, default: []].insert(index) }
                }
            case 2, 3:
                if let held = holding[me]?.first {
                    try scheduler.unlock(mutexes[held])
                    holding[me]?.remove(held)
                }
            case 4:
                if let held = holding[me]?.first {
                    holding[me]?.remove(held)
                    try scheduler.wait(condition, mutex: mutexes[held], deadline: scheduler.now + generator.next() % 50)
                }
            case 5: try scheduler.broadcast(condition)
            case 6:
                if semaphoreUnits[me, default: 0] == 0 {
                    semaphoreUnits[me] = 1  // counted as held; a timeout gives it back below
                    if try !scheduler.down(semaphore, deadline: scheduler.now + 30) {}
                }
            case 7:
                if semaphoreUnits[me, default: 0] == 1 && scheduler.wakeReason(of: me) != .timedOut {
                    semaphoreUnits[me] = 0
                    try scheduler.up(semaphore)
                } else {
                    semaphoreUnits[me] = 0
                }
            case 8: try scheduler.sleep(until: scheduler.now + generator.next() % 40)
            default: try scheduler.yield()
            }
            scheduler.advanceTime(to: scheduler.now + generator.next() % 5)
            // Invariants: each mutex has at most one owner, recorded holders agree;
            // each thread is running, runnable, blocked or exited; one runs at most.
            for (index, mutex) in mutexes.enumerated() {
                let owners = threads.filter { holding[$0]?.contains(index) == true }
                #expect(owners.count <= 1)
                if let owner = owners.first { #expect(scheduler.owner(of: mutex) == owner) }
            }
            #expect(threads.filter { scheduler.state(of: $0) == .running }.count <= 1)
            let queued = scheduler.runQueues.flatMap { $0 }.flatMap { $0 }
            #expect(Set(queued).count == queued.count)
            for thread in threads {
                #expect((scheduler.state(of: thread) == .runnable) == queued.contains(thread))
            }
        }
    }
}
