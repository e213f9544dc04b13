// SystemClock: the guest's monotonic and wall clocks. Monotonic time is the
// TSC scaled to nanoseconds since the image's first instruction; the scale
// comes from the first source that answers: kvmclock (pvclock record, KVM
// MSR 0x4b564d01), CPUID leaf 0x15 (crystal ratio, Intel SDM vol. 2A), PIT
// channel 0 (counter-latch samples bracketed by TSC reads; Intel 8254 data
// sheet), PIT channel 2 (gate and OUT2 through port 0x61), the HPET main
// counter (IA-PC HPET 1.0a §2.3), and last CPUID leaf 0x16 (nominal base
// frequency). Wall time is the CMOS RTC (MC146818A; century register from
// the ACPI FADT) read once, then advanced by the monotonic clock.
#if hasFeature(Embedded)
import CPUPrimitives

/// Where the TSC's frequency came from.
public enum ClockSource: Sendable {
    case kvmclock
    case cpuidCrystal
    case pitChannel2
    case pitChannel0
    case hpet
    case cpuidNominal
    /// The vcpu_time_info in Xen's shared info (a Xen PVH domain; XenHooks.h).
    case xen

    public var name: StaticString {
        switch self {
        case .kvmclock: return "kvmclock"
        case .cpuidCrystal: return "CPUID 0x15"
        case .pitChannel2: return "PIT channel 2"
        case .pitChannel0: return "PIT channel 0"
        case .hpet: return "HPET"
        case .cpuidNominal: return "CPUID 0x16"
        case .xen: return "Xen vcpu_time_info"
        }
    }
}

/// Monotonic and wall clocks in nanoseconds.
public enum SystemClock {
    nonisolated(unsafe) static var counter: CounterClock? = nil
    nonisolated(unsafe) public internal(set) static var source: ClockSource? = nil
    /// (Unix time in ns, monotonic ns) at the RTC reading; nil until read.
    nonisolated(unsafe) static var wallOrigin: (unix: UInt64, monotonic: UInt64)? = nil
    nonisolated(unsafe) static var wallUnavailable = false
    nonisolated(unsafe) static var centuryRegister: UInt8 = 0
    nonisolated(unsafe) static var rtcAbsent = false
    /// TSC when calibration began and ended (boot-time accounting).
    nonisolated(unsafe) public private(set) static var calibrationStartTSC: UInt64 = 0
    nonisolated(unsafe) public private(set) static var calibrationEndTSC: UInt64 = 0

    /// Calibration window of the PIT and HPET methods (TCG needs ≥ 50 ms
    /// for a stable figure; see Docs/hw-platform-core.md).
    static var calibrationMilliseconds: UInt32 { 50 }
    /// PIT channel 0's bracketed samples do not depend on polling speed,
    /// so a shorter window keeps the same precision (bracket width / window).
    static var bracketedCalibrationMilliseconds: UInt32 { 20 }

    /// Calibrates the TSC; stops the guest with a panic naming every source
    /// tried when none answers. Prints nothing on success.
    public static func start() {
        guard counter == nil else { return }
        calibrationStartTSC = cpu_rdtsc()
        defer { calibrationEndTSC = cpu_rdtsc() }
        let cpu = CPUInformation(source: HardwareCPUID())
        let firmware = FirmwareFacts.read()
        centuryRegister = firmware.century
        rtcAbsent = firmware.rtcAbsent
        let origin = Platform.bootTimestamp
        if let scale = xenScale() {
            counter = CounterClock(scale: scale, originTicks: origin)
            source = .xen
        } else if cpu.hasKVMClock, let scale = kvmclockScale() {
            counter = CounterClock(scale: scale, originTicks: origin)
            source = .kvmclock
        } else if let hz = crystalFrequency(cpu), let scale = TickScale(ticksPerSecond: hz) {
            counter = CounterClock(scale: scale, originTicks: origin)
            source = .cpuidCrystal
        } else if let scale = finishEarlyCalibration() {
            counter = CounterClock(scale: scale, originTicks: origin)
            source = .pitChannel0
            calibrationOverlappedBoot = true
        } else if let scale = calibrateWithPITChannel0(milliseconds: bracketedCalibrationMilliseconds) {
            counter = CounterClock(scale: scale, originTicks: origin)
            source = .pitChannel0
        } else if let scale = PlatformCore.calibrateTSCWithPIT(milliseconds: calibrationMilliseconds) {
            counter = CounterClock(scale: scale, originTicks: origin)
            source = .pitChannel2
        } else if let base = firmware.hpetBase, let scale = calibrateWithHPET(base: base, milliseconds: calibrationMilliseconds) {
            counter = CounterClock(scale: scale, originTicks: origin)
            source = .hpet
        } else if cpu.maximumLeaf >= 0x16, case let mhz = HardwareCPUID().cpuid(leaf: 0x16, subleaf: 0).eax & 0xFFFF, mhz != 0,
            let scale = TickScale(ticksPerSecond: UInt64(mhz) * 1_000_000)
        {
            counter = CounterClock(scale: scale, originTicks: origin)
            source = .cpuidNominal
        } else {
            Platform.panic(
                "clock: no TSC calibration source answered (kvmclock, CPUID 0x15, PIT channel 0, PIT channel 2, HPET, CPUID 0x16)")
        }
    }

