// VirtioTransport: what every virtio transport offers the drivers, the
// device status field and the feature bits shared by all devices (virtio 1.2
// §2.1 status, §2.2 features, §3.1 initialization, §6 reserved features).

/// Why virtio work failed. `code` gives each case a stable number for the
/// device-error codes of `NetworkInterfaceError` and `BlockDeviceError`.
public enum VirtioError: Error, Equatable, Sendable {
    /// The device lacks features this driver requires.
    case requiredFeaturesMissing(offered: UInt64, required: UInt64)
    /// The device cleared FEATURES_OK after the driver wrote `accepted`.
    case featureNegotiationFailed(offered: UInt64, accepted: UInt64)
    /// The device set DEVICE_NEEDS_RESET (status as read).
    case deviceNeedsReset(status: UInt8)
    /// Device status did not read back 0 after a reset.
    case resetTimedOut(status: UInt8)
    /// A PCI structure the transport needs is missing or malformed.
    case pci(PCIError)
    /// The modern transport lacks the capability of this `cfg_type`.
    case missingCapability(configurationType: UInt8)
    /// The transport is not of the kind the caller expected.
    case wrongTransport
    /// The queue does not exist (size 0) or was sized below what the driver needs.
    case queueUnavailable(queue: Int, size: Int)
    /// DMA memory ran out.
    case outOfDMAMemory(byteCount: Int)
    /// Not enough free descriptors for a chain.
    case queueFull(queue: Int)
    /// A chain longer than the queue and the indirect table can hold.
    case chainTooLong(queue: Int, segments: Int)
    /// The used index advanced by more than the queue size.
    case usedIndexJumped(queue: Int, previous: UInt16, current: UInt16)
    /// A used element names a descriptor the driver did not make available.
    case unknownDescriptorID(queue: Int, id: UInt32)
    /// A used element claims more bytes than the chain's writable buffers hold.
    case usedLengthTooLarge(queue: Int, id: UInt32, length: UInt32, capacity: UInt32)
    /// The device answered a request with a status the driver cannot use.
    case requestFailed(status: UInt8)
    /// The driver stopped using the device after an earlier fault.
    case deviceBroken

    /// A stable number per case (for `deviceError(code:)`).
    public var code: Int {
        switch self {
        case .requiredFeaturesMissing: 1
        case .featureNegotiationFailed: 2
        case .deviceNeedsReset: 3
        case .resetTimedOut: 4
        case .pci: 5
        case .missingCapability: 6
        case .wrongTransport: 7
        case .queueUnavailable: 8
        case .outOfDMAMemory: 9
        case .queueFull: 10
        case .chainTooLong: 11
        case .usedIndexJumped: 12
        case .unknownDescriptorID: 13
        case .usedLengthTooLarge: 14
        case .requestFailed: 15
        case .deviceBroken: 16
        }
    }
}

/// Device status bits (virtio 1.2 §2.1).
public enum VirtioStatus {
    public static var acknowledge: UInt8 { 1 }
    public static var driver: UInt8 { 2 }
    public static var driverOK: UInt8 { 4 }
    public static var featuresOK: UInt8 { 8 }
    public static var deviceNeedsReset: UInt8 { 64 }
    public static var failed: UInt8 { 128 }
}

/// Feature bits every device type may offer (virtio 1.2 §6).
public enum VirtioFeature {
    /// 28 VIRTIO_F_INDIRECT_DESC
    public static var indirectDescriptors: UInt64 { 1 << 28 }
    /// 29 VIRTIO_F_EVENT_IDX
    public static var eventIndex: UInt64 { 1 << 29 }
    /// 32 VIRTIO_F_VERSION_1
    public static var version1: UInt64 { 1 << 32 }
    /// 33 VIRTIO_F_ACCESS_PLATFORM
    public static var accessPlatform: UInt64 { 1 << 33 }
    /// 34 VIRTIO_F_RING_PACKED
    public static var ringPacked: UInt64 { 1 << 34 }
}

