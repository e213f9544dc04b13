// XenStore: a xenstore client speaking the wire protocol of Xen
// public/io/xs_wire.h (xsd_sockmsg messages over the two 1 KiB rings of
// xenstore_domain_interface), with watches and transactions.
import CXen

/// An error string the store returned (`XS_ERROR`), by the errno name it
/// carries (the `xsd_errors` table of xs_wire.h).
public enum XenStoreErrorCode: Equatable, Sendable {
    case invalidArgument        // EINVAL
    case permissionDenied       // EACCES
    case exists                 // EEXIST
    case isDirectory            // EISDIR
    case noEntry                // ENOENT
    case outOfMemory            // ENOMEM
    case noSpace                // ENOSPC
    case inputOutput            // EIO
    case notEmpty               // ENOTEMPTY
    case notImplemented         // ENOSYS
    case readOnly               // EROFS
    case busy                   // EBUSY
    case tryAgain               // EAGAIN
    case alreadyConnected       // EISCONN
    case argumentListTooLong    // E2BIG
    case notPermitted           // EPERM

    static let table: [(StaticString, XenStoreErrorCode)] = [
        ("EINVAL", .invalidArgument), ("EACCES", .permissionDenied), ("EEXIST", .exists),
        ("EISDIR", .isDirectory), ("ENOENT", .noEntry), ("ENOMEM", .outOfMemory), ("ENOSPC", .noSpace),
        ("EIO", .inputOutput), ("ENOTEMPTY", .notEmpty), ("ENOSYS", .notImplemented), ("EROFS", .readOnly),
        ("EBUSY", .busy), ("EAGAIN", .tryAgain), ("EISCONN", .alreadyConnected), ("E2BIG", .argumentListTooLong),
        ("EPERM", .notPermitted),
    ]

    /// The errno name on the wire, for instance "ENOENT".
    public var name: StaticString {
        for (name, code) in Self.table where code == self { return name }
        return "EINVAL"
    }

    /// Parses the payload of an `XS_ERROR` reply (the name, NUL-terminated).
    public init?<Bytes: Collection>(wire: Bytes) where Bytes.Element == UInt8 {
        let name = wire.prefix { $0 != 0 }
        for (candidate, code) in Self.table {
            if candidate.utf8Start.withMemoryRebound(to: UInt8.self, capacity: candidate.utf8CodeUnitCount, { start in
                UnsafeBufferPointer(start: start, count: candidate.utf8CodeUnitCount).elementsEqual(name)
            }) {
                self = code
                return
            }
        }
        return nil
    }
}

/// Why a xenstore operation failed.
public enum XenStoreError: Error, Equatable, Sendable {
    /// The store answered request `type` (`XS_*`) with an error string.
    case store(XenStoreErrorCode, request: UInt32)
    /// The store answered with an error string not in xs_wire.h.
    case unrecognisedError(bytes: [UInt8], request: UInt32)
    /// No reply arrived within `waits` waits for an event.
    case noResponse(request: UInt32, waits: Int)
    /// The reply to the outstanding request has another type.
    case unexpectedReply(type: UInt32, requestID: UInt32, expectedID: UInt32)
    /// A message longer than `XENSTORE_PAYLOAD_MAX`, sent or received.
    case payloadTooLarge(length: Int)
    /// A reply's payload is not what its type requires.
    case malformedReply(type: UInt32)
    /// The store published ring indices that cannot be (xs_wire.h `XENSTORE_ERROR_RINGIDX`).
    case ringIndexCorrupt(consumer: UInt32, producer: UInt32)
    /// A transaction still conflicted (`EAGAIN`) after `attempts` tries.
    case transactionConflict(attempts: Int)
    case hypercall(HypercallError)
}

/// A transaction id (`tx_id`); 0 is "no transaction".
public struct XenStoreTransaction: Equatable, Sendable {
    public var id: UInt32
    public init(id: UInt32) { self.id = id }
    /// Outside any transaction.
    public static var none: XenStoreTransaction { XenStoreTransaction(id: 0) }
}

