// DeviceOptions: the launcher's device options, after rumprun's launcher:
//   -I tag,driver,backend[,backend-options...]   a network interface
//   -W tag,inet,dhcp | tag,inet,static,ADDR/MASK[,GATEWAY]   its address
//   -b hostpath[,mountpoint]                      a block device
// Each becomes QEMU devices (or xl vif/disk lines) and an entry in the
// guest's JSON configuration (Docs/guest-configuration.md).

/// A network interface to attach.
public struct NetworkInterfaceOption: Equatable, Sendable {
    public enum Driver: String, CaseIterable, Sendable {
        case virtioNet = "virtio-net"
        case e1000
        case xenNetfront = "xen-netfront"
    }

    public var tag: String
    public var driver: Driver
    /// QEMU netdev type and options ("user", "tap,ifname=tap0,script=no")
    /// or, for Xen, vif options ("bridge=xenbr0").
    public var backend: String
    public var mac: String
    public var address: AddressOption?

    /// Parses `tag,driver,backend[,options]`; `index` picks a stable MAC.
    public static func parse(_ text: String, index: Int) throws(LaunchError) -> NetworkInterfaceOption {
        let parts = text.split(separator: ",", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 3, !parts[0].isEmpty, !parts[2].isEmpty else {
            throw .invalidOption("-I expects tag,driver,backend[,options] (e.g. net0,virtio-net,user), not '\(text)'")
        }
        guard isTag(parts[0]) else { throw .invalidOption("-I: tag '\(parts[0])' must be letters, digits, '-' or '_'") }
        guard let driver = Driver(rawValue: parts[1]) else {
            throw .invalidOption("-I: unknown driver '\(parts[1])' (known: \(Driver.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        // QEMU's own prefix 52:54:00 (locally administered), Xen's 00:16:3e.
        let prefix = driver == .xenNetfront ? "00:16:3e:12:34:" : "52:54:00:12:34:"
        let mac = prefix + format2(0x56 + index)
        return NetworkInterfaceOption(tag: parts[0], driver: driver, backend: parts[2], mac: mac, address: nil)
    }

    static func format2(_ value: Int) -> String {
        let digits = String(value & 0xFF, radix: 16)
        return digits.count == 1 ? "0" + digits : digits
    }
}

/// How an interface gets its IPv4 address.
public enum AddressOption: Equatable, Sendable {
    case dhcp
    case staticAddress(address: String, prefixLength: Int, gateway: String?)

    /// Parses the part of `-W` after `tag,inet,`.
    static func parse(_ parts: [String], original: String) throws(LaunchError) -> AddressOption {
        switch parts.first {
        case "dhcp" where parts.count == 1:
            return .dhcp
        case "static" where parts.count == 2 || parts.count == 3:
            let pieces = parts[1].split(separator: "/").map(String.init)
            guard pieces.count == 2, isIPv4(pieces[0]), let prefix = Int(pieces[1]), (0...32).contains(prefix) else {
                throw .invalidOption("-W: '\(parts[1])' is not ADDRESS/PREFIX (e.g. 10.0.0.2/24)")
            }
            if parts.count == 3 && !isIPv4(parts[2]) { throw .invalidOption("-W: gateway '\(parts[2])' is not an IPv4 address") }
            return .staticAddress(address: pieces[0], prefixLength: prefix, gateway: parts.count == 3 ? parts[2] : nil)
        default:
            throw .invalidOption("-W expects tag,inet,dhcp or tag,inet,static,ADDRESS/PREFIX[,GATEWAY], not '\(original)'")
        }
    }
}

/// A host file attached as a disk.
public struct BlockDeviceOption: Equatable, Sendable {
    public var tag: String
    public var hostPath: String
    public var mountPoint: String?

    public static func parse(_ text: String, index: Int) throws(LaunchError) -> BlockDeviceOption {
        let parts = text.split(separator: ",", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        guard !parts[0].isEmpty else { throw .invalidOption("-b expects hostpath[,mountpoint], not '\(text)'") }
        if parts.count == 2 && !parts[1].hasPrefix("/") {
            throw .invalidOption("-b: mount point '\(parts[1])' must be an absolute path")
        }
        return BlockDeviceOption(tag: "blk\(index)", hostPath: parts[0], mountPoint: parts.count == 2 ? parts[1] : nil)
    }
}

func isTag(_ text: String) -> Bool {
    !text.isEmpty && text.unicodeScalars.allSatisfy { ("0"..."9").contains($0) || ("a"..."z").contains($0) || ("A"..."Z").contains($0) || $0 == "-" || $0 == "_" }
}

func isIPv4(_ text: String) -> Bool {
    let parts = text.split(separator: ".", omittingEmptySubsequences: false)
    return parts.count == 4 && parts.allSatisfy { part in
        guard let value = Int(part), part.count <= 3, String(value) == part else { return false }
        return (0...255).contains(value)
    }
}

/// Applies `-W` options to the interfaces they name.
public func applyAddressOptions(_ options: [String], to interfaces: inout [NetworkInterfaceOption]) throws(LaunchError) {
    for text in options {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard parts.count >= 3, parts[1] == "inet" else {
            throw .invalidOption("-W expects tag,inet,dhcp or tag,inet,static,ADDRESS/PREFIX[,GATEWAY], not '\(text)'")
        }
        guard let index = interfaces.firstIndex(where: { $0.tag == parts[0] }) else {
            throw .invalidOption("-W: no interface tagged '\(parts[0])' (add it with -I \(parts[0]),driver,backend)")
        }
        interfaces[index].address = try AddressOption.parse(Array(parts[2...]), original: text)
    }
}
