// VirtioDeviceModel: a virtio device for host tests that follows virtio 1.2:
// the modern PCI register layout (§4.1.4) and the legacy header (§4.1.4.10),
// split virtqueues read from and written to the driver's DMA memory (§2.7),
// EVENT_IDX, and fault injection.
import BareMetalKit

/// A chain popped from the available ring.
struct ModelChain {
    var head: UInt16
    var segments: [(address: UInt64, length: Int, writable: Bool)]
    var readable: [(address: UInt64, length: Int, writable: Bool)] { segments.filter { !$0.writable } }
    var writable: [(address: UInt64, length: Int, writable: Bool)] { segments.filter { $0.writable } }
}

/// What a device type does with its queues.
protocol VirtioBehavior: AnyObject {
    var deviceType: Int { get }
    var features: UInt64 { get }
    var queueCount: Int { get }
    func configuration(_ model: VirtioDeviceModel) -> [UInt8]
    func notified(_ model: VirtioDeviceModel, queue: Int)
}

final class VirtqueueModel {
    let maximumSize: Int
    var size: Int
    var descriptors: UInt64 = 0
    var driverArea: UInt64 = 0
    var deviceArea: UInt64 = 0
    var enabled = false
    var lastAvailable: UInt16 = 0
    var usedIndex: UInt16 = 0
    var notifications = 0
    init(maximumSize: Int) {
        self.maximumSize = maximumSize
        size = maximumSize
    }
}

final class VirtioDeviceModel {
    let arena: DMAArena
    let behavior: VirtioBehavior
    let legacy: Bool
    var queues: [VirtqueueModel]
    var status: UInt8 = 0
    var isr: UInt8 = 0
    var driverFeatures: UInt64 = 0
    var deviceFeatureSelect: UInt32 = 0
    var driverFeatureSelect: UInt32 = 0
    var queueSelect = 0
    var generation: UInt8 = 0
    /// MSI-X vectors: configuration, then one per queue (0xFFFF = none).
    var configurationVector: UInt16 = 0xFFFF
    var queueVectors: [Int: UInt16] = [:]
    var msixTableSize = 4
    /// Protocol breaches by the driver (must stay empty).
    var violations: [String] = []
    var resets = 0

    // Fault injection, each consumed by the next used element.
    var rejectFeaturesOK = false
    var usedIndexJump: UInt16 = 0
    var usedLengthInflation: UInt32 = 0
    var forgedID: UInt32? = nil

    /// BAR 4 layout of the modern transport.
    static let commonOffset: UInt64 = 0x0, isrOffset: UInt64 = 0x1000, deviceOffset: UInt64 = 0x2000, notifyOffset: UInt64 = 0x3000
    static let notifyMultiplier: UInt32 = 4

    init(arena: DMAArena, behavior: VirtioBehavior, legacy: Bool = false, queueSize: Int = 64) {
        self.arena = arena
        self.behavior = behavior
        self.legacy = legacy
        queues = (0..<behavior.queueCount).map { _ in VirtqueueModel(maximumSize: queueSize) }
    }

    var offeredFeatures: UInt64 {
        legacy ? behavior.features & 0xFFFF_FFFF : behavior.features | VirtioFeature.version1
    }
    var eventIndex: Bool { driverFeatures & VirtioFeature.eventIndex != 0 }
    var indirect: Bool { driverFeatures & VirtioFeature.indirectDescriptors != 0 }
    var live: Bool { status & VirtioStatus.driverOK != 0 }

    /// Sets DEVICE_NEEDS_RESET and raises a configuration-change interrupt.
    func requestReset() {
        status |= VirtioStatus.deviceNeedsReset
        isr |= VirtioISR.configurationChange
    }

    func configurationChanged() {
        generation &+= 1
        isr |= VirtioISR.configurationChange
    }

    func writeStatus(_ value: UInt8) {
        if value == 0 {
            status = 0
            resets += 1
            driverFeatures = 0
            for queue in queues {
                queue.enabled = false
                queue.lastAvailable = 0
                queue.usedIndex = 0
                queue.size = queue.maximumSize
            }
            return
        }
        var value = value
        if value & VirtioStatus.featuresOK != 0 && status & VirtioStatus.featuresOK == 0 {
            if driverFeatures & ~offeredFeatures != 0 { violations.append("accepted features not offered") }
            if rejectFeaturesOK { value &= ~VirtioStatus.featuresOK }
        }
        if status & VirtioStatus.deviceNeedsReset != 0 { value |= VirtioStatus.deviceNeedsReset }
        status = value
    }

