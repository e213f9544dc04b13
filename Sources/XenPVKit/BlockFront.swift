// BlockFront: the Xen virtual block device frontend (Xen public/io/blkif.h
// requests, segments and indirect descriptors on an io/ring.h ring; xenbus
// keys "ring-ref", "event-channel", "protocol", "sectors", "sector-size",
// "info", "feature-flush-cache", "feature-barrier",
// "feature-max-indirect-segments"), behind `BlockDevice`.
import CXen
import DeviceInterfaces

/// A protocol violation by the block backend, kept for diagnostics.
public enum BlockFrontProtocolError: Error, Equatable, Sendable {
    /// A response named a request id that is not outstanding.
    case unknownResponseID(UInt64)
    /// The backend published an impossible response producer.
    case ring(RingError)
}

/// The frontend of one Xen virtual block device (`vbd`).
///
/// Every `BlockRequest` is copied through pages of its own (bounce pages),
/// so callers' buffers need no alignment and are never granted; a request
/// too large for one ring request is split, and completes when every part
/// has. Each submitted request completes exactly once, with success or an
/// error: when the backend answers with `BLKIF_RSP_ERROR`, closes, or is
/// given up on (`abandonOutstanding`). Pages are freed only after their
/// grants are released, so a backend that still maps one never sees it
/// reused.
public struct BlockFront<H: Hypercalls, Memory: GuestMemory>: BlockDevice {
    /// `BlockDeviceError.deviceError` codes this frontend reports, as
    /// negative Xen errno values (public/errno.h) or `BLKIF_RSP_*` statuses.
    public static var backendErrorCode: Int { Int(BLKIF_RSP_ERROR) }
    public static var disconnectedCode: Int { -Int(XEN_ENOTCONN.rawValue) }
    public static var abandonedCode: Int { -Int(XEN_ETIMEDOUT.rawValue) }
    public static var protocolErrorCode: Int { -Int(XEN_EIO.rawValue) }

    /// The wire unit of `sector_number`, `first_sect` and `last_sect`
    /// without "feature-large-sector-size" (blkif.h).
    static var wireSectorSize: Int { 512 }

    public private(set) var sectorSize: Int
    /// "physical-sector-size" (defaults to the logical sector size).
    public private(set) var physicalSectorSize: Int
    public private(set) var sectorCount: UInt64
    public private(set) var isReadOnly: Bool
    /// "feature-flush-cache", "feature-barrier", "feature-max-indirect-segments".
    public private(set) var supportsFlush: Bool
    public private(set) var supportsBarrier: Bool
    public private(set) var maximumIndirectSegments: Int
    /// False once the backend closed or the frontend gave up on it.
    public private(set) var isConnected: Bool
    public private(set) var device: XenbusDevice
    /// Protocol violations seen, most recent last.
    public private(set) var protocolErrors: [BlockFrontProtocolError] = []

    public var hypervisor: H
    var memory: Memory
    let grants: GrantTable
    var ring: FrontRing<BlkifRing>
    let ringPage: UnsafeMutableRawPointer
    let ringReference: GrantReference
    public let port: EventChannelPort
    var ringReleased = false

    struct Segment {
        var reference: GrantReference
        var page: UnsafeMutableRawPointer
        var byteCount: Int
    }

    struct Shadow {
        var serial: Int
        var segments: [Segment]
        var indirectPages: [Segment]
        /// Where this part's bytes start in the caller's buffer.
        var bufferOffset: Int
        var isRead: Bool
        var isFlush = false
    }

    struct Pending {
        var request: BlockRequest
        var partsLeft: Int
        var failure: BlockDeviceError?
    }

    var shadows: [Shadow?]
    var freeIDs: [UInt64]
    var pending: [(serial: Int, state: Pending)] = []
    var nextSerial = 0
    var completions: [BlockCompletion] = []
    /// Pages whose grant the backend still held when we ended it.
    var quarantine = GrantedPageQuarantine()

    /// Requests submitted and not yet completed.
    public var outstandingRequestCount: Int { pending.count }
    /// Pages waiting for the backend to unmap them before they are freed.
    public var quarantinedPageCount: Int { quarantine.count }

    // MARK: Connection

