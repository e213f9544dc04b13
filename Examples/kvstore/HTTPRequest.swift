// HTTPRequest: kvstore's HTTP/1.1 request parsing (RFC 9112 §3 request
// line, §5 fields, §6.3 message body length by Content-Length) and routing
// of its small API. Plain Swift, shared with host unit tests
// (Tests/KVStoreTests links this file).

/// A complete request.
struct HTTPRequest: Equatable {
    var method: [UInt8]
    var target: [UInt8]
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    var minorVersion: Int
    /// Field names in lower case, values without surrounding blanks.
    var fields: [(name: [UInt8], value: [UInt8])]
    var body: [UInt8]

    static func == (a: HTTPRequest, b: HTTPRequest) -> Bool {
        a.method == b.method && a.target == b.target && a.minorVersion == b.minorVersion && a.body == b.body
            && a.fields.count == b.fields.count
            && zip(a.fields, b.fields).allSatisfy { $0.name == $1.name && $0.value == $1.value }
    }

    /// The first value of field `name` (lower case).
    func field(_ name: [UInt8]) -> [UInt8]? { fields.first { $0.name == name }?.value }

    /// Whether the connection stays open after the response (§9.3).
    var keepAlive: Bool {
        let connection = field(Array("connection".utf8)).map(HTTPParser.lowercased) ?? []
        if HTTPParser.contains(connection, Array("close".utf8)) { return false }
        return minorVersion >= 1 || HTTPParser.contains(connection, Array("keep-alive".utf8))
    }
}

/// What `HTTPParser.parse` found at the front of a buffer.
enum HTTPParseResult {
    /// More bytes are needed; `expectsContinue` once the header block is
    /// complete and asks for `100 Continue` before its body.
    case incomplete(expectsContinue: Bool)
    /// A request and the bytes it took from the buffer.
    case request(HTTPRequest, consumed: Int)
    /// The request cannot be served: answer `status` and close.
    case invalid(status: Int, reason: StaticString)
}

enum HTTPParser {
    static var maximumHeaderBytes: Int { 8192 }

    /// Parses one request from the front of `buffer`; bodies longer than
    /// `maximumBody` are refused (413).
    static func parse(_ buffer: [UInt8], maximumBody: Int) -> HTTPParseResult {
        guard let end = headerEnd(buffer) else {
            return buffer.count > maximumHeaderBytes
                ? .invalid(status: 431, reason: "header block too large") : .incomplete(expectsContinue: false)
        }
        guard end <= maximumHeaderBytes else { return .invalid(status: 431, reason: "header block too large") }
        let lines = split(Array(buffer[0..<(end - 4)]))
        guard let requestLine = lines.first else { return .invalid(status: 400, reason: "no request line") }
        let words = requestLine.split(separator: 32, omittingEmptySubsequences: false)
        guard words.count == 3, !words[0].isEmpty, !words[1].isEmpty else { return .invalid(status: 400, reason: "bad request line") }
        let version = Array(words[2])
        let minor: Int
        if version == Array("HTTP/1.1".utf8) {
            minor = 1
        } else if version == Array("HTTP/1.0".utf8) {
            minor = 0
        } else {
            return .invalid(status: 505, reason: "HTTP version not supported")
        }
        var fields: [(name: [UInt8], value: [UInt8])] = []
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: 58), colon > line.startIndex else { return .invalid(status: 400, reason: "bad header field") }
            let name = lowercased(Array(line[line.startIndex..<colon]))
            guard !name.contains(32) && !name.contains(9) else { return .invalid(status: 400, reason: "bad header field") }
            fields.append((name, trimmed(Array(line[(colon + 1)...]))))
        }
        var request = HTTPRequest(method: Array(words[0]), target: Array(words[1]), minorVersion: minor, fields: fields, body: [])
        if request.field(Array("transfer-encoding".utf8)) != nil {
            return .invalid(status: 501, reason: "chunked bodies are not supported; send Content-Length")
        }
        var length = 0
        let lengths = fields.filter { $0.name == Array("content-length".utf8) }
        if let first = lengths.first {
            guard let value = decimal(first.value), lengths.allSatisfy({ $0.value == first.value }) else {
                return .invalid(status: 400, reason: "bad Content-Length")
            }
            length = value
        }
        guard length <= maximumBody else { return .invalid(status: 413, reason: "body too large") }
        guard buffer.count - end >= length else {
            let expect = request.field(Array("expect".utf8)).map(lowercased) ?? []
            return .incomplete(expectsContinue: expect == Array("100-continue".utf8))
        }
        request.body = Array(buffer[end..<(end + length)])
        return .request(request, consumed: end + length)
    }

    /// The index just past the CRLF CRLF that ends the header block.
    static func headerEnd(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for index in 0...(bytes.count - 4) where bytes[index] == 13 && bytes[index + 1] == 10 && bytes[index + 2] == 13 && bytes[index + 3] == 10 {
            return index + 4
        }
        return nil
    }

    /// Lines separated by CRLF.
    static func split(_ bytes: [UInt8]) -> [ArraySlice<UInt8>] {
        var lines: [ArraySlice<UInt8>] = []
        var start = 0
        var index = 0
        while index + 1 < bytes.count {
            if bytes[index] == 13 && bytes[index + 1] == 10 {
                lines.append(bytes[start..<index])
                index += 2
                start = index
            } else {
                index += 1
            }
        }
        lines.append(bytes[start..<bytes.count])
        return lines
    }

    static func lowercased(_ bytes: [UInt8]) -> [UInt8] { bytes.map { $0 >= 65 && $0 <= 90 ? $0 + 32 : $0 } }

    static func trimmed(_ bytes: [UInt8]) -> [UInt8] {
        var slice = bytes[...]
        while let first = slice.first, first == 32 || first == 9 { slice = slice.dropFirst() }
        while let last = slice.last, last == 32 || last == 9 { slice = slice.dropLast() }
        return Array(slice)
    }

    static func decimal(_ bytes: [UInt8]) -> Int? {
        guard !bytes.isEmpty, bytes.count <= 12 else { return nil }
        var value = 0
        for byte in bytes {
            guard byte >= 48 && byte <= 57 else { return nil }
            value = value * 10 + Int(byte - 48)
        }
        return value
    }

    static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, haystack.count >= needle.count else { return needle.isEmpty }
        for start in 0...(haystack.count - needle.count) where haystack[start..<(start + needle.count)].elementsEqual(needle) {
            return true
        }
        return false
    }
}

