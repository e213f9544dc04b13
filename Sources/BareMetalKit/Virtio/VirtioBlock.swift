// VirtioBlock: the virtio block device driver (virtio 1.2 §5.2): capacity,
// read, write, flush and get-id requests, several in flight, requests split
// at the device's seg_max and size_max limits.
import DeviceInterfaces

/// A virtio-blk device as a `BlockDevice`, polled.
///
/// Caller buffers are handed to the device directly: they must be memory the
/// `DMA` conformer can translate (in the guest, any identity-mapped memory).
/// A request larger than one virtio request may carry (seg_max segments of
/// size_max bytes) becomes several virtio requests and completes once, when
/// all are done. Any fault the device commits (see `SplitVirtqueue`,
/// DEVICE_NEEDS_RESET) fails every request in flight with
/// `.deviceError(code:)` carrying `VirtioError.code`, and `fault` keeps the
/// full error.
public struct VirtioBlock<Transport: VirtioTransport, DMA: DMAMemory>: BlockDevice {
    /// Feature bits (§5.2.3).
    public enum Feature {
        /// 1 VIRTIO_BLK_F_SIZE_MAX
        public static var sizeMax: UInt64 { 1 << 1 }
        /// 2 VIRTIO_BLK_F_SEG_MAX
        public static var segMax: UInt64 { 1 << 2 }
        /// 5 VIRTIO_BLK_F_RO
        public static var readOnly: UInt64 { 1 << 5 }
        /// 6 VIRTIO_BLK_F_BLK_SIZE
        public static var blockSize: UInt64 { 1 << 6 }
        /// 9 VIRTIO_BLK_F_FLUSH
        public static var flush: UInt64 { 1 << 9 }
    }

    // struct virtio_blk_config (§5.2.4)
    /// 0x00 capacity (512-byte sectors)
    static var capacityOffset: Int { 0x00 }
    /// 0x08 size_max
    static var sizeMaxOffset: Int { 0x08 }
    /// 0x0C seg_max
    static var segMaxOffset: Int { 0x0C }
    /// 0x14 blk_size
    static var blockSizeOffset: Int { 0x14 }

    // struct virtio_blk_req type (§5.2.6)
    static var typeIn: UInt32 { 0 }
    static var typeOut: UInt32 { 1 }
    static var typeFlush: UInt32 { 4 }
    static var typeGetID: UInt32 { 8 }
    /// Status byte values.
    static var statusOK: UInt8 { 0 }
    static var statusUnsupported: UInt8 { 2 }

    /// Bytes of a get-id answer.
    public static var identifierLength: Int { 20 }

    struct Parent {
        var tag: UInt64
        var remaining: Int
        var bytes: Int
        var error: BlockDeviceError?
    }

    public var core: VirtioDeviceCore<Transport, DMA>
    let queue: SplitVirtqueue<DMA>
    /// Per slot: a 16-byte request header, then the status byte at +16.
    let headers: UnsafeMutableRawPointer
    var freeSlots: [Int]
    var slotOfHead: [Int]
    var parentOfSlot: [Int]
    var parents: [Parent?] = []
    var finished: [BlockCompletion] = []

    public let sectorSize = 512
    public let sectorCount: UInt64
    public let isReadOnly: Bool
    /// size_max (or 1 MiB when the device sets no limit).
    public let maximumSegmentSize: Int
    /// Data segments per virtio request (seg_max, bounded by the queue).
    public let maximumSegments: Int
    /// blk_size, when offered (informational: requests use 512-byte sectors).
    public let blockSize: Int?
    /// The fault that stopped the driver, if any.
    public private(set) var fault: VirtioError?
    /// Virtio requests issued (sub-requests of split requests count singly).
    public private(set) var virtioRequestsIssued = 0

