// smp benchmark guest: a CPU-bound parallel workload (FNV-1a over 64 blocks
// of 64 KiB) timed with the TSC: on the boot CPU alone as the baseline,
// split over the CPUs through the mailboxes (block i on CPU i mod N), and
// split over N unbound threads through the scheduler; then the cross-CPU
// wake-up latency of mailbox work (post + IPI until the AP runs it) and of
// threads (condition signal by a thread on CPU 0 until the waiter, bound to
// CPU 1, runs), each beside its same-CPU counterpart.
import BareMetalKit
import CPUPrimitives
import Rumprun
import Synchronization

let blockCount = 64
let blockSize = 64 * 1024
let passes = 4
let buffer = UnsafeMutablePointer<UInt8>.allocate(capacity: blockCount * blockSize)
for index in 0..<(blockCount * blockSize) { buffer[index] = UInt8(truncatingIfNeeded: index &* 2_654_435_761 >> 7) }
nonisolated(unsafe) var results = [UInt64](repeating: 0, count: blockCount)
nonisolated(unsafe) var cpuCount = Rumprun.processorCount

func hashBlock(_ index: Int) -> UInt64 {
    var hash: UInt64 = 0xCBF2_9CE4_8422_2325
    let block = buffer + index * blockSize
    for _ in 0..<passes {
        for offset in 0..<blockSize {
            hash = (hash ^ UInt64(block[offset])) &* 0x0000_0100_0000_01B3
        }
    }
    return hash
}

func hashShare(_ cpu: UInt64) {
    var index = Int(cpu)
    while index < blockCount {
        results[index] = hashBlock(index)
        index += cpuCount
    }
}

func combined() -> UInt64 { results.reduce(0) { $0 ^ $1 } }

let scale = PlatformCore.calibrateTSCWithPIT(milliseconds: 50)
func nanoseconds(_ ticks: UInt64) -> UInt64 { scale?.nanoseconds(ticks: ticks) ?? ticks }
let unit = scale == nil ? "ticks" : "ns"

// Baseline: every block on the boot CPU.
let saved = cpuCount
cpuCount = 1
var start = cpu_rdtsc()
hashShare(0)
let serialTicks = cpu_rdtsc() - start
let serialHash = combined()
cpuCount = saved

// Parallel: CPU k takes blocks k, k+N, ...
results = [UInt64](repeating: 0, count: blockCount)
start = cpu_rdtsc()
for cpu in 1..<cpuCount { Processors.run(on: cpu, hashShare, argument: UInt64(cpu)) }
hashShare(0)
for cpu in 1..<cpuCount { Processors.wait(for: cpu, completed: 1) }
let parallelTicks = cpu_rdtsc() - start
let parallelHash = combined()

print("smp-bench: cpus \(cpuCount)")
print("smp-bench: serial \(nanoseconds(serialTicks)) \(unit), parallel \(nanoseconds(parallelTicks)) \(unit), speedup x\(serialTicks * 100 / max(parallelTicks, 1) / 100).\(serialTicks * 100 / max(parallelTicks, 1) % 100)")
if serialHash != parallelHash {
    print("smp-bench: parallel result differs from the serial one")
    Rumprun.exit(1)
}

// Threads through the scheduler: N unbound threads, thread k hashing
// blocks k, k+N, ... (the scheduler places them; none is bound).
results = [UInt64](repeating: 0, count: blockCount)
let stealsBefore = Thread.steals
start = cpu_rdtsc()
var workers: [Thread] = []
for worker in 0..<cpuCount {
    workers.append(Thread.spawn(name: "hash") {
        var index = worker
        while index < blockCount {
            results[index] = hashBlock(index)
            index += cpuCount
        }
        return 0
    }!)
}
for worker in workers { _ = worker.join() }
let threadTicks = cpu_rdtsc() - start
let threadHash = combined()
let threadSpeedup = serialTicks * 100 / max(threadTicks, 1)
print("smp-bench: threads \(cpuCount) unbound on \(cpuCount) cpus: \(nanoseconds(threadTicks)) \(unit), speedup x\(threadSpeedup / 100).\(threadSpeedup % 100 < 10 ? "0" : "")\(threadSpeedup % 100) over serial, \(Thread.steals - stealsBefore) steals")
if serialHash != threadHash {
    print("smp-bench: threaded result differs from the serial one")
    Rumprun.exit(1)
}

