// tlb benchmark guest: the cost of TLBShootdown.invalidate as the caller
// sees it (local flush, IPIs, every other CPU's flush and acknowledgement),
// for 1, 32 and 64 pages (64 is above the threshold: a whole flush), with
// the other CPUs idle in HLT and with them busy computing; beside the same
// flush on this CPU alone (INVLPG or CR3 reload, no IPI).
import BareMetalKit
import CPUPrimitives
import Rumprun
import Synchronization

let scale = PlatformCore.calibrateTSCWithPIT(milliseconds: 50)
func nanoseconds(_ ticks: UInt64) -> UInt64 { scale?.nanoseconds(ticks: ticks) ?? ticks }
let unit = scale == nil ? "ticks" : "ns"
let count = Rumprun.processorCount
let rounds = 400
let region = UInt64(UInt(bitPattern: UnsafeMutableRawPointer.allocate(byteCount: 64 * 4096, alignment: 4096)))

func measure(pages: UInt64) -> (median: UInt64, p90: UInt64) {
    var samples: [UInt64] = []
    samples.reserveCapacity(rounds)
    for _ in 0..<rounds {
        let before = cpu_rdtsc()
        TLBShootdown.invalidate(start: region, byteCount: pages * 4096)
        samples.append(cpu_rdtsc() - before)
    }
    samples.sort()
    return (nanoseconds(samples[rounds / 2]), nanoseconds(samples[rounds * 9 / 10]))
}

let busy = Atomic<Int>(1)
func spin(_ unused: UInt64) {
    var x: UInt64 = 1
    while busy.load(ordering: .relaxed) != 0 { x = x &* 6_364_136_223_846_793_005 &+ 1 }
    if x == 0 { print("") }
}

func report(_ label: StaticString) {
    for pages: UInt64 in [1, 32, 64] {
        let (median, p90) = measure(pages: pages)
        print("tlb-bench: cpus \(count) \(label) pages \(pages): median \(median) \(unit), p90 \(p90) \(unit)")
    }
}

report("idle")
if count > 1 {
    for cpu in 1..<count { Processors.run(on: cpu, spin, argument: 0) }
    report("busy")
    busy.store(0, ordering: .releasing)
    for cpu in 1..<count { Processors.wait(for: cpu, completed: 1) }
}
Rumprun.exit(0)