    /// Initializes the device (§3.1.1) and its request queue, then sets DRIVER_OK.
    public init(transport: Transport, dma: DMA, queueSize: Int = 128) throws(VirtioError) {
        core = try VirtioDeviceCore(
            transport: transport, dma: dma, required: 0,
            optional: Feature.sizeMax | Feature.segMax | Feature.readOnly | Feature.blockSize | Feature.flush
                | VirtioFeature.indirectDescriptors | VirtioFeature.eventIndex)
        let indirect = core.has(VirtioFeature.indirectDescriptors)
        do throws(VirtioError) {
            queue = try core.makeQueue(index: 0, maximumSize: queueSize, indirectCapacity: 34)
        } catch {
            core.fail()
            throw error
        }
        sectorCount = transport.readConfiguration64(at: Self.capacityOffset)
        isReadOnly = core.has(Feature.readOnly)
        let sizeMax = core.has(Feature.sizeMax) ? Int(transport.readConfiguration32(at: Self.sizeMaxOffset)) : 0
        maximumSegmentSize = sizeMax >= 512 ? sizeMax & ~511 : 1 << 20
        let segMax = core.has(Feature.segMax) ? Int(transport.readConfiguration32(at: Self.segMaxOffset)) : Int.max
        let chainRoom = (indirect ? queue.indirectCapacity : queue.size) - 2
        maximumSegments = max(1, min(segMax == 0 ? Int.max : segMax, chainRoom))
        blockSize = core.has(Feature.blockSize) ? Int(transport.readConfiguration32(at: Self.blockSizeOffset)) : nil
        guard let headers = dma.allocate(byteCount: queue.size * 32, alignment: 16) else {
            core.fail()
            throw .outOfDMAMemory(byteCount: queue.size * 32)
        }
        self.headers = headers
        freeSlots = Array((0..<queue.size).reversed())
        slotOfHead = [Int](repeating: -1, count: queue.size)
        parentOfSlot = [Int](repeating: -1, count: queue.size)
        core.start()
    }

    /// Requests in flight (split requests count once).
    public var outstandingRequests: Int { parents.reduce(0) { $0 + ($1 == nil ? 0 : 1) } }

    public mutating func submit(_ request: BlockRequest) throws(BlockDeviceError) {
        if let fault { throw .deviceError(code: fault.code) }
        try validate(request)
        switch request.operation {
        case .read: try start(type: Self.typeIn, sector: request.sector, buffer: request.buffer, tag: request.tag)
        case .write: try start(type: Self.typeOut, sector: request.sector, buffer: request.buffer, tag: request.tag)
        case .flush:
            if core.has(Feature.flush) {
                try start(type: Self.typeFlush, sector: 0, buffer: UnsafeMutableRawBufferPointer(start: nil, count: 0), tag: request.tag)
            } else {
                // Without VIRTIO_BLK_F_FLUSH the device writes through (§5.2.6.2).
                finished.append(BlockCompletion(tag: request.tag, result: .success(0)))
            }
        }
    }

