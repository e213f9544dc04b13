// smpsched: threads through the scheduler on every CPU (integration tests,
// booted with --smp N). Checks: threads can use every CPU; shared counters
// under the sleeping mutex and with atomics give exact totals; condition
// variable ping-pong between threads bound to two CPUs; a thread bound to
// CPU k only ever runs on CPU k (CPU index from the GS block and APIC ID
// from the local APIC, read on every run); N unbound threads spread over
// all N CPUs; semaphores and read-write locks under contention. Only main
// prints. Exit status: the number of failed checks.
import BareMetalKit
import Rumprun
import Synchronization

let count = Rumprun.processorCount
// Shared with escaping thread bodies: atomics must be globals in Embedded Swift.
let atomic = Atomic<Int>(0)
let stop = Atomic<Bool>(false)
let inside = Atomic<Int>(0)
let passes = Atomic<Int>(0)
let writersInside = Atomic<Int>(0)
let violations = Atomic<Int>(0)
let acknowledged = Atomic<Int>(0)
let readersInside = Atomic<Int>(0)
let most = Atomic<Int>(0)
let printersReady = Atomic<Int>(0)
nonisolated(unsafe) var failures: Int32 = 0

func check(_ condition: Bool, _ message: String) {
    if !condition {
        print("FAIL \(message)")
        failures += 1
    }
}

func join(_ threads: [Thread]) {
    for thread in threads { _ = thread.join() }
}

/// The running CPU as the GS block says, checked against the local APIC.
func runningProcessor() -> Int {
    let index = Rumprun.currentProcessor
    if let apic = Interrupts.localAPIC, let expected = Processors.apicID(of: index), apic.id != expected {
        return -1
    }
    return index
}

print("smpsched: \(count) cpus online, threads run on \(ThreadRuntime.processorsForThreads)")
check(ThreadRuntime.processorsForThreads == count, "threads do not use every CPU")

// 1. Shared counters: 2N unbound threads, each adding under the mutex
// (with a yield inside now and then) and with an atomic.
do {
    let threadCount = 2 * count
    let lockedRounds = 400
    let atomicRounds = 20_000
    let mutex = Mutex()
    nonisolated(unsafe) var locked = 0
    var threads: [Thread] = []
    for index in 0..<threadCount {
        threads.append(Thread.spawn(name: "counter") {
            for round in 0..<lockedRounds {
                mutex.lock()
                let value = locked
                if round % 50 == index % 50 { Thread.yield() }
                locked = value + 1
                mutex.unlock()
            }
            for _ in 0..<atomicRounds { atomic.wrappingAdd(1, ordering: .relaxed) }
            return 0
        }!)
    }
    join(threads)
    let total = atomic.load(ordering: .acquiring)
    print("smpsched: mutex total \(locked) of \(threadCount * lockedRounds), atomic total \(total) of \(threadCount * atomicRounds)")
    check(locked == threadCount * lockedRounds && total == threadCount * atomicRounds, "counter totals")
}

// 2. Condition variable ping-pong between a thread on CPU 0 and one on
// CPU 1 (both on CPU 0 when there is one CPU).
do {
    let rounds = 500
    let mutex = Mutex()
    let condition = Condition()
    nonisolated(unsafe) var turn = 0  // even: ping's turn, odd: pong's
    nonisolated(unsafe) var wrongCPU = 0
    let pongCPU = count > 1 ? 1 : 0
    let ping = Thread.spawn(name: "ping", processor: 0) {
        for round in 0..<rounds {
            mutex.lock()
            while turn != 2 * round { condition.wait(mutex) }
            if runningProcessor() != 0 { wrongCPU += 1 }
            turn += 1
            condition.broadcast()
            mutex.unlock()
        }
        return 0
    }!
    let pong = Thread.spawn(name: "pong", processor: pongCPU) {
        for round in 0..<rounds {
            mutex.lock()
            while turn != 2 * round + 1 { condition.wait(mutex) }
            if runningProcessor() != pongCPU { wrongCPU += 1 }
            turn += 1
            condition.broadcast()
            mutex.unlock()
        }
        return 0
    }!
    join([ping, pong])
    print("smpsched: ping-pong cpu 0 and cpu \(pongCPU): \(turn) turns of \(2 * rounds), \(wrongCPU) on the wrong cpu")
    check(turn == 2 * rounds && wrongCPU == 0, "condition ping-pong")
}

