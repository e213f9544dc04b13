// Storage: block devices for applications. `StorageDevice.open("blk0")`
// starts the virtio-blk driver of the disk the launcher attached under that
// tag (`-b`, Rumprun.blockDevices), or takes the disk the platform
// registered for it (Xen's blkfront, `PlatformDevices`), and offers blocking, sector-granular
// reads, writes and flushes usable from several threads: one lock per
// device, each request waits for its completion (woken by the device's
// interrupt, or polled when none could be connected). Requests go through
// a DMA bounce buffer, so callers may pass any memory. Guest only.
#if hasFeature(Embedded)
import BareMetalKit
import DeviceInterfaces

/// Why opening a disk or a request on it failed.
public enum StorageError: Error, Equatable {
    /// The launcher attached no block device with this tag (`-b`).
    case notConfigured(tag: String, available: [String])
    /// The tag's device is not on the PCI bus.
    case deviceNotFound(tag: String)
    case unsupportedDriver(tag: String, driver: String)
    case driverFailed(tag: String, code: Int)
    /// The device is already open (one StorageDevice per disk).
    case alreadyOpen(tag: String)
    /// Offset or length not a multiple of the sector size.
    case misaligned(offset: UInt64, length: Int, sectorSize: Int)
    /// The range ends past the device's capacity.
    case outOfRange(offset: UInt64, length: Int, capacity: UInt64)
    case readOnly
    /// The device reported a failure or broke its protocol; the request
    /// (and, after a protocol fault, every later one) did not happen.
    case deviceError(code: Int)
    case closed

    public var description: String {
        switch self {
        case .notConfigured(let tag, let available):
            return "no block device '\(tag)' (the launcher attached \(available.isEmpty ? "none; run with -b FILE" : "\(available)"))"
        case .deviceNotFound(let tag):
            if PlatformDevices.blockDevices.isEmpty && PlatformDevices.problems.isEmpty {
                return "\(tag): no virtio-blk device on the PCI bus (ports 0xCF8/0xCFC; use --machine pc)"
            }
            var text = "\(tag): the platform attached no disk for it"
            for problem in PlatformDevices.problems { text += "; " + problem }
            return text
        case .unsupportedDriver(let tag, let driver): return "\(tag): driver \(driver) is not supported here"
        case .driverFailed(let tag, let code): return "\(tag): the virtio-blk driver failed to start (code \(code))"
        case .alreadyOpen(let tag): return "\(tag): already open"
        case .misaligned(let offset, let length, let sectorSize):
            return "offset \(offset) length \(length) not a multiple of the \(sectorSize)-byte sector"
        case .outOfRange(let offset, let length, let capacity): return "\(length) bytes at \(offset) end past the capacity \(capacity)"
        case .readOnly: return "the device is read-only"
        case .deviceError(let code): return "device error (code \(code))"
        case .closed: return "the device is closed"
        }
    }
}

typealias VirtioBlockDevice = VirtioBlock<VirtioPCIModernTransport<MMIORegisters>, HeapDMAMemory>

/// Threads waiting for a disk's completions; the interrupt handler wakes
/// them by id. Fixed storage allocated once, so the handler neither
/// allocates nor triggers a copy-on-write (plain values only).
enum StorageWakeup {
    static var slots: Int { 8 }
    nonisolated(unsafe) static let waiting: UnsafeMutablePointer<ThreadID?> = {
        let pointer = UnsafeMutablePointer<ThreadID?>.allocate(capacity: 8)
        pointer.initialize(repeating: nil, count: 8)
        return pointer
    }()
    nonisolated(unsafe) static let interrupts: UnsafeMutablePointer<UInt64> = {
        let pointer = UnsafeMutablePointer<UInt64>.allocate(capacity: 8)
        pointer.initialize(repeating: 0, count: 8)
        return pointer
    }()

    static func wake(_ slot: Int) {
        interrupts[slot] &+= 1
        if let thread = waiting[slot] { _ = ThreadRuntime.wake(thread) }
    }
}

/// An open block device.
public final class StorageDevice {
    nonisolated(unsafe) static var open: [String] = []

    /// The launcher's tag (`blk0`).
    public let tag: String
    public let sectorSize: Int
    public let sectorCount: UInt64
    public let isReadOnly: Bool
    /// "MSI-X", "INTx" or "event channel" (Xen) when completions
    /// interrupt; nil when polled.
    public let interruptMode: StaticString?

