// PCIConfiguration: configuration-space access through the 0xCF8/0xCFC
// mechanism (PCI Local Bus 3.0 §3.2.2.3.2) and through ECAM (PCI Express Base
// §7.2.2, located by the ACPI MCFG table), and the type 0 header fields (§6.1).

/// A PCI function's bus/device/function address.
public struct PCIAddress: Hashable, Comparable, Sendable {
    public var bus: UInt8
    /// 0...31
    public var device: UInt8
    /// 0...7
    public var function: UInt8

    public init(bus: UInt8, device: UInt8, function: UInt8) {
        precondition(device < 32 && function < 8, "PCI device must be < 32 and function < 8")
        self.bus = bus
        self.device = device
        self.function = function
    }

    public static func < (lhs: Self, rhs: Self) -> Bool {
        (lhs.bus, lhs.device, lhs.function) < (rhs.bus, rhs.device, rhs.function)
    }
}

/// Why PCI work failed.
public enum PCIError: Error, Equatable, Sendable {
    /// No function answers at this address (vendor ID 0xFFFF).
    case noFunction(PCIAddress)
    /// A capability pointer points into the header or past the 256-byte space.
    case capabilityPointerOutOfRange(function: PCIAddress, pointer: UInt8)
    /// The capability list revisits `pointer`.
    case capabilityLoop(function: PCIAddress, pointer: UInt8)
    /// The BAR index is not 0...5, or is the upper half of a 64-bit BAR.
    case invalidBARIndex(function: PCIAddress, index: Int)
    /// A 64-bit memory BAR in slot 5 has no upper half.
    case truncatedSixtyFourBitBAR(function: PCIAddress, index: Int)
    /// A memory BAR with the reserved type 0b01 or 0b11.
    case reservedBARType(function: PCIAddress, index: Int, value: UInt32)
    /// A structure (MSI-X table, virtio capability) lies outside its BAR.
    case regionOutsideBAR(function: PCIAddress, bar: Int, offset: UInt64, length: UInt64, barSize: UInt64)
    /// The function lacks a capability the caller asked for.
    case missingCapability(function: PCIAddress, id: UInt8)
    /// An MSI or MSI-X vector index past the function's vector count.
    case vectorOutOfRange(index: Int, count: Int)
    /// A BAR is unassigned (address 0), so it cannot be used before the
    /// platform assigns addresses (no firmware ran, as on microvm).
    case unassignedBAR(function: PCIAddress, index: Int)
}

/// Reads and writes PCI configuration space.
///
/// Offsets are bytes into the function's configuration space (0...255 for
/// the 0xCF8 mechanism, 0...4095 with ECAM) and naturally aligned. Reads of
/// an absent function return all ones.
public protocol PCIConfigurationAccess {
    func read8(_ function: PCIAddress, offset: Int) -> UInt8
    func read16(_ function: PCIAddress, offset: Int) -> UInt16
    func read32(_ function: PCIAddress, offset: Int) -> UInt32
    func write8(_ function: PCIAddress, offset: Int, _ value: UInt8)
    func write16(_ function: PCIAddress, offset: Int, _ value: UInt16)
    func write32(_ function: PCIAddress, offset: Int, _ value: UInt32)
}

/// Configuration mechanism #1: an address written to port 0xCF8, data at
/// 0xCFC...0xCFF (PCI Local Bus 3.0 §3.2.2.3.2).
public struct PortConfigurationAccess<Ports: RegisterBlock>: PCIConfigurationAccess {
    /// 0x0 CONFIG_ADDRESS (port 0xCF8)
    static var configAddress: Int { 0 }
    /// 0x4 CONFIG_DATA (ports 0xCFC...0xCFF)
    static var configData: Int { 4 }

    /// The ports 0xCF8...0xCFF.
    public let ports: Ports

    public init(ports: Ports) { self.ports = ports }

    /// CONFIG_ADDRESS: enable bit 31, bus 23:16, device 15:11, function
    /// 10:8, register 7:2.
    @inline(__always)
    func select(_ function: PCIAddress, _ offset: Int) {
        let address: UInt32 =
            0x8000_0000 | UInt32(function.bus) << 16 | UInt32(function.device) << 11
            | UInt32(function.function) << 8 | UInt32(offset & 0xFC)
        ports.write32(at: Self.configAddress, address)
    }

