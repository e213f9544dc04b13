// PCIEnumeration: finding functions on the buses (PCI Local Bus 3.0 §6.1,
// multi-function devices §6.2.1, bridges per PCI-to-PCI Bridge 1.2 §3.2.5.3)
// and decoding the type 0 header.

/// What a function's header says about it.
public struct PCIFunctionInfo: Equatable, Sendable {
    public var address: PCIAddress
    public var vendorID: UInt16
    public var deviceID: UInt16
    public var revisionID: UInt8
    public var programmingInterface: UInt8
    public var subclass: UInt8
    public var baseClass: UInt8
    /// Header layout: 0 for endpoints, 1 for PCI-to-PCI bridges, 2 CardBus.
    public var headerType: UInt8
    public var isMultiFunction: Bool
    /// Type 0 only (0 otherwise).
    public var subsystemVendorID: UInt16
    /// Type 0 only (0 otherwise).
    public var subsystemID: UInt16
    public var interruptLine: UInt8
    /// 1 = INTA# ... 4 = INTD#, 0 = no INTx pin.
    public var interruptPin: UInt8
    /// Type 1 only: the bus behind the bridge.
    public var secondaryBus: UInt8?

    /// Reads the header of the function at `address`, or nil when none answers.
    public static func read<Access: PCIConfigurationAccess>(_ address: PCIAddress, access: Access) -> PCIFunctionInfo? {
        let vendor = access.read16(address, offset: PCIHeader.vendorID)
        guard vendor != 0xFFFF, vendor != 0 else { return nil }
        let classWord = access.read32(address, offset: PCIHeader.revisionID)
        let header = access.read8(address, offset: PCIHeader.headerType)
        let type = header & 0x7F
        return PCIFunctionInfo(
            address: address,
            vendorID: vendor,
            deviceID: access.read16(address, offset: PCIHeader.deviceID),
            revisionID: UInt8(truncatingIfNeeded: classWord),
            programmingInterface: UInt8(truncatingIfNeeded: classWord >> 8),
            subclass: UInt8(truncatingIfNeeded: classWord >> 16),
            baseClass: UInt8(truncatingIfNeeded: classWord >> 24),
            headerType: type,
            isMultiFunction: header & 0x80 != 0,
            subsystemVendorID: type == 0 ? access.read16(address, offset: PCIHeader.subsystemVendorID) : 0,
            subsystemID: type == 0 ? access.read16(address, offset: PCIHeader.subsystemID) : 0,
            interruptLine: access.read8(address, offset: PCIHeader.interruptLine),
            interruptPin: access.read8(address, offset: PCIHeader.interruptPin),
            secondaryBus: type == 1 ? access.read8(address, offset: PCIHeader.secondaryBus) : nil
        )
    }

    /// Whether this is a PCI-to-PCI bridge (class 06, subclass 04, type 1).
    public var isBridge: Bool { headerType == 1 }
}

/// Walks the PCI hierarchy.
public enum PCIEnumerator {
    /// Every function reachable from bus 0, through PCI-to-PCI bridges,
    /// in bus/device/function order of discovery. A bridge whose secondary
    /// bus was already scanned (a loop, or firmware that left the bus
    /// numbers unassigned at 0) is not followed again. When function 0 of
    /// device 0 on bus 0 is a multi-function host bridge, each of its
    /// functions is the host bridge of the bus with that number (§3.2 of
    /// the PCI Firmware spec): those buses are scanned too.
    public static func enumerate<Access: PCIConfigurationAccess>(_ access: Access) -> [PCIFunctionInfo] {
        var found: [PCIFunctionInfo] = []
        var scanned = [Bool](repeating: false, count: 256)
        var pending: [UInt8] = [0]
        if let host = PCIFunctionInfo.read(PCIAddress(bus: 0, device: 0, function: 0), access: access),
            host.isMultiFunction, host.baseClass == 0x06, host.subclass == 0x00
        {
            for function: UInt8 in 1..<8
            where PCIFunctionInfo.read(PCIAddress(bus: 0, device: 0, function: function), access: access) != nil {
                pending.append(function)
            }
        }
        while !pending.isEmpty {
            let bus = pending.removeFirst()
            if scanned[Int(bus)] { continue }
            scanned[Int(bus)] = true
            for function in scan(bus: bus, access: access) {
                found.append(function)
                if let secondary = function.secondaryBus, secondary != 0, !scanned[Int(secondary)] {
                    pending.append(secondary)
                }
            }
        }
        return found
    }

    /// The functions present on one bus.
    public static func scan<Access: PCIConfigurationAccess>(bus: UInt8, access: Access) -> [PCIFunctionInfo] {
        var found: [PCIFunctionInfo] = []
        for device: UInt8 in 0..<32 {
            guard let first = PCIFunctionInfo.read(PCIAddress(bus: bus, device: device, function: 0), access: access)
            else { continue }
            found.append(first)
            guard first.isMultiFunction else { continue }
            for function: UInt8 in 1..<8 {
                if let info = PCIFunctionInfo.read(PCIAddress(bus: bus, device: device, function: function), access: access) {
                    found.append(info)
                }
            }
        }
        return found
    }
}
