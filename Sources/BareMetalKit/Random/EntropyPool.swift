// EntropyPool: the platform's cryptographically secure random number
// generator. An accumulator absorbs entropy (RDSEED, RDRAND, TSC jitter,
// virtio-rng, anything a driver adds) through the ChaCha20 block function;
// a ChaCha20 generator with fast key erasure (each refill overwrites the key
// with the first 32 bytes of its own output) produces the bytes; the
// generator is rekeyed from the accumulator on a reseed policy.

/// The hardware the pool draws on. The guest's conformer executes RDSEED,
/// RDRAND and RDTSC; tests script every answer.
public protocol EntropySource {
    /// CPUID.(EAX=7,ECX=0):EBX[18]: the RDSEED instruction exists.
    var hasSeedInstruction: Bool { get }
    /// CPUID.1:ECX[30]: the RDRAND instruction exists.
    var hasRandomInstruction: Bool { get }
    /// One RDSEED attempt; nil when the carry flag came back clear (no
    /// conditioned entropy was ready).
    mutating func readSeed() -> UInt64?
    /// One RDRAND attempt; nil when the carry flag came back clear.
    mutating func readRandom() -> UInt64?
    /// The time-stamp counter.
    mutating func readTimestamp() -> UInt64
}

/// What went into the pool, for diagnostics and tests.
public struct EntropyReport: Equatable, Sendable {
    /// RDSEED words accepted / attempts that returned carry clear.
    public var seedWords = 0
    public var seedFailures = 0
    /// RDRAND words accepted / attempts that returned carry clear.
    public var randomWords = 0
    public var randomFailures = 0
    /// Hardware words refused as implausible (0, all ones, a repeat of the
    /// previous word: the signature of a broken RDRAND).
    public var rejectedWords = 0
    /// TSC jitter samples absorbed, and how many distinct low bytes their
    /// deltas had (0 or 1 distinct values: the clock gives no jitter).
    public var jitterSamples = 0
    public var distinctJitterDeltas = 0
    /// Bytes added through `add(entropy:creditBits:)` (virtio-rng, drivers).
    public var externalBytes = 0
    /// Bits of entropy credited in total (an estimate, conservative).
    public var creditedBits = 0
    /// Times the generator was rekeyed from the accumulator.
    public var reseedCount = 0
    /// Bytes handed out.
    public var bytesGenerated: UInt64 = 0

    public init() {}
}

/// The entropy accumulator and ChaCha20 generator.
///
/// Reseed policy: the generator is rekeyed from the accumulator when it is
/// first used (after `seed()` gathered hardware entropy and TSC jitter),
/// whenever at least `reseedThresholdBits` new bits were credited since the
/// last reseed, and after `reseedIntervalBytes` of output (then fresh
/// hardware words and jitter are gathered first). The check runs at every
/// request (so new entropy takes effect at once, discarding buffered
/// output) and before every 1 KiB refill, so one long request is rekeyed
/// along the way too.
public final class EntropyPool<Source: EntropySource> {
    public var source: Source
    public private(set) var report = EntropyReport()
    /// Credited bits that trigger a reseed.
    public var reseedThresholdBits = 256
    /// Output after which the generator reseeds with fresh samples.
    public var reseedIntervalBytes: UInt64 = 1 << 20
    /// RDSEED may legitimately run dry for a while (Intel DRNG guide §5.3.1):
    /// attempts per word, with PAUSE-like spacing left to the source.
    public static var seedRetryLimit: Int { 128 }
    /// RDRAND failing ten times in a row means a broken generator (§5.2.1).
    public static var randomRetryLimit: Int { 10 }
    /// TSC jitter samples taken by `seed()`.
    public static var seedJitterSamples: Int { 256 }

    /// The accumulator: a 256-bit ChaCha20 key, compressed after each input.
    var pool = KeyWords()
    var poolCounter: UInt64 = 0
    /// The generator key; erased (overwritten) at every refill.
    var key = KeyWords()
    /// 16 blocks of output; bytes before `position` were handed out or
    /// became the next key, and are zero.
    let buffer: UnsafeMutableRawPointer
    var position: Int
    var pendingBits = 0
    var bytesSinceReseed: UInt64 = 0
    public private(set) var isSeeded = false
    var lastSeedWord: UInt64? = nil
    var lastRandomWord: UInt64? = nil

