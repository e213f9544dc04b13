// TLBScenarios: the smp guest's TLB shootdown modes (SMPTests, booted with
// --smp N):
//   tlb          every AP keeps reading one heap page (its TLB holds it), the
//                boot CPU unmaps the page through KernelMappings, then the
//                APs read again: the first read after the shootdown must
//                fault (status 121, CR2 = the page). A read that succeeds
//                went through a stale TLB entry: status 1.
//   tlb-full     the same with 64 pages (above the 32-page threshold: every
//                AP does a whole flush); first a warm-up round whose
//                counters show which flush each AP did.
//   tlb-ap       CPU 1 unmaps pages the boot CPU keeps reading with
//                interrupts on: the boot CPU must fault.
//   tlb-stuck    CPU 1 spins with interrupts off and never answers; the
//                boot CPU's unmap must end in a panic naming CPU 1.
//   tlb-contend  every CPU changes its own page's rights and flushes it, many
//                times, all at once: no deadlock, and every request was
//                answered by every other CPU exactly once.
import BareMetalKit
import CPUPrimitives
import Rumprun
import Synchronization

let pageBytes: UInt64 = 4096
let pagePattern: UInt64 = 0x5AFE_0000_0000_0000
nonisolated(unsafe) var regionStart: UInt64 = 0
nonisolated(unsafe) var regionPages: UInt64 = 0
let readersReady = Atomic<Int>(0)
let phase = Atomic<UInt64>(0)
let staleReads = Atomic<Int>(0)
let patternErrors = Atomic<Int>(0)

/// Page-aligned heap memory, each page's first word a pattern. Never
/// freed: it is unmapped afterwards.
func makeRegion(pages: UInt64) -> UInt64 {
    let memory = UnsafeMutableRawPointer.allocate(byteCount: Int(pages * pageBytes), alignment: Int(pageBytes))
    let start = UInt64(UInt(bitPattern: memory))
    for page in 0..<pages {
        memory.storeBytes(of: pagePattern | page, toByteOffset: Int(page * pageBytes), as: UInt64.self)
    }
    return start
}

@inline(never) func readPage(_ page: UInt64) -> UInt64 {
    cpu_load64(UInt(regionStart + page * pageBytes))
}

/// Runs on each AP: fill the TLB, report, keep it hot until the boot CPU
/// has unmapped the region, then read once more.
func readRegion(_ unused: UInt64) {
    for page in 0..<regionPages where readPage(page) != pagePattern | page {
        patternErrors.wrappingAdd(1, ordering: .relaxed)
    }
    readersReady.wrappingAdd(1, ordering: .releasing)
    while phase.load(ordering: .acquiring) == 0 {
        for page in 0..<regionPages { _ = readPage(page) }
        cpu_pause()
    }
    // The tables no longer map the region: this must fault.
    for page in 0..<regionPages { _ = readPage(page) }
    staleReads.wrappingAdd(1, ordering: .relaxed)
}

func writeCounters(_ label: StaticString, before: [TLBShootdownCounters], count: Int) {
    for cpu in 1..<count {
        let now = TLBShootdown.counters(of: cpu)
        print("smp: tlb: \(label): cpu \(cpu) answered \(now.requestsAnswered - before[cpu].requestsAnswered) requests, "
            + "\(now.fullFlushes - before[cpu].fullFlushes) full flushes, \(now.pagesInvalidated - before[cpu].pagesInvalidated) pages")
    }
}

func snapshot(_ count: Int) -> [TLBShootdownCounters] {
    (0..<count).map { TLBShootdown.counters(of: $0) }
}

func unmapOrExit(_ start: UInt64, pages: UInt64) {
    do throws(PageTableError) {
        try KernelMappings.unmap(VirtualAddress(start), byteCount: pages * pageBytes)
    } catch {
        print("smp: tlb: unmap failed")
        Rumprun.exit(2)
    }
}

func protectOrExit(_ start: UInt64, pages: UInt64, _ attributes: MemoryAttributes) {
    do throws(PageTableError) {
        try KernelMappings.protect(VirtualAddress(start), byteCount: pages * pageBytes, attributes: attributes)
    } catch {
        print("smp: tlb: protect failed")
        Rumprun.exit(2)
    }
}

func printRegion(_ start: UInt64, pages: UInt64) {
    Platform.write("smp: tlb: unmapping region ")
    Platform.writeHex(start)
    print(" pages \(pages)")
}

/// tlb / tlb-full.
func staleReadScenario(pages: UInt64) -> Never {
    let count = Rumprun.processorCount
    guard count > 1 else { Rumprun.exit(3) }
    regionPages = pages
    regionStart = makeRegion(pages: pages)
    // Warm-up: read-only and back; nobody faults, the counters show the
    // flush each AP performed for each request.
    let before = snapshot(count)
    protectOrExit(regionStart, pages: pages, .readOnly)
    protectOrExit(regionStart, pages: pages, .data)
    writeCounters("warm-up", before: before, count: count)

    for cpu in 1..<count { Processors.run(on: cpu, readRegion, argument: 0) }
    while readersReady.load(ordering: .acquiring) < count - 1 { cpu_pause() }
    if patternErrors.load(ordering: .relaxed) != 0 {
        print("smp: tlb: an AP read the wrong pattern")
        Rumprun.exit(4)
    }
    print("smp: tlb: \(count - 1) readers hold the region in their TLBs")
    printRegion(regionStart, pages: pages)
    // From here on the boot CPU prints nothing until the APs are done: the
    // expected end is an AP's page-fault report.
    unmapOrExit(regionStart, pages: pages)
    phase.store(1, ordering: .releasing)
    for cpu in 1..<count { Processors.wait(for: cpu, completed: 1) }
    print("smp: tlb: \(staleReads.load(ordering: .relaxed)) cpus read unmapped memory through a stale TLB entry")
    Rumprun.exit(1)
}

