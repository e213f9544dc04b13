// ARP packets for IPv4 over Ethernet (RFC 826; gratuitous ARP per RFC 5227 §3).

/// An ARP request or reply mapping IPv4 addresses to Ethernet addresses.
public struct ARPPacket: Equatable, Sendable {
    public static let length = 28

    public enum Operation: UInt16, Sendable {
        case request = 1
        case reply = 2
    }

    public var operation: Operation
    public var senderHardwareAddress: MACAddress
    public var senderProtocolAddress: IPv4Address
    public var targetHardwareAddress: MACAddress
    public var targetProtocolAddress: IPv4Address

    public init(operation: Operation, senderHardwareAddress: MACAddress, senderProtocolAddress: IPv4Address, targetHardwareAddress: MACAddress, targetProtocolAddress: IPv4Address) {
        self.operation = operation
        self.senderHardwareAddress = senderHardwareAddress
        self.senderProtocolAddress = senderProtocolAddress
        self.targetHardwareAddress = targetHardwareAddress
        self.targetProtocolAddress = targetProtocolAddress
    }

    /// A gratuitous ARP announcing `address` (an ARP request for one's own address).
    public static func announcement(of address: IPv4Address, from hardwareAddress: MACAddress) -> ARPPacket {
        ARPPacket(operation: .request, senderHardwareAddress: hardwareAddress, senderProtocolAddress: address, targetHardwareAddress: MACAddress(0, 0, 0, 0, 0, 0), targetProtocolAddress: address)
    }

    public var isGratuitous: Bool { senderProtocolAddress == targetProtocolAddress }

    public static func parse(_ bytes: ArraySlice<UInt8>) throws(PacketError) -> ARPPacket {
        guard bytes.count >= length else { throw .truncated(.arp, needed: length, available: bytes.count) }
        let hardwareType = bytes.uint16(at: 0)
        guard hardwareType == 1 else { throw .unsupported(.arp, value: Int(hardwareType)) }
        let protocolType = bytes.uint16(at: 2)
        guard protocolType == EtherType.ipv4.rawValue else { throw .unsupported(.arp, value: Int(protocolType)) }
        let hardwareLength = bytes.byte(at: 4)
        guard hardwareLength == 6 else { throw .badLength(.arp, field: Int(hardwareLength), available: 6) }
        let protocolLength = bytes.byte(at: 5)
        guard protocolLength == 4 else { throw .badLength(.arp, field: Int(protocolLength), available: 4) }
        let code = bytes.uint16(at: 6)
        guard let operation = Operation(rawValue: code) else { throw .unsupported(.arp, value: Int(code)) }
        return ARPPacket(
            operation: operation,
            senderHardwareAddress: bytes.macAddress(at: 8), senderProtocolAddress: bytes.ipv4Address(at: 14),
            targetHardwareAddress: bytes.macAddress(at: 18), targetProtocolAddress: bytes.ipv4Address(at: 24))
    }

    public func write(to bytes: inout [UInt8]) {
        bytes.append(uint16: 1)
        bytes.append(uint16: EtherType.ipv4.rawValue)
        bytes.append(6)
        bytes.append(4)
        bytes.append(uint16: operation.rawValue)
        bytes.append(mac: senderHardwareAddress)
        bytes.append(ipv4: senderProtocolAddress)
        bytes.append(mac: targetHardwareAddress)
        bytes.append(ipv4: targetProtocolAddress)
    }
}