    static var bufferByteCount: Int { 1024 }

    public init(source: Source) {
        self.source = source
        buffer = UnsafeMutableRawPointer.allocate(byteCount: Self.bufferByteCount, alignment: 64)
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: Self.bufferByteCount)
        position = Self.bufferByteCount
    }

    deinit {
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: Self.bufferByteCount)
        buffer.deallocate()
        pool.erase()
        key.erase()
    }

    // MARK: Accumulator

    /// Absorbs eight words: XOR into the accumulator, then replace it with
    /// the first half of a ChaCha20 block keyed by it (the counter makes
    /// every compression distinct; the nonce separates it from the other
    /// uses of ChaCha20 here).
    func absorb(_ words: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32)) {
        pool.words.0 ^= words.0
        pool.words.1 ^= words.1
        pool.words.2 ^= words.2
        pool.words.3 ^= words.3
        pool.words.4 ^= words.4
        pool.words.5 ^= words.5
        pool.words.6 ^= words.6
        pool.words.7 ^= words.7
        var output: (KeyWords, KeyWords) = (KeyWords(), KeyWords())
        let counter = poolCounter
        pool.withWords { key in
            withUnsafeMutableBytes(of: &output) { raw in
                ChaCha20.block(
                    key: key, counter: UInt32(truncatingIfNeeded: counter),
                    nonce: (UInt32(truncatingIfNeeded: counter >> 32), Self.absorbDomain, 0),
                    output: raw.baseAddress!.assumingMemoryBound(to: UInt32.self))
            }
        }
        pool = output.0
        output.0.erase()
        output.1.erase()
        poolCounter &+= 1
    }

    /// Absorbs four 64-bit values.
    func absorb(_ a: UInt64, _ b: UInt64, _ c: UInt64, _ d: UInt64) {
        absorb((
            UInt32(truncatingIfNeeded: a), UInt32(truncatingIfNeeded: a >> 32),
            UInt32(truncatingIfNeeded: b), UInt32(truncatingIfNeeded: b >> 32),
            UInt32(truncatingIfNeeded: c), UInt32(truncatingIfNeeded: c >> 32),
            UInt32(truncatingIfNeeded: d), UInt32(truncatingIfNeeded: d >> 32)))
    }

    /// "pool", "rsed": nonce words that keep the accumulator's and the
    /// reseed's ChaCha20 uses apart from the generator's (nonce 0).
    static var absorbDomain: UInt32 { 0x6C6F_6F70 }
    static var reseedDomain: UInt32 { 0x6465_7372 }

    /// Adds bytes from an entropy source (virtio-rng, a driver, the
    /// application) with an estimate of the entropy they carry; the time of
    /// the call is mixed in too. Credit above 8 bits per byte is capped.
    public func add(entropy bytes: UnsafeRawBufferPointer, creditBits: Int) {
        var offset = 0
        while offset < bytes.count {
            var chunk = KeyWords()
            let count = min(32, bytes.count - offset)
            withUnsafeMutableBytes(of: &chunk.words) { target in
                for index in 0..<count { target[index] = bytes[offset + index] }
            }
            absorb(chunk.words)
            chunk.erase()
            offset += count
        }
        absorb(source.readTimestamp(), UInt64(bytes.count), 0, 0)
        report.externalBytes += bytes.count
        credit(min(max(creditBits, 0), 8 * bytes.count))
    }

    func credit(_ bits: Int) {
        pendingBits += bits
        report.creditedBits += bits
    }

    // MARK: Gathering

    /// Reads `words` words from RDSEED and from RDRAND (each when CPUID has
    /// it, each word with its retry limit; an instruction that exhausts its
    /// retries is not asked again this time) and absorbs them. RDSEED words
    /// are credited 64 bits, RDRAND words (DRBG output) 16.
    public func gatherHardware(words: Int) {
        var collected: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        var count = 0
        func flush() {
            if count > 0 { absorb(collected.0, collected.1, collected.2, collected.3) }
            collected = (0, 0, 0, 0)
            count = 0
        }
        func keep(_ value: UInt64) {
            switch count {
            case 0: collected.0 = value
            case 1: collected.1 = value
            case 2: collected.2 = value
            default: collected.3 = value
            }
            count += 1
            if count == 4 { flush() }
        }
        /// Up to `words` plausible words from one instruction: a failed read
        /// is retried, an implausible word (0, all ones, a repeat) rejected;
        /// a word that exhausts `retries` ends this instruction's turn.
        func draw(retries: Int, creditBits: Int, last: inout UInt64?, _ read: () -> UInt64?) -> (accepted: Int, failures: Int) {
            var accepted = 0
            var failures = 0
            wordLoop: for _ in 0..<words {
                for _ in 0..<retries {
                    guard let value = read() else {
                        failures += 1
                        continue
                    }
                    let isPlausible = plausible(value, previous: last)
                    last = value
                    if isPlausible {
                        keep(value)
                        accepted += 1
                        credit(creditBits)
                        continue wordLoop
                    }
                    report.rejectedWords += 1
                }
                break
            }
            return (accepted, failures)
        }
        if source.hasSeedInstruction {
            let drawn = draw(retries: Self.seedRetryLimit, creditBits: 64, last: &lastSeedWord) { source.readSeed() }
            report.seedWords += drawn.accepted
            report.seedFailures += drawn.failures
        }
        if source.hasRandomInstruction {
            let drawn = draw(retries: Self.randomRetryLimit, creditBits: 16, last: &lastRandomWord) { source.readRandom() }
            report.randomWords += drawn.accepted
            report.randomFailures += drawn.failures
        }
        flush()
    }

    func plausible(_ value: UInt64, previous: UInt64?) -> Bool {
        value != 0 && value != UInt64.max && value != previous
    }

    /// Takes `samples` TSC jitter samples: the time of a small piece of
    /// work that touches the generator's buffer at data-dependent places.
    /// Every timestamp and delta is absorbed; the credit is one bit per
    /// eight samples, capped by the number of distinct delta low bytes
    /// (none when the clock shows no jitter at all).
    public func gatherJitter(samples: Int) {
        var seen = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        var previous = source.readTimestamp()
        var walk = UInt32(truncatingIfNeeded: previous)
        var batch: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        for index in 0..<samples {
            // Work whose duration varies with caches and the pipeline.
            for _ in 0..<16 {
                let offset = Int(walk & 0x3FC)
                walk = walk &* 0x9E37_79B9 &+ buffer.load(fromByteOffset: offset, as: UInt32.self) &+ 1
            }
            let now = source.readTimestamp()
            let delta = now &- previous
            previous = now
            let low = UInt8(truncatingIfNeeded: delta)
            switch low >> 6 {
            case 0: seen.0 |= 1 << UInt64(low & 63)
            case 1: seen.1 |= 1 << UInt64(low & 63)
            case 2: seen.2 |= 1 << UInt64(low & 63)
            default: seen.3 |= 1 << UInt64(low & 63)
            }
            switch index & 1 {
            case 0:
                batch.0 = delta
                batch.1 = now
            default:
                batch.2 = delta
                batch.3 = now ^ UInt64(walk)
                absorb(batch.0, batch.1, batch.2, batch.3)
            }
        }
        if samples & 1 == 1 { absorb(batch.0, batch.1, UInt64(walk), 0) }
        let distinct = seen.0.nonzeroBitCount + seen.1.nonzeroBitCount + seen.2.nonzeroBitCount + seen.3.nonzeroBitCount
        report.jitterSamples += samples
        report.distinctJitterDeltas = max(report.distinctJitterDeltas, distinct)
        credit(distinct > 1 ? min(samples / 8, distinct) : 0)
    }

    /// Gathers the boot-time entropy (four words from each hardware
    /// instruction present, `seedJitterSamples` jitter samples) and keys
    /// the generator from it.
    public func seed() {
        absorb(source.readTimestamp(), 0, 0, 0)
        gatherHardware(words: 4)
        gatherJitter(samples: Self.seedJitterSamples)
        reseed()
        isSeeded = true
    }

    // MARK: Generator

    /// Rekeys the generator: one ChaCha20 block keyed by the accumulator
    /// gives 32 bytes XORed into the generator key and 32 bytes that
    /// replace the accumulator (so neither the old accumulator nor the new
    /// key can be recovered from the new accumulator). Buffered output is
    /// discarded.
    public func reseed() {
        var output: (KeyWords, KeyWords) = (KeyWords(), KeyWords())
        let counter = UInt64(report.reseedCount)
        pool.withWords { accumulator in
            withUnsafeMutableBytes(of: &output) { raw in
                ChaCha20.block(
                    key: accumulator, counter: UInt32(truncatingIfNeeded: counter),
                    nonce: (UInt32(truncatingIfNeeded: counter >> 32), Self.reseedDomain, 0),
                    output: raw.baseAddress!.assumingMemoryBound(to: UInt32.self))
            }
        }
        key.words.0 ^= output.0.words.0
        key.words.1 ^= output.0.words.1
        key.words.2 ^= output.0.words.2
        key.words.3 ^= output.0.words.3
        key.words.4 ^= output.0.words.4
        key.words.5 ^= output.0.words.5
        key.words.6 ^= output.0.words.6
        key.words.7 ^= output.0.words.7
        pool = output.1
        output.0.erase()
        output.1.erase()
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: Self.bufferByteCount)
        position = Self.bufferByteCount
        pendingBits = 0
        bytesSinceReseed = 0
        report.reseedCount += 1
    }

    /// Whether the policy asks for a reseed before the next refill.
    public var needsReseed: Bool {
        !isSeeded || pendingBits >= reseedThresholdBits || bytesSinceReseed >= reseedIntervalBytes
    }

    /// Applies the reseed policy: seeds on first use, reseeds with fresh
    /// hardware words and jitter after `reseedIntervalBytes` of output, and
    /// reseeds from the accumulator once enough new bits were credited.
    func applyReseedPolicy() {
        if !isSeeded {
            seed()
        } else if bytesSinceReseed >= reseedIntervalBytes {
            gatherHardware(words: 1)
            gatherJitter(samples: 16)
            reseed()
        } else if pendingBits >= reseedThresholdBits {
            reseed()
        }
    }

    /// Sixteen blocks from the key (counter 0...15, nonce 0); the first 32
    /// bytes become the next key and are zeroed at once (fast key erasure).
    func refill() {
        let words = buffer.assumingMemoryBound(to: UInt32.self)
        key.withWords { current in
            for index in 0..<16 {
                ChaCha20.block(key: current, counter: UInt32(index), nonce: (0, 0, 0), output: words + 16 * index)
            }
        }
        key.load(words: words)
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: 32)
        position = 32
    }

    /// Fills `destination` with random bytes. Every byte handed out is
    /// zeroed in the buffer at once.
    public func fill(_ destination: UnsafeMutableRawBufferPointer) {
        applyReseedPolicy()
        var offset = 0
        while offset < destination.count {
            if position == Self.bufferByteCount {
                applyReseedPolicy()
                refill()
            }
            let chunk = min(destination.count - offset, Self.bufferByteCount - position)
            (destination.baseAddress! + offset).copyMemory(from: buffer + position, byteCount: chunk)
            (buffer + position).initializeMemory(as: UInt8.self, repeating: 0, count: chunk)
            position += chunk
            offset += chunk
            bytesSinceReseed &+= UInt64(chunk)
            report.bytesGenerated &+= UInt64(chunk)
        }
    }

    /// A uniformly distributed 64-bit value.
    public func next() -> UInt64 {
        var value: UInt64 = 0
        withUnsafeMutableBytes(of: &value) { fill($0) }
        return value
    }

    /// A uniformly distributed value in 0..<upperBound (no modulo bias:
    /// values below 2^32 mod upperBound are drawn again, as
    /// arc4random_uniform does). 0 for an upper bound below 2.
    public func uniform(below upperBound: UInt32) -> UInt32 {
        guard upperBound >= 2 else { return 0 }
        let minimum = (0 &- upperBound) % upperBound
        while true {
            var value: UInt32 = 0
            withUnsafeMutableBytes(of: &value) { fill($0) }
            if value >= minimum { return value % upperBound }
        }
    }
}