// 3. Bound threads: one per CPU, each recording where it runs after every
// yield and sleep, while unbound busy threads compete for the CPUs.
do {
    let records = 40
    let seen = UnsafeMutablePointer<Int>.allocate(capacity: count * records)
    seen.initialize(repeating: -2, count: count * records)
    var competitors: [Thread] = []
    for _ in 0..<count {
        competitors.append(Thread.spawn(name: "busy") {
            while !stop.load(ordering: .relaxed) { Thread.yield() }
            return 0
        }!)
    }
    var pinned: [Thread] = []
    for cpu in 0..<count {
        pinned.append(Thread.spawn(name: "pinned", processor: cpu) {
            for record in 0..<records {
                seen[cpu * records + record] = runningProcessor()
                if record % 4 == 0 { Thread.sleep(nanoseconds: 100_000) } else { Thread.yield() }
            }
            return 0
        }!)
    }
    join(pinned)
    stop.store(true, ordering: .relaxed)
    join(competitors)
    var wrong = 0
    for cpu in 0..<count {
        for record in 0..<records where seen[cpu * records + record] != cpu { wrong += 1 }
    }
    print("smpsched: bound threads: \(count * records) runs recorded, \(wrong) on another cpu")
    check(wrong == 0 && pinned.allSatisfy { $0.processor != nil }, "bound threads stay on their CPU")
    check(Thread.spawn(processor: count) { 0 } == nil, "a thread bound to a CPU that does not exist is refused")
}

// 4. Spreading: N unbound threads keep their CPUs busy, yielding only to
// each other, until all N run at the same moment on N different CPUs (the
// scheduler moves a thread that gives way to an idle CPU, and idle CPUs
// steal); every CPU then runs one of them. Each records every CPU it ran on.
do {
    // Raw memory: threads on several CPUs write their own slots while
    // others read (an Array could copy on write under them).
    let runningOn = UnsafeMutablePointer<Int>.allocate(capacity: count)
    runningOn.initialize(repeating: -1, count: count)
    let ranOn = UnsafeMutablePointer<UInt64>.allocate(capacity: count)
    ranOn.initialize(repeating: 0, count: count)
    var threads: [Thread] = []
    for index in 0..<count {
        threads.append(Thread.spawn(name: "spread") {
            let deadline = Clock.monotonic &+ 120_000_000_000
            while Clock.monotonic < deadline {
                let cpu = Rumprun.currentProcessor
                runningOn[index] = cpu
                ranOn[index] |= 1 << UInt64(cpu)
                var distinct: UInt64 = 0
                for other in 0..<count where runningOn[other] >= 0 { distinct |= 1 << UInt64(runningOn[other]) }
                if distinct.nonzeroBitCount == count { break }
                Thread.yield()
            }
            var sum: UInt64 = 0
            for value in 0..<200_000 { sum &+= UInt64(value) &* 2_654_435_761 }
            return Int(truncatingIfNeeded: sum & 1)
        }!)
    }
    join(threads)
    var distinct: UInt64 = 0
    for index in 0..<count where runningOn[index] >= 0 { distinct |= 1 << UInt64(runningOn[index]) }
    var union: UInt64 = 0
    for index in 0..<count { union |= ranOn[index] }
    print("smpsched: \(count) busy unbound threads ran on \(union.nonzeroBitCount) of \(count) cpus, \(distinct.nonzeroBitCount) at once")
    check(union.nonzeroBitCount == count && distinct.nonzeroBitCount == count, "unbound threads spread over every CPU")
}