/// A fired watch: the path that changed and the token given to `watch`.
public struct XenStoreWatchEvent: Sendable {
    public var path: String
    public var token: String
}

#if !hasFeature(Embedded)
// String equality needs the Unicode normalisation tables, which the guest
// does not link; comparing events is for host code and tests.
extension XenStoreWatchEvent: Equatable {}
#endif

/// A xenstore connection over the shared page and event channel Xen
/// provides (`start_info.store_mfn`/`store_evtchn`, or the HVM parameters
/// `HVM_PARAM_STORE_PFN`/`HVM_PARAM_STORE_EVTCHN`).
///
/// Requests are synchronous: each call writes one message, then reads the
/// ring until its reply is complete, waiting for events (`SCHEDOP_block`)
/// when the ring is full or empty. Watch events that arrive meanwhile are
/// queued for `nextWatchEvent()`.
public struct XenStore<H: Hypercalls> {
    public var hypervisor: H
    let interface: UnsafeMutableRawPointer
    let port: EventChannelPort
    /// Waits for an event allowed per request before giving up.
    public var maximumWaits: Int
    var nextRequestID: UInt32 = 1
    var incoming: [UInt8] = []
    var replies: [(header: xsd_sockmsg, payload: [UInt8])] = []
    var watchEvents: [XenStoreWatchEvent] = []
    /// Replies that arrived for requests no longer waited on (after `noResponse`).
    public private(set) var staleReplies = 0

    static var ringSize: UInt32 { UInt32(XENSTORE_RING_SIZE) }
    static var requestOffset: Int { CXEN_OFFSETOF_xenstore_domain_interface_req }
    static var responseOffset: Int { CXEN_OFFSETOF_xenstore_domain_interface_rsp }
    static var requestConsumerOffset: Int {
        CXEN_OFFSETOF_xenstore_domain_interface_req_cons
    }
    static var requestProducerOffset: Int {
        CXEN_OFFSETOF_xenstore_domain_interface_req_prod
    }
    static var responseConsumerOffset: Int {
        CXEN_OFFSETOF_xenstore_domain_interface_rsp_cons
    }
    static var responseProducerOffset: Int {
        CXEN_OFFSETOF_xenstore_domain_interface_rsp_prod
    }
    static var headerSize: Int { MemoryLayout<xsd_sockmsg>.size }

    /// Connects to the store through the mapped interface page and its port.
    public init(interface: UnsafeMutableRawPointer, port: EventChannelPort, hypervisor: H, maximumWaits: Int = Int.max) {
        self.interface = interface
        self.port = port
        self.hypervisor = hypervisor
        self.maximumWaits = maximumWaits
    }

    // MARK: Operations

    /// The value at `path` (`XS_READ`).
    public mutating func read(_ path: String, in transaction: XenStoreTransaction = .none) throws(XenStoreError) -> [UInt8] {
        try request(UInt32(XS_READ.rawValue), transaction, path: path)
    }

    /// The value at `path` as text.
    public mutating func readString(_ path: String, in transaction: XenStoreTransaction = .none) throws(XenStoreError) -> String {
        String(decoding: try read(path, in: transaction), as: UTF8.self)
    }

    /// Writes `value` at `path`, creating it and its parents (`XS_WRITE`).
    public mutating func write(_ path: String, _ value: String, in transaction: XenStoreTransaction = .none) throws(XenStoreError) {
        var payload = Array(path.utf8)
        payload.append(0)
        payload.append(contentsOf: value.utf8)
        try expectOK(try send(UInt32(XS_WRITE.rawValue), transaction, payload), UInt32(XS_WRITE.rawValue))
    }

    /// Creates `path` with an empty value (`XS_MKDIR`).
    public mutating func makeDirectory(_ path: String, in transaction: XenStoreTransaction = .none) throws(XenStoreError) {
        try expectOK(try request(UInt32(XS_MKDIR.rawValue), transaction, path: path), UInt32(XS_MKDIR.rawValue))
    }