/// ISR status bits (virtio 1.2 §4.1.4.5).
public enum VirtioISR {
    /// Bit 0: a queue interrupt.
    public static var queue: UInt8 { 1 }
    /// Bit 1: a device configuration change (also sent with DEVICE_NEEDS_RESET).
    public static var configurationChange: UInt8 { 2 }
}

/// A virtio transport: the PCI modern and legacy ones here, MMIO or others
/// later. Queue indices select queues; device configuration offsets count
/// from the start of the device-specific configuration.
public protocol VirtioTransport {
    /// Legacy (pre-1.0) devices: 32 feature bits, no FEATURES_OK, fixed
    /// queue sizes, page-frame queue addresses.
    var isLegacy: Bool { get }
    func deviceFeatures() -> UInt64
    func setDriverFeatures(_ features: UInt64)
    func status() -> UInt8
    func setStatus(_ status: UInt8)
    /// Reads (and so clears) the ISR status.
    func interruptStatus() -> UInt8
    /// The largest size queue `queue` supports; 0 when it does not exist.
    func maximumQueueSize(_ queue: Int) -> Int
    /// Gives the device a queue's size and areas and enables it. Legacy
    /// transports use only `descriptors`, and the areas must follow the
    /// legacy layout (`SplitVirtqueue` always lays queues out so).
    func enableQueue(_ queue: Int, size: Int, descriptors: UInt64, driverArea: UInt64, deviceArea: UInt64)
    /// Tells the device that queue `queue` has new buffers.
    func notify(_ queue: Int)
    /// Changes whenever the device configuration changes (0 on legacy).
    func configurationGeneration() -> UInt8
    func readConfiguration8(at offset: Int) -> UInt8
    func readConfiguration16(at offset: Int) -> UInt16
    func readConfiguration32(at offset: Int) -> UInt32
}

extension VirtioTransport {
    /// A 64-bit configuration field, read until the generation is stable
    /// (virtio 1.2 §2.5.1).
    public func readConfiguration64(at offset: Int) -> UInt64 {
        var value: UInt64
        var generation: UInt8
        repeat {
            generation = configurationGeneration()
            value = UInt64(readConfiguration32(at: offset)) | UInt64(readConfiguration32(at: offset + 4)) << 32
        } while generation != configurationGeneration()
        return value
    }

    /// Writes 0 to the status and waits (bounded) until it reads back 0
    /// (virtio 1.2 §4.1.4.3.2).
    public func reset() throws(VirtioError) {
        setStatus(0)
        var spins = 0
        while status() != 0 {
            spins += 1
            if spins > 1_000_000 { throw .resetTimedOut(status: status()) }
        }
    }
}

/// The transport-independent part of a device driver: initialization with
/// feature negotiation (virtio 1.2 §3.1.1), queue creation, DRIVER_OK,
/// and the watch for DEVICE_NEEDS_RESET.
public struct VirtioDeviceCore<Transport: VirtioTransport, DMA: DMAMemory> {
    public let transport: Transport
    public let dma: DMA
    /// Offered by the device.
    public let offeredFeatures: UInt64
    /// Accepted by both sides.
    public let features: UInt64
    /// Polls left before `pollStatus` reads the ISR again.
    var pollsUntilStatusCheck = 0

