// TickScale: counter-ticks-to-nanoseconds conversion in the fixed-point form
// kvmclock uses (pvclock_vcpu_time_info: tsc_to_system_mul, tsc_shift; KVM
// API documentation, "KVM-specific MSRs", MSR_KVM_SYSTEM_TIME_NEW), for the
// TSC, the HPET or the PIT.

/// Nanoseconds = ((ticks shifted left by `shift`, or right when negative)
/// × `multiplier`) / 2^32.
public struct TickScale: Equatable, Sendable {
    public var multiplier: UInt32
    public var shift: Int8

    public init(multiplier: UInt32, shift: Int8) {
        self.multiplier = multiplier
        self.shift = shift
    }

    /// The most precise scale for a counter of `ticksPerSecond` (the
    /// multiplier lands in [2^31, 2^32)). Nil for 0 or absurd frequencies.
    public init?(ticksPerSecond: UInt64) {
        guard ticksPerSecond > 0 else { return nil }
        // Smallest shift s with ticksPerSecond × 2^s > 10^9.
        var shift = 0
        if ticksPerSecond > 1_000_000_000 {
            while shift > -31 && ticksPerSecond >> UInt64(1 - shift) > 1_000_000_000 { shift -= 1 }
        } else {
            while shift < 31 && (ticksPerSecond << UInt64(shift)) <= 1_000_000_000 { shift += 1 }
        }
        guard ticksPerSecond.leadingZeroBitCount >= max(shift, 0) else { return nil }
        // multiplier = 10^9 × 2^(32 − s) / ticksPerSecond, in 128 bits.
        let numeratorShift = 32 - shift
        let numerator: (high: UInt64, low: UInt64) =
            numeratorShift >= 64
            ? (1_000_000_000 << UInt64(numeratorShift - 64), 0)
            : (numeratorShift > 0 ? 1_000_000_000 >> UInt64(64 - numeratorShift) : 0,
                1_000_000_000 << UInt64(numeratorShift))
        guard numerator.high < ticksPerSecond else { return nil }
        let (quotient, _) = Self.divide(numerator, by: ticksPerSecond)
        guard quotient <= UInt64(UInt32.max) else { return nil }
        self.multiplier = UInt32(quotient)
        self.shift = Int8(shift)
    }

    /// The scale for `ticks` counted over `nanoseconds` of a reference
    /// clock (PIT, HPET or ACPI PM timer calibration).
    public init?(ticks: UInt64, overNanoseconds nanoseconds: UInt64) {
        guard nanoseconds > 0 else { return nil }
        let (high, low) = ticks.multipliedFullWidth(by: 1_000_000_000)
        guard high < nanoseconds else { return nil }
        self.init(ticksPerSecond: Self.divide((high, low), by: nanoseconds).quotient)
    }

    /// Nanoseconds for `ticks` (wraps only past 2^64 ns, about 584 years;
    /// a left shift of very large tick counts saturates instead).
    public func nanoseconds(ticks: UInt64) -> UInt64 {
        let shifted: UInt64
        if shift >= 0 {
            shifted = ticks.leadingZeroBitCount >= Int(shift) ? ticks << UInt64(shift) : UInt64.max
        } else {
            shifted = ticks >> UInt64(-Int(shift))
        }
        let (high, low) = shifted.multipliedFullWidth(by: UInt64(multiplier))
        return high << 32 | low >> 32
    }

    /// The fewest ticks that last at least `nanoseconds` (for programming a
    /// TSC deadline or a timer count).
    public func ticks(nanoseconds: UInt64) -> UInt64 {
        guard multiplier > 0 else { return UInt64.max }
        // shifted = ceil(ns × 2^32 / multiplier), then undo the shift.
        let numerator = (high: nanoseconds >> 32, low: nanoseconds << 32)
        guard numerator.high < UInt64(multiplier) else { return UInt64.max }
        let (quotient, remainder) = Self.divide(numerator, by: UInt64(multiplier))
        let shifted = quotient + (remainder == 0 ? 0 : 1)
        if shift >= 0 { return (shifted + (UInt64(1) << UInt64(shift)) - 1) >> UInt64(shift) }
        let amount = UInt64(-Int(shift))
        return shifted.leadingZeroBitCount >= Int(amount) ? shifted << amount : UInt64.max
    }

