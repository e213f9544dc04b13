// Tests of the scheduler model on several CPUs: where a runnable thread is
// queued (bound CPU, idle CPU, least-loaded CPU), which idle CPUs must be
// woken by IPI (kicks), work stealing of unbound threads only, affinity
// kept through blocking and waking from another CPU, timers seen by an idle
// CPU, and a seeded random workload on four CPUs checked against invariants.
import Testing
@testable import BareMetalKit

struct SchedulerProcessorTests {
    @Test func oneProcessorBehavesAsBefore() throws {
        var scheduler = Scheduler(priorityLevels: 3)
        #expect(scheduler.processorCount == 1)
        let a = scheduler.createThread(priority: 1)
        let b = scheduler.createThread(priority: 1)
        #expect(scheduler.schedule() == a)
        try scheduler.sleep(until: 100)
        #expect(scheduler.schedule() == b)
        #expect(scheduler.takeKicks() == 0)
        #expect(scheduler.steals == 0)
        #expect(throws: SchedulerError.noSuchProcessor(1)) { _ = try scheduler.createThread(boundTo: 1) }
    }

    @Test func newUnboundThreadsGoToIdleProcessorsFirstAndKickThem() throws {
        var scheduler = Scheduler(processors: 4)
        let main = scheduler.createThread()
        #expect(scheduler.schedule() == main)
        #expect(scheduler.takeKicks() == 0)  // CPU 0 was not idle
        var placed: [Int] = []
        for _ in 0..<3 {
            let thread = scheduler.createThread()
            placed.append((0..<4).first { scheduler.runQueues[$0].contains { $0.contains(thread) } } ?? -1)
        }
        #expect(placed == [1, 2, 3])
        #expect(scheduler.takeKicks() == 0b1110)
        #expect(scheduler.takeKicks() == 0)
        // No CPU idle any more (each was kicked): the least-loaded queue,
        // on a tie the creator's CPU.
        let fourth = scheduler.createThread()
        #expect(scheduler.queuedCount(on: 0) == 1)
        #expect(scheduler.lastProcessor(of: fourth) == 0)
        #expect(scheduler.takeKicks() == 0)
        // CPU 2 runs its thread to the end; the next one goes to the
        // emptiest CPU (running threads count too).
        scheduler.activeProcessor = 2
        _ = scheduler.schedule()
        try scheduler.exit(status: 0)
        scheduler.activeProcessor = 0
        _ = scheduler.createThread()
        #expect(scheduler.queuedCount(on: 2) == 1)
    }

    @Test func boundThreadsRunOnlyOnTheirProcessor() throws {
        var scheduler = Scheduler(processors: 2)
        let main = scheduler.createThread()
        #expect(scheduler.schedule() == main)
        let pinned = try scheduler.createThread(boundTo: 1)
        #expect(scheduler.affinity(of: pinned) == 1)
        #expect(scheduler.takeKicks() == 0b10)
        // CPU 0 goes idle: it must not steal the bound thread.
        try scheduler.sleep(until: 1_000)
        #expect(scheduler.schedule() == nil)
        #expect(!scheduler.hasWorkForActiveProcessor)
        scheduler.activeProcessor = 1
        #expect(scheduler.schedule() == pinned)
        #expect(scheduler.steals == 0)
        // Blocked and woken from CPU 0 (as by an interrupt handler there):
        // it goes back to CPU 1's queue, and CPU 1, idle, is kicked.
        let parked = try scheduler.park()
        #expect(parked)
        #expect(scheduler.schedule() == nil)
        scheduler.enterIdle()
        scheduler.activeProcessor = 0
        let woken = scheduler.unpark(pinned)
        #expect(woken)
        #expect(scheduler.queuedCount(on: 1) == 1)
        #expect(scheduler.queuedCount(on: 0) == 0)
        #expect(scheduler.takeKicks() == 0b10)
        #expect(scheduler.schedule() == nil)
        scheduler.activeProcessor = 1
        #expect(scheduler.schedule() == pinned)
        #expect(scheduler.lastProcessor(of: pinned) == 1)
    }

