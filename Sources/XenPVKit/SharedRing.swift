// SharedRing: the generic request/response ring of Xen public/io/ring.h
// (DEFINE_RING_TYPES, the FRONT_/BACK_RING macros and the req_event /
// rsp_event notification rule) over a raw shared page.
import CXen

/// One ring type made by `DEFINE_RING_TYPES` in the public headers: its
/// request and response structures and where the shared page keeps its
/// indices and entries, measured on the imported `*_sring` structure.
public protocol RingLayout {
    associatedtype Request
    associatedtype Response
    /// Byte offsets of `req_prod`, `req_event`, `rsp_prod`, `rsp_event` and `ring`.
    static var requestProducerOffset: Int { get }
    static var requestEventOffset: Int { get }
    static var responseProducerOffset: Int { get }
    static var responseEventOffset: Int { get }
    static var entriesOffset: Int { get }
    /// Stride of the `*_sring_entry` union.
    static var entryStride: Int { get }
}

/// `DEFINE_RING_TYPES(netif_tx, ...)` in io/netif.h.
public enum NetifTransmitRing: RingLayout {
    public typealias Request = netif_tx_request
    public typealias Response = netif_tx_response
    public static var requestProducerOffset: Int { CXEN_OFFSETOF_netif_tx_sring_req_prod }
    public static var requestEventOffset: Int { CXEN_OFFSETOF_netif_tx_sring_req_event }
    public static var responseProducerOffset: Int { CXEN_OFFSETOF_netif_tx_sring_rsp_prod }
    public static var responseEventOffset: Int { CXEN_OFFSETOF_netif_tx_sring_rsp_event }
    public static var entriesOffset: Int { CXEN_OFFSETOF_netif_tx_sring_ring }
    public static var entryStride: Int { MemoryLayout<netif_tx_sring_entry>.stride }
}

/// `DEFINE_RING_TYPES(netif_rx, ...)` in io/netif.h.
public enum NetifReceiveRing: RingLayout {
    public typealias Request = netif_rx_request
    public typealias Response = netif_rx_response
    public static var requestProducerOffset: Int { CXEN_OFFSETOF_netif_rx_sring_req_prod }
    public static var requestEventOffset: Int { CXEN_OFFSETOF_netif_rx_sring_req_event }
    public static var responseProducerOffset: Int { CXEN_OFFSETOF_netif_rx_sring_rsp_prod }
    public static var responseEventOffset: Int { CXEN_OFFSETOF_netif_rx_sring_rsp_event }
    public static var entriesOffset: Int { CXEN_OFFSETOF_netif_rx_sring_ring }
    public static var entryStride: Int { MemoryLayout<netif_rx_sring_entry>.stride }
}

/// `DEFINE_RING_TYPES(blkif, ...)` in io/blkif.h.
public enum BlkifRing: RingLayout {
    public typealias Request = blkif_request
    public typealias Response = blkif_response
    public static var requestProducerOffset: Int { CXEN_OFFSETOF_blkif_sring_req_prod }
    public static var requestEventOffset: Int { CXEN_OFFSETOF_blkif_sring_req_event }
    public static var responseProducerOffset: Int { CXEN_OFFSETOF_blkif_sring_rsp_prod }
    public static var responseEventOffset: Int { CXEN_OFFSETOF_blkif_sring_rsp_event }
    public static var entriesOffset: Int { CXEN_OFFSETOF_blkif_sring_ring }
    public static var entryStride: Int { MemoryLayout<blkif_sring_entry>.stride }
}

/// A peer published an index no well-behaved peer can produce.
public enum RingError: Error, Equatable, Sendable {
    /// `RING_RESPONSE_PROD_OVERFLOW`: more responses than outstanding requests.
    case responseProducerOverflow(producer: UInt32, consumer: UInt32, size: UInt32)
    /// `RING_REQUEST_PROD_OVERFLOW`: more requests than the ring holds.
    case requestProducerOverflow(producer: UInt32, responsesProduced: UInt32, size: UInt32)
}

/// The raw shared page of one ring.
public struct SharedRingPage<Layout: RingLayout> {
    public let page: UnsafeMutableRawPointer
    /// `nr_ents`: entries that fit the page, rounded down to a power of two.
    public let size: UInt32

