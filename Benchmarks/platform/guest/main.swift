// platform benchmark guest: measures, with the TSC, the hw platform's
// thread context switch, thread create+join, malloc/free pairs (16 B to
// 64 KiB), timer wake-up latency and boot-to-main time, each beside a
// baseline measured in the same run (an empty loop of the same iteration
// count, or two back-to-back clock reads). Run by Benchmarks/platform/run.sh.
import BareMetalKit
import CPUPrimitives
import Rumprun

let mainEntryTSC = cpu_rdtsc()
let frequency = Clock.tscFrequency

func nanoseconds(_ ticks: UInt64) -> UInt64 { ticks &* 1_000_000_000 / frequency }

/// Nanoseconds per iteration with two decimals (ticks per iteration ×100
/// first, so no product overflows 64 bits for runs under ~10^9 s).
func perIteration(_ ticks: UInt64, _ iterations: Int) -> String {
    let hundredthsOfTicks = ticks &* 100 / UInt64(iterations)
    let hundredths = hundredthsOfTicks &* 1_000_000_000 / frequency
    let fraction = hundredths % 100
    return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
}

@inline(never)
func emptyLoop(_ iterations: Int) -> UInt64 {
    let start = cpu_rdtsc()
    for _ in 0..<iterations { cpu_compiler_barrier() }
    return cpu_rdtsc() &- start
}

func report(_ name: String, _ ticks: UInt64, _ iterations: Int, baseline: UInt64) {
    print("bench: \(name): \(perIteration(ticks, iterations)) ns per iteration, baseline empty loop \(perIteration(baseline, iterations)) ns, \(iterations) iterations")
}

print("bench: TSC \(frequency / 1_000_000) MHz from \(Clock.sourceName)")

// Boot to main: TSC at the first instruction of the image to here.
let boot = Platform.bootTimestamp
let calibration = SystemClock.calibrationEndTSC &- SystemClock.calibrationStartTSC
print("bench: boot-to-main: \(nanoseconds(mainEntryTSC &- boot) / 1000) us, of which clock calibration \(nanoseconds(calibration) / 1000) us, without it \(nanoseconds(mainEntryTSC &- boot &- calibration) / 1000) us")
// The boot-time calibration (a window overlapping the boot steps when
// SystemClock.calibrationOverlappedBoot) against a fresh 20 ms PIT channel 0
// window measured now.
if let fresh = SystemClock.measureTSCFrequency(with: .pitChannel0) {
    let chosen = SystemClock.tscFrequency
    let difference = chosen > fresh ? chosen - fresh : fresh - chosen
    print("bench: TSC at boot \(chosen) Hz (window overlapped boot: \(SystemClock.calibrationOverlappedBoot)), fresh 20 ms PIT channel 0 \(fresh) Hz, difference \(difference * 1_000_000 / fresh) ppm")
}
// Each step of bmk_boot_main (BootTrace), then the thread runtime up to here.
var steps = "bench: boot steps (us):"
for step in BootStep.allCases {
    let ticks = BootTrace.timestamp(after: step) &- BootTrace.timestamp(before: step)
    steps += " \(step.name.description) \(nanoseconds(ticks) / 1000)"
}
steps += " threads \(nanoseconds(mainEntryTSC &- BootTrace.timestamp(after: .processors)) / 1000)"
print(steps)

// Context switch: two threads yielding to each other; each yield is one switch.
do {
    let lonelyStart = cpu_rdtsc()
    for _ in 0..<20_000 { Thread.yield() }
    report("yield without a switch, before any other thread existed", cpu_rdtsc() &- lonelyStart, 20_000, baseline: emptyLoop(20_000))

    let rounds = 20_000
    var ready = 0
    let partner = Thread.spawn {
        ready = 1
        for _ in 0..<rounds { Thread.yield() }
        return 0
    }!
    Thread.yield()  // let the partner start
    let switchesBefore = Thread.contextSwitches
    let start = cpu_rdtsc()
    for _ in 0..<rounds { Thread.yield() }
    let ticks = cpu_rdtsc() &- start
    let switches = Int(Thread.contextSwitches - switchesBefore)
    _ = partner.join()
    // A yield with nobody else runnable: the scheduler path without a switch.
    let aloneStart = cpu_rdtsc()
    for _ in 0..<rounds { Thread.yield() }
    let alone = cpu_rdtsc() &- aloneStart
    report("context switch (yield between 2 threads, \(switches) switches, ready \(ready))", ticks, switches, baseline: emptyLoop(switches))
    report("yield without a switch", alone, rounds, baseline: emptyLoop(rounds))
}

// Thread create + join.
do {
    let count = 2_000
    let start = cpu_rdtsc()
    for index in 0..<count {
        let thread = Thread.spawn(stackSize: 16 * 1024) { index }!
        _ = thread.join()
    }
    report("thread create+join (16 KiB stack)", cpu_rdtsc() &- start, count, baseline: emptyLoop(count))
}

// malloc/free pairs through the Swift runtime's allocator entry (posix_memalign/free).
for size in [16, 64, 256, 1024, 4096, 16384, 65536] {
    let count = size >= 16384 ? 2_000 : 20_000
    let start = cpu_rdtsc()
    for _ in 0..<count {
        let block = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        block.storeBytes(of: 1, as: UInt8.self)
        block.deallocate()
    }
    report("malloc/free \(size) B", cpu_rdtsc() &- start, count, baseline: emptyLoop(count))
}

// Timer wake-up latency: how late a sleeping thread runs after its deadline.
do {
    var lateness: [UInt64] = []
    for round in 0..<50 {
        let deadline = Clock.monotonic + 1_000_000 + UInt64(round % 5) * 100_000
        Thread.sleep(until: deadline)
        lateness.append(Clock.monotonic - deadline)
    }
    var readCost: [UInt64] = []
    for _ in 0..<50 {
        let a = Clock.monotonic
        let b = Clock.monotonic
        readCost.append(b - a)
    }
    lateness.sort()
    readCost.sort()
    print("bench: timer wake-up latency: min \(lateness[0] / 1000) us, median \(lateness[25] / 1000) us, max \(lateness[49] / 1000) us over 50 sleeps of 1-1.4 ms; baseline clock read-to-read median \(readCost[25]) ns")
}
print("bench: done")
Rumprun.exit(0)