    @Test func idleProcessorStealsUnboundThreadsOldestFirst() throws {
        var scheduler = Scheduler(processors: 2)
        let main = scheduler.createThread()
        #expect(scheduler.schedule() == main)
        scheduler.activeProcessor = 1
        let busy = scheduler.createThread()  // CPU 1 is idle: it goes there
        #expect(scheduler.schedule() == busy)
        scheduler.activeProcessor = 0
        // Both CPUs run: new threads go to the least-loaded queue, which is
        // CPU 0's on a tie (the creator's).
        let pinned = try scheduler.createThread(boundTo: 0)
        let first = scheduler.createThread()
        let second = scheduler.createThread()
        #expect(scheduler.queuedCount(on: 0) + scheduler.queuedCount(on: 1) == 3)
        // CPU 1's thread ends: it takes its own queue first, then steals
        // unbound threads from CPU 0, never the bound one.
        scheduler.activeProcessor = 1
        try scheduler.exit(status: 0)
        var ranOnOne: [ThreadID] = []
        while let next = scheduler.schedule() {
            ranOnOne.append(next)
            try scheduler.exit(status: 0)
        }
        #expect(Set(ranOnOne) == [first, second])
        #expect(!ranOnOne.contains(pinned))
        scheduler.activeProcessor = 0
        try scheduler.exit(status: 0)
        #expect(scheduler.schedule() == pinned)
    }

    @Test func stealingKeepsPriorityOrder() throws {
        var scheduler = Scheduler(priorityLevels: 3, processors: 2)
        let main = scheduler.createThread(priority: 1)
        #expect(scheduler.schedule() == main)
        scheduler.activeProcessor = 1
        let blocker = scheduler.createThread(priority: 1)
        #expect(scheduler.schedule() == blocker)
        scheduler.activeProcessor = 0
        let low = scheduler.createThread(priority: 0)
        let high = scheduler.createThread(priority: 2)
        _ = (low, high)
        scheduler.activeProcessor = 1
        try scheduler.exit(status: 0)
        // Whichever queue they are in, CPU 1 takes the higher priority first.
        #expect(scheduler.schedule() == high)
    }

    @Test func anIdleProcessorArmsItsOwnTimerWithoutAKick() throws {
        var scheduler = Scheduler(processors: 2)
        let a = scheduler.createThread()
        #expect(scheduler.schedule() == a)
        try scheduler.sleep(until: 500)
        #expect(scheduler.schedule() == nil)
        scheduler.enterIdle()  // it waits until 500 itself
        #expect(scheduler.takeKicks() == 0)
        #expect(scheduler.nextDeadline == 500)
        // Time passes on CPU 1 (its timer or an interrupt): the sleeper is
        // queued where it last ran, and that idle CPU is kicked.
        scheduler.activeProcessor = 1
        scheduler.leaveIdle()
        #expect(scheduler.advanceTime(to: 500) == 1)
        #expect(scheduler.queuedCount(on: 0) == 1)
        #expect(scheduler.takeKicks() == 0b01)
    }

    @Test func earlierDeadlineKicksAnIdleProcessorWhenTheSleeperKeepsTheCPUBusy() throws {
        var scheduler = Scheduler(processors: 2)
        let a = scheduler.createThread()
        #expect(scheduler.schedule() == a)
        _ = scheduler.takeKicks()
        // CPU 1 is idle (never ran anything); CPU 0 has another thread queued.
        let b = try scheduler.createThread(boundTo: 0)
        try scheduler.sleep(until: 1_000)
        #expect(scheduler.schedule() == b)
        #expect(scheduler.takeKicks() == 0b10)
    }

    @Test func mutexHandOffAcrossProcessors() throws {
        var scheduler = Scheduler(processors: 2)
        let mutex = scheduler.createMutex()
        let a = try scheduler.createThread(boundTo: 0)
        let b = try scheduler.createThread(boundTo: 1)
        _ = scheduler.takeKicks()
        #expect(scheduler.schedule() == a)
        let locked = try scheduler.lock(mutex)
        #expect(locked)
        scheduler.activeProcessor = 1
        #expect(scheduler.schedule() == b)
        let acquired = try scheduler.lock(mutex)
        #expect(!acquired)  // b blocks on CPU 1
        #expect(scheduler.schedule() == nil)
        scheduler.enterIdle()
        scheduler.activeProcessor = 0
        try scheduler.unlock(mutex)  // hands it to b, wakes CPU 1
        #expect(scheduler.owner(of: mutex) == b)
        #expect(scheduler.takeKicks() == 0b10)
        scheduler.activeProcessor = 1
        #expect(scheduler.schedule() == b)
    }