    /// The TSC scale Xen publishes for this vCPU, when running on Xen.
    static func xenScale() -> TickScale? {
        var scale = TickScale(multiplier: 0, shift: 0)
        return bmk_xen_tsc_scale(&scale.multiplier, &scale.shift) != 0 ? scale : nil
    }

    /// Measures the TSC frequency (Hz) with one source, without changing
    /// the clock (cross-checks in tests; PIT and HPET take 50 ms each).
    /// Nil when that source does not answer on this machine.
    public static func measureTSCFrequency(with source: ClockSource) -> UInt64? {
        let hertz = bmk_clock_measure(source.index)  // PrivilegedOperations.h
        return hertz == 0 ? nil : hertz
    }

    /// The hw measurement (bmk_hw_clock_measure).
    static func measureOnHardware(with source: ClockSource) -> UInt64? {
        let scale: TickScale?
        switch source {
        case .kvmclock:
            scale = CPUInformation(source: HardwareCPUID()).hasKVMClock ? kvmclockScale() : nil
        case .cpuidCrystal:
            scale = crystalFrequency(CPUInformation(source: HardwareCPUID())).flatMap { TickScale(ticksPerSecond: $0) }
        case .pitChannel0:
            scale = calibrateWithPITChannel0(milliseconds: bracketedCalibrationMilliseconds)
        case .pitChannel2:
            scale = PlatformCore.calibrateTSCWithPIT(milliseconds: calibrationMilliseconds)
        case .hpet:
            scale = FirmwareFacts.read().hpetBase.flatMap { calibrateWithHPET(base: $0, milliseconds: calibrationMilliseconds) }
        case .cpuidNominal:
            let cpu = CPUInformation(source: HardwareCPUID())
            let mhz = cpu.maximumLeaf >= 0x16 ? HardwareCPUID().cpuid(leaf: 0x16, subleaf: 0).eax & 0xFFFF : 0
            scale = mhz == 0 ? nil : TickScale(ticksPerSecond: UInt64(mhz) * 1_000_000)
        case .xen:
            scale = xenScale()
        }
        return scale?.ticksPerSecond
    }

    /// Nanoseconds since the image's first instruction.
    public static var monotonicNanoseconds: UInt64 {
        guard let counter else { return 0 }
        return counter.nanoseconds(atTicks: cpu_rdtsc())
    }

    /// The TSC value at which the monotonic clock reaches `nanoseconds`.
    public static func tsc(atMonotonic nanoseconds: UInt64) -> UInt64 {
        guard let counter else { return cpu_rdtsc() }
        return counter.ticks(atNanoseconds: nanoseconds)
    }

    /// Measured TSC frequency (Hz).
    public static var tscFrequency: UInt64 { counter?.scale.ticksPerSecond ?? 0 }

    /// Nanoseconds since 1970-01-01 UTC, from the RTC read at the first
    /// call; nil when the machine has no (readable) RTC.
    public static var wallNanoseconds: UInt64? {
        if wallOrigin == nil && !wallUnavailable { readRealTimeClock() }
        guard let wallOrigin else { return nil }
        return wallOrigin.unix &+ (monotonicNanoseconds &- wallOrigin.monotonic)
    }