    /// `__RING_SIZE` for a ring of `pageSize` bytes.
    public static func entries(pageSize: Int) -> UInt32 {
        let fitting = UInt32((pageSize - Layout.entriesOffset) / Layout.entryStride)
        return fitting == 0 ? 0 : UInt32(1) << UInt32(31 - fitting.leadingZeroBitCount)
    }

    /// Views `page` as a ring of `pageSize` bytes without touching it.
    public init(page: UnsafeMutableRawPointer, pageSize: Int = xenPageSize) {
        self.page = page
        self.size = Self.entries(pageSize: pageSize)
    }

    /// `SHARED_RING_INIT`: producers 0, events 1, private area zeroed.
    public func initialize() {
        page.initializeMemory(as: UInt8.self, repeating: 0, count: Layout.entriesOffset)
        requestEvent = 1
        responseEvent = 1
    }

    public var requestProducer: UInt32 {
        get { cxen_load32(page + Layout.requestProducerOffset) }
        nonmutating set { cxen_store32(page + Layout.requestProducerOffset, newValue) }
    }
    public var requestEvent: UInt32 {
        get { cxen_load32(page + Layout.requestEventOffset) }
        nonmutating set { cxen_store32(page + Layout.requestEventOffset, newValue) }
    }
    public var responseProducer: UInt32 {
        get { cxen_load32(page + Layout.responseProducerOffset) }
        nonmutating set { cxen_store32(page + Layout.responseProducerOffset, newValue) }
    }
    public var responseEvent: UInt32 {
        get { cxen_load32(page + Layout.responseEventOffset) }
        nonmutating set { cxen_store32(page + Layout.responseEventOffset, newValue) }
    }

    /// The entry for free-running index `index` (masked by the ring size).
    public func entry(_ index: UInt32) -> UnsafeMutableRawPointer {
        page + Layout.entriesOffset + Int(index & (size &- 1)) * Layout.entryStride
    }
}

/// The frontend's side of a ring (`*_front_ring`): it produces requests and
/// consumes responses.
public struct FrontRing<Layout: RingLayout> {
    public let shared: SharedRingPage<Layout>
    /// `req_prod_pvt`: requests written but maybe not yet pushed.
    public private(set) var requestProducerPrivate: UInt32 = 0
    /// `rsp_cons`.
    public private(set) var responseConsumer: UInt32 = 0

    /// `XEN_FRONT_RING_INIT`: initialises the shared page and attaches.
    public init(initializing page: UnsafeMutableRawPointer, pageSize: Int = xenPageSize) {
        shared = SharedRingPage(page: page, pageSize: pageSize)
        shared.initialize()
    }

    /// `FRONT_RING_ATTACH`: takes over a live ring whose indices are at
    /// `index` (after resume, or to test index wrap-around).
    public init(attaching page: UnsafeMutableRawPointer, at index: UInt32, pageSize: Int = xenPageSize) {
        shared = SharedRingPage(page: page, pageSize: pageSize)
        requestProducerPrivate = index
        responseConsumer = index
    }

    public var size: UInt32 { shared.size }
    /// `RING_FREE_REQUESTS`.
    public var freeRequests: UInt32 { size &- (requestProducerPrivate &- responseConsumer) }
    /// `RING_FULL`.
    public var isFull: Bool { freeRequests == 0 }

    /// Writes `request` into the next slot (not yet visible to the backend).
    /// The caller checks `isFull` first.
    public mutating func enqueue(_ request: Layout.Request) {
        precondition(!isFull, "front ring full")
        shared.entry(requestProducerPrivate).storeBytes(of: request, as: Layout.Request.self)
        requestProducerPrivate &+= 1
    }

