// PCIModel: a PCI configuration space with functions whose registers behave
// like hardware: write masks, BAR sizing, capability lists (PCI Local Bus 3.0 §6).
import BareMetalKit

/// One function's 256-byte configuration space.
final class PCIFunctionModel {
    var bytes = [UInt8](repeating: 0, count: 256)
    var writable = [UInt8](repeating: 0, count: 256)
    var nextCapability = 0x40
    var lastCapability: Int? = nil
    /// Writes of all ones to a BAR while its decoding was enabled.
    var sizingWhileDecoding: [Int] = []

    init(vendor: UInt16, device: UInt16, classCode: UInt32, headerType: UInt8 = 0, multiFunction: Bool = false,
         subsystemVendor: UInt16 = 0, subsystem: UInt16 = 0) {
        set16(0x00, vendor)
        set16(0x02, device)
        set32(0x08, classCode << 8 | 0x01)
        bytes[0x0E] = headerType | (multiFunction ? 0x80 : 0)
        if headerType == 0 {
            set16(0x2C, subsystemVendor)
            set16(0x2E, subsystem)
        }
        bytes[0x3D] = 1
        bytes[0x3C] = 11
        writable[0x3C] = 0xFF
        writable[0x04] = 0x07
        writable[0x05] = 0x04
    }

    func set16(_ offset: Int, _ value: UInt16) {
        bytes[offset] = UInt8(value & 0xFF)
        bytes[offset + 1] = UInt8(value >> 8)
    }
    func set32(_ offset: Int, _ value: UInt32) {
        for index in 0..<4 { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(index))) }
    }
    func get32(_ offset: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[offset + $1]) << (8 * UInt32($1)) }
    }
    func mask32(_ offset: Int, _ mask: UInt32) {
        for index in 0..<4 { writable[offset + index] = UInt8(truncatingIfNeeded: mask >> (8 * UInt32(index))) }
    }

    enum BARKind { case io16, io32, memory32, memory64 }

    /// A BAR of `size` bytes (a power of two) at `address`.
    func setBAR(_ index: Int, _ kind: BARKind, size: UInt64, address: UInt64, prefetchable: Bool = false) {
        let offset = 0x10 + 4 * index
        switch kind {
        case .io16, .io32:
            set32(offset, UInt32(address) | 1)
            mask32(offset, UInt32(truncatingIfNeeded: ~(size - 1)) & (kind == .io16 ? 0xFFFC : 0xFFFF_FFFC))
        case .memory32:
            set32(offset, UInt32(address) | (prefetchable ? 8 : 0))
            mask32(offset, UInt32(truncatingIfNeeded: ~(size - 1)) & ~0xF)
        case .memory64:
            set32(offset, UInt32(truncatingIfNeeded: address) | 4 | (prefetchable ? 8 : 0))
            set32(offset + 4, UInt32(truncatingIfNeeded: address >> 32))
            let mask = ~(size - 1)
            mask32(offset, UInt32(truncatingIfNeeded: mask) & ~0xF)
            mask32(offset + 4, UInt32(truncatingIfNeeded: mask >> 32))
        }
    }

    /// Appends a capability: `body` follows the ID and next bytes;
    /// `writableBody` gives the write mask of those bytes.
    @discardableResult
    func addCapability(id: UInt8, body: [UInt8], writableBody: [UInt8] = []) -> Int {
        let offset = nextCapability
        bytes[offset] = id
        bytes[offset + 1] = 0
        for (index, byte) in body.enumerated() { bytes[offset + 2 + index] = byte }
        for (index, mask) in writableBody.enumerated() { writable[offset + 2 + index] = mask }
        if let last = lastCapability { bytes[last + 1] = UInt8(offset) } else { bytes[0x34] = UInt8(offset) }
        bytes[0x06] |= 0x10
        lastCapability = offset
        nextCapability = (offset + 2 + body.count + 3) & ~3
        return offset
    }

    func read(_ offset: Int, width: Int) -> UInt32 {
        (0..<width).reduce(UInt32(0)) { $0 | UInt32(bytes[offset + $1]) << (8 * UInt32($1)) }
    }

    func write(_ offset: Int, width: Int, _ value: UInt32) {
        if width == 4, value == 0xFFFF_FFFF, (0x10...0x24).contains(offset), bytes[0x04] & 0x3 != 0 {
            sizingWhileDecoding.append(offset)
        }
        for index in 0..<width {
            let byte = UInt8(truncatingIfNeeded: value >> (8 * UInt32(index)))
            let at = offset + index
            bytes[at] = bytes[at] & ~writable[at] | byte & writable[at]
        }
    }
}