    /// Removes `path` and everything below it (`XS_RM`).
    public mutating func remove(_ path: String, in transaction: XenStoreTransaction = .none) throws(XenStoreError) {
        try expectOK(try request(UInt32(XS_RM.rawValue), transaction, path: path), UInt32(XS_RM.rawValue))
    }

    /// The names of `path`'s children (`XS_DIRECTORY`).
    public mutating func directory(_ path: String, in transaction: XenStoreTransaction = .none) throws(XenStoreError) -> [String] {
        let reply = try request(UInt32(XS_DIRECTORY.rawValue), transaction, path: path)
        return Self.strings(reply)
    }

    /// Registers a watch on `path` and its descendants (`XS_WATCH`). The
    /// store fires it once at once, then on each change.
    public mutating func watch(_ path: String, token: String) throws(XenStoreError) {
        try expectOK(try send(UInt32(XS_WATCH.rawValue), .none, Self.pair(path, token)), UInt32(XS_WATCH.rawValue))
    }

    /// Removes a watch (`XS_UNWATCH`).
    public mutating func unwatch(_ path: String, token: String) throws(XenStoreError) {
        try expectOK(try send(UInt32(XS_UNWATCH.rawValue), .none, Self.pair(path, token)), UInt32(XS_UNWATCH.rawValue))
    }

    /// Starts a transaction (`XS_TRANSACTION_START`).
    public mutating func startTransaction() throws(XenStoreError) -> XenStoreTransaction {
        let reply = try send(UInt32(XS_TRANSACTION_START.rawValue), .none, [0])
        guard let id = parseDecimal(reply.prefix { $0 != 0 }) else {
            throw .malformedReply(type: UInt32(XS_TRANSACTION_START.rawValue))
        }
        return XenStoreTransaction(id: UInt32(truncatingIfNeeded: id))
    }

    /// Commits or abandons a transaction (`XS_TRANSACTION_END` with "T" or
    /// "F"). A commit that conflicted throws `.store(.tryAgain, ...)`.
    public mutating func endTransaction(_ transaction: XenStoreTransaction, commit: Bool) throws(XenStoreError) {
        let payload: [UInt8] = [commit ? UInt8(ascii: "T") : UInt8(ascii: "F"), 0]
        try expectOK(try send(UInt32(XS_TRANSACTION_END.rawValue), transaction, payload), UInt32(XS_TRANSACTION_END.rawValue))
    }

    /// Runs `body` in a transaction and commits it, starting over while the
    /// store reports a conflict (`EAGAIN`), at most `maximumAttempts` times.
    public mutating func withTransaction<R>(
        maximumAttempts: Int = 16,
        _ body: (inout XenStore, XenStoreTransaction) throws(XenStoreError) -> R
    ) throws(XenStoreError) -> R {
        for _ in 0..<maximumAttempts {
            let transaction = try startTransaction()
            let result: R
            do {
                result = try body(&self, transaction)
            } catch {
                try? endTransaction(transaction, commit: false)
                if case .store(.tryAgain, _) = error { continue }
                throw error
            }
            do {
                try endTransaction(transaction, commit: true)
                return result
            } catch {
                if case .store(.tryAgain, _) = error { continue }
                throw error
            }
        }
        throw .transactionConflict(attempts: maximumAttempts)
    }

    /// The oldest queued watch event, reading whatever the ring holds
    /// without waiting.
    public mutating func nextWatchEvent() throws(XenStoreError) -> XenStoreWatchEvent? {
        try drain()
        return watchEvents.isEmpty ? nil : watchEvents.removeFirst()
    }