    /// Writes a request of another shape sharing the ring (for instance
    /// `blkif_request_indirect` on a blkif ring).
    public mutating func enqueue<Variant>(variant: Variant) {
        precondition(!isFull, "front ring full")
        precondition(MemoryLayout<Variant>.size <= Layout.entryStride, "variant larger than a ring entry")
        shared.entry(requestProducerPrivate).storeBytes(of: variant, as: Variant.self)
        requestProducerPrivate &+= 1
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`: publishes the written requests
    /// and says whether the backend asked to be notified of them.
    public mutating func pushRequests() -> Bool {
        let old = shared.requestProducer
        let new = requestProducerPrivate
        cxen_wmb()
        shared.requestProducer = new
        cxen_mb()
        return (new &- shared.requestEvent) < (new &- old)
    }

    /// Responses published and not consumed, after checking the backend's
    /// producer index (`RING_RESPONSE_PROD_OVERFLOW`).
    public func unconsumedResponses() throws(RingError) -> UInt32 {
        let producer = shared.responseProducer
        let count = producer &- responseConsumer
        if count > size { throw .responseProducerOverflow(producer: producer, consumer: responseConsumer, size: size) }
        return count
    }

    /// Copies out the next response (`RING_COPY_RESPONSE`: one read of the
    /// shared slot, so the backend cannot change it under us), or nil.
    public mutating func dequeueResponse() throws(RingError) -> Layout.Response? {
        guard try unconsumedResponses() > 0 else { return nil }
        cxen_rmb()
        let response = shared.entry(responseConsumer).loadUnaligned(as: Layout.Response.self)
        responseConsumer &+= 1
        return response
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: before sleeping, asks to be woken by
    /// the next response and rechecks, closing the race with the backend.
    public mutating func finalCheckForResponses() throws(RingError) -> Bool {
        if try unconsumedResponses() > 0 { return true }
        shared.responseEvent = responseConsumer &+ 1
        cxen_mb()
        return try unconsumedResponses() > 0
    }
}

/// The backend's side of a ring (`*_back_ring`): it consumes requests and
/// produces responses. Used by backend models, and by future backends.
public struct BackRing<Layout: RingLayout> {
    public let shared: SharedRingPage<Layout>
    /// `rsp_prod_pvt`.
    public private(set) var responseProducerPrivate: UInt32 = 0
    /// `req_cons`.
    public private(set) var requestConsumer: UInt32 = 0

    /// `BACK_RING_ATTACH` on a page the frontend initialised, at `index`.
    public init(attaching page: UnsafeMutableRawPointer, at index: UInt32 = 0, pageSize: Int = xenPageSize) {
        shared = SharedRingPage(page: page, pageSize: pageSize)
        responseProducerPrivate = index
        requestConsumer = index
    }

    public var size: UInt32 { shared.size }

    /// `XEN_RING_NR_UNCONSUMED_REQUESTS`, after `RING_REQUEST_PROD_OVERFLOW`.
    public func unconsumedRequests() throws(RingError) -> UInt32 {
        let producer = shared.requestProducer
        if producer &- responseProducerPrivate > size {
            throw .requestProducerOverflow(producer: producer, responsesProduced: responseProducerPrivate, size: size)
        }
        let requests = producer &- requestConsumer
        let room = size &- (requestConsumer &- responseProducerPrivate)
        return min(requests, room)
    }

    /// `RING_COPY_REQUEST` of the next request, or nil.
    public mutating func dequeueRequest() throws(RingError) -> Layout.Request? {
        guard try unconsumedRequests() > 0 else { return nil }
        cxen_rmb()
        let request = shared.entry(requestConsumer).loadUnaligned(as: Layout.Request.self)
        requestConsumer &+= 1
        return request
    }

    /// Writes the next response (not yet visible to the frontend).
    public mutating func enqueue(_ response: Layout.Response) {
        shared.entry(responseProducerPrivate).storeBytes(of: response, as: Layout.Response.self)
        responseProducerPrivate &+= 1
    }

    /// Writes a response of another shape sharing the ring (for instance a
    /// `netif_extra_info` slot on a netif rx ring).
    public mutating func enqueue<Variant>(variant: Variant) {
        precondition(MemoryLayout<Variant>.size <= Layout.entryStride, "variant larger than a ring entry")
        shared.entry(responseProducerPrivate).storeBytes(of: variant, as: Variant.self)
        responseProducerPrivate &+= 1
    }

    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`.
    public mutating func pushResponses() -> Bool {
        let old = shared.responseProducer
        let new = responseProducerPrivate
        cxen_wmb()
        shared.responseProducer = new
        cxen_mb()
        return (new &- shared.responseEvent) < (new &- old)
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`.
    public mutating func finalCheckForRequests() throws(RingError) -> Bool {
        if try unconsumedRequests() > 0 { return true }
        shared.requestEvent = requestConsumer &+ 1
        cxen_mb()
        return try unconsumedRequests() > 0
    }
}
