// XenStoreBootReader: one xenstore XS_READ (Xen public/io/xs_wire.h) into
// a caller's buffer without any heap allocation, for start of day: the
// PVH hook runs before the hw platform has a heap, and a PV domain has no
// heap at all yet. The full client (XenStore) is for later.
import CXen

/// Why a start-of-day xenstore read failed.
public enum XenStoreBootReadError: Error, Equatable, Sendable {
    /// The store answered with an error; nil when the name is not in xs_wire.h.
    case store(XenStoreErrorCode?)
    case noResponse(waits: Int)
    /// The value has `length` bytes; the buffer holds `capacity`.
    case valueTooLong(length: Int, capacity: Int)
    /// The path (with its NUL) does not fit one message.
    case pathTooLong(length: Int)
    /// The reply was neither XS_READ nor XS_ERROR.
    case unexpectedReply(type: UInt32)
    /// A value that cannot be what the key holds (a domid that is not a number).
    case malformedValue
    case ringIndexCorrupt(consumer: UInt32, producer: UInt32)
    case hypercall(HypercallError)
}

/// XS_READ over the xenstore ring page, polling (the caller's hypercalls
/// decide how a wait is spent: `PollingHypercalls` yields).
public struct XenStoreBootReader<H: Hypercalls> {
    public var hypervisor: H
    let interface: UnsafeMutableRawPointer
    let port: EventChannelPort
    public var maximumWaits: Int
    /// Request ids from the top half, apart from the full client's.
    var nextRequestID: UInt32 = 0x8000_0001

    static var ringSize: UInt32 { UInt32(XENSTORE_RING_SIZE) }

    public init(interface: UnsafeMutableRawPointer, port: EventChannelPort, hypervisor: H, maximumWaits: Int = 100_000) {
        self.interface = interface
        self.port = port
        self.hypervisor = hypervisor
        self.maximumWaits = maximumWaits
    }

    /// Reads the value at `path` (bytes without NUL; relative paths are
    /// the domain's, as xenstored resolves them) into `buffer`; returns its
    /// length. Replies to other requests (and watch events) are skipped.
    public mutating func read(
        path: UnsafeRawBufferPointer, into buffer: UnsafeMutableRawBufferPointer
    ) throws(XenStoreBootReadError) -> Int {
        guard path.count + 1 <= Int(XENSTORE_PAYLOAD_MAX) else { throw .pathTooLong(length: path.count + 1) }
        let id = nextRequestID
        nextRequestID &+= 1
        var header = xsd_sockmsg(type: UInt32(XS_READ.rawValue), req_id: id, tx_id: 0, len: UInt32(path.count + 1))
        try withUnsafeBytes(of: &header) { (bytes) throws(XenStoreBootReadError) in try send(bytes) }
        try send(path)
        var nul: UInt8 = 0
        try withUnsafeBytes(of: &nul) { (bytes) throws(XenStoreBootReadError) in try send(bytes) }
        try notify()

        while true {
            var reply = xsd_sockmsg()
            try withUnsafeMutableBytes(of: &reply) { (bytes) throws(XenStoreBootReadError) in try receive(into: bytes, keep: bytes.count) }
            let length = Int(reply.len)
            guard reply.req_id == id else {
                try receive(discarding: length)
                continue
            }
            switch reply.type {
            case UInt32(XS_READ.rawValue):
                try receive(into: buffer, keep: length)
                guard length <= buffer.count else { throw .valueTooLong(length: length, capacity: buffer.count) }
                return length
            case UInt32(XS_ERROR.rawValue):
                // Error names are short ("ENOENT"); keep up to 16 bytes.
                var name: (UInt64, UInt64) = (0, 0)
                let kept = try withUnsafeMutableBytes(of: &name) { (bytes) throws(XenStoreBootReadError) -> Int in
                    try receive(into: bytes, keep: length)
                    return min(length, bytes.count)
                }
                let code = withUnsafeBytes(of: &name) { XenStoreErrorCode(wire: UnsafeRawBufferPointer(start: $0.baseAddress, count: kept)) }
                throw .store(code)
            default:
                try receive(discarding: length)
                throw .unexpectedReply(type: reply.type)
            }
        }
    }

    /// Copies `bytes` into the request ring, waiting for room.
    mutating func send(_ bytes: UnsafeRawBufferPointer) throws(XenStoreBootReadError) {
        var sent = 0
        var waits = 0
        while sent < bytes.count {
            let consumer = cxen_load32(interface + CXEN_OFFSETOF_xenstore_domain_interface_req_cons)
            var producer = cxen_load32(interface + CXEN_OFFSETOF_xenstore_domain_interface_req_prod)
            cxen_mb()
            let used = producer &- consumer
            guard used <= Self.ringSize else { throw .ringIndexCorrupt(consumer: consumer, producer: producer) }
            if used == Self.ringSize {
                try notify()
                try wait(&waits)
                continue
            }
            var room = Self.ringSize - used
            while room > 0 && sent < bytes.count {
                (interface + CXEN_OFFSETOF_xenstore_domain_interface_req + Int(producer & (Self.ringSize - 1)))
                    .storeBytes(of: bytes[sent], as: UInt8.self)
                producer &+= 1
                sent += 1
                room -= 1
            }
            cxen_wmb()
            cxen_store32(interface + CXEN_OFFSETOF_xenstore_domain_interface_req_prod, producer)
        }
    }

    /// Takes `count` bytes from the response ring, storing the first
    /// `min(keep, buffer.count)` of them in `buffer`.
    mutating func receive(into buffer: UnsafeMutableRawBufferPointer, keep: Int) throws(XenStoreBootReadError) {
        try take(count: keep) { index, byte in if index < buffer.count { buffer[index] = byte } }
    }

    mutating func receive(discarding count: Int) throws(XenStoreBootReadError) {
        try take(count: count) { _, _ in }
    }

    mutating func take(count: Int, _ store: (Int, UInt8) -> Void) throws(XenStoreBootReadError) {
        var taken = 0
        var waits = 0
        while taken < count {
            var consumer = cxen_load32(interface + CXEN_OFFSETOF_xenstore_domain_interface_rsp_cons)
            let producer = cxen_load32(interface + CXEN_OFFSETOF_xenstore_domain_interface_rsp_prod)
            cxen_rmb()
            let available = producer &- consumer
            guard available <= Self.ringSize else { throw .ringIndexCorrupt(consumer: consumer, producer: producer) }
            if available == 0 {
                try wait(&waits)
                continue
            }
            var left = available
            while left > 0 && taken < count {
                store(taken, (interface + CXEN_OFFSETOF_xenstore_domain_interface_rsp + Int(consumer & (Self.ringSize - 1))).load(as: UInt8.self))
                consumer &+= 1
                taken += 1
                left -= 1
            }
            cxen_mb()
            cxen_store32(interface + CXEN_OFFSETOF_xenstore_domain_interface_rsp_cons, consumer)
            try notify()
        }
    }

    mutating func wait(_ waits: inout Int) throws(XenStoreBootReadError) {
        if waits == maximumWaits { throw .noResponse(waits: waits) }
        hypervisor.block()
        waits += 1
    }

    mutating func notify() throws(XenStoreBootReadError) {
        do { try hypervisor.notify(port) } catch { throw .hypercall(error) }
    }
}
