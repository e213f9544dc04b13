// GuestConfiguration: what the launcher tells the guest (arguments,
// environment, hostname), passed as a JSON object on the kernel command line
// in rumprun's manner. Format: Docs/guest-configuration.md.

/// A network interface the launcher attached (`-I`, `-W`).
public struct GuestNetworkInterface: Equatable, Sendable {
    public enum Addressing: Equatable, Sendable {
        case none
        case dhcp
        /// Dotted-quad address, prefix length, optional gateway.
        case staticAddress(address: String, prefixLength: Int, gateway: String?)
    }

    public var tag: String
    /// "virtio-net", "e1000" or "xen-netfront".
    public var driver: String
    public var mac: String
    public var addressing: Addressing

    public init(tag: String, driver: String, mac: String, addressing: Addressing) {
        self.tag = tag
        self.driver = driver
        self.mac = mac
        self.addressing = addressing
    }
}

/// A block device the launcher attached (`-b`).
public struct GuestBlockDevice: Equatable, Sendable {
    public var tag: String
    public var driver: String
    public var mountPoint: String?

    public init(tag: String, driver: String, mountPoint: String?) {
        self.tag = tag
        self.driver = driver
        self.mountPoint = mountPoint
    }
}

/// The guest's configuration, parsed from the command line.
public struct GuestConfiguration: Sendable {
    /// Program arguments; `arguments[0]` is the program name.
    public var arguments: [String] = []
    /// `NAME=VALUE` strings in launcher order.
    public var environment: [String] = []
    public var hostname: String = "rumprun"
    /// The whole JSON object, for keys other layers define (network, disks).
    public var json: JSONValue = .object([])
    /// Command-line text outside the JSON object (loaders may add some).
    public var extraCommandLine: [UInt8] = []
    public var networkInterfaces: [GuestNetworkInterface] = []
    public var blockDevices: [GuestBlockDevice] = []

    public init() {}

    /// Why a command line did not give a configuration.
    public enum Error: Swift.Error, Equatable {
        case malformedJSON(JSONError)
        case notAnObject
        case wrongType(key: String)
    }

    /// Finds the JSON object in `commandLine` (the first `{`) and reads it.
    /// A command line without one gives the default configuration.
    public init(commandLine: [UInt8]) throws(Error) {
        guard let open = commandLine.firstIndex(of: UInt8(ascii: "{")) else {
            extraCommandLine = commandLine
            return
        }
        var parser = JSONParser(bytes: commandLine, start: open)
        let value: JSONValue
        do {
            value = try parser.parseValue()
        } catch {
            throw .malformedJSON(error)
        }
        guard case .object = value else { throw .notAnObject }
        json = value
        extraCommandLine = Array(commandLine[0..<open]) + Array(commandLine[parser.offset...])
        arguments = try Self.strings(value, "argv")
        environment = try Self.strings(value, "env")
        if let hostValue = value["hostname"] {
            guard let name = hostValue.stringValue else { throw .wrongType(key: "hostname") }
            hostname = name
        }
        if let net = value["net"] {
            guard let entries = net.arrayValue else { throw .wrongType(key: "net") }
            for entry in entries { networkInterfaces.append(try Self.networkInterface(entry)) }
        }
        if let blk = value["blk"] {
            guard let entries = blk.arrayValue else { throw .wrongType(key: "blk") }
            for entry in entries {
                guard let tag = entry["tag"]?.stringValue, let driver = entry["driver"]?.stringValue else {
                    throw .wrongType(key: "blk")
                }
                var mountPoint: String? = nil
                if let mount = entry["mountpoint"] {
                    guard let text = mount.stringValue else { throw .wrongType(key: "blk.mountpoint") }
                    mountPoint = text
                }
                blockDevices.append(GuestBlockDevice(tag: tag, driver: driver, mountPoint: mountPoint))
            }
        }
    }

    static func networkInterface(_ entry: JSONValue) throws(Error) -> GuestNetworkInterface {
        guard let tag = entry["tag"]?.stringValue, let driver = entry["driver"]?.stringValue,
            let mac = entry["mac"]?.stringValue
        else { throw .wrongType(key: "net") }
        var addressing = GuestNetworkInterface.Addressing.none
        if let inet = entry["inet"] {
            guard let method = inet["method"]?.stringValue else { throw .wrongType(key: "net.inet") }
            if method.utf8.elementsEqual("dhcp".utf8) {
                addressing = .dhcp
            } else if method.utf8.elementsEqual("static".utf8) {
                guard let address = inet["address"]?.stringValue, let prefix = inet["prefix"]?.integer, (0...32).contains(prefix) else {
                    throw .wrongType(key: "net.inet")
                }
                var gateway: String? = nil
                if let value = inet["gateway"] {
                    guard let text = value.stringValue else { throw .wrongType(key: "net.inet.gateway") }
                    gateway = text
                }
                addressing = .staticAddress(address: address, prefixLength: prefix, gateway: gateway)
            } else {
                throw .wrongType(key: "net.inet.method")
            }
        }
        return GuestNetworkInterface(tag: tag, driver: driver, mac: mac, addressing: addressing)
    }

    static func strings(_ object: JSONValue, _ key: String) throws(Error) -> [String] {
        guard let value = object[key] else { return [] }
        guard let array = value.arrayValue else { throw .wrongType(key: key) }
        var result: [String] = []
        for element in array {
            guard let string = element.stringValue else { throw .wrongType(key: key) }
            result.append(string)
        }
        return result
    }

    /// The value of environment variable `name`, the last one set winning.
    public func environmentValue(_ name: String) -> String? {
        var found: String? = nil
        let prefix = Array(name.utf8) + [UInt8(ascii: "=")]
        for entry in environment {
            let bytes = Array(entry.utf8)
            if bytes.count >= prefix.count && Array(bytes[0..<prefix.count]) == prefix {
                found = String(decoding: bytes[prefix.count...], as: UTF8.self)
            }
        }
        return found
    }
}