    static func readRealTimeClock() {
        var xenNow: UInt64 = 0
        if bmk_xen_wall_clock(&xenNow) != 0 { wallOrigin = (xenNow, monotonicNanoseconds); return }  // Xen's wall clock (XenHooks.h)
        guard !rtcAbsent else {
            wallUnavailable = true
            return
        }
        // A read can fail transiently (an update in progress during every
        // try of CMOSRealTimeClock.read on a loaded host, or a torn value):
        // retry; only 20 failures in a row mean there is no usable RTC.
        func read() -> Int64? {
            for _ in 0..<20 {
                var seconds: Int64 = 0
                if bmk_rtc_read(centuryRegister, &seconds) != 0 { return seconds }  // hw: the CMOS RTC (PrivilegedOperations.h)
            }
            return nil
        }
        guard let first = read(), first >= 0 else {
            wallUnavailable = true
            return
        }
        // Wait for the seconds edge so the reading is exact to the TSC's
        // precision; give up after about 1.5 s of monotonic time.
        let limit = monotonicNanoseconds &+ 1_500_000_000
        var seconds = first
        while seconds == first && monotonicNanoseconds < limit {
            seconds = read() ?? seconds
        }
        let now = monotonicNanoseconds
        wallOrigin = (UInt64(seconds) &* 1_000_000_000, now)
    }

    // MARK: Sources

    static func kvmclockScale() -> TickScale? {
        guard let record = MemoryLock.withLock({ Platform.heap?.allocate(size: 64, alignment: 64) }) else { return nil }
        record.initializeMemory(as: UInt8.self, repeating: 0, count: 64)
        let address = PhysicalAddress(UInt64(UInt(bitPattern: record)))
        PlatformCore.enableKVMClock(record: address)
        var spins = 0
        while cpu_load32(UInt(address.rawValue)) == 0 && spins < 1_000_000 {
            cpu_pause()
            spins += 1
        }
        let (info, _) = PlatformCore.readKVMClock(record: address)
        // Stop the updates: the scale is all the TSC clock needs.
        cpu_wrmsr(0x4B56_4D01, 0)
        do throws(SizeClassHeapError) {
            try MemoryLock.withLock { () throws(SizeClassHeapError) in try Platform.heap?.free(record) }
        } catch {}
        return info.scale.multiplier == 0 ? nil : info.scale
    }

    static func crystalFrequency(_ cpu: CPUInformation) -> UInt64? {
        guard cpu.maximumLeaf >= 0x15 else { return nil }
        let leaf = HardwareCPUID().cpuid(leaf: 0x15, subleaf: 0)
        guard leaf.eax != 0, leaf.ebx != 0, leaf.ecx != 0 else { return nil }
        return UInt64(leaf.ecx) * UInt64(leaf.ebx) / UInt64(leaf.eax)
    }

    /// PIT channel 0 over a fresh `milliseconds` window (at most 50),
    /// retried up to 8 times when a poll came too late to account for the
    /// wraps. Nil when no PIT answers.
    static func calibrateWithPITChannel0(milliseconds: UInt32) -> TickScale? {
        let window = PITChannel0.ticks(milliseconds: min(milliseconds, 50))
        for _ in 0..<8 {
            PITChannel0.program()
            guard let first = PITChannel0.tightestSample() else { return nil }
            switch PITChannel0.poll(from: first, untilElapsed: first.elapsed + window) {
            case .missing: return nil
            case .wrappedTwice: continue
            case .reached(let last): return PITChannel0.scale(from: first, to: last)
            }
        }
        return nil
    }

    // MARK: Calibration overlapped with boot

    /// The first PIT channel 0 sample, taken at the top of the boot path
    /// by `beginCalibration`; nil when it was not taken.
    nonisolated(unsafe) static var earlyPITSample: PITChannel0.Sample? = nil

    /// Whether the last `start` used the window begun at the top of boot.
    nonisolated(unsafe) public private(set) static var calibrationOverlappedBoot = false

    /// Starts PIT channel 0 and takes the first calibration sample, so the
    /// window runs while the rest of the boot path works (under TCG those
    /// steps take about as long as the window). Does nothing when Xen,
    /// kvmclock or CPUID 0x15 will give the rate without measuring.
    public static func beginCalibration() {
        let cpu = CPUInformation(source: HardwareCPUID())
        guard xenScale() == nil, !cpu.hasKVMClock, crystalFrequency(cpu) == nil else { return }
        PITChannel0.program()
        earlyPITSample = PITChannel0.tightestSample()
    }

