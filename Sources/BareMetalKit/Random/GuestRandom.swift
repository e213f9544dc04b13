// GuestRandom: the guest's entropy source (RDSEED, RDRAND, RDTSC behind
// CPUID checks), the platform's one EntropyPool, and the C faces of it:
// arc4random_buf, arc4random, arc4random_uniform, getrandom, getentropy.
#if hasFeature(Embedded)
import CPUPrimitives

/// RDSEED/RDRAND when CPUID offers them, and the TSC.
public struct HardwareEntropySource: EntropySource {
    public let hasSeedInstruction: Bool
    public let hasRandomInstruction: Bool

    public init() {
        let cpu = CPUInformation(source: HardwareCPUID())
        hasSeedInstruction = cpu.has(.rdseed)
        hasRandomInstruction = cpu.has(.rdrand)
    }

    public mutating func readSeed() -> UInt64? {
        var value: UInt64 = 0
        guard cpu_rdseed64(&value) != 0 else {
            cpu_pause()
            return nil
        }
        return value
    }

    public mutating func readRandom() -> UInt64? {
        var value: UInt64 = 0
        return cpu_rdrand64(&value) != 0 ? value : nil
    }

    public mutating func readTimestamp() -> UInt64 { cpu_rdtsc() }
}

extension Platform {
    nonisolated(unsafe) static var entropyStorage: EntropyPool<HardwareEntropySource>? = nil

    /// The platform's random number generator (created and seeded on first
    /// use; the boot path seeds it right after the heap exists).
    /// (Callers outside the lock: use `withEntropy`.)
    static var entropy: EntropyPool<HardwareEntropySource> {
        if let pool = entropyStorage { return pool }
        let pool = EntropyPool(source: HardwareEntropySource())
        pool.seed()
        entropyStorage = pool
        return pool
    }

    /// Serializes the pool between CPUs (a ticket lock; interrupts masked
    /// while held, so an interrupt handler may use it too).
    static let entropyLock = TicketLock()

    /// Runs `body` on the pool with `entropyLock` held.
    public static func withEntropy<Result>(_ body: (EntropyPool<HardwareEntropySource>) -> Result) -> Result {
        entropyLock.withLock { body(entropy) }
    }

    /// Fills `buffer` with cryptographically secure random bytes.
    public static func randomBytes(_ buffer: UnsafeMutableRawBufferPointer) { withEntropy { $0.fill(buffer) } }

    /// Adds bytes from an entropy device (virtio-rng) or another source,
    /// crediting `creditBits` bits (at most 8 per byte).
    public static func addEntropy(_ bytes: UnsafeRawBufferPointer, creditBits: Int) {
        withEntropy { $0.add(entropy: bytes, creditBits: creditBits) }
    }

    /// What the pool was fed with.
    public static var entropyReport: EntropyReport { withEntropy { $0.report } }

    /// The stack protector guard's boot value (entry.S: TSC, RDRAND when
    /// present), kept to show it was replaced.
    nonisolated(unsafe) public internal(set) static var bootStackGuard: UInt64 = 0

    /// The stack protector guard now.
    public static var stackGuard: UInt64 { UInt64(bmk_stack_guard()) }

    /// Reads 64 bytes from a virtio-rng device into the pool, crediting
    /// them fully (the device is the host's /dev/urandom under QEMU).
    public static func addEntropy<Transport: VirtioTransport, DMA: DMAMemory>(
        from device: inout VirtioEntropy<Transport, DMA>, byteCount: Int = 64
    ) throws(VirtioError) {
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: byteCount, alignment: 16)
        defer {
            scratch.initializeMemory(as: UInt8.self, repeating: 0)
            scratch.deallocate()
        }
        try device.fill(scratch)
        addEntropy(UnsafeRawBufferPointer(scratch), creditBits: 8 * byteCount)
    }
}

/// Seeds the generator at boot. Called by bmk_boot_main once the heap
/// exists; it returns before the guard changes, so its own frame is checked
/// against the value it started with.
func seedRandom() {
    Platform.withEntropy { _ in }
}

/// A fresh guard for the stack protector from the generator, low byte zero
/// (a string overflow cannot reproduce a guard that contains a NUL).
func freshStackGuard() -> UInt {
    Platform.bootStackGuard = UInt64(bmk_stack_guard())
    return UInt(truncatingIfNeeded: Platform.withEntropy { $0.next() }) & ~0xFF
}

@_cdecl("arc4random_buf")
public func arc4random_buf(_ buffer: UnsafeMutableRawPointer, _ count: Int) {
    Platform.randomBytes(UnsafeMutableRawBufferPointer(start: buffer, count: count))
}

@_cdecl("arc4random")
public func arc4random() -> UInt32 {
    UInt32(truncatingIfNeeded: Platform.withEntropy { $0.next() })
}

@_cdecl("arc4random_uniform")
public func arc4random_uniform(_ upperBound: UInt32) -> UInt32 {
    Platform.withEntropy { $0.uniform(below: upperBound) }
}

/// getrandom(2): the pool is always seeded, so every flag combination
/// (GRND_NONBLOCK, GRND_RANDOM) returns the full count.
@_cdecl("getrandom")
public func getrandom(_ buffer: UnsafeMutableRawPointer?, _ count: Int, _ flags: UInt32) -> Int {
    guard let buffer else { return count == 0 ? 0 : -14 }  // EFAULT
    Platform.randomBytes(UnsafeMutableRawBufferPointer(start: buffer, count: count))
    return count
}

/// getentropy(3): at most 256 bytes per call (EIO beyond, as OpenBSD).
@_cdecl("getentropy")
public func getentropy(_ buffer: UnsafeMutableRawPointer?, _ count: Int) -> Int32 {
    guard count <= 256 else { return -1 }
    guard let buffer else { return count == 0 ? 0 : -1 }
    Platform.randomBytes(UnsafeMutableRawBufferPointer(start: buffer, count: count))
    return 0
}
#endif
