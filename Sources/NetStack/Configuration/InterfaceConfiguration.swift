// Static IPv4 interface configuration and the rumprun `-W tag,inet,...` network specification (RFC 1122 §3.3.1 routing to a gateway, RFC 4632 prefixes).

/// An interface's IPv4 address, subnet and default gateway.
public struct IPv4InterfaceConfiguration: Equatable, Sendable {
    public var address: IPv4Address
    public var prefixLength: Int
    public var gateway: IPv4Address?

    public init(address: IPv4Address, prefixLength: Int, gateway: IPv4Address? = nil) {
        precondition(prefixLength >= 0 && prefixLength <= 32, "prefix length out of range")
        self.address = address
        self.prefixLength = prefixLength
        self.gateway = gateway
    }

    public var mask: IPv4Address { IPv4Address.mask(prefixLength: prefixLength) }

    /// The subnet-directed broadcast address.
    public var broadcast: IPv4Address { IPv4Address(rawValue: address.rawValue | ~mask.rawValue) }

    /// Whether `other` is on this interface's subnet.
    public func contains(_ other: IPv4Address) -> Bool {
        other.rawValue & mask.rawValue == address.rawValue & mask.rawValue
    }
}

/// Why a network specification did not parse.
public enum NetworkSpecificationError: Error, Equatable, Sendable {
    case unknownFamily(String)
    case unknownMethod(String)
    case badAddress(String)
    case badPrefix(String)
    case missingAddress
    case tooManyFields(Int)
}

/// How an interface gets its address: rumprun-cli's `-W tag,inet,dhcp` or
/// `-W tag,inet,static,ADDR/MASK[,GW]` without the tag, e.g. `inet,static,10.0.0.2/24,10.0.0.1`.
public enum NetworkSpecification: Equatable, Sendable {
    case dhcp
    case `static`(IPv4InterfaceConfiguration)

    /// Parses the text after the tag. MASK is a prefix length or a dotted mask.
    public init(parsing text: String) throws(NetworkSpecificationError) {
        var fields: [String] = []
        var current: [UInt8] = []
        for byte in text.utf8 {
            if byte == UInt8(ascii: ",") {
                fields.append(String(decoding: current, as: UTF8.self))
                current = []
            } else {
                current.append(byte)
            }
        }
        fields.append(String(decoding: current, as: UTF8.self))
        guard fields[0] == "inet" else { throw .unknownFamily(fields[0]) }
        guard fields.count >= 2 else { throw .unknownMethod("") }
        switch fields[1] {
        case "dhcp":
            guard fields.count == 2 else { throw .tooManyFields(fields.count) }
            self = .dhcp
        case "static":
            guard fields.count >= 3 else { throw .missingAddress }
            guard fields.count <= 4 else { throw .tooManyFields(fields.count) }
            let addressText = Array(fields[2].utf8)
            guard let slash = addressText.firstIndex(of: UInt8(ascii: "/")) else { throw .badPrefix(fields[2]) }
            let addressPart = String(decoding: addressText[..<slash], as: UTF8.self)
            let maskPart = String(decoding: addressText[(slash + 1)...], as: UTF8.self)
            guard let address = IPv4Address(addressPart) else { throw .badAddress(addressPart) }
            let prefix = try Self.prefixLength(maskPart)
            var gateway: IPv4Address? = nil
            if fields.count == 4 {
                guard let parsed = IPv4Address(fields[3]) else { throw .badAddress(fields[3]) }
                gateway = parsed
            }
            self = .static(IPv4InterfaceConfiguration(address: address, prefixLength: prefix, gateway: gateway))
        default:
            throw .unknownMethod(fields[1])
        }
    }

    /// Builds the specification from the fields of one `"inet"` object of the
    /// guest configuration's `"net"` array, as the launcher writes it:
    /// `{"method":"dhcp"}` or `{"method":"static","address":"10.0.0.2","prefix":24,"gateway":"10.0.0.1"}`.
    /// The caller extracts the fields with its JSON reader, so this layer needs none.
    public init(method: String, address: String?, prefixLength: Int?, gateway: String?) throws(NetworkSpecificationError) {
        switch method {
        case "dhcp":
            self = .dhcp
        case "static":
            guard let address else { throw .missingAddress }
            guard let parsed = IPv4Address(address) else { throw .badAddress(address) }
            guard let prefixLength, prefixLength >= 0, prefixLength <= 32 else { throw .badPrefix(prefixLength.map { String($0) } ?? "") }
            var router: IPv4Address? = nil
            if let gateway {
                guard let parsedGateway = IPv4Address(gateway) else { throw .badAddress(gateway) }
                router = parsedGateway
            }
            self = .static(IPv4InterfaceConfiguration(address: parsed, prefixLength: prefixLength, gateway: router))
        default:
            throw .unknownMethod(method)
        }
    }

    static func prefixLength(_ text: String) throws(NetworkSpecificationError) -> Int {
        if let mask = IPv4Address(text) {
            // A dotted mask must be contiguous ones.
            let ones = mask.rawValue.nonzeroBitCount
            guard IPv4Address.mask(prefixLength: ones) == mask else { throw .badPrefix(text) }
            return ones
        }
        var value = 0
        var digits = 0
        for byte in text.utf8 {
            guard byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"), digits < 2 else { throw .badPrefix(text) }
            value = value * 10 + Int(byte - UInt8(ascii: "0"))
            digits += 1
        }
        guard digits > 0, value <= 32 else { throw .badPrefix(text) }
        return value
    }
}