    public func read8(_ function: PCIAddress, offset: Int) -> UInt8 {
        select(function, offset)
        return ports.read8(at: Self.configData + (offset & 3))
    }
    public func read16(_ function: PCIAddress, offset: Int) -> UInt16 {
        select(function, offset)
        return ports.read16(at: Self.configData + (offset & 2))
    }
    public func read32(_ function: PCIAddress, offset: Int) -> UInt32 {
        select(function, offset)
        return ports.read32(at: Self.configData)
    }
    public func write8(_ function: PCIAddress, offset: Int, _ value: UInt8) {
        select(function, offset)
        ports.write8(at: Self.configData + (offset & 3), value)
    }
    public func write16(_ function: PCIAddress, offset: Int, _ value: UInt16) {
        select(function, offset)
        ports.write16(at: Self.configData + (offset & 2), value)
    }
    public func write32(_ function: PCIAddress, offset: Int, _ value: UInt32) {
        select(function, offset)
        ports.write32(at: Self.configData, value)
    }
}

/// Enhanced configuration access: each function's 4 KiB space mapped at
/// `base + (bus - startBus) << 20 | device << 15 | function << 12`
/// (PCI Express Base §7.2.2; the ACPI MCFG table gives base and bus range).
public struct ECAMConfigurationAccess<Window: RegisterBlock>: PCIConfigurationAccess {
    public let window: Window
    public let startBus: UInt8
    public let endBus: UInt8

    /// `window` covers buses `startBus...endBus`.
    public init(window: Window, startBus: UInt8, endBus: UInt8) {
        self.window = window
        self.startBus = startBus
        self.endBus = endBus
    }

    /// Byte offset of a register in the window, or nil outside the bus range.
    @inline(__always)
    func location(_ function: PCIAddress, _ offset: Int) -> Int? {
        guard function.bus >= startBus, function.bus <= endBus else { return nil }
        return Int(function.bus - startBus) << 20 | Int(function.device) << 15 | Int(function.function) << 12
            | (offset & 0xFFF)
    }

    public func read8(_ function: PCIAddress, offset: Int) -> UInt8 {
        guard let at = location(function, offset) else { return 0xFF }
        return window.read8(at: at)
    }
    public func read16(_ function: PCIAddress, offset: Int) -> UInt16 {
        guard let at = location(function, offset) else { return 0xFFFF }
        return window.read16(at: at)
    }
    public func read32(_ function: PCIAddress, offset: Int) -> UInt32 {
        guard let at = location(function, offset) else { return 0xFFFF_FFFF }
        return window.read32(at: at)
    }
    public func write8(_ function: PCIAddress, offset: Int, _ value: UInt8) {
        if let at = location(function, offset) { window.write8(at: at, value) }
    }
    public func write16(_ function: PCIAddress, offset: Int, _ value: UInt16) {
        if let at = location(function, offset) { window.write16(at: at, value) }
    }
    public func write32(_ function: PCIAddress, offset: Int, _ value: UInt32) {
        if let at = location(function, offset) { window.write32(at: at, value) }
    }
}

/// Offsets and bits of the configuration header (PCI Local Bus 3.0 §6.1,
/// §6.2; PCI-to-PCI Bridge 1.2 §3.2 for type 1).
public enum PCIHeader {
    /// 0x00 Vendor ID
    public static var vendorID: Int { 0x00 }
    /// 0x02 Device ID
    public static var deviceID: Int { 0x02 }
    /// 0x04 Command
    public static var command: Int { 0x04 }
    /// 0x06 Status
    public static var status: Int { 0x06 }
    /// 0x08 Revision ID
    public static var revisionID: Int { 0x08 }
    /// 0x09 Class Code (programming interface, subclass, base class)
    public static var classCode: Int { 0x09 }
    /// 0x0E Header Type (bit 7: multi-function)
    public static var headerType: Int { 0x0E }
    /// 0x10 Base Address Register 0 (type 0: six BARs to 0x24)
    public static var bar0: Int { 0x10 }
    /// 0x19 Secondary Bus Number (type 1)
    public static var secondaryBus: Int { 0x19 }
    /// 0x2C Subsystem Vendor ID (type 0)
    public static var subsystemVendorID: Int { 0x2C }
    /// 0x2E Subsystem ID (type 0)
    public static var subsystemID: Int { 0x2E }
    /// 0x34 Capabilities Pointer
    public static var capabilitiesPointer: Int { 0x34 }
    /// 0x3C Interrupt Line
    public static var interruptLine: Int { 0x3C }
    /// 0x3D Interrupt Pin (1 = INTA# ... 4 = INTD#, 0 = none)
    public static var interruptPin: Int { 0x3D }

    /// Command bit 0: I/O Space enable
    public static var commandIOSpace: UInt16 { 1 << 0 }
    /// Command bit 1: Memory Space enable
    public static var commandMemorySpace: UInt16 { 1 << 1 }
    /// Command bit 2: Bus Master enable
    public static var commandBusMaster: UInt16 { 1 << 2 }
    /// Command bit 10: Interrupt Disable (INTx#)
    public static var commandInterruptDisable: UInt16 { 1 << 10 }
    /// Status bit 4: Capabilities List
    public static var statusCapabilitiesList: UInt16 { 1 << 4 }
}