/// The configuration space of a machine: functions by address.
final class PCIConfigurationModel: PCIConfigurationAccess {
    var functions: [PCIAddress: PCIFunctionModel] = [:]
    var reads = 0

    func add(_ bus: UInt8, _ device: UInt8, _ function: UInt8, _ model: PCIFunctionModel) {
        functions[PCIAddress(bus: bus, device: device, function: function)] = model
    }

    func value(_ address: PCIAddress, _ offset: Int, _ width: Int) -> UInt32 {
        reads += 1
        guard let function = functions[address], offset < 256 else {
            return width == 4 ? 0xFFFF_FFFF : (1 << (8 * UInt32(width))) - 1
        }
        return function.read(offset, width: width)
    }

    func read8(_ function: PCIAddress, offset: Int) -> UInt8 { UInt8(value(function, offset, 1)) }
    func read16(_ function: PCIAddress, offset: Int) -> UInt16 { UInt16(value(function, offset, 2)) }
    func read32(_ function: PCIAddress, offset: Int) -> UInt32 { value(function, offset, 4) }
    func write8(_ function: PCIAddress, offset: Int, _ value: UInt8) { functions[function]?.write(offset, width: 1, UInt32(value)) }
    func write16(_ function: PCIAddress, offset: Int, _ value: UInt16) { functions[function]?.write(offset, width: 2, UInt32(value)) }
    func write32(_ function: PCIAddress, offset: Int, _ value: UInt32) { functions[function]?.write(offset, width: 4, value) }
}

/// Ports 0xCF8...0xCFF in front of a configuration model (mechanism #1).
final class ConfigurationPortsModel: MMIOHandler {
    let space: PCIConfigurationModel
    var address: UInt32 = 0
    init(space: PCIConfigurationModel) { self.space = space }

    func target() -> (PCIAddress, Int)? {
        guard address & 0x8000_0000 != 0 else { return nil }
        let function = PCIAddress(
            bus: UInt8(truncatingIfNeeded: address >> 16), device: UInt8((address >> 11) & 0x1F),
            function: UInt8((address >> 8) & 7))
        return (function, Int(address & 0xFC))
    }

    func read(_ offset: Int, width: Int) -> UInt64 {
        if offset == 0 { return UInt64(address) }
        guard let (function, register) = target() else { return UInt64.max }
        return UInt64(space.value(function, register + offset - 4, width))
    }

    func write(_ offset: Int, width: Int, _ value: UInt64) {
        if offset == 0 && width == 4 {
            address = UInt32(truncatingIfNeeded: value)
            return
        }
        guard let (function, register) = target() else { return }
        space.functions[function]?.write(register + offset - 4, width: width, UInt32(truncatingIfNeeded: value))
    }
}

/// An ECAM window in front of a configuration model.
final class ECAMModel: MMIOHandler {
    let space: PCIConfigurationModel
    let startBus: UInt8
    init(space: PCIConfigurationModel, startBus: UInt8) {
        self.space = space
        self.startBus = startBus
    }
    func decode(_ offset: Int) -> (PCIAddress, Int) {
        (PCIAddress(bus: UInt8(offset >> 20) + startBus, device: UInt8((offset >> 15) & 0x1F), function: UInt8((offset >> 12) & 7)),
         offset & 0xFFF)
    }
    func read(_ offset: Int, width: Int) -> UInt64 {
        let (function, register) = decode(offset)
        return UInt64(space.value(function, register, width))
    }
    func write(_ offset: Int, width: Int, _ value: UInt64) {
        let (function, register) = decode(offset)
        space.functions[function]?.write(register, width: width, UInt32(truncatingIfNeeded: value))
    }
}
