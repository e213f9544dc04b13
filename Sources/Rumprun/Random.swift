// Random: cryptographically secure random numbers for applications. In the
// guest they come from the platform's ChaCha20 generator (seeded from
// RDSEED/RDRAND, TSC jitter and virtio-rng); on a host from the kernel
// (SystemRandomNumberGenerator, which uses getrandom).
#if hasFeature(Embedded)
import BareMetalKit
#else
#if canImport(Glibc)
import Glibc
#endif
#endif

extension Rumprun {
    /// Fills `buffer` with random bytes. The corresponding C function is
    /// `arc4random_buf`.
    public static func randomBytes(_ buffer: UnsafeMutableRawBufferPointer) {
        #if hasFeature(Embedded)
        Platform.randomBytes(buffer)
        #else
        var generator = SystemRandomNumberGenerator()
        for index in 0..<buffer.count { buffer[index] = generator.next() }
        #endif
    }

    /// A uniformly distributed 64-bit value.
    public static func random() -> UInt64 {
        var value: UInt64 = 0
        withUnsafeMutableBytes(of: &value) { randomBytes($0) }
        return value
    }

    /// A uniformly distributed value in `0..<upperBound`, without modulo
    /// bias; 0 when `upperBound` is below 2. The corresponding C function
    /// is `arc4random_uniform`.
    public static func random(below upperBound: UInt32) -> UInt32 {
        #if hasFeature(Embedded)
        Platform.withEntropy { $0.uniform(below: upperBound) }
        #else
        guard upperBound >= 2 else { return 0 }
        let minimum = (0 &- upperBound) % upperBound
        while true {
            let value = UInt32(truncatingIfNeeded: random())
            if value >= minimum { return value % upperBound }
        }
        #endif
    }

    /// Adds bytes from an entropy source to the platform's pool, with an
    /// estimate of their entropy in bits (capped at 8 per byte). On a host
    /// this does nothing: the kernel keeps its own pool.
    public static func addEntropy(_ bytes: UnsafeRawBufferPointer, creditBits: Int) {
        #if hasFeature(Embedded)
        Platform.addEntropy(bytes, creditBits: creditBits)
        #endif
    }

    #if hasFeature(Embedded)
    /// What the platform's pool was seeded and fed with.
    public static var entropyReport: EntropyReport { Platform.entropyReport }
    #endif
}

/// A `RandomNumberGenerator` over the platform's generator, for
/// `Int.random(in:using:)` and `shuffled(using:)`.
public struct PlatformRandomNumberGenerator: RandomNumberGenerator {
    public init() {}
    public mutating func next() -> UInt64 { Rumprun.random() }
}
