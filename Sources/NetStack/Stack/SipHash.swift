// SipHash-2-4 keyed hash for initial sequence numbers and port choice (RFC 6528 §3 asks for a keyed PRF; SipHash per Aumasson & Bernstein 2012).

/// SipHash-2-4 of up to a few words with a 128-bit key.
struct SipHash {
    private var v0: UInt64
    private var v1: UInt64
    private var v2: UInt64
    private var v3: UInt64
    private var length: UInt64 = 0

    init(key0: UInt64, key1: UInt64) {
        v0 = key0 ^ 0x736f_6d65_7073_6575
        v1 = key1 ^ 0x646f_7261_6e64_6f6d
        v2 = key0 ^ 0x6c79_6765_6e65_7261
        v3 = key1 ^ 0x7465_6462_7974_6573
    }

    private static func rotate(_ x: UInt64, _ b: UInt64) -> UInt64 { (x << b) | (x >> (64 - b)) }

    private mutating func round() {
        v0 = v0 &+ v1; v1 = Self.rotate(v1, 13); v1 ^= v0; v0 = Self.rotate(v0, 32)
        v2 = v2 &+ v3; v3 = Self.rotate(v3, 16); v3 ^= v2
        v0 = v0 &+ v3; v3 = Self.rotate(v3, 21); v3 ^= v0
        v2 = v2 &+ v1; v1 = Self.rotate(v1, 17); v1 ^= v2; v2 = Self.rotate(v2, 32)
    }

    /// Absorbs one 8-byte little-endian block.
    mutating func add(_ word: UInt64) {
        v3 ^= word
        round()
        round()
        v0 ^= word
        length &+= 8
    }

    consuming func finalize() -> UInt64 {
        let last = (length & 0xFF) << 56
        v3 ^= last
        round()
        round()
        v0 ^= last
        v2 ^= 0xFF
        round()
        round()
        round()
        round()
        return v0 ^ v1 ^ v2 ^ v3
    }
}

/// A seeded pseudo-random generator (SplitMix64): deterministic for tests,
/// seeded from the platform's entropy in a guest.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