    /// Bytes of the device.
    public var capacity: UInt64 { sectorCount &* UInt64(sectorSize) }

    /// The virtio-blk driver, or nil for a platform device.
    var driver: VirtioBlockDevice?
    let platformDriver: (any PlatformBlockDevice)?
    let lock = Mutex()
    let bounce: UnsafeMutableRawBufferPointer
    let slot: Int
    let detach: (() -> Void)?
    var nextTag: UInt64 = 1
    var isClosed = false
    /// Requests completed and failed since open.
    public private(set) var requestCount: UInt64 = 0
    public private(set) var failedRequestCount: UInt64 = 0

    /// Bytes moved per device request (larger calls are split).
    public static var transferSize: Int { 64 * 1024 }

    init(tag: String, driver: VirtioBlockDevice, slot: Int, interruptMode: StaticString?, detach: (() -> Void)?, bounce: UnsafeMutableRawBufferPointer) {
        self.tag = tag
        self.driver = driver
        platformDriver = nil
        sectorSize = driver.sectorSize
        sectorCount = driver.sectorCount
        isReadOnly = driver.isReadOnly
        self.slot = slot
        self.interruptMode = interruptMode
        self.detach = detach
        self.bounce = bounce
    }

    init(tag: String, platformDriver: any PlatformBlockDevice, slot: Int, interruptMode: StaticString?, detach: (() -> Void)?, bounce: UnsafeMutableRawBufferPointer) {
        self.tag = tag
        driver = nil
        self.platformDriver = platformDriver
        sectorSize = platformDriver.sectorSize
        sectorCount = platformDriver.sectorCount
        isReadOnly = platformDriver.isReadOnly
        self.slot = slot
        self.interruptMode = interruptMode
        self.detach = detach
        self.bounce = bounce
    }

    /// Tags of the block devices the launcher attached, in `-b` order.
    public static var configuredTags: [String] { Rumprun.blockDevices.map { $0.tag } }

    /// Starts the driver of the disk the launcher attached as `tag` (the
    /// n-th `-b` is the n-th virtio-blk function on the PCI bus). With
    /// `interrupts` false, waiting requests poll the device between yields.
    public static func open(_ tag: String, interrupts: Bool = true) throws(StorageError) -> StorageDevice {
        registryLock.lock()
        defer { registryLock.unlock() }
        let configured = Rumprun.blockDevices
        guard let position = configured.firstIndex(where: { $0.tag.utf8.elementsEqual(tag.utf8) }) else {
            throw .notConfigured(tag: tag, available: configured.map { $0.tag })
        }
        let driverName = configured[position].driver
        if !driverName.utf8.elementsEqual("virtio-blk".utf8) {
            if PlatformDevices.blockDevices.isEmpty && PlatformDevices.problems.isEmpty {
                throw .unsupportedDriver(tag: tag, driver: driverName)
            }
            if open.contains(where: { $0.utf8.elementsEqual(tag.utf8) }) { throw .alreadyOpen(tag: tag) }
            // The n-th `-b` of a platform driver is its unit n (xvda, xvdb, ...).
            let unit = configured[0..<position].filter { $0.driver.utf8.elementsEqual(driverName.utf8) }.count
            guard let device = PlatformDevices.blockDevice(driver: driverName, unit: unit) else { throw .deviceNotFound(tag: tag) }
            return try openPlatform(tag, device: device, interrupts: interrupts)
        }
        if open.contains(where: { $0.utf8.elementsEqual(tag.utf8) }) { throw .alreadyOpen(tag: tag) }
        // The position among the virtio-blk entries picks the PCI function.
        let ordinal = configured[0..<position].filter { $0.driver.utf8.elementsEqual("virtio-blk".utf8) }.count
        let access = PortConfigurationAccess(ports: PortRegisters(base: 0xCF8))
        let functions = PCIEnumerator.enumerate(access).filter { VirtioPCI.deviceType(of: $0) == VirtioPCI.blockType }
        guard ordinal < functions.count else { throw .deviceNotFound(tag: tag) }
        guard let slot = (0..<StorageWakeup.slots).first(where: { index in StorageWakeup.waiting[index] == nil && !usedSlots.contains(index) })
        else { throw .driverFailed(tag: tag, code: -1) }
        let transport: VirtioPCIModernTransport<MMIORegisters>
        let driver: VirtioBlockDevice
        do throws(VirtioError) {
            transport = try VirtioPCIModernTransport(function: functions[ordinal].address, access: access, mapper: IdentityMappedIO())
            driver = try VirtioBlockDevice(transport: transport, dma: HeapDMAMemory())
        } catch {
            throw .driverFailed(tag: tag, code: error.code)
        }
        guard let memory = HeapDMAMemory().allocate(byteCount: transferSize, alignment: 4096) else {
            try? driver.shutdown()
            throw .driverFailed(tag: tag, code: -2)
        }
        let bounce = UnsafeMutableRawBufferPointer(start: memory, count: transferSize)
        var mode: StaticString? = nil
        var detach: (() -> Void)? = nil
        if interrupts {
            do throws(InterruptError) {
                let binding = try transport.attachInterrupts(access: access, queueCount: 1) { _ in StorageWakeup.wake(slot) }
                mode = binding.kind == .msix ? "MSI-X" : "INTx"
                detach = { binding.detach(access: access) }
            } catch {
                mode = nil
            }
        }
        usedSlots.append(slot)
        open.append(tag)
        return StorageDevice(tag: tag, driver: driver, slot: slot, interruptMode: mode, detach: detach, bounce: bounce)
    }

