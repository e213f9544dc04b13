// VirtioPCI: virtio over PCI: the modern transport found through vendor
// capabilities (virtio 1.2 §4.1.4) and the legacy I/O-port transport
// (§4.1.4.10), plus device identification (§4.1.2).

/// PCI identification of virtio devices (virtio 1.2 §4.1.2).
public enum VirtioPCI {
    public static var vendorID: UInt16 { 0x1AF4 }

    /// Device types (virtio 1.2 §5).
    public static var networkType: Int { 1 }
    public static var blockType: Int { 2 }
    public static var entropyType: Int { 4 }

    /// The virtio device type of a PCI function, or nil for non-virtio
    /// functions: 0x1040 + type for modern-only devices, the subsystem ID
    /// for transitional devices 0x1000...0x103F.
    public static func deviceType(of function: PCIFunctionInfo) -> Int? {
        guard function.vendorID == vendorID else { return nil }
        if function.deviceID >= 0x1040 && function.deviceID <= 0x107F { return Int(function.deviceID - 0x1040) }
        if function.deviceID >= 0x1000 && function.deviceID <= 0x103F { return Int(function.subsystemID) }
        return nil
    }

    /// Whether the function can only be driven through the modern transport.
    public static func isModernOnly(_ function: PCIFunctionInfo) -> Bool { function.deviceID >= 0x1040 }
}

/// The virtio 1.x PCI transport: common, notify, ISR and device
/// configuration structures in memory BARs, located by vendor-specific
/// capabilities (`struct virtio_pci_cap`, virtio 1.2 §4.1.4).
public struct VirtioPCIModernTransport<Registers: RegisterBlock>: VirtioTransport {
    // cfg_type values (§4.1.4)
    public static var commonConfiguration: UInt8 { 1 }
    public static var notifyConfiguration: UInt8 { 2 }
    public static var isrConfiguration: UInt8 { 3 }
    public static var deviceConfiguration: UInt8 { 4 }

    // struct virtio_pci_common_cfg (§4.1.4.3)
    /// 0x00 device_feature_select
    static var deviceFeatureSelect: Int { 0x00 }
    /// 0x04 device_feature
    static var deviceFeature: Int { 0x04 }
    /// 0x08 driver_feature_select
    static var driverFeatureSelect: Int { 0x08 }
    /// 0x0C driver_feature
    static var driverFeature: Int { 0x0C }
    /// 0x10 config_msix_vector
    static var configMSIXVector: Int { 0x10 }
    /// 0x12 num_queues
    static var numQueues: Int { 0x12 }
    /// 0x14 device_status
    static var deviceStatus: Int { 0x14 }
    /// 0x15 config_generation
    static var configGeneration: Int { 0x15 }
    /// 0x16 queue_select
    static var queueSelect: Int { 0x16 }
    /// 0x18 queue_size
    static var queueSize: Int { 0x18 }
    /// 0x1A queue_msix_vector
    static var queueMSIXVector: Int { 0x1A }
    /// 0x1C queue_enable
    static var queueEnable: Int { 0x1C }
    /// 0x1E queue_notify_off
    static var queueNotifyOff: Int { 0x1E }
    /// 0x20 queue_desc
    static var queueDesc: Int { 0x20 }
    /// 0x28 queue_driver
    static var queueDriver: Int { 0x28 }
    /// 0x30 queue_device
    static var queueDevice: Int { 0x30 }

    public let function: PCIAddress
    let common: Registers
    let notification: Registers
    let isr: Registers
    let device: Registers
    /// notify_off_multiplier from the notify capability.
    public let notifyOffsetMultiplier: UInt32
    /// Per queue: offset of its notify register in the notify structure.
    var notifyOffsets: [Int]

    public var isLegacy: Bool { false }