    /// Waits (up to `maximumWaits` events) for a watch event.
    public mutating func waitForWatchEvent() throws(XenStoreError) -> XenStoreWatchEvent {
        var waits = 0
        while true {
            if let event = try nextWatchEvent() { return event }
            if waits == maximumWaits { throw .noResponse(request: UInt32(XS_WATCH_EVENT.rawValue), waits: waits) }
            hypervisor.block()
            waits += 1
        }
    }

    /// Waits (up to `maximumWaits` events) for a watch event carrying
    /// `token`; events of other watches stay queued, in order, for
    /// `nextWatchEvent()` (a handshake waiting for its backend must not
    /// swallow another device's state change).
    public mutating func waitForWatchEvent(token: String) throws(XenStoreError) -> XenStoreWatchEvent {
        var waits = 0
        while true {
            try drain()
            if let index = watchEvents.firstIndex(where: { $0.token.utf8.elementsEqual(token.utf8) }) {
                return watchEvents.remove(at: index)
            }
            if waits == maximumWaits { throw .noResponse(request: UInt32(XS_WATCH_EVENT.rawValue), waits: waits) }
            hypervisor.block()
            waits += 1
        }
    }

    /// Watch events queued and not yet taken.
    public var queuedWatchEventCount: Int { watchEvents.count }

    // MARK: Messages

    static func pair(_ first: String, _ second: String) -> [UInt8] {
        var payload = Array(first.utf8)
        payload.append(0)
        payload.append(contentsOf: second.utf8)
        payload.append(0)
        return payload
    }

    static func strings(_ bytes: [UInt8]) -> [String] {
        var result: [String] = []
        var start = 0
        for index in bytes.indices where bytes[index] == 0 {
            result.append(String(decoding: bytes[start..<index], as: UTF8.self))
            start = index + 1
        }
        if start < bytes.count { result.append(String(decoding: bytes[start...], as: UTF8.self)) }
        return result
    }

    func expectOK(_ reply: [UInt8], _ type: UInt32) throws(XenStoreError) {
        guard reply.starts(with: [UInt8(ascii: "O"), UInt8(ascii: "K")]) else { throw .malformedReply(type: type) }
    }

    mutating func request(_ type: UInt32, _ transaction: XenStoreTransaction, path: String) throws(XenStoreError) -> [UInt8] {
        var payload = Array(path.utf8)
        payload.append(0)
        return try send(type, transaction, payload)
    }

    /// Sends one message and returns its reply's payload.
    mutating func send(_ type: UInt32, _ transaction: XenStoreTransaction, _ payload: [UInt8]) throws(XenStoreError) -> [UInt8] {
        guard payload.count <= Int(XENSTORE_PAYLOAD_MAX) else { throw .payloadTooLarge(length: payload.count) }
        let id = nextRequestID
        nextRequestID &+= 1
        let header = xsd_sockmsg(type: type, req_id: id, tx_id: transaction.id, len: UInt32(payload.count))
        var message = [UInt8](repeating: 0, count: Self.headerSize)
        message.withUnsafeMutableBytes { $0.storeBytes(of: header, as: xsd_sockmsg.self) }
        message.append(contentsOf: payload)
        try put(message, type: type)

        var waits = 0
        while true {
            try drain()
            if !replies.isEmpty {
                let reply = replies.removeFirst()
                // A late answer to a request we stopped waiting for: drop it.
                guard reply.header.req_id == id else {
                    staleReplies += 1
                    continue
                }
                if reply.header.type == UInt32(XS_ERROR.rawValue) {
                    let name = Array(reply.payload.prefix { $0 != 0 })
                    guard let code = XenStoreErrorCode(wire: name) else { throw .unrecognisedError(bytes: name, request: type) }
                    throw .store(code, request: type)
                }
                guard reply.header.type == type else {
                    throw .unexpectedReply(type: reply.header.type, requestID: reply.header.req_id, expectedID: id)
                }
                return reply.payload
            }
            if waits == maximumWaits { throw .noResponse(request: type, waits: waits) }
            hypervisor.block()
            waits += 1
        }
    }

