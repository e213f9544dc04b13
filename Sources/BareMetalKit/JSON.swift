// JSON: a small RFC 8259 parser over UTF-8 bytes, Embedded-clean, for the
// launcher's configuration on the guest's command line.

/// A parsed JSON value. Object members keep their order and duplicates.
public indirect enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    /// Numbers keep their text; `integer` converts when it is one.
    case number(String)
    case string(String)
    case array([JSONValue])
    case object([JSONMember])

    /// The first member named `key` of an object. Keys compare as UTF-8
    /// bytes, not by canonical equivalence, which keeps Unicode
    /// normalization tables out of images.
    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        for member in members where member.key.utf8.elementsEqual(key.utf8) { return member.value }
        return nil
    }

    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    public var arrayValue: [JSONValue]? {
        if case .array(let value) = self { return value }
        return nil
    }

    public var integer: Int? {
        guard case .number(let text) = self else { return nil }
        var value = 0
        var negative = false
        var sawDigit = false
        for byte in text.utf8 {
            if byte == UInt8(ascii: "-") && !sawDigit && !negative { negative = true; continue }
            guard byte >= 0x30 && byte <= 0x39 else { return nil }
            let (product, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = product.addingReportingOverflow(Int(byte - 0x30))
            if overflow1 || overflow2 { return nil }
            value = sum
            sawDigit = true
        }
        guard sawDigit else { return nil }
        return negative ? -value : value
    }
}

public struct JSONMember: Equatable, Sendable {
    public var key: String
    public var value: JSONValue
    public init(key: String, value: JSONValue) {
        self.key = key
        self.value = value
    }
}

/// Where and why JSON text was rejected.
public struct JSONError: Error, Equatable {
    public enum Reason: Equatable, Sendable {
        case unexpectedEnd
        case unexpectedByte(UInt8)
        case badEscape
        case badUnicodeEscape
        case controlCharacterInString
        case nestingTooDeep
        case badNumber
    }
    public var reason: Reason
    /// Byte offset into the parsed text.
    public var offset: Int
}

/// Parses one JSON value starting at `start`; returns it and the offset after it.
public struct JSONParser {
    public static var maximumDepth: Int { 32 }

    let bytes: [UInt8]
    var position: Int

    public init(bytes: [UInt8], start: Int = 0) {
        self.bytes = bytes
        self.position = start
    }

    /// Parses a complete document: one value and nothing but whitespace after it.
    public static func parseDocument(_ bytes: [UInt8]) throws(JSONError) -> JSONValue {
        var parser = JSONParser(bytes: bytes)
        let value = try parser.parseValue()
        parser.skipWhitespace()
        guard parser.position == bytes.count else {
            throw JSONError(reason: .unexpectedByte(bytes[parser.position]), offset: parser.position)
        }
        return value
    }

    /// The offset just past the last value parsed.
    public var offset: Int { position }

    public mutating func parseValue() throws(JSONError) -> JSONValue {
        try parseValue(depth: 0)
    }

    mutating func skipWhitespace() {
        while position < bytes.count {
            switch bytes[position] {
            case 0x20, 0x09, 0x0A, 0x0D: position += 1
            default: return
            }
        }
    }

    func fail(_ reason: JSONError.Reason) -> JSONError { JSONError(reason: reason, offset: position) }