    /// Finds the four structures through the capability list, checks each
    /// lies inside an assigned memory BAR, and enables memory decoding and
    /// bus mastering. The first capability of each type is used.
    public init<Access: PCIConfigurationAccess, Mapper: MemoryMappedIO>(
        function: PCIAddress, access: Access, mapper: Mapper
    ) throws(VirtioError) where Mapper.Registers == Registers {
        let capabilities: [PCICapability]
        let bars: [PCIBAR?]
        do throws(PCIError) {
            capabilities = try PCICapability.list(function, access: access)
            bars = try PCIBAR.readAll(function, access: access)
        } catch {
            throw .pci(error)
        }
        var found: [Registers?] = [nil, nil, nil, nil, nil]
        var multiplier: UInt32 = 0
        for capability in capabilities where capability.id == PCICapability.vendorSpecificID {
            // struct virtio_pci_cap: 0x3 cfg_type, 0x4 bar, 0x8 offset, 0xC length
            let type = access.read8(function, offset: capability.offset + 3)
            guard type >= 1, type <= 4, found[Int(type)] == nil else { continue }
            let barIndex = Int(access.read8(function, offset: capability.offset + 4))
            // BAR values 0x6...0xFF are reserved: the driver ignores the capability.
            guard barIndex < 6 else { continue }
            let offset = UInt64(access.read32(function, offset: capability.offset + 8))
            let length = UInt64(access.read32(function, offset: capability.offset + 12))
            guard let bar = bars[barIndex], !bar.isIO else {
                throw .pci(.invalidBARIndex(function: function, index: barIndex))
            }
            guard bar.address != 0 else { throw .pci(.unassignedBAR(function: function, index: barIndex)) }
            guard offset <= bar.size, length <= bar.size - offset else {
                throw .pci(.regionOutsideBAR(function: function, bar: barIndex, offset: offset, length: length, barSize: bar.size))
            }
            if type == Self.notifyConfiguration {
                multiplier = access.read32(function, offset: capability.offset + 16)
            }
            found[Int(type)] = mapper.map(physicalAddress: bar.address + offset, length: length)
        }
        for type: UInt8 in 1...4 where found[Int(type)] == nil { throw .missingCapability(configurationType: type) }
        self.function = function
        common = found[1]!
        notification = found[2]!
        isr = found[3]!
        device = found[4]!
        notifyOffsetMultiplier = multiplier
        let queues = Int(common.read16(at: Self.numQueues))
        notifyOffsets = [Int](repeating: 0, count: queues)
        let command = access.read16(function, offset: PCIHeader.command)
        access.write16(
            function, offset: PCIHeader.command, command | PCIHeader.commandMemorySpace | PCIHeader.commandBusMaster)
    }

    /// num_queues
    public var queueCount: Int { notifyOffsets.count }

    public func deviceFeatures() -> UInt64 {
        common.write32(at: Self.deviceFeatureSelect, 0)
        let low = UInt64(common.read32(at: Self.deviceFeature))
        common.write32(at: Self.deviceFeatureSelect, 1)
        return UInt64(common.read32(at: Self.deviceFeature)) << 32 | low
    }

    public func setDriverFeatures(_ features: UInt64) {
        common.write32(at: Self.driverFeatureSelect, 0)
        common.write32(at: Self.driverFeature, UInt32(truncatingIfNeeded: features))
        common.write32(at: Self.driverFeatureSelect, 1)
        common.write32(at: Self.driverFeature, UInt32(truncatingIfNeeded: features >> 32))
    }

    public func status() -> UInt8 { common.read8(at: Self.deviceStatus) }
    public func setStatus(_ status: UInt8) { common.write8(at: Self.deviceStatus, status) }
    public func interruptStatus() -> UInt8 { isr.read8(at: 0) }

    public func maximumQueueSize(_ queue: Int) -> Int {
        guard queue < queueCount else { return 0 }
        common.write16(at: Self.queueSelect, UInt16(queue))
        return Int(common.read16(at: Self.queueSize))
    }

    public func enableQueue(_ queue: Int, size: Int, descriptors: UInt64, driverArea: UInt64, deviceArea: UInt64) {
        common.write16(at: Self.queueSelect, UInt16(queue))
        common.write16(at: Self.queueSize, UInt16(size))
        common.write64(at: Self.queueDesc, descriptors)
        common.write64(at: Self.queueDriver, driverArea)
        common.write64(at: Self.queueDevice, deviceArea)
        common.write16(at: Self.queueEnable, 1)
    }

    /// The notify register of `queue`: cap.offset + queue_notify_off *
    /// notify_off_multiplier (§4.1.4.4); the driver writes the queue index.
    public func notify(_ queue: Int) {
        common.write16(at: Self.queueSelect, UInt16(queue))
        let offset = Int(common.read16(at: Self.queueNotifyOff)) * Int(notifyOffsetMultiplier)
        notification.write16(at: offset, UInt16(queue))
    }

    /// Routes configuration-change interrupts and a queue's interrupts to
    /// MSI-X table entries (0xFFFF: none). Returns the vector the device
    /// accepted (0xFFFF when it could not allocate one, §4.1.5.1.2).
    public func setMSIXVectors(configuration: UInt16) -> UInt16 {
        common.write16(at: Self.configMSIXVector, configuration)
        return common.read16(at: Self.configMSIXVector)
    }