    /// Runs the xenbus handshake for the device at `nodePath` (for
    /// instance `/local/domain/5/device/vbd/768`): waits for the backend's
    /// InitWait, publishes the ring and event channel, switches to
    /// Initialised, waits for Connected and reads the disk's geometry.
    public static func connect(
        nodePath: String, store: inout XenStore<H>, memory: Memory, grants: GrantTable
    ) throws(XenbusError) -> BlockFront {
        var device = try XenbusDevice(nodePath: nodePath, store: &store)
        _ = try device.waitForBackend(store: &store, expecting: .initWait) {
            $0 == .initWait || $0 == .initialised || $0 == .connected
        }
        var memory = memory
        guard let page = memory.allocatePage() else { throw .outOfMemory }
        let ring = FrontRing<BlkifRing>(initializing: page)
        let reference: GrantReference
        do {
            reference = try grants.grantAccess(to: device.backendDomain, frame: memory.frameNumber(of: page), readOnly: false)
        } catch {
            memory.freePage(page)
            throw .grantTable(error)
        }
        var hypervisor = store.hypervisor
        let port: EventChannelPort
        do { port = try hypervisor.allocateUnboundPort(remoteDomain: device.backendDomain) } catch {
            if (try? grants.endAccess(reference)) == .released { memory.freePage(page) }
            throw .eventChannel(.hypercall(error))
        }
        var front = BlockFront(
            device: device, hypervisor: hypervisor, memory: memory, grants: grants, ring: ring,
            ringPage: page, ringReference: reference, port: port)
        do {
            try front.publishAndConnect(store: &store)
        } catch {
            front.fail(all: Self.disconnectedCode)
            front.releaseRing()
            throw error
        }
        return front
    }

    init(
        device: XenbusDevice, hypervisor: H, memory: Memory, grants: GrantTable, ring: FrontRing<BlkifRing>,
        ringPage: UnsafeMutableRawPointer, ringReference: GrantReference, port: EventChannelPort
    ) {
        self.device = device
        self.hypervisor = hypervisor
        self.memory = memory
        self.grants = grants
        self.ring = ring
        self.ringPage = ringPage
        self.ringReference = ringReference
        self.port = port
        sectorSize = Self.wireSectorSize
        physicalSectorSize = Self.wireSectorSize
        sectorCount = 0
        isReadOnly = false
        supportsFlush = false
        supportsBarrier = false
        maximumIndirectSegments = 0
        isConnected = false
        shadows = Array(repeating: nil, count: Int(ring.size))
        freeIDs = (0..<UInt64(ring.size)).reversed()
    }

    mutating func publishAndConnect(store: inout XenStore<H>) throws(XenbusError) {
        let node = device.nodePath
        let reference = ringReference
        let port = self.port
        do {
            try store.withTransaction { store, transaction throws(XenStoreError) in
                try store.write(node + "/ring-ref", XenbusDevice.decimalString(UInt64(reference)), in: transaction)
                try store.write(node + "/event-channel", XenbusDevice.decimalString(UInt64(port)), in: transaction)
                try store.write(node + "/protocol", "x86_64-abi", in: transaction)
                try store.write(node + "/state", XenbusDevice.decimalString(UInt64(XenbusDeviceState.initialised.rawValue)), in: transaction)
            }
        } catch { throw .store(error) }
        device.didPublish(.initialised)
        _ = try device.waitForBackend(store: &store, expecting: .connected) { $0 == .connected }

        guard let sectors = try device.backendNumber("sectors", store: &store) else {
            throw .malformedNode(path: device.backendPath + "/sectors")
        }
        let size = try device.backendNumber("sector-size", store: &store) ?? UInt64(Self.wireSectorSize)
        guard size >= UInt64(Self.wireSectorSize), size <= UInt64(xenPageSize), size & (size - 1) == 0 else {
            throw .malformedNode(path: device.backendPath + "/sector-size")
        }
        // Without "feature-large-sector-size" from the frontend, request
        // sectors are 512-byte units (blkif.h) and the backend should say
        // "sector-size" 512. Linux blkback says the disk's logical block
        // size anyway and writes "sectors" in 512-byte units whatever that
        // size (blkif.h's node text says "units of sector-size"; the two
        // agree at 512). Follow blkback: capacity in `sectorSize` blocks is
        // "sectors" * 512 / "sector-size".
        let physical = try device.backendNumber("physical-sector-size", store: &store) ?? size
        guard physical >= size, physical % size == 0, physical & (physical - 1) == 0 else {
            throw .malformedNode(path: device.backendPath + "/physical-sector-size")
        }
        let info = try device.backendNumber("info", store: &store) ?? 0
        sectorCount = sectors / (size / UInt64(Self.wireSectorSize))
        sectorSize = Int(size)
        physicalSectorSize = Int(physical)
        isReadOnly = info & UInt64(VDISK_READONLY) != 0
        supportsFlush = try device.backendFeature("feature-flush-cache", store: &store)
        supportsBarrier = try device.backendFeature("feature-barrier", store: &store)
        let indirect = try device.backendNumber("feature-max-indirect-segments", store: &store) ?? 0
        // One indirect page holds 512 segments; we use at most one.
        maximumIndirectSegments = Int(min(indirect, UInt64(xenPageSize / MemoryLayout<blkif_request_segment>.stride)))
        try device.switchState(to: .connected, store: &store)
        isConnected = true
    }