    func load(_ offset: Int) -> UInt32 { cxen_load32(interface + offset) }
    func store(_ offset: Int, _ value: UInt32) { cxen_store32(interface + offset, value) }

    mutating func kick() throws(XenStoreError) {
        do { try hypervisor.notify(port) } catch { throw .hypercall(error) }
    }

    /// Copies `message` into the request ring, in pieces as the store makes room.
    mutating func put(_ message: [UInt8], type: UInt32) throws(XenStoreError) {
        var sent = 0
        var waits = 0
        while sent < message.count {
            let consumer = load(Self.requestConsumerOffset)
            let producer = load(Self.requestProducerOffset)
            cxen_mb()
            let used = producer &- consumer
            guard used <= Self.ringSize else { throw .ringIndexCorrupt(consumer: consumer, producer: producer) }
            if used == Self.ringSize {
                try kick()
                if waits == maximumWaits { throw .noResponse(request: type, waits: waits) }
                hypervisor.block()
                waits += 1
                continue
            }
            let offset = Int(producer & (Self.ringSize - 1))
            let chunk = min(Int(Self.ringSize - used), message.count - sent, Int(Self.ringSize) - offset)
            message.withUnsafeBytes { bytes in
                (interface + Self.requestOffset + offset).copyMemory(from: bytes.baseAddress! + sent, byteCount: chunk)
            }
            // The store must see the bytes before the index that covers them.
            cxen_wmb()
            store(Self.requestProducerOffset, producer &+ UInt32(chunk))
            sent += chunk
        }
        try kick()
    }

    /// Moves every byte the response ring holds into `incoming`, then splits
    /// complete messages into replies and watch events. Never waits.
    mutating func drain() throws(XenStoreError) {
        var consumed = false
        while true {
            let consumer = load(Self.responseConsumerOffset)
            let producer = load(Self.responseProducerOffset)
            cxen_rmb()
            let available = producer &- consumer
            guard available <= Self.ringSize else { throw .ringIndexCorrupt(consumer: consumer, producer: producer) }
            if available == 0 { break }
            let offset = Int(consumer & (Self.ringSize - 1))
            let chunk = min(Int(available), Int(Self.ringSize) - offset)
            let source = UnsafeRawBufferPointer(start: interface + Self.responseOffset + offset, count: chunk)
            incoming.append(contentsOf: source)
            // Finish reading before handing the space back.
            cxen_mb()
            store(Self.responseConsumerOffset, consumer &+ UInt32(chunk))
            consumed = true
        }
        if consumed { try kick() }
        while incoming.count >= Self.headerSize {
            let header = incoming.withUnsafeBytes { $0.loadUnaligned(as: xsd_sockmsg.self) }
            guard header.len <= UInt32(XENSTORE_PAYLOAD_MAX) else { throw .payloadTooLarge(length: Int(header.len)) }
            let total = Self.headerSize + Int(header.len)
            guard incoming.count >= total else { break }
            let payload = Array(incoming[Self.headerSize..<total])
            incoming.removeFirst(total)
            if header.type == UInt32(XS_WATCH_EVENT.rawValue) {
                let parts = Self.strings(payload)
                guard parts.count >= 2 else { throw .malformedReply(type: header.type) }
                watchEvents.append(XenStoreWatchEvent(path: parts[0], token: parts[1]))
            } else {
                replies.append((header, payload))
            }
        }
    }
}

/// A decimal number as xenstore stores numbers, nil if not one (or too big).
func parseDecimal<Bytes: Collection>(_ bytes: Bytes) -> UInt64? where Bytes.Element == UInt8 {
    guard !bytes.isEmpty else { return nil }
    var value: UInt64 = 0
    for byte in bytes {
        guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
        let (times10, overflow1) = value.multipliedReportingOverflow(by: 10)
        let (sum, overflow2) = times10.addingReportingOverflow(UInt64(byte - UInt8(ascii: "0")))
        if overflow1 || overflow2 { return nil }
        value = sum
    }
    return value
}