    /// Starts a get-id request: the device writes up to 20 bytes of its
    /// serial number into `buffer` (at least 20 bytes). Completes through
    /// `pollCompletions` with the byte count 20.
    public mutating func submitIdentify(into buffer: UnsafeMutableRawBufferPointer, tag: UInt64) throws(BlockDeviceError) {
        if let fault { throw .deviceError(code: fault.code) }
        guard buffer.count >= Self.identifierLength else {
            throw .misaligned(length: buffer.count, sectorSize: Self.identifierLength)
        }
        try start(
            type: Self.typeGetID, sector: 0,
            buffer: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Self.identifierLength]), tag: tag)
    }

    mutating func start(type: UInt32, sector: UInt64, buffer: UnsafeMutableRawBufferPointer, tag: UInt64) throws(BlockDeviceError) {
        // Split into virtio requests of at most maximumSegments segments.
        let perRequest = max(512, maximumSegments * maximumSegmentSize)
        let pieces = buffer.count == 0 ? 1 : (buffer.count + perRequest - 1) / perRequest
        var descriptorsNeeded = 0
        var remainingBytes = buffer.count
        for _ in 0..<pieces {
            let bytes = min(remainingBytes, perRequest)
            remainingBytes -= bytes
            let segments = (bytes + maximumSegmentSize - 1) / maximumSegmentSize
            descriptorsNeeded += queue.descriptorsNeeded(segments: segments + 2)
        }
        guard pieces <= freeSlots.count, descriptorsNeeded <= queue.freeCount else { throw .queueFull }

        let parent = Parent(tag: tag, remaining: pieces, bytes: buffer.count, error: nil)
        let parentIndex = parents.firstIndex { $0 == nil } ?? parents.count
        if parentIndex == parents.count { parents.append(parent) } else { parents[parentIndex] = parent }

        let writable = type == Self.typeIn || type == Self.typeGetID
        var segments: [VirtqueueSegment] = []
        segments.reserveCapacity(maximumSegments + 2)
        var offset = 0
        for _ in 0..<pieces {
            let bytes = min(buffer.count - offset, perRequest)
            let slot = freeSlots.removeLast()
            let header = headers + slot * 32
            header.storeLE32(0, type)
            header.storeLE32(4, 0)
            header.storeLE64(8, sector + UInt64(offset / 512))
            header.storeBytes(of: 0xFF, toByteOffset: 16, as: UInt8.self)
            segments.removeAll(keepingCapacity: true)
            segments.append(VirtqueueSegment(address: core.dma.physicalAddress(of: header), length: 16, isDeviceWritable: false))
            var done = 0
            while done < bytes {
                let length = min(bytes - done, maximumSegmentSize)
                let address = core.dma.physicalAddress(of: buffer.baseAddress! + offset + done)
                segments.append(VirtqueueSegment(address: address, length: UInt32(length), isDeviceWritable: writable))
                done += length
            }
            segments.append(VirtqueueSegment(address: core.dma.physicalAddress(of: header + 16), length: 1, isDeviceWritable: true))
            let head: UInt16
            do throws(VirtioError) { head = try queue.add(segments) } catch {
                // Room was checked above; only a broken queue gets here. The
                // request is refused as a whole, the others in flight fail.
                freeSlots.append(slot)
                parents[parentIndex] = nil
                stop(error)
                throw .deviceError(code: error.code)
            }
            slotOfHead[Int(head)] = slot
            parentOfSlot[slot] = parentIndex
            virtioRequestsIssued += 1
            offset += bytes
        }
        core.notifyIfNeeded(queue)
    }

    public mutating func pollCompletions(_ body: (BlockCompletion) -> Void) -> Int {
        if fault == nil {
            do throws(VirtioError) {
                try core.pollStatus()
                while let element = try queue.next() { complete(element) }
            } catch {
                stop(error)
            }
        }
        let ready = finished
        finished.removeAll()
        for completion in ready { body(completion) }
        return ready.count
    }

    mutating func complete(_ element: VirtqueueUsedElement) {
        let slot = slotOfHead[Int(element.id)]
        slotOfHead[Int(element.id)] = -1
        let parentIndex = parentOfSlot[slot]
        parentOfSlot[slot] = -1
        freeSlots.append(slot)
        let header = headers + slot * 32
        let status = header.load(fromByteOffset: 16, as: UInt8.self)
        guard var parent = parents[parentIndex] else { return }
        if status == Self.statusUnsupported {
            parent.error = .unsupported
        } else if status != Self.statusOK {
            parent.error = .deviceError(code: VirtioError.requestFailed(status: status).code << 8 | Int(status))
        }
        parent.remaining -= 1
        if parent.remaining == 0 {
            parents[parentIndex] = nil
            finished.append(
                BlockCompletion(tag: parent.tag, result: parent.error.map { .failure($0) } ?? .success(parent.bytes)))
        } else {
            parents[parentIndex] = parent
        }
    }

    /// Records the fault, marks the device FAILED and fails every request
    /// in flight, so none is lost.
    mutating func stop(_ error: VirtioError) {
        if fault == nil { fault = error }
        core.fail()
        for index in parents.indices {
            guard let parent = parents[index] else { continue }
            finished.append(BlockCompletion(tag: parent.tag, result: .failure(.deviceError(code: error.code))))
            parents[index] = nil
        }
    }

    /// Resets the device so it no longer touches the driver's memory; call
    /// before dropping the driver. Requests in flight are not completed.
    public func shutdown() throws(VirtioError) { try core.transport.reset() }

    /// The device's serial number (get-id), trimmed at the first NUL.
    /// Busy-polls; `scratch` must be DMA-reachable memory of at least 20 bytes.
    public mutating func identifier(scratch: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) -> [UInt8] {
        let tag = UInt64.max
        try submitIdentify(into: scratch, tag: tag)
        var outcome: Result<Int, BlockDeviceError>? = nil
        while outcome == nil {
            _ = pollCompletions { completion in
                if completion.tag == tag { outcome = completion.result }
            }
        }
        _ = try outcome!.get()
        var bytes: [UInt8] = []
        for index in 0..<Self.identifierLength {
            let byte = scratch[index]
            if byte == 0 { break }
            bytes.append(byte)
        }
        return bytes
    }
}