// Thread wake-up latency: a thread bound to `signaller` stamps the TSC and
// signals; the waiter, bound to `waiterCPU`, stamps when it runs again.
let wakeMutex = Mutex()
let wakeCondition = Condition()
nonisolated(unsafe) var wakeSequence = 0
nonisolated(unsafe) var wakeSent: UInt64 = 0
nonisolated(unsafe) var wakeSamples: [UInt64] = []
let wakeAcknowledged = Atomic<Int>(0)
func threadWakeLatency(signaller: Int, waiterCPU: Int, rounds: Int) -> [UInt64] {
    wakeSequence = 0
    wakeSamples = []
    wakeAcknowledged.store(0, ordering: .relaxed)
    let waiter = Thread.spawn(name: "waiter", processor: waiterCPU) {
        var seen = 0
        wakeMutex.lock()
        while seen < rounds {
            while wakeSequence == seen { wakeCondition.wait(wakeMutex) }
            wakeSamples.append(cpu_rdtsc() &- wakeSent)
            seen = wakeSequence
            wakeAcknowledged.store(seen, ordering: .releasing)
        }
        wakeMutex.unlock()
        return 0
    }!
    let sender = Thread.spawn(name: "signaller", processor: signaller) {
        for round in 1...rounds {
            // Let the waiter block first (it acknowledged the last round).
            while wakeAcknowledged.load(ordering: .acquiring) < round - 1 { Thread.yield() }
            Thread.sleep(nanoseconds: 20_000)
            wakeMutex.lock()
            wakeSequence = round
            wakeSent = cpu_rdtsc()
            wakeCondition.signal()
            wakeMutex.unlock()
        }
        return 0
    }!
    _ = sender.join()
    _ = waiter.join()
    return wakeSamples.sorted()
}
let sameCPU = threadWakeLatency(signaller: 0, waiterCPU: 0, rounds: 200)
if cpuCount > 1 {
    let crossCPU = threadWakeLatency(signaller: 0, waiterCPU: 1, rounds: 200)
    print("smp-bench: thread wake-up cpu 0 -> cpu 1 median \(nanoseconds(crossCPU[100])) \(unit), p90 \(nanoseconds(crossCPU[180])) \(unit); same cpu median \(nanoseconds(sameCPU[100])) \(unit)")
} else {
    print("smp-bench: thread wake-up same cpu median \(nanoseconds(sameCPU[100])) \(unit), p90 \(nanoseconds(sameCPU[180])) \(unit)")
}

// Wake-up latency: TSC when the AP starts the work minus TSC before posting.
let arrived = Atomic<UInt64>(0)
func stamp(_ unused: UInt64) { arrived.store(cpu_rdtsc(), ordering: .releasing) }
if cpuCount > 1 {
    var samples: [UInt64] = []
    var baseline: [UInt64] = []
    for round in 0..<200 {
        let before = cpu_rdtsc()
        Processors.run(on: 1, stamp, argument: 0)
        Processors.wait(for: 1, completed: UInt64(round + 2))
        let at = arrived.load(ordering: .acquiring)
        samples.append(at > before ? at - before : 0)
        let local = cpu_rdtsc()
        stamp(0)
        baseline.append(arrived.load(ordering: .acquiring) - local)
    }
    samples.sort()
    baseline.sort()
    print("smp-bench: wake-up latency median \(nanoseconds(samples[100])) \(unit), p90 \(nanoseconds(samples[180])) \(unit); same-CPU call median \(nanoseconds(baseline[100])) \(unit)")
}
Rumprun.exit(0)
