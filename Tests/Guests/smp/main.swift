// smp: checks the application processors the platform started (integration
// tests, booted with --smp N): every CPU reports in, work posted to CPU k runs
// on CPU k, atomic and lock-protected counters incremented from every CPU
// give exact totals. With the argument "panic-ap", CPU 1 panics and the
// whole guest must stop with one report.
import BareMetalKit
import Rumprun
import Synchronization

let rounds: UInt64 = 100_000
// Fewer lock rounds: under TCG a preempted vCPU holding or next in line for
// a ticket stalls every other one until the host runs it again.
let lockedRounds: UInt64 = 16_000 / UInt64(Rumprun.processorCount)
let atomicCounter = Atomic<UInt64>(0)
let lock = TicketLock()
nonisolated(unsafe) var lockedCounter: UInt64 = 0
nonisolated(unsafe) var ranOn = [Int](repeating: -1, count: 64)

func recordProcessor(_ slot: UInt64) {
    ranOn[Int(slot)] = Processors.currentIndex
}

func increment(_ unused: UInt64) {
    for _ in 0..<rounds {
        atomicCounter.wrappingAdd(1, ordering: .relaxed)
    }
    for _ in 0..<lockedRounds {
        lock.withLock { lockedCounter &+= 1 }
    }
}

func panicHere(_ unused: UInt64) {
    Rumprun.panic("panic on an application processor")
}

let count = Rumprun.processorCount
print("smp: \(count) cpus online")
var failures: Int32 = 0

if Rumprun.arguments.count > 1 { runTLBScenario(Rumprun.arguments[1]) }
if Rumprun.arguments.count > 1 && Rumprun.arguments[1].utf8.elementsEqual("panic-ap".utf8) {
    guard count > 1 else { Rumprun.exit(3) }
    Processors.run(on: 1, panicHere, argument: 0)
    while true {}
}

for cpu in 1..<max(count, 1) {
    Processors.run(on: cpu, recordProcessor, argument: UInt64(cpu))
}
for cpu in 1..<max(count, 1) {
    Processors.wait(for: cpu, completed: 1)
    if ranOn[cpu] != cpu {
        print("smp: work for cpu \(cpu) ran on cpu \(ranOn[cpu])")
        failures += 1
    }
}
print("smp: pinned work ran where it was sent")

for cpu in 1..<max(count, 1) {
    Processors.run(on: cpu, increment, argument: 0)
}
increment(0)
for cpu in 1..<max(count, 1) {
    Processors.wait(for: cpu, completed: 2)
}
let expected = rounds * UInt64(count)
let expectedLocked = lockedRounds * UInt64(count)
let atomicTotal = atomicCounter.load(ordering: .acquiring)
print("smp: atomic total \(atomicTotal) of \(expected)")
print("smp: locked total \(lockedCounter) of \(expectedLocked)")
if atomicTotal != expected || lockedCounter != expectedLocked { failures += 1 }
Rumprun.exit(failures)
