// The retransmission timeout estimator (RFC 6298 §2-5, Karn's algorithm §3).

/// Smoothed RTT, RTT variance and the current RTO, in nanoseconds.
public struct RetransmissionTimeoutEstimator: Sendable {
    public var minimum: UInt64
    public var maximum: UInt64
    /// Clock granularity G of RFC 6298 §2.
    public var granularity: UInt64 = 1_000_000
    public private(set) var smoothedRoundTripTime: UInt64?
    public private(set) var roundTripTimeVariance: UInt64 = 0
    /// The timeout before backoff.
    public private(set) var baseTimeout: UInt64
    /// Backoff exponent applied after consecutive expiries (§5.5).
    public private(set) var backoff = 0

    public init(initial: UInt64 = 1_000_000_000, minimum: UInt64 = 1_000_000_000, maximum: UInt64 = 60_000_000_000) {
        self.minimum = minimum
        self.maximum = maximum
        baseTimeout = initial
    }

    /// The timeout to arm now.
    public var timeout: UInt64 {
        // The minimum applies before doubling (§2.4 then §5.5).
        let floor = Swift.max(baseTimeout, minimum)
        return backoff >= 20 ? maximum : Swift.min(floor << UInt64(backoff), maximum)
    }

    /// Feeds one round-trip measurement R (§2.2-2.3).
    public mutating func sample(_ rtt: UInt64) {
        if let srtt = smoothedRoundTripTime {
            let difference = srtt > rtt ? srtt - rtt : rtt - srtt
            roundTripTimeVariance = roundTripTimeVariance - roundTripTimeVariance / 4 + difference / 4
            smoothedRoundTripTime = srtt - srtt / 8 + rtt / 8
        } else {
            smoothedRoundTripTime = rtt
            roundTripTimeVariance = rtt / 2
        }
        baseTimeout = smoothedRoundTripTime! + Swift.max(granularity, 4 * roundTripTimeVariance)
        backoff = 0
    }

    /// Doubles the timeout after an expiry (§5.5).
    public mutating func backOff() { backoff += 1 }

    /// Clears backoff once new data is acknowledged.
    public mutating func resetBackoff() { backoff = 0 }

    /// RFC 6298 §5.7: after a retransmitted SYN, data starts from a 3 s RTO.
    public mutating func resetAfterHandshakeRetransmission() {
        if smoothedRoundTripTime == nil { baseTimeout = Swift.max(baseTimeout, 3_000_000_000) }
        backoff = 0
    }
}