    /// Ends the window begun by `beginCalibration`: a middle sample now,
    /// then polling until the window from the first sample is at least
    /// `bracketedCalibrationMilliseconds` and the one from the middle at
    /// least 2 ms. The long window's rate is kept when the short one agrees
    /// within 2 %: more than one uncounted wrap (boot steps slower than
    /// 110 ms) would put them ≥ 33 % apart. Nil means measure afresh.
    static func finishEarlyCalibration() -> TickScale? {
        guard let first = earlyPITSample else { return nil }
        earlyPITSample = nil
        guard let middle = PITChannel0.tightestSample(), middle.elapsed >= first.elapsed else { return nil }
        let target = max(
            middle.elapsed + PITChannel0.ticks(milliseconds: 2),
            first.elapsed + PITChannel0.ticks(milliseconds: bracketedCalibrationMilliseconds))
        guard case .reached(let last) = PITChannel0.poll(from: middle, untilElapsed: target),
            let long = PITChannel0.scale(from: first, to: last), let short = PITChannel0.scale(from: middle, to: last)
        else { return nil }
        let (a, b) = (long.ticksPerSecond, short.ticksPerSecond)
        guard max(a, b) - min(a, b) <= b / 50 else { return nil }
        return long
    }

    /// The TSC against the HPET main counter over `milliseconds`: counter
    /// reads bracketed by two TSC reads, the tightest of 8 at each end (as
    /// for PIT channel 0), so slow MMIO exits do not skew the result.
    static func calibrateWithHPET(base: UInt64, milliseconds: UInt32) -> TickScale? {
        let capabilities = cpu_load64(UInt(base))
        let period = capabilities >> 32  // femtoseconds per tick
        guard period != 0, period <= 100_000_000 else { return nil }
        let configuration = cpu_load64(UInt(base + 0x10))
        if configuration & 1 == 0 {
            (UnsafeMutablePointer<UInt64>(bitPattern: UInt(base + 0x10))!).pointee = configuration | 1
        }
        let ticksNeeded = UInt64(milliseconds) * 1_000_000_000_000 / period
        func sample() -> (counter: UInt64, tsc: UInt64, width: UInt64) {
            let before = cpu_rdtsc()
            let counter = cpu_load64(UInt(base + 0xF0))
            let after = cpu_rdtsc()
            return (counter, before &+ (after &- before) / 2, after &- before)
        }
        func tightest() -> (counter: UInt64, tsc: UInt64, width: UInt64) {
            var best = sample()
            for _ in 1..<8 {
                let next = sample()
                if next.width < best.width { best = next }
            }
            return best
        }
        let first = tightest()
        var spins: UInt64 = 0
        while cpu_load64(UInt(base + 0xF0)) &- first.counter < ticksNeeded {
            spins += 1
            if spins > 100_000_000 { return nil }
        }
        let last = tightest()
        let nanoseconds = (last.counter &- first.counter) &* period / 1_000_000
        return TickScale(ticks: last.tsc &- first.tsc, overNanoseconds: nanoseconds)
    }
}

/// PIT channel 0 counting down from 0xFFFF in mode 0, sampled with the
/// read-back command (count and status latched together) between two TSC
/// reads (Intel 8254 data sheet): each sample is (ticks since programming,
/// TSC at the bracket's middle, bracket width), so slow port I/O (TCG, a
/// loaded host) widens no measurement. The status's OUT bit says whether
/// the count already passed zero (OUT rises at terminal count and stays
/// high), so one wrap is accounted for: samples are exact up to 131 071
/// ticks (about 110 ms) after programming. Works without port 0x61
/// (microvm).
enum PITChannel0 {
    static let hertz: UInt64 = 1_193_182
    static let initialCount: UInt64 = 0xFFFF

    struct Sample {
        var elapsed: UInt64
        var tsc: UInt64
        var width: UInt64
    }

    enum PollResult {
        case reached(Sample)
        /// The count went backwards: a second wrap (a poll delayed by more
        /// than a wrap period).
        case wrappedTwice
        /// No PIT answers (reads 0xFF).
        case missing
    }

    static func ticks(milliseconds: UInt32) -> UInt64 { hertz * UInt64(milliseconds) / 1000 }

    static func program() {
        cpu_outb(0x43, 0x30)  // channel 0, lobyte/hibyte, mode 0, binary
        cpu_outb(0x40, UInt8(truncatingIfNeeded: initialCount))
        cpu_outb(0x40, UInt8(truncatingIfNeeded: initialCount >> 8))
    }

