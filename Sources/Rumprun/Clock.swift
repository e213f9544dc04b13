// Clock: monotonic and wall-clock time for applications, in nanoseconds.
// In the guest: the TSC calibrated at boot (kvmclock, CPUID, PIT or HPET)
// and the CMOS RTC (BareMetalKit SystemClock); on a host: clock_gettime.
#if hasFeature(Embedded)
import BareMetalKit
#else
#if canImport(Glibc)
import Glibc
#endif
#endif

public enum Clock {
    /// Nanoseconds since boot; never goes backwards.
    public static var monotonic: UInt64 {
        #if hasFeature(Embedded)
        SystemClock.monotonicNanoseconds
        #else
        read(CLOCK_MONOTONIC)
        #endif
    }

    /// Nanoseconds since 1970-01-01 00:00 UTC; 0 when the machine has no
    /// real-time clock.
    public static var wall: UInt64 {
        #if hasFeature(Embedded)
        SystemClock.wallNanoseconds ?? 0
        #else
        read(CLOCK_REALTIME)
        #endif
    }

    #if hasFeature(Embedded)
    /// How the TSC was calibrated ("kvmclock", "PIT channel 0", ...).
    public static var sourceName: StaticString { SystemClock.source?.name ?? "none" }

    /// The calibrated TSC frequency in Hz.
    public static var tscFrequency: UInt64 { SystemClock.tscFrequency }

    /// Whether the calibration window ran during the boot steps (PIT
    /// channel 0 started at the top of boot) instead of after them.
    public static var calibratedDuringBoot: Bool { SystemClock.calibrationOverlappedBoot }

    /// The TSC frequency as each calibration source measures it now
    /// (name, Hz; nil where the source does not answer). Takes up to
    /// 50 ms per timer-based source.
    public static func crossCheck() -> [(name: StaticString, hertz: UInt64?)] {
        let sources: [ClockSource] = [.kvmclock, .cpuidCrystal, .pitChannel0, .pitChannel2, .hpet, .cpuidNominal]
        return sources.map { ($0.name, SystemClock.measureTSCFrequency(with: $0)) }
    }
    #else
    static func read(_ clock: clockid_t) -> UInt64 {
        var time = timespec()
        clock_gettime(clock, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }
    #endif
}