    /// See `setMSIXVectors(configuration:)`.
    public func setMSIXVector(queue: Int, vector: UInt16) -> UInt16 {
        common.write16(at: Self.queueSelect, UInt16(queue))
        common.write16(at: Self.queueMSIXVector, vector)
        return common.read16(at: Self.queueMSIXVector)
    }

    public func configurationGeneration() -> UInt8 { common.read8(at: Self.configGeneration) }
    public func readConfiguration8(at offset: Int) -> UInt8 { device.read8(at: offset) }
    public func readConfiguration16(at offset: Int) -> UInt16 { device.read16(at: offset) }
    public func readConfiguration32(at offset: Int) -> UInt32 { device.read32(at: offset) }
}

/// The legacy (virtio 0.9.5) PCI transport: a register header in I/O BAR 0
/// (virtio 1.2 §4.1.4.10), used by transitional devices, and by QEMU's with
/// `disable-modern=on`. MSI-X is left disabled, so the device configuration
/// starts at 0x14.
public struct VirtioPCILegacyTransport<Registers: RegisterBlock>: VirtioTransport {
    /// 0x00 Device Features bits 0:31
    static var deviceFeatures: Int { 0x00 }
    /// 0x04 Driver Features bits 0:31
    static var driverFeatures: Int { 0x04 }
    /// 0x08 Queue Address (page frame number of the descriptor table)
    static var queueAddress: Int { 0x08 }
    /// 0x0C Queue Size
    static var queueSize: Int { 0x0C }
    /// 0x0E Queue Select
    static var queueSelect: Int { 0x0E }
    /// 0x10 Queue Notify
    static var queueNotify: Int { 0x10 }
    /// 0x12 Device Status
    static var deviceStatus: Int { 0x12 }
    /// 0x13 ISR Status
    static var isrStatus: Int { 0x13 }
    /// 0x14 device-specific configuration (without MSI-X)
    static var deviceConfiguration: Int { 0x14 }

    let registers: Registers
    public var isLegacy: Bool { true }

    /// The transport over an already-mapped legacy header.
    public init(registers: Registers) { self.registers = registers }

    /// Finds I/O BAR 0 of `function`, enables I/O decoding and bus mastering.
    public init<Access: PCIConfigurationAccess, Ports: PortIOSpace>(
        function: PCIAddress, access: Access, ports: Ports
    ) throws(VirtioError) where Ports.Registers == Registers {
        let bar: PCIBAR?
        do throws(PCIError) { bar = try PCIBAR.read(function, index: 0, access: access) } catch { throw .pci(error) }
        guard let bar, case .io(let port, let size) = bar, port != 0, port <= 0xFFFF else {
            throw .pci(.invalidBARIndex(function: function, index: 0))
        }
        let command = access.read16(function, offset: PCIHeader.command)
        access.write16(function, offset: PCIHeader.command, command | PCIHeader.commandIOSpace | PCIHeader.commandBusMaster)
        registers = ports.ports(at: UInt16(port), length: Int(size))
    }

    public func deviceFeatures() -> UInt64 { UInt64(registers.read32(at: Self.deviceFeatures)) }
    public func setDriverFeatures(_ features: UInt64) {
        registers.write32(at: Self.driverFeatures, UInt32(truncatingIfNeeded: features))
    }
    public func status() -> UInt8 { registers.read8(at: Self.deviceStatus) }
    public func setStatus(_ status: UInt8) { registers.write8(at: Self.deviceStatus, status) }
    public func interruptStatus() -> UInt8 { registers.read8(at: Self.isrStatus) }

    public func maximumQueueSize(_ queue: Int) -> Int {
        registers.write16(at: Self.queueSelect, UInt16(queue))
        return Int(registers.read16(at: Self.queueSize))
    }

    /// The legacy interface takes only the page frame of the descriptor
    /// table; `SplitVirtqueue`'s layout matches the legacy one.
    public func enableQueue(_ queue: Int, size: Int, descriptors: UInt64, driverArea: UInt64, deviceArea: UInt64) {
        registers.write16(at: Self.queueSelect, UInt16(queue))
        registers.write32(at: Self.queueAddress, UInt32(truncatingIfNeeded: descriptors >> 12))
    }

    public func notify(_ queue: Int) { registers.write16(at: Self.queueNotify, UInt16(queue)) }
    public func configurationGeneration() -> UInt8 { 0 }
    public func readConfiguration8(at offset: Int) -> UInt8 { registers.read8(at: Self.deviceConfiguration + offset) }
    public func readConfiguration16(at offset: Int) -> UInt16 { registers.read16(at: Self.deviceConfiguration + offset) }
    public func readConfiguration32(at offset: Int) -> UInt32 { registers.read32(at: Self.deviceConfiguration + offset) }
}