    mutating func next() throws(JSONError) -> UInt8 {
        guard position < bytes.count else { throw fail(.unexpectedEnd) }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func expect(_ literal: StaticString) throws(JSONError) {
        let start = literal.utf8Start
        for index in 0..<literal.utf8CodeUnitCount {
            let byte = try next()
            guard byte == start[index] else { position -= 1; throw fail(.unexpectedByte(byte)) }
        }
    }

    mutating func parseValue(depth: Int) throws(JSONError) -> JSONValue {
        guard depth < Self.maximumDepth else { throw fail(.nestingTooDeep) }
        skipWhitespace()
        guard position < bytes.count else { throw fail(.unexpectedEnd) }
        switch bytes[position] {
        case UInt8(ascii: "{"): return try parseObject(depth: depth)
        case UInt8(ascii: "["): return try parseArray(depth: depth)
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try expect("true"); return .bool(true)
        case UInt8(ascii: "f"): try expect("false"); return .bool(false)
        case UInt8(ascii: "n"): try expect("null"); return .null
        case UInt8(ascii: "-"), 0x30...0x39: return .number(try parseNumber())
        default: throw fail(.unexpectedByte(bytes[position]))
        }
    }

    mutating func parseObject(depth: Int) throws(JSONError) -> JSONValue {
        position += 1  // {
        var members: [JSONMember] = []
        skipWhitespace()
        if position < bytes.count && bytes[position] == UInt8(ascii: "}") {
            position += 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            guard position < bytes.count else { throw fail(.unexpectedEnd) }
            guard bytes[position] == UInt8(ascii: "\"") else { throw fail(.unexpectedByte(bytes[position])) }
            let key = try parseString()
            skipWhitespace()
            let colon = try next()
            guard colon == UInt8(ascii: ":") else { position -= 1; throw fail(.unexpectedByte(colon)) }
            let value = try parseValue(depth: depth + 1)
            members.append(JSONMember(key: key, value: value))
            skipWhitespace()
            let separator = try next()
            if separator == UInt8(ascii: "}") { return .object(members) }
            guard separator == UInt8(ascii: ",") else { position -= 1; throw fail(.unexpectedByte(separator)) }
        }
    }

    mutating func parseArray(depth: Int) throws(JSONError) -> JSONValue {
        position += 1  // [
        var elements: [JSONValue] = []
        skipWhitespace()
        if position < bytes.count && bytes[position] == UInt8(ascii: "]") {
            position += 1
            return .array(elements)
        }
        while true {
            elements.append(try parseValue(depth: depth + 1))
            skipWhitespace()
            let separator = try next()
            if separator == UInt8(ascii: "]") { return .array(elements) }
            guard separator == UInt8(ascii: ",") else { position -= 1; throw fail(.unexpectedByte(separator)) }
        }
    }

    mutating func parseNumber() throws(JSONError) -> String {
        let start = position
        if bytes[position] == UInt8(ascii: "-") { position += 1 }
        func digits(_ parser: inout JSONParser) -> Int {
            var count = 0
            while parser.position < parser.bytes.count, parser.bytes[parser.position] >= 0x30, parser.bytes[parser.position] <= 0x39 {
                parser.position += 1
                count += 1
            }
            return count
        }
        let integerStart = position
        let integerDigits = digits(&self)
        guard integerDigits > 0 else { throw fail(.badNumber) }
        if integerDigits > 1 && bytes[integerStart] == 0x30 { throw JSONError(reason: .badNumber, offset: integerStart) }
        if position < bytes.count && bytes[position] == UInt8(ascii: ".") {
            position += 1
            guard digits(&self) > 0 else { throw fail(.badNumber) }
        }
        if position < bytes.count && (bytes[position] == UInt8(ascii: "e") || bytes[position] == UInt8(ascii: "E")) {
            position += 1
            if position < bytes.count && (bytes[position] == UInt8(ascii: "+") || bytes[position] == UInt8(ascii: "-")) {
                position += 1
            }
            guard digits(&self) > 0 else { throw fail(.badNumber) }
        }
        return String(decoding: bytes[start..<position], as: UTF8.self)
    }

    mutating func hexDigit() throws(JSONError) -> UInt32 {
        let byte = try next()
        switch byte {
        case 0x30...0x39: return UInt32(byte - 0x30)
        case 0x41...0x46: return UInt32(byte - 0x41 + 10)
        case 0x61...0x66: return UInt32(byte - 0x61 + 10)
        default: position -= 1; throw fail(.badUnicodeEscape)
        }
    }

    mutating func unicodeEscape() throws(JSONError) -> UInt32 {
        var value: UInt32 = 0
        for _ in 0..<4 { value = value << 4 | (try hexDigit()) }
        return value
    }

    static func appendUTF8(_ scalar: UInt32, to output: inout [UInt8]) {
        switch scalar {
        case 0..<0x80:
            output.append(UInt8(scalar))
        case 0x80..<0x800:
            output.append(UInt8(0xC0 | scalar >> 6))
            output.append(UInt8(0x80 | scalar & 0x3F))
        case 0x800..<0x10000:
            output.append(UInt8(0xE0 | scalar >> 12))
            output.append(UInt8(0x80 | scalar >> 6 & 0x3F))
            output.append(UInt8(0x80 | scalar & 0x3F))
        default:
            output.append(UInt8(0xF0 | scalar >> 18))
            output.append(UInt8(0x80 | scalar >> 12 & 0x3F))
            output.append(UInt8(0x80 | scalar >> 6 & 0x3F))
            output.append(UInt8(0x80 | scalar & 0x3F))
        }
    }

    mutating func parseString() throws(JSONError) -> String {
        position += 1  // opening quote
        var output: [UInt8] = []
        while true {
            let byte = try next()
            switch byte {
            case UInt8(ascii: "\""):
                return String(decoding: output, as: UTF8.self)
            case UInt8(ascii: "\\"):
                let escape = try next()
                switch escape {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): output.append(escape)
                case UInt8(ascii: "b"): output.append(0x08)
                case UInt8(ascii: "f"): output.append(0x0C)
                case UInt8(ascii: "n"): output.append(0x0A)
                case UInt8(ascii: "r"): output.append(0x0D)
                case UInt8(ascii: "t"): output.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try unicodeEscape()
                    if scalar >= 0xD800 && scalar < 0xDC00 {
                        // A high surrogate must be followed by \u and a low surrogate.
                        try expect("\\u")
                        let low = try unicodeEscape()
                        guard low >= 0xDC00 && low < 0xE000 else { throw fail(.badUnicodeEscape) }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if scalar >= 0xDC00 && scalar < 0xE000 {
                        throw fail(.badUnicodeEscape)
                    }
                    Self.appendUTF8(scalar, to: &output)
                default:
                    position -= 1
                    throw fail(.badEscape)
                }
            case 0x00..<0x20:
                position -= 1
                throw fail(.controlCharacterInString)
            default:
                output.append(byte)
            }
        }
    }
}
