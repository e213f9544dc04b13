// smp: checks the application processors the platform started (integration
// tests, booted with --smp N): every CPU reports in, work posted to CPU k runs
// on CPU k, atomic and lock-protected counters incremented from every CPU
// give exact totals, and every CPU allocating and freeing at once leaves
// the heap intact (MemoryLock). With the argument "panic-ap", CPU 1 panics and the
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

// Every CPU allocates, fills, checks and frees blocks of 16 B to 64 KiB at
// the same time, keeping eight alive each; the heap is shared (MemoryLock).
let churnRounds = 300
let corruptedBlocks = Atomic<UInt64>(0)
func churnHeap(_ cpu: UInt64) {
    let sizes = [16, 24, 100, 512, 2048, 4096, 5000, 65536]
    var live = [(UnsafeMutableRawPointer, Int, UInt8)?](repeating: nil, count: 8)
    func release(_ slot: Int) {
        guard let (block, size, tag) = live[slot] else { return }
        let bytes = block.assumingMemoryBound(to: UInt8.self)
        for index in stride(from: 0, to: size, by: 61) where bytes[index] != tag {
            corruptedBlocks.wrappingAdd(1, ordering: .relaxed)
            break
        }
        block.deallocate()
        live[slot] = nil
    }
    for round in 0..<churnRounds {
        let slot = round % live.count
        release(slot)
        let size = sizes[(round &* 7 &+ Int(cpu)) % sizes.count]
        let tag = UInt8(truncatingIfNeeded: cpu &* 31 &+ UInt64(round))
        let block = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        block.initializeMemory(as: UInt8.self, repeating: tag, count: size)
        live[slot] = (block, size, tag)
    }
    for slot in 0..<live.count { release(slot) }
}
let heapBefore = Rumprun.heapStatistics?.bytesInUse ?? -1
for cpu in 1..<max(count, 1) {
    Processors.run(on: cpu, churnHeap, argument: UInt64(cpu))
}
churnHeap(0)
for cpu in 1..<max(count, 1) {
    Processors.wait(for: cpu, completed: 3)
}
let heapAfter = Rumprun.heapStatistics?.bytesInUse ?? -2
let corrupted = corruptedBlocks.load(ordering: .acquiring)
print("smp: heap churn on \(count) cpus: \(corrupted) corrupted blocks, bytes in use \(heapAfter == heapBefore ? "back to start" : "changed")")
if corrupted != 0 || heapAfter != heapBefore { failures += 1 }
Rumprun.exit(failures)