    /// Reacts to a change of the backend's state node (the platform calls
    /// this from its xenbus watch). A backend leaving Connected fails every
    /// outstanding request and closes our side.
    public mutating func backendChanged(store: inout XenStore<H>) throws(XenbusError) {
        let state = try device.backendState(store: &store)
        guard isConnected, state != .connected else { return }
        isConnected = false
        fail(all: Self.disconnectedCode)
        releaseRing()
        if device.state != .closing { try device.switchState(to: .closing, store: &store) }
        if state == .closed || state == .unknown { try device.switchState(to: .closed, store: &store) }
    }

    /// Closes the device in order: Closing, the backend's Closing or Closed,
    /// then Closed. Outstanding requests fail with `disconnectedCode`.
    public mutating func disconnect(store: inout XenStore<H>) throws(XenbusError) {
        isConnected = false
        fail(all: Self.disconnectedCode)
        if device.state != .closing && device.state != .closed { try device.switchState(to: .closing, store: &store) }
        _ = try? device.waitForBackend(store: &store, expecting: .closed) { $0 == .closing || $0 == .closed }
        releaseRing()
        if device.state != .closed { try device.switchState(to: .closed, store: &store) }
    }

    /// Gives up on a backend that stopped answering: every outstanding
    /// request completes with `abandonedCode`, its grants are ended (pages
    /// the backend still maps wait in quarantine), and the ring is no
    /// longer used.
    public mutating func abandonOutstanding() {
        isConnected = false
        fail(all: Self.abandonedCode)
        releaseRing()
    }

    mutating func releaseRing() {
        guard !ringReleased else { return }
        ringReleased = true
        try? hypervisor.closePort(port)
        release(Segment(reference: ringReference, page: ringPage, byteCount: xenPageSize))
    }

    // MARK: BlockDevice

    public mutating func submit(_ request: BlockRequest) throws(BlockDeviceError) {
        guard isConnected else { throw .deviceError(code: Self.disconnectedCode) }
        try validate(request)
        sweepQuarantine()
        if request.operation == .flush {
            try submitFlush(request)
            return
        }
        let length = request.buffer.count
        if length == 0 {
            // Nothing to move; a zero-segment read or write is not valid on the ring.
            completions.append(BlockCompletion(tag: request.tag, result: .success(0)))
            return
        }
        let pagesNeeded = (length + xenPageSize - 1) / xenPageSize
        let perRequest = maximumIndirectSegments > Int(BLKIF_MAX_SEGMENTS_PER_REQUEST)
            ? maximumIndirectSegments : Int(BLKIF_MAX_SEGMENTS_PER_REQUEST)
        let parts = max(1, (pagesNeeded + perRequest - 1) / perRequest)
        guard parts <= freeIDs.count, parts <= Int(ring.freeRequests) else { throw .queueFull }

        let serial = nextSerial
        nextSerial += 1
        var built: [(id: UInt64, shadow: Shadow)] = []
        var pageIndex = 0
        for _ in 0..<parts {
            let count = min(perRequest, pagesNeeded - pageIndex)
            guard let shadow = makeShadow(request, serial: serial, firstPage: pageIndex, pages: count) else {
                for (_, shadow) in built { release(shadow) }
                throw .queueFull
            }
            built.append((freeIDs.removeLast(), shadow))
            pageIndex += count
        }
        for (id, shadow) in built {
            shadows[Int(id)] = shadow
            enqueue(id: id, shadow: shadow, sector: request.sector)
        }
        pending.append((serial, Pending(request: request, partsLeft: parts, failure: nil)))
        push()
    }

