// GuestConfiguration: what the launcher tells the guest (arguments,
// environment, hostname), passed as a JSON object on the kernel command line
// in rumprun's manner. Format: Docs/guest-configuration.md.

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