    /// Resets the device, sets ACKNOWLEDGE and DRIVER, accepts the offered
    /// subset of `required | optional` and, for modern devices, sets
    /// FEATURES_OK and re-reads it. Modern devices must offer VERSION_1.
    /// On failure the device is left with FAILED set.
    public init(transport: Transport, dma: DMA, required: UInt64, optional: UInt64) throws(VirtioError) {
        self.transport = transport
        self.dma = dma
        try transport.reset()
        transport.setStatus(VirtioStatus.acknowledge)
        transport.setStatus(VirtioStatus.acknowledge | VirtioStatus.driver)
        let offered = transport.deviceFeatures()
        var required = required
        var optional = optional
        if transport.isLegacy {
            required &= 0xFFFF_FFFF
            optional &= 0xFFFF_FFFF
        } else {
            required |= VirtioFeature.version1
        }
        // Packed rings and IOMMU-translated addresses are not implemented.
        optional &= ~(VirtioFeature.ringPacked | VirtioFeature.accessPlatform)
        guard offered & required == required else {
            transport.setStatus(transport.status() | VirtioStatus.failed)
            throw .requiredFeaturesMissing(offered: offered, required: required)
        }
        let accepted = offered & (required | optional)
        transport.setDriverFeatures(accepted)
        if !transport.isLegacy {
            transport.setStatus(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK)
            guard transport.status() & VirtioStatus.featuresOK != 0 else {
                transport.setStatus(transport.status() | VirtioStatus.failed)
                throw .featureNegotiationFailed(offered: offered, accepted: accepted)
            }
        }
        offeredFeatures = offered
        features = accepted
    }

    /// Whether `feature` was negotiated.
    public func has(_ feature: UInt64) -> Bool { features & feature == feature }

    /// Creates queue `index` with at most `maximumSize` entries (a power of
    /// two; legacy devices dictate their own size).
    public func makeQueue(index: Int, maximumSize: Int, indirectCapacity: Int = 0) throws(VirtioError) -> SplitVirtqueue<DMA> {
        let offered = transport.maximumQueueSize(index)
        guard offered > 0 else { throw .queueUnavailable(queue: index, size: 0) }
        var size = offered
        if !transport.isLegacy {
            while size > maximumSize && size > 1 { size /= 2 }
        }
        let queue = try SplitVirtqueue(
            index: index, size: size, dma: dma, eventIndex: has(VirtioFeature.eventIndex),
            indirectCapacity: has(VirtioFeature.indirectDescriptors) ? indirectCapacity : 0)
        transport.enableQueue(
            index, size: size, descriptors: queue.descriptorTableAddress, driverArea: queue.driverAreaAddress,
            deviceArea: queue.deviceAreaAddress)
        return queue
    }

    /// Sets DRIVER_OK: the device is live.
    public func start() {
        transport.setStatus(transport.status() | VirtioStatus.driverOK)
    }

    /// Sets FAILED: the driver gave up on the device.
    public func fail() {
        transport.setStatus(transport.status() | VirtioStatus.failed)
    }

    /// Reads the ISR (clearing it) and, on a configuration change, the
    /// status. Returns the ISR bits. Throws when the device needs a reset.
    public func checkInterruptStatus() throws(VirtioError) -> UInt8 {
        let isr = transport.interruptStatus()
        if isr & VirtioISR.configurationChange != 0 {
            let status = transport.status()
            if status & VirtioStatus.deviceNeedsReset != 0 { throw .deviceNeedsReset(status: status) }
        }
        return isr
    }

    /// Polls of `pollStatus` between two ISR reads.
    public static var statusCheckInterval: Int { 64 }

    /// `checkInterruptStatus` for polling loops: the ISR is read on the
    /// first poll and then on every `statusCheckInterval`-th. Each read is
    /// an exit to the hypervisor (under TCG, reading it on every poll cost
    /// virtio-net a third of its receive rate); a device that needs a reset
    /// is still noticed within that many polls. Interrupt handlers call
    /// `checkInterruptStatus` itself (the read also acknowledges INTx).
    /// Returns whether this poll read the ISR (drivers re-read cached
    /// device state, such as the link, at the same rate).
    @discardableResult
    public mutating func pollStatus() throws(VirtioError) -> Bool {
        let due = pollsUntilStatusCheck == 0
        if due {
            _ = try checkInterruptStatus()
            pollsUntilStatusCheck = Self.statusCheckInterval
        }
        pollsUntilStatusCheck -= 1
        return due
    }

    /// Sends a notification for `queue` if its suppression state asks for one.
    public func notifyIfNeeded(_ queue: SplitVirtqueue<DMA>) {
        if queue.needsNotification() { transport.notify(queue.index) }
    }
}