    public mutating func pollCompletions(_ body: (BlockCompletion) -> Void) -> Int {
        if isConnected { consumeResponses() }
        sweepQuarantine()
        let finished = completions
        completions.removeAll()
        for completion in finished { body(completion) }
        return finished.count
    }

    // MARK: Requests

    mutating func submitFlush(_ request: BlockRequest) throws(BlockDeviceError) {
        let operation: Int32
        if supportsFlush {
            operation = BLKIF_OP_FLUSH_DISKCACHE
        } else if supportsBarrier {
            operation = BLKIF_OP_WRITE_BARRIER
        } else {
            throw .unsupported
        }
        guard let id = freeIDs.popLast(), !ring.isFull else { throw .queueFull }
        let serial = nextSerial
        nextSerial += 1
        shadows[Int(id)] = Shadow(serial: serial, segments: [], indirectPages: [], bufferOffset: 0, isRead: false, isFlush: true)
        var wire = blkif_request()
        wire.operation = UInt8(operation)
        wire.nr_segments = 0
        wire.id = id
        ring.enqueue(wire)
        pending.append((serial, Pending(request: request, partsLeft: 1, failure: nil)))
        push()
    }

    /// Bounce pages and grants for `pages` pages of `request` starting at
    /// page `firstPage`; nil (with nothing left allocated) if any runs out.
    mutating func makeShadow(_ request: BlockRequest, serial: Int, firstPage: Int, pages: Int) -> Shadow? {
        let isRead = request.operation == .read
        var shadow = Shadow(serial: serial, segments: [], indirectPages: [], bufferOffset: firstPage * xenPageSize, isRead: isRead)
        for index in 0..<pages {
            let offset = (firstPage + index) * xenPageSize
            let count = min(xenPageSize, request.buffer.count - offset)
            guard let page = memory.allocatePage() else {
                release(shadow)
                return nil
            }
            if !isRead, let base = request.buffer.baseAddress {
                page.copyMemory(from: base + offset, byteCount: count)
            }
            // The backend writes into the page for a read, only reads it for a write.
            guard let reference = try? grants.grantAccess(
                to: device.backendDomain, frame: memory.frameNumber(of: page), readOnly: !isRead)
            else {
                memory.freePage(page)
                release(shadow)
                return nil
            }
            shadow.segments.append(Segment(reference: reference, page: page, byteCount: count))
        }
        if pages > Int(BLKIF_MAX_SEGMENTS_PER_REQUEST) {
            guard let page = memory.allocatePage() else {
                release(shadow)
                return nil
            }
            let segments = page.bindMemory(to: blkif_request_segment.self, capacity: pages)
            for (index, segment) in shadow.segments.enumerated() {
                segments[index] = Self.wireSegment(segment)
            }
            guard let reference = try? grants.grantAccess(
                to: device.backendDomain, frame: memory.frameNumber(of: page), readOnly: true)
            else {
                memory.freePage(page)
                release(shadow)
                return nil
            }
            shadow.indirectPages.append(Segment(reference: reference, page: page, byteCount: xenPageSize))
        }
        return shadow
    }

    static func wireSegment(_ segment: Segment) -> blkif_request_segment {
        blkif_request_segment(
            gref: segment.reference, first_sect: 0,
            last_sect: UInt8(segment.byteCount / wireSectorSize - 1))
    }