/// What a request asks kvstore to do.
enum Route {
    case get(key: [UInt8])
    case put(key: [UInt8])
    case delete(key: [UInt8])
    case stats
    case quit
    /// The key has characters outside A-Z a-z 0-9 - . _ ~ or is too long.
    case badKey
    case notFound
    /// The path exists but not with this method; `allowed` for the Allow field.
    case methodNotAllowed(allowed: StaticString)

    static var keyPrefix: [UInt8] { Array("/k/".utf8) }

    static func of(method: [UInt8], target: [UInt8]) -> Route {
        let get = method == Array("GET".utf8) || method == Array("HEAD".utf8)
        if target.starts(with: keyPrefix) {
            let key = Array(target.dropFirst(keyPrefix.count))
            guard !key.isEmpty, key.count <= Record.maximumKeyLength, key.allSatisfy(isKeyByte) else { return .badKey }
            if get { return .get(key: key) }
            if method == Array("PUT".utf8) || method == Array("POST".utf8) { return .put(key: key) }
            if method == Array("DELETE".utf8) { return .delete(key: key) }
            return .methodNotAllowed(allowed: "GET, HEAD, PUT, POST, DELETE")
        }
        if target == Array("/stats".utf8) { return get ? .stats : .methodNotAllowed(allowed: "GET, HEAD") }
        if target == Array("/quit".utf8) {
            return get || method == Array("POST".utf8) ? .quit : .methodNotAllowed(allowed: "GET, POST")
        }
        return .notFound
    }

    /// Whether both name the same action (the same key; the same Allow text).
    func matches(_ other: Route) -> Bool {
        switch (self, other) {
        case (.get(let a), .get(let b)), (.put(let a), .put(let b)), (.delete(let a), .delete(let b)): return a == b
        case (.stats, .stats), (.quit, .quit), (.badKey, .badKey), (.notFound, .notFound): return true
        case (.methodNotAllowed(let a), .methodNotAllowed(let b)):
            return UnsafeBufferPointer(start: a.utf8Start, count: a.utf8CodeUnitCount)
                .elementsEqual(UnsafeBufferPointer(start: b.utf8Start, count: b.utf8CodeUnitCount))
        default: return false
        }
    }

    /// RFC 3986 §2.3 unreserved characters.
    static func isKeyByte(_ byte: UInt8) -> Bool {
        (byte >= 48 && byte <= 57) || (byte >= 65 && byte <= 90) || (byte >= 97 && byte <= 122) || byte == 45 || byte == 46 || byte == 95
            || byte == 126
    }
}