    /// Random operations on four CPUs: no thread is ever running on two
    /// CPUs, bound threads only run on their CPU, every runnable thread is
    /// in exactly one queue, and the work finishes.
    @Test func randomWorkloadOnFourProcessorsKeepsTheInvariants() throws {
        var generator = SplitMixRandom(seed: 0x5EED_CAFE)
        var scheduler = Scheduler(priorityLevels: 3, processors: 4)
        let mutex = scheduler.createMutex()
        var bound: [ThreadID: Int] = [:]
        var all: [ThreadID] = []
        for index in 0..<24 {
            let priority = Int(generator.next() % 3)
            if index % 3 == 0 {
                let cpu = Int(generator.next() % 4)
                let thread = try scheduler.createThread(priority: priority, boundTo: cpu)
                bound[thread] = cpu
                all.append(thread)
            } else {
                all.append(scheduler.createThread(priority: priority))
            }
        }
        var ranOn: [ThreadID: Set<Int>] = [:]
        var remainingWork = [Int](repeating: 6, count: all.count)
        var time: UInt64 = 0
        var steps = 0
        while steps < 20_000 {
            steps += 1
            let cpu = Int(generator.next() % 4)
            scheduler.activeProcessor = cpu
            time += 1
            scheduler.advanceTime(to: time)
            guard let thread = scheduler.schedule() else {
                if scheduler.nextDeadline == nil && !scheduler.hasRunnableThreads && !scheduler.anyThreadRunning { break }
                continue
            }
            ranOn[thread, default: []].insert(cpu)
            if scheduler.owner(of: mutex) == thread {
                try scheduler.unlock(mutex)  // it waited for the mutex and got it
                continue
            }
            if let cpuBound = bound[thread] { #expect(cpuBound == cpu) }
            // Invariants.
            for other in 0..<4 where other != cpu { #expect(scheduler.running(on: other) != thread) }
            for candidate in all where scheduler.state(of: candidate) == .runnable {
                let queued = (0..<4).reduce(0) { total, q in total + scheduler.runQueues[q].reduce(0) { $0 + $1.filter { $0 == candidate }.count } }
                #expect(queued == 1)
            }
            switch generator.next() % 5 {
            case 0: try scheduler.yield()
            case 1: try scheduler.sleep(until: time + generator.next() % 20)
            case 2:
                if try scheduler.lock(mutex) {
                    try scheduler.unlock(mutex)
                }
            default:
                remainingWork[thread.rawValue] -= 1
                if remainingWork[thread.rawValue] <= 0 { try scheduler.exit(status: 0) }
            }
            _ = scheduler.takeKicks()
        }
        for thread in all {
            if case .exited = scheduler.state(of: thread) {} else { Issue.record("thread \(thread.rawValue) did not finish") }
        }
        #expect(ranOn.values.contains { $0.count > 1 })  // unbound threads migrated
        #expect(scheduler.steals > 0)
    }
}

extension SchedulerProcessorTests {
    @Test func aYieldingUnboundThreadMovesToAnIdleProcessor() throws {
        var scheduler = Scheduler(processors: 2)
        scheduler.activeProcessor = 1
        let x = scheduler.createThread()
        #expect(scheduler.schedule() == x)
        scheduler.activeProcessor = 0
        let a = try scheduler.createThread(boundTo: 0)
        let b = scheduler.createThread()
        let c = try scheduler.createThread(boundTo: 0)
        #expect(scheduler.queuedCount(on: 0) == 3)  // CPU 1 is busy: a tie, the creator's CPU
        #expect(scheduler.schedule() == a)
        try scheduler.exit(status: 0)
        #expect(scheduler.schedule() == b)
        scheduler.activeProcessor = 1
        try scheduler.exit(status: 0)
        #expect(scheduler.schedule() == nil)  // c is bound to CPU 0
        scheduler.enterIdle()
        scheduler.activeProcessor = 0
        _ = scheduler.takeKicks()
        try scheduler.yield()  // c waits on CPU 0, CPU 1 is idle
        #expect(scheduler.queuedCount(on: 1) == 1)
        #expect(scheduler.takeKicks() == 0b10)
        #expect(scheduler.schedule() == c)
        scheduler.activeProcessor = 1
        #expect(scheduler.schedule() == b)
        #expect(scheduler.steals == 0)
    }
}