    /// `open` for a disk the platform registered (called with the registry lock held).
    static func openPlatform(_ tag: String, device: any PlatformBlockDevice, interrupts: Bool) throws(StorageError) -> StorageDevice {
        guard let slot = (0..<StorageWakeup.slots).first(where: { index in StorageWakeup.waiting[index] == nil && !usedSlots.contains(index) })
        else { throw .driverFailed(tag: tag, code: -1) }
        guard let memory = HeapDMAMemory().allocate(byteCount: transferSize, alignment: 4096) else { throw .driverFailed(tag: tag, code: -2) }
        let bounce = UnsafeMutableRawBufferPointer(start: memory, count: transferSize)
        var mode: StaticString? = nil
        var detach: (() -> Void)? = nil
        if interrupts, let how = device.connectWakeup({ StorageWakeup.wake(slot) }) {
            mode = how
            detach = { device.disconnectWakeup() }
        }
        usedSlots.append(slot)
        open.append(tag)
        return StorageDevice(tag: tag, platformDriver: device, slot: slot, interruptMode: mode, detach: detach, bounce: bounce)
    }

    nonisolated(unsafe) static var usedSlots: [Int] = []
    /// Guards `open` and `usedSlots` (opens may race on several CPUs).
    nonisolated(unsafe) static let registryLock = Mutex()

    /// Checks that `offset` and `length` are whole sectors inside the device.
    func check(offset: UInt64, length: Int) throws(StorageError) {
        let size = UInt64(sectorSize)
        guard offset % size == 0, length % sectorSize == 0 else {
            throw .misaligned(offset: offset, length: length, sectorSize: sectorSize)
        }
        guard offset <= capacity, UInt64(length) <= capacity - offset else {
            throw .outOfRange(offset: offset, length: length, capacity: capacity)
        }
    }

    /// Submits one request on the bounce buffer and waits for it. Called
    /// with the lock held.
    func perform(_ operation: BlockRequest.Operation, sector: UInt64, byteCount: Int) throws(StorageError) {
        let tag = nextTag
        nextTag &+= 1
        let buffer = UnsafeMutableRawBufferPointer(rebasing: bounce[0..<byteCount])
        StorageWakeup.waiting[slot] = ThreadRuntime.current?.id
        defer { StorageWakeup.waiting[slot] = nil }
        do throws(BlockDeviceError) {
            let request = BlockRequest(operation: operation, sector: sector, buffer: buffer, tag: tag)
            if let platformDriver { try platformDriver.submit(request) } else { try driver!.submit(request) }
        } catch {
            failedRequestCount &+= 1
            throw Self.map(error)
        }
        var outcome: Result<Int, BlockDeviceError>? = nil
        while outcome == nil {
            if let platformDriver {
                _ = platformDriver.pollCompletions { completion in
                    if completion.tag == tag { outcome = completion.result }
                }
            } else {
                _ = driver!.pollCompletions { completion in
                    if completion.tag == tag { outcome = completion.result }
                }
            }
            if outcome != nil { break }
            if interruptMode != nil {
                // The interrupt wakes this thread; the timeout only bounds a
                // lost interrupt.
                Thread.block(until: Clock.monotonic &+ 10_000_000)
            } else {
                Thread.yield()
            }
        }
        requestCount &+= 1
        switch outcome! {
        case .success(let count):
            if count != byteCount && operation != .flush {
                failedRequestCount &+= 1
                throw .deviceError(code: -3)
            }
        case .failure(let error):
            failedRequestCount &+= 1
            throw Self.map(error)
        }
    }

