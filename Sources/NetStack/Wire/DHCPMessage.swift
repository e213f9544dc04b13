// DHCP messages and the options this client uses (RFC 2131 §2 and §3; options per RFC 2132 §3, §9).

/// A DHCP (BOOTP) message with its options decoded.
public struct DHCPMessage: Equatable, Sendable {
    /// Fixed part up to and including the magic cookie.
    public static let fixedLength = 240
    static let magicCookie: UInt32 = 0x6382_5363
    public static let serverPort: UInt16 = 67
    public static let clientPort: UInt16 = 68

    /// Option 53 values (RFC 2132 §9.6).
    public enum MessageType: UInt8, Sendable {
        case discover = 1, offer, request, decline, acknowledge, negativeAcknowledge, release, inform
    }

    /// 1 for client requests, 2 for server replies.
    public var operation: UInt8
    public var transactionID: UInt32
    public var seconds: UInt16 = 0
    /// Asks the server to broadcast its reply (RFC 2131 §4.1): a client without an address cannot take unicast.
    public var broadcast = false
    public var clientAddress = IPv4Address.any
    public var yourAddress = IPv4Address.any
    public var serverAddress = IPv4Address.any
    public var relayAddress = IPv4Address.any
    public var clientHardwareAddress: MACAddress

    // Options.
    public var messageType: MessageType?
    public var subnetMask: IPv4Address?
    public var routers: [IPv4Address] = []
    public var domainNameServers: [IPv4Address] = []
    public var requestedAddress: IPv4Address?
    public var serverIdentifier: IPv4Address?
    /// Seconds; 0xFFFFFFFF means infinite.
    public var leaseTime: UInt32?
    public var renewalTime: UInt32?
    public var rebindingTime: UInt32?
    public var parameterRequestList: [UInt8] = []
    public var hostName: [UInt8] = []

    public init(operation: UInt8, transactionID: UInt32, clientHardwareAddress: MACAddress) {
        self.operation = operation
        self.transactionID = transactionID
        self.clientHardwareAddress = clientHardwareAddress
    }

    public static func parse(_ bytes: ArraySlice<UInt8>) throws(PacketError) -> DHCPMessage {
        guard bytes.count >= fixedLength else { throw .truncated(.dhcp, needed: fixedLength, available: bytes.count) }
        let hardwareType = bytes.byte(at: 1)
        guard hardwareType == 1 else { throw .unsupported(.dhcp, value: Int(hardwareType)) }
        let hardwareLength = Int(bytes.byte(at: 2))
        guard hardwareLength == 6 else { throw .badLength(.dhcp, field: hardwareLength, available: 16) }
        let cookie = bytes.uint32(at: 236)
        guard cookie == magicCookie else { throw .unsupported(.dhcp, value: Int(cookie)) }
        var message = DHCPMessage(operation: bytes.byte(at: 0), transactionID: bytes.uint32(at: 4), clientHardwareAddress: bytes.macAddress(at: 28))
        message.seconds = bytes.uint16(at: 8)
        message.broadcast = bytes.uint16(at: 10) & 0x8000 != 0
        message.clientAddress = bytes.ipv4Address(at: 12)
        message.yourAddress = bytes.ipv4Address(at: 16)
        message.serverAddress = bytes.ipv4Address(at: 20)
        message.relayAddress = bytes.ipv4Address(at: 24)
        var offset = fixedLength
        while offset < bytes.count {
            let code = bytes.byte(at: offset)
            if code == 255 { break }
            if code == 0 {
                offset += 1
                continue
            }
            guard offset + 1 < bytes.count else { throw .badOption(.dhcp, kind: code, offset: offset) }
            let length = Int(bytes.byte(at: offset + 1))
            guard offset + 2 + length <= bytes.count else { throw .badOption(.dhcp, kind: code, offset: offset) }
            let value = bytes.bytes(at: offset + 2, count: length)
            func address() throws(PacketError) -> IPv4Address {
                guard length == 4 else { throw .badOption(.dhcp, kind: code, offset: offset) }
                return value.ipv4Address(at: 0)
            }
            func addresses() throws(PacketError) -> [IPv4Address] {
                guard length % 4 == 0, length > 0 else { throw .badOption(.dhcp, kind: code, offset: offset) }
                return stride(from: 0, to: length, by: 4).map { value.ipv4Address(at: $0) }
            }
            func seconds() throws(PacketError) -> UInt32 {
                guard length == 4 else { throw .badOption(.dhcp, kind: code, offset: offset) }
                return value.uint32(at: 0)
            }
            switch code {
            case 1: message.subnetMask = try address()
            case 3: message.routers = try addresses()
            case 6: message.domainNameServers = try addresses()
            case 12: message.hostName = Array(value)
            case 50: message.requestedAddress = try address()
            case 51: message.leaseTime = try seconds()
            case 53:
                guard length == 1, let type = MessageType(rawValue: value.byte(at: 0)) else { throw .badOption(.dhcp, kind: code, offset: offset) }
                message.messageType = type
            case 54: message.serverIdentifier = try address()
            case 55: message.parameterRequestList = Array(value)
            case 58: message.renewalTime = try seconds()
            case 59: message.rebindingTime = try seconds()
            default: break
            }
            offset += 2 + length
        }
        return message
    }

    public func write(to bytes: inout [UInt8]) {
        let start = bytes.count
        bytes.append(operation)
        bytes.append(1)
        bytes.append(6)
        bytes.append(0)
        bytes.append(uint32: transactionID)
        bytes.append(uint16: seconds)
        bytes.append(uint16: broadcast ? 0x8000 : 0)
        bytes.append(ipv4: clientAddress)
        bytes.append(ipv4: yourAddress)
        bytes.append(ipv4: serverAddress)
        bytes.append(ipv4: relayAddress)
        bytes.append(mac: clientHardwareAddress)
        bytes.append(contentsOf: repeatElement(0, count: 10 + 64 + 128))
        bytes.append(uint32: Self.magicCookie)
        func option(_ code: UInt8, _ value: [UInt8]) {
            bytes.append(code)
            bytes.append(UInt8(value.count))
            bytes.append(contentsOf: value)
        }
        func encode(_ addresses: [IPv4Address]) -> [UInt8] {
            var value: [UInt8] = []
            for address in addresses { value.append(ipv4: address) }
            return value
        }
        func encode(_ seconds: UInt32) -> [UInt8] {
            var value: [UInt8] = []
            value.append(uint32: seconds)
            return value
        }
        if let messageType { option(53, [messageType.rawValue]) }
        if let subnetMask { option(1, encode([subnetMask])) }
        if !routers.isEmpty { option(3, encode(routers)) }
        if !domainNameServers.isEmpty { option(6, encode(domainNameServers)) }
        if !hostName.isEmpty { option(12, Array(hostName.prefix(255))) }
        if let requestedAddress { option(50, encode([requestedAddress])) }
        if let leaseTime { option(51, encode(leaseTime)) }
        if let serverIdentifier { option(54, encode([serverIdentifier])) }
        if !parameterRequestList.isEmpty { option(55, parameterRequestList) }
        if let renewalTime { option(58, encode(renewalTime)) }
        if let rebindingTime { option(59, encode(rebindingTime)) }
        bytes.append(255)
        // BOOTP relays expect at least a 300-byte message (RFC 1542 §2.1).
        while bytes.count - start < 300 { bytes.append(0) }
    }
}