    // MARK: driver memory

    func memory(_ address: UInt64, _ length: Int) -> UnsafeMutableRawPointer? {
        let pointer = arena.pointer(physical: address, length: length)
        if pointer == nil { violations.append("device access outside DMA memory") }
        return pointer
    }

    func load16(_ address: UInt64) -> UInt16 { memory(address, 2).map { $0.loadUnaligned(as: UInt16.self) } ?? 0 }
    func store16(_ address: UInt64, _ value: UInt16) { memory(address, 2)?.storeBytes(of: value, as: UInt16.self) }

    /// The next chain the driver made available on `queue`, or nil.
    func popAvailable(_ index: Int) -> ModelChain? {
        let queue = queues[index]
        guard queue.enabled, live else { return nil }
        let availableIndex = load16(queue.driverArea + 2)
        guard availableIndex != queue.lastAvailable else { return nil }
        if availableIndex &- queue.lastAvailable > UInt16(queue.size) { violations.append("available index jumped") }
        let head = load16(queue.driverArea + 4 + 2 * UInt64(Int(queue.lastAvailable) % queue.size))
        queue.lastAvailable &+= 1
        if eventIndex { store16(queue.deviceArea + 4 + 8 * UInt64(queue.size), queue.lastAvailable) }
        var chain = ModelChain(head: head, segments: [])
        var table = queue.descriptors
        var tableSize = queue.size
        var next = Int(head)
        var steps = 0
        var inIndirect = false
        while true {
            guard next < tableSize, let descriptor = memory(table + 16 * UInt64(next), 16) else {
                violations.append("descriptor index out of range")
                return chain
            }
            let address = descriptor.loadUnaligned(as: UInt64.self)
            let length = Int(descriptor.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            let flags = descriptor.loadUnaligned(fromByteOffset: 12, as: UInt16.self)
            let following = Int(descriptor.loadUnaligned(fromByteOffset: 14, as: UInt16.self))
            steps += 1
            if steps > queue.size + 64 {
                violations.append("descriptor loop")
                return chain
            }
            if flags & 4 != 0 {
                if !indirect || inIndirect || flags & 1 != 0 { violations.append("bad indirect descriptor") }
                table = address
                tableSize = length / 16
                next = 0
                inIndirect = true
                continue
            }
            if memory(address, length) == nil { return chain }
            chain.segments.append((address, length, flags & 2 != 0))
            if flags & 1 == 0 { break }
            next = following
        }
        return chain
    }

    /// The bytes of every readable segment of `chain`, in order.
    func readAll(_ chain: ModelChain) -> [UInt8] {
        var bytes: [UInt8] = []
        for segment in chain.readable {
            guard let pointer = memory(segment.address, segment.length) else { continue }
            bytes += UnsafeRawBufferPointer(start: pointer, count: segment.length)
        }
        return bytes
    }

    /// Writes `bytes` across the writable segments from byte `offset` of
    /// the writable space; returns the count written (never past the end).
    @discardableResult
    func write(_ bytes: [UInt8], into chain: ModelChain, at offset: Int = 0) -> Int {
        var skip = offset
        var written = 0
        for segment in chain.writable {
            if skip >= segment.length {
                skip -= segment.length
                continue
            }
            guard let pointer = memory(segment.address, segment.length) else { return written }
            let count = min(segment.length - skip, bytes.count - written)
            for index in 0..<count { pointer.storeBytes(of: bytes[written + index], toByteOffset: skip + index, as: UInt8.self) }
            written += count
            skip = 0
            if written == bytes.count { break }
        }
        return written
    }

    /// Publishes a used element (with any injected fault) and interrupts.
    func pushUsed(_ index: Int, head: UInt16, length: Int) {
        let queue = queues[index]
        let entry = queue.deviceArea + 4 + 8 * UInt64(Int(queue.usedIndex) % queue.size)
        guard let pointer = memory(entry, 8) else { return }
        pointer.storeBytes(of: forgedID ?? UInt32(head), as: UInt32.self)
        pointer.storeBytes(of: UInt32(length) + usedLengthInflation, toByteOffset: 4, as: UInt32.self)
        forgedID = nil
        usedLengthInflation = 0
        queue.usedIndex &+= 1 &+ usedIndexJump
        usedIndexJump = 0
        store16(queue.deviceArea + 2, queue.usedIndex)
        isr |= VirtioISR.queue
    }

    func notify(_ queue: Int) {
        guard queue < queues.count else {
            violations.append("notify of a missing queue")
            return
        }
        queues[queue].notifications += 1
        behavior.notified(self, queue: queue)
    }

    // MARK: registers

    func commonRead(_ offset: Int, _ width: Int) -> UInt64 {
        let queue = queueSelect < queues.count ? queues[queueSelect] : nil
        switch offset {
        case 0x00: return UInt64(deviceFeatureSelect)
        case 0x12: return UInt64(queues.count)
        case 0x14: return UInt64(status)
        case 0x15: return UInt64(generation)
        case 0x16: return UInt64(queueSelect)
        case 0x18: return UInt64(queue?.size ?? 0)
        case 0x1A: return UInt64(queueVectors[queueSelect] ?? 0xFFFF)
        case 0x1C: return queue?.enabled == true ? 1 : 0
        case 0x1E: return UInt64(queueSelect)
        case 0x04: return deviceFeatureSelect == 0 ? offeredFeatures & 0xFFFF_FFFF : deviceFeatureSelect == 1 ? offeredFeatures >> 32 : 0
        case 0x10: return UInt64(configurationVector)
        default: return 0
        }
    }

    func commonWrite(_ offset: Int, _ width: Int, _ value: UInt64) {
        let queue = queueSelect < queues.count ? queues[queueSelect] : nil
        switch offset {
        case 0x00: deviceFeatureSelect = UInt32(value)
        case 0x08: driverFeatureSelect = UInt32(value)
        case 0x0C:
            if status & VirtioStatus.featuresOK != 0 { violations.append("features written after FEATURES_OK") }
            if driverFeatureSelect == 0 {
                driverFeatures = driverFeatures & ~0xFFFF_FFFF | value & 0xFFFF_FFFF
            } else if driverFeatureSelect == 1 {
                driverFeatures = driverFeatures & 0xFFFF_FFFF | value << 32
            }
        case 0x10: configurationVector = value < msixTableSize ? UInt16(value) : 0xFFFF
        case 0x1A: queueVectors[queueSelect] = value < msixTableSize ? UInt16(value) : 0xFFFF
        case 0x14: writeStatus(UInt8(value))
        case 0x16: queueSelect = Int(value)
        case 0x18:
            if let queue {
                if Int(value) > queue.maximumSize || Int(value) & (Int(value) - 1) != 0 { violations.append("bad queue size") }
                queue.size = Int(value)
            }
        case 0x1C: queue?.enabled = value == 1
        case 0x20: queue?.descriptors = queue!.descriptors & ~0xFFFF_FFFF | value
        case 0x24: queue?.descriptors = queue!.descriptors & 0xFFFF_FFFF | value << 32
        case 0x28: queue?.driverArea = queue!.driverArea & ~0xFFFF_FFFF | value
        case 0x2C: queue?.driverArea = queue!.driverArea & 0xFFFF_FFFF | value << 32
        case 0x30: queue?.deviceArea = queue!.deviceArea & ~0xFFFF_FFFF | value
        case 0x34: queue?.deviceArea = queue!.deviceArea & 0xFFFF_FFFF | value << 32
        default: break
        }
    }

    /// Reads of the device-specific configuration (each one an exit to
    /// the hypervisor on a real machine).
    var configurationReads = 0

    func configurationRead(_ offset: Int, _ width: Int) -> UInt64 {
        configurationReads += 1
        let bytes = behavior.configuration(self)
        var value: UInt64 = 0
        for index in 0..<width where offset + index < bytes.count { value |= UInt64(bytes[offset + index]) << (8 * UInt64(index)) }
        return value
    }

    func readISR() -> UInt64 {
        let value = isr
        isr = 0
        return UInt64(value)
    }

    func legacyRead(_ offset: Int, _ width: Int) -> UInt64 {
        switch offset {
        case 0x00: return offeredFeatures & 0xFFFF_FFFF
        case 0x04: return driverFeatures
        case 0x08: return queueSelect < queues.count ? queues[queueSelect].descriptors >> 12 : 0
        case 0x0C: return UInt64(queueSelect < queues.count ? queues[queueSelect].maximumSize : 0)
        case 0x0E: return UInt64(queueSelect)
        case 0x12: return UInt64(status)
        case 0x13: return readISR()
        default: return offset >= 0x14 ? configurationRead(offset - 0x14, width) : 0
        }
    }

    func legacyWrite(_ offset: Int, _ width: Int, _ value: UInt64) {
        switch offset {
        case 0x04: driverFeatures = value & 0xFFFF_FFFF
        case 0x08:
            guard queueSelect < queues.count else { return }
            let queue = queues[queueSelect]
            let layout = SplitVirtqueue<TestDMA>.layout(size: queue.size)
            queue.descriptors = value << 12
            queue.driverArea = queue.descriptors + UInt64(layout.available)
            queue.deviceArea = queue.descriptors + UInt64(layout.used)
            queue.enabled = value != 0
        case 0x0E: queueSelect = Int(value)
        case 0x10: notify(Int(value))
        case 0x12: writeStatus(UInt8(value))
        default: break
        }
    }

    /// A window of the device as the bus sees it.
    final class Window: MMIOHandler {
        enum Kind { case common, notify, isr, device, legacy }
        unowned let model: VirtioDeviceModel
        let kind: Kind
        init(_ model: VirtioDeviceModel, _ kind: Kind) {
            self.model = model
            self.kind = kind
        }
        func read(_ offset: Int, width: Int) -> UInt64 {
            switch kind {
            case .common: model.commonRead(offset, width)
            case .notify: 0
            case .isr: model.readISR()
            case .device: model.configurationRead(offset, width)
            case .legacy: model.legacyRead(offset, width)
            }
        }
        func write(_ offset: Int, width: Int, _ value: UInt64) {
            switch kind {
            case .common: model.commonWrite(offset, width, value)
            case .notify:
                if offset != Int(value) * Int(VirtioDeviceModel.notifyMultiplier) { model.violations.append("notify at wrong offset") }
                model.notify(Int(value))
            case .isr, .device: model.violations.append("write to read-only structure")
            case .legacy: model.legacyWrite(offset, width, value)
            }
        }
    }

    /// Installs the device as PCI function 00:`slot`.0 of `space`, with its
    /// structures in BAR 4 at `barAddress` (modern) or its header in I/O BAR
    /// 0 at `port` (legacy), and maps them on `bus`.
    func attach(to space: PCIConfigurationModel, bus: MMIOBus, slot: UInt8, barAddress: UInt64 = 0xFE00_0000, port: UInt16 = 0xC040) {
        let function: PCIFunctionModel
        if legacy {
            function = PCIFunctionModel(vendor: 0x1AF4, device: 0x1000 + UInt16(behavior.deviceType == 1 ? 0 : behavior.deviceType == 2 ? 1 : 5),
                                        classCode: 0xFF_00_00, subsystemVendor: 0x1AF4, subsystem: UInt16(behavior.deviceType))
            function.setBAR(0, .io32, size: 0x40, address: UInt64(port))
            bus.add(base: UInt64(port), length: 0x40, Window(self, .legacy))
        } else {
            function = PCIFunctionModel(vendor: 0x1AF4, device: 0x1040 + UInt16(behavior.deviceType), classCode: 0xFF_00_00)
            function.setBAR(4, .memory64, size: 0x4000, address: barAddress, prefetchable: true)
            func cap(_ type: UInt8, _ offset: UInt64, _ length: UInt32, extra: [UInt8] = []) {
                let body: [UInt8] = [UInt8(16 + extra.count), type, 4, 0, 0, 0]
                    + withUnsafeBytes(of: UInt32(offset).littleEndian, Array.init)
                    + withUnsafeBytes(of: length.littleEndian, Array.init) + extra
                function.addCapability(id: 0x09, body: body)
            }
            cap(1, Self.commonOffset, 0x38)
            cap(2, Self.notifyOffset, 0x1000, extra: withUnsafeBytes(of: Self.notifyMultiplier.littleEndian, Array.init))
            cap(3, Self.isrOffset, 4)
            cap(4, Self.deviceOffset, 0x100)
            bus.add(base: barAddress + Self.commonOffset, length: 0x38, Window(self, .common))
            bus.add(base: barAddress + Self.notifyOffset, length: 0x1000, Window(self, .notify))
            bus.add(base: barAddress + Self.isrOffset, length: 4, Window(self, .isr))
            bus.add(base: barAddress + Self.deviceOffset, length: 0x100, Window(self, .device))
        }
        space.add(0, slot, 0, function)
    }
}