    /// 128-by-64-bit division by shift and subtract; `numerator.high` must
    /// be below `divisor`. (`dividingFullWidth` would call compiler-rt's
    /// `__udivti3`, which the freestanding guest does not link.)
    static func divide(_ numerator: (high: UInt64, low: UInt64), by divisor: UInt64) -> (quotient: UInt64, remainder: UInt64) {
        precondition(divisor > 0 && numerator.high < divisor, "128-bit quotient overflows")
        var remainder = numerator.high
        var quotient: UInt64 = 0
        var bit = 63
        while bit >= 0 {
            let carry = remainder >> 63
            remainder = remainder << 1 | (numerator.low >> UInt64(bit)) & 1
            quotient <<= 1
            if carry != 0 || remainder >= divisor {
                remainder &-= divisor
                quotient |= 1
            }
            bit -= 1
        }
        return (quotient, remainder)
    }

    /// The counter frequency this scale stands for (rounded).
    public var ticksPerSecond: UInt64 {
        guard multiplier > 0 else { return 0 }
        // 10^9 × 2^32 / multiplier, then undo the shift.
        let (quotient, _) = Self.divide((high: 1_000_000_000 >> 32, low: 1_000_000_000 << 32), by: UInt64(multiplier))
        return shift >= 0 ? quotient >> UInt64(shift) : quotient << UInt64(-Int(shift))
    }
}

/// kvmclock's per-CPU time record, `struct pvclock_vcpu_time_info` (32
/// bytes: version u32, pad u32, tsc_timestamp u64, system_time u64,
/// tsc_to_system_mul u32, tsc_shift i8, flags u8, pad).
public struct PVClockTimeInfo: Equatable, Sendable {
    /// Odd while the hypervisor updates the record.
    public var version: UInt32
    public var tscTimestamp: UInt64
    /// Nanoseconds since the guest booted, at `tscTimestamp`.
    public var systemTime: UInt64
    public var scale: TickScale
    /// Bit 0 PVCLOCK_TSC_STABLE_BIT: the TSC is stable across CPUs.
    public var flags: UInt8

    public static var byteCount: Int { 32 }

    /// Reads the record's fields from its 32-byte layout. The caller
    /// guarantees 32 readable bytes at `pointer`.
    public init(from pointer: UnsafeRawPointer) {
        version = pointer.loadUnaligned(fromByteOffset: 0, as: UInt32.self)
        tscTimestamp = pointer.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
        systemTime = pointer.loadUnaligned(fromByteOffset: 16, as: UInt64.self)
        scale = TickScale(
            multiplier: pointer.loadUnaligned(fromByteOffset: 24, as: UInt32.self),
            shift: pointer.loadUnaligned(fromByteOffset: 28, as: Int8.self))
        flags = pointer.loadUnaligned(fromByteOffset: 29, as: UInt8.self)
    }

    public init(version: UInt32, tscTimestamp: UInt64, systemTime: UInt64, scale: TickScale, flags: UInt8) {
        self.version = version
        self.tscTimestamp = tscTimestamp
        self.systemTime = systemTime
        self.scale = scale
        self.flags = flags
    }

    /// Whether this copy was taken outside an update.
    public var isConsistent: Bool { version & 1 == 0 }

    /// Guest nanoseconds at TSC value `tsc` (not before `tscTimestamp`).
    public func nanoseconds(atTSC tsc: UInt64) -> UInt64 {
        systemTime &+ scale.nanoseconds(ticks: tsc &- tscTimestamp)
    }
}

/// A monotonic nanosecond clock from a free-running counter: nanoseconds
/// since the counter read `originTicks`.
public struct CounterClock: Equatable, Sendable {
    public var scale: TickScale
    public var originTicks: UInt64
    /// Added to every reading (time already elapsed at the origin).
    public var originNanoseconds: UInt64

    public init(scale: TickScale, originTicks: UInt64, originNanoseconds: UInt64 = 0) {
        self.scale = scale
        self.originTicks = originTicks
        self.originNanoseconds = originNanoseconds
    }

    public func nanoseconds(atTicks ticks: UInt64) -> UInt64 {
        originNanoseconds &+ scale.nanoseconds(ticks: ticks &- originTicks)
    }

    /// The counter value at which `nanoseconds` will have been reached.
    public func ticks(atNanoseconds nanoseconds: UInt64) -> UInt64 {
        guard nanoseconds > originNanoseconds else { return originTicks }
        return originTicks &+ scale.ticks(nanoseconds: nanoseconds - originNanoseconds)
    }
}