    static func sample() -> Sample? {
        let before = cpu_rdtsc()
        cpu_outb(0x43, 0xC2)  // read-back: latch count and status, channel 0
        let after = cpu_rdtsc()
        let status = cpu_inb(0x40)
        let low = UInt64(cpu_inb(0x40))
        let high = UInt64(cpu_inb(0x40))
        // Access lobyte/hibyte, mode 0, binary; a missing PIT reads 0xFF.
        guard status & 0x3F == 0x30 else { return nil }
        let count = high << 8 | low
        let elapsed = status & 0x80 == 0 ? initialCount - min(count, initialCount) : initialCount + ((0x1_0000 - count) & 0xFFFF)
        return Sample(elapsed: elapsed, tsc: before &+ (after &- before) / 2, width: after &- before)
    }

    /// The tightest-bracketed of `tries` samples.
    static func tightestSample(tries: Int = 8) -> Sample? {
        guard var best = sample() else { return nil }
        for _ in 1..<tries {
            guard let next = sample() else { return nil }
            if next.width < best.width { best = next }
        }
        return best
    }

    /// Polls until `target` ticks since programming, then takes the
    /// tightest sample.
    static func poll(from start: Sample, untilElapsed target: UInt64) -> PollResult {
        var previous = start.elapsed
        var spins: UInt64 = 0
        while previous < target {
            guard let now = sample() else { return .missing }
            if now.elapsed < previous { return .wrappedTwice }
            previous = now.elapsed
            spins += 1
            if spins > 50_000_000 { return .missing }
        }
        guard let last = tightestSample() else { return .missing }
        guard last.elapsed >= previous, last.elapsed < initialCount + 0x1_0000 else { return .wrappedTwice }
        return .reached(last)
    }

    static func scale(from first: Sample, to last: Sample) -> TickScale? {
        TickScale(ticks: last.tsc &- first.tsc, overNanoseconds: (last.elapsed - first.elapsed) * 1_000_000_000 / hertz)
    }
}

/// Firmware facts the clocks need (ACPI FADT century and RTC presence, the
/// HPET's address), taken from the platform's one reading of the firmware
/// tables (`Platform.firmware`).
struct FirmwareFacts {
    var century: UInt8 = 0
    var rtcAbsent = false
    var hpetBase: UInt64? = nil

    static func read() -> FirmwareFacts {
        var facts = FirmwareFacts()
        let firmware = Platform.firmware
        if let fadt = firmware.fadt {
            facts.century = fadt.century
            facts.rtcAbsent = fadt.cmosRTCNotPresent
        }
        if let hpet = firmware.hpet, hpet.baseAddress.addressSpaceID == 0,
            hpet.baseAddress.address >= Platform.deviceWindowStart, hpet.baseAddress.address < 0x1_0000_0000
        {
            facts.hpetBase = hpet.baseAddress.address
        }
        return facts
    }
}
@_cdecl("bmk_hw_clock_measure")
public func hwClockMeasure(_ index: UInt32) -> UInt64 {
    guard let source = ClockSource(index: index) else { return 0 }
    return SystemClock.measureOnHardware(with: source) ?? 0
}

extension ClockSource {
    /// Declaration order, for PrivilegedOperations.h's bmk_clock_measure.
    public static let all: [ClockSource] = [.kvmclock, .cpuidCrystal, .pitChannel2, .pitChannel0, .hpet, .cpuidNominal, .xen]

    public var index: UInt32 {
        switch self {
        case .kvmclock: return 0
        case .cpuidCrystal: return 1
        case .pitChannel2: return 2
        case .pitChannel0: return 3
        case .hpet: return 4
        case .cpuidNominal: return 5
        case .xen: return 6
        }
    }

    public init?(index: UInt32) {
        guard index < 7 else { return nil }
        self = ClockSource.all[Int(index)]
    }
}

@_cdecl("bmk_hw_rtc_read")
public func hwRTCRead(_ centuryRegister: UInt8, _ seconds: UnsafeMutablePointer<Int64>) -> Int32 {
    do throws(RealTimeClockError) {
        seconds.pointee = try PlatformCore.readWallClock(centuryRegister: centuryRegister)
        return 1
    } catch {
        return 0
    }
}

@_cdecl("bmk_hw_clock_start")
public func hwClockStart() { SystemClock.start() }
#endif