    static func map(_ error: BlockDeviceError) -> StorageError {
        switch error {
        case .readOnly: return .readOnly
        case .deviceError(let code): return .deviceError(code: code)
        case .unsupported: return .deviceError(code: -4)
        case .queueFull: return .deviceError(code: -5)
        case .misaligned(let length, let sectorSize): return .misaligned(offset: 0, length: length, sectorSize: sectorSize)
        case .outOfRange(let sector, let count, let capacity):
            return .outOfRange(offset: sector * 512, length: Int(count) * 512, capacity: capacity * 512)
        }
    }

    /// Reads `buffer.count` bytes (whole sectors) starting at byte `offset`
    /// (a sector boundary).
    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(StorageError) {
        try check(offset: offset, length: buffer.count)
        lock.lock()
        defer { lock.unlock() }
        if isClosed { throw .closed }
        var done = 0
        while done < buffer.count {
            let count = min(buffer.count - done, Self.transferSize)
            try perform(.read, sector: (offset + UInt64(done)) / UInt64(sectorSize), byteCount: count)
            (buffer.baseAddress! + done).copyMemory(from: bounce.baseAddress!, byteCount: count)
            done += count
        }
    }

    /// `length` bytes (whole sectors) from byte `offset`.
    public func read(at offset: UInt64, length: Int) throws(StorageError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: length)
        try bytes.withUnsafeMutableBytes { buffer in Result { () throws(StorageError) in try read(at: offset, into: buffer) } }.get()
        return bytes
    }

    /// Writes `bytes` (whole sectors) at byte `offset` (a sector boundary).
    /// Returns once the device reports the write done; it is durable after
    /// `flush`. A failure throws: no write is dropped silently.
    public func write(at offset: UInt64, _ bytes: UnsafeRawBufferPointer) throws(StorageError) {
        try check(offset: offset, length: bytes.count)
        if isReadOnly { throw .readOnly }
        lock.lock()
        defer { lock.unlock() }
        if isClosed { throw .closed }
        var done = 0
        while done < bytes.count {
            let count = min(bytes.count - done, Self.transferSize)
            bounce.baseAddress!.copyMemory(from: bytes.baseAddress! + done, byteCount: count)
            try perform(.write, sector: (offset + UInt64(done)) / UInt64(sectorSize), byteCount: count)
            done += count
        }
    }

    public func write(at offset: UInt64, _ bytes: [UInt8]) throws(StorageError) {
        try bytes.withUnsafeBytes { buffer in Result { () throws(StorageError) in try write(at: offset, buffer) } }.get()
    }

    /// Makes every completed write durable (VIRTIO_BLK_T_FLUSH; a device
    /// without a cache writes through).
    public func flush() throws(StorageError) {
        lock.lock()
        defer { lock.unlock() }
        if isClosed { throw .closed }
        try perform(.flush, sector: 0, byteCount: 0)
    }

    /// Completions that arrived by interrupt.
    public var interruptCount: UInt64 { StorageWakeup.interrupts[slot] }

    /// Flushes, then resets the device so it no longer touches memory.
    public func close() throws(StorageError) {
        lock.lock()
        defer { lock.unlock() }
        if isClosed { return }
        var failure: StorageError? = nil
        do throws(StorageError) { try perform(.flush, sector: 0, byteCount: 0) } catch { failure = error }
        isClosed = true
        detach?()
        // A platform disk stays connected to its backend for a later open.
        try? driver?.shutdown()
        StorageDevice.registryLock.withLock {
            StorageDevice.open.removeAll { $0.utf8.elementsEqual(tag.utf8) }
            StorageDevice.usedSlots.removeAll { $0 == slot }
        }
        if let failure { throw failure }
    }
}
#endif