// 5. Semaphore with 2 units under contention from 3N threads.
do {
    let units = 2
    let threadCount = 3 * count
    let rounds = 60
    let semaphore = Semaphore(count: units)
    var threads: [Thread] = []
    for _ in 0..<threadCount {
        threads.append(Thread.spawn(name: "sem") {
            for round in 0..<rounds {
                semaphore.down()
                let now = inside.wrappingAdd(1, ordering: .acquiringAndReleasing).newValue
                var seen = most.load(ordering: .relaxed)
                while now > seen {
                    let (exchanged, original) = most.compareExchange(expected: seen, desired: now, ordering: .relaxed)
                    if exchanged { break }
                    seen = original
                }
                if round % 3 == 0 { Thread.yield() }
                passes.wrappingAdd(1, ordering: .relaxed)
                inside.wrappingSubtract(1, ordering: .acquiringAndReleasing)
                semaphore.up()
            }
            return 0
        }!)
    }
    join(threads)
    let mostInside = most.load(ordering: .acquiring)
    print("smpsched: semaphore of \(units): \(passes.load(ordering: .acquiring)) passes of \(threadCount * rounds), at most \(mostInside) inside, count back to \(semaphore.count)")
    check(passes.load(ordering: .acquiring) == threadCount * rounds && mostInside <= units && mostInside >= 1 && semaphore.count == units,
          "semaphore under contention")
}

// 6. Read-write lock: N writers and 2N readers; writers do a slow
// read-modify-write, readers check that no writer is inside.
do {
    let lock = ReadWriteLock()
    nonisolated(unsafe) var value = 0
    let writerRounds = 60
    var threads: [Thread] = []
    for _ in 0..<count {
        threads.append(Thread.spawn(name: "writer") {
            for round in 0..<writerRounds {
                lock.lockForWriting()
                if writersInside.wrappingAdd(1, ordering: .acquiringAndReleasing).newValue != 1 { violations.wrappingAdd(1, ordering: .relaxed) }
                if readersInside.load(ordering: .acquiring) != 0 { violations.wrappingAdd(1, ordering: .relaxed) }
                let before = value
                if round % 5 == 0 { Thread.yield() }
                value = before + 1
                writersInside.wrappingSubtract(1, ordering: .acquiringAndReleasing)
                lock.unlock()
            }
            return 0
        }!)
    }
    for _ in 0..<(2 * count) {
        threads.append(Thread.spawn(name: "reader") {
            for round in 0..<writerRounds {
                lock.lockForReading()
                readersInside.wrappingAdd(1, ordering: .acquiringAndReleasing)
                if writersInside.load(ordering: .acquiring) != 0 { violations.wrappingAdd(1, ordering: .relaxed) }
                if round % 4 == 0 { Thread.yield() }
                readersInside.wrappingSubtract(1, ordering: .acquiringAndReleasing)
                lock.unlock()
            }
            return 0
        }!)
    }
    join(threads)
    print("smpsched: rwlock: value \(value) of \(count * writerRounds), \(violations.load(ordering: .acquiring)) violations")
    check(value == count * writerRounds && violations.load(ordering: .acquiring) == 0, "read-write lock under contention")
}

// 7. Block/wake across CPUs: a thread bound to the last CPU blocks; main
// (on any CPU) wakes it 200 times; each wake must be seen.
do {
    let rounds = 200
    let last = count - 1
    let sleeper = Thread.spawn(name: "sleeper", processor: last) {
        var woken = 0
        while woken < rounds {
            Thread.block()
            woken += 1
            acknowledged.store(woken, ordering: .releasing)
        }
        return woken
    }!
    for round in 1...rounds {
        sleeper.wake()
        let deadline = Clock.monotonic &+ 60_000_000_000
        while acknowledged.load(ordering: .acquiring) < round && Clock.monotonic < deadline { Thread.yield() }
    }
    let woken = sleeper.join()
    print("smpsched: block/wake on cpu \(last): \(woken) of \(rounds) wakes seen")
    check(woken == rounds, "block and wake across CPUs")
}

// 8. Console lines: one thread per CPU; once all run, each prints 40
// lines at once; the integration test checks that every line arrived whole.
do {
    var printers: [Thread] = []
    for cpu in 0..<count {
        printers.append(Thread.spawn(name: "printer", processor: cpu) {
            printersReady.wrappingAdd(1, ordering: .relaxed)
            let deadline = Clock.monotonic &+ 60_000_000_000
            while printersReady.load(ordering: .relaxed) < count && Clock.monotonic < deadline { Thread.yield() }
            for line in 0..<40 {
                print("smpsched-line cpu \(cpu) line \(line) abcdefghijklmnopqrstuvwxyz0123456789 end")
            }
            return 0
        }!)
    }
    join(printers)
}

print("smpsched: \(Thread.steals) steals, \(Thread.contextSwitches) context switches")
print("smpsched: \(failures) failures")
Rumprun.exit(failures)