    mutating func enqueue(id: UInt64, shadow: Shadow, sector: UInt64) {
        let operation = shadow.isRead ? BLKIF_OP_READ : BLKIF_OP_WRITE
        let wireSector = sector * UInt64(sectorSize / Self.wireSectorSize)
            + UInt64(shadow.bufferOffset / Self.wireSectorSize)
        if let indirect = shadow.indirectPages.first {
            var wire = blkif_request_indirect()
            wire.operation = UInt8(BLKIF_OP_INDIRECT)
            wire.indirect_op = UInt8(operation)
            wire.nr_segments = UInt16(shadow.segments.count)
            wire.id = id
            wire.sector_number = wireSector
            wire.handle = 0
            wire.indirect_grefs.0 = indirect.reference
            ring.enqueue(variant: wire)
            return
        }
        var wire = blkif_request()
        wire.operation = UInt8(operation)
        wire.nr_segments = UInt8(shadow.segments.count)
        wire.handle = 0
        wire.id = id
        wire.sector_number = wireSector
        withUnsafeMutableBytes(of: &wire.seg) { bytes in
            let segments = bytes.bindMemory(to: blkif_request_segment.self)
            for (index, segment) in shadow.segments.enumerated() { segments[index] = Self.wireSegment(segment) }
        }
        ring.enqueue(wire)
    }

    mutating func push() {
        if ring.pushRequests() { try? hypervisor.notify(port) }
    }

    // MARK: Responses

    mutating func consumeResponses() {
        repeat {
            while true {
                let response: blkif_response?
                do { response = try ring.dequeueResponse() } catch {
                    protocolErrors.append(.ring(error))
                    isConnected = false
                    fail(all: Self.protocolErrorCode)
                    releaseRing()
                    return
                }
                guard let response else { break }
                complete(response)
            }
        } while (try? ring.finalCheckForResponses()) == true
    }

    mutating func complete(_ response: blkif_response) {
        guard response.id < UInt64(shadows.count), let shadow = shadows[Int(response.id)] else {
            protocolErrors.append(.unknownResponseID(response.id))
            return
        }
        shadows[Int(response.id)] = nil
        freeIDs.append(response.id)
        guard let index = pending.firstIndex(where: { $0.serial == shadow.serial }) else {
            release(shadow)
            return
        }
        switch Int32(response.status) {
        case BLKIF_RSP_OKAY:
            if shadow.isRead, let base = pending[index].state.request.buffer.baseAddress {
                var offset = shadow.bufferOffset
                for segment in shadow.segments {
                    (base + offset).copyMemory(from: segment.page, byteCount: segment.byteCount)
                    offset += segment.byteCount
                }
            }
        case BLKIF_RSP_EOPNOTSUPP:
            pending[index].state.failure = .unsupported
            // The backend refused the cache flush or barrier it offered
            // (blkback does when the disk below cannot): stop using it, as
            // Linux blkfront does, so later flushes fall back or fail fast.
            if shadow.isFlush {
                if supportsFlush { supportsFlush = false } else { supportsBarrier = false }
            }
        default:
            pending[index].state.failure = .deviceError(code: Int(response.status))
        }
        release(shadow)
        pending[index].state.partsLeft -= 1
        if pending[index].state.partsLeft == 0 {
            let finished = pending.remove(at: index).state
            let result: Result<Int, BlockDeviceError> =
                finished.failure.map { .failure($0) } ?? .success(finished.request.buffer.count)
            completions.append(BlockCompletion(tag: finished.request.tag, result: result))
        }
    }

    /// Completes every outstanding request with `code` and releases its parts.
    mutating func fail(all code: Int) {
        for index in shadows.indices {
            if let shadow = shadows[index] {
                release(shadow)
                shadows[index] = nil
                freeIDs.append(UInt64(index))
            }
        }
        for (_, state) in pending {
            completions.append(BlockCompletion(tag: state.request.tag, result: .failure(state.failure ?? .deviceError(code: code))))
        }
        pending.removeAll()
    }

    mutating func release(_ shadow: Shadow) {
        for segment in shadow.segments { release(segment) }
        for segment in shadow.indirectPages { release(segment) }
    }

    mutating func release(_ segment: Segment) {
        quarantine.release(segment.reference, page: segment.page, grants: grants, memory: &memory)
    }

    /// Frees pages whose grants the backend has let go of.
    mutating func sweepQuarantine() {
        quarantine.sweep(grants: grants, memory: &memory)
    }
}