/// tlb-ap: CPU 1 initiates; the boot CPU is the target, through the IPI.
func unmapFromAP(_ unused: UInt64) {
    while phase.load(ordering: .acquiring) == 0 { cpu_pause() }
    unmapOrExit(regionStart, pages: regionPages)
    phase.store(2, ordering: .releasing)
}

func applicationProcessorInitiates() -> Never {
    guard Rumprun.processorCount > 1 else { Rumprun.exit(3) }
    regionPages = 4
    regionStart = makeRegion(pages: regionPages)
    // Split the large page around the region here, so CPU 1 needs no page
    // allocator (it is not safe on two CPUs at once).
    protectOrExit(regionStart, pages: regionPages, .data)
    printRegion(regionStart, pages: regionPages)
    Processors.run(on: 1, unmapFromAP, argument: 0)
    Interrupts.enable()
    for page in 0..<regionPages { _ = readPage(page) }
    phase.store(1, ordering: .releasing)
    while phase.load(ordering: .acquiring) != 2 {
        for page in 0..<regionPages { _ = readPage(page) }
    }
    for page in 0..<regionPages { _ = readPage(page) }
    Interrupts.disable()
    print("smp: tlb: the boot cpu read unmapped memory through a stale TLB entry")
    Rumprun.exit(1)
}

/// tlb-stuck: CPU 1 never acknowledges.
func spinWithInterruptsOff(_ unused: UInt64) {
    Interrupts.disable()
    phase.store(1, ordering: .releasing)
    while true { cpu_pause() }
}

func stuckProcessor() -> Never {
    guard Rumprun.processorCount > 1 else { Rumprun.exit(3) }
    let start = makeRegion(pages: 1)
    Processors.run(on: 1, spinWithInterruptsOff, argument: 0)
    while phase.load(ordering: .acquiring) == 0 { cpu_pause() }
    print("smp: tlb: cpu 1 spins with interrupts off")
    unmapOrExit(start, pages: 1)
    print("smp: tlb: unmap returned although cpu 1 never answered")
    Rumprun.exit(1)
}

/// tlb-contend: every CPU at once, each on its own page.
let contentionRounds: UInt64 = 40
let writeErrors = Atomic<Int>(0)

func contend(_ cpu: UInt64) {
    let page = regionStart + cpu * pageBytes
    for round in 0..<contentionRounds {
        protectOrExit(page, pages: 1, .readOnly)
        if cpu_load64(UInt(page)) & 0xFFFF_FFFF != (round == 0 ? cpu : round - 1) & 0xFFFF_FFFF {
            writeErrors.wrappingAdd(1, ordering: .relaxed)
        }
        protectOrExit(page, pages: 1, .data)
        // Writable again on this CPU at once (a stale read-only entry would fault).
        UnsafeMutablePointer<UInt64>(bitPattern: UInt(page))!.pointee = round
        TLBShootdown.invalidate(start: page, byteCount: pageBytes)
    }
}

func contention() -> Never {
    let count = Rumprun.processorCount
    guard count > 1 else { Rumprun.exit(3) }
    regionStart = makeRegion(pages: UInt64(count))
    for cpu in 0..<UInt64(count) {
        UnsafeMutablePointer<UInt64>(bitPattern: UInt(regionStart + cpu * pageBytes))!.pointee = cpu
    }
    protectOrExit(regionStart, pages: UInt64(count), .data)
    let before = snapshot(count)
    let requestsBefore = TLBShootdown.requestCount
    for cpu in 1..<count { Processors.run(on: cpu, contend, argument: UInt64(cpu)) }
    contend(0)
    for cpu in 1..<count { Processors.wait(for: cpu, completed: 1) }
    let requests = TLBShootdown.requestCount - requestsBefore
    var answers: UInt64 = 0
    var whileSpinning: UInt64 = 0
    var sent: UInt64 = 0
    for cpu in 0..<count {
        let now = TLBShootdown.counters(of: cpu)
        answers += now.requestsAnswered - before[cpu].requestsAnswered
        whileSpinning += now.answeredWhileSpinning - before[cpu].answeredWhileSpinning
        sent += now.requestsSent - before[cpu].requestsSent
    }
    let expectedRequests = 3 * contentionRounds * UInt64(count)
    print("smp: tlb: contention: \(requests) requests of \(expectedRequests), \(sent) sent")
    print("smp: tlb: contention: \(answers) answers of \(requests * UInt64(count - 1))")
    print("smp: tlb: contention: \(whileSpinning) answered while spinning")
    print("smp: tlb: contention: \(writeErrors.load(ordering: .relaxed)) wrong values")
    let good = requests == expectedRequests && sent == requests && answers == requests * UInt64(count - 1)
        && writeErrors.load(ordering: .relaxed) == 0
    Rumprun.exit(good ? 0 : 1)
}

/// Runs the TLB mode named `mode`; returns if `mode` is none of them.
func runTLBScenario(_ mode: String) {
    if mode.utf8.elementsEqual("tlb".utf8) { staleReadScenario(pages: 1) }
    if mode.utf8.elementsEqual("tlb-full".utf8) { staleReadScenario(pages: 64) }
    if mode.utf8.elementsEqual("tlb-ap".utf8) { applicationProcessorInitiates() }
    if mode.utf8.elementsEqual("tlb-stuck".utf8) { stuckProcessor() }
    if mode.utf8.elementsEqual("tlb-contend".utf8) { contention() }
}
