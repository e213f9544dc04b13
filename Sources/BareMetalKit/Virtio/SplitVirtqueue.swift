// SplitVirtqueue: the split virtqueue (virtio 1.2 §2.7): descriptor table,
// available ring and used ring in DMA memory, indirect descriptors (§2.7.5.3)
// and VIRTIO_F_EVENT_IDX notification suppression (§2.7.7, §2.7.10).

/// One buffer of a descriptor chain.
public struct VirtqueueSegment: Sendable {
    /// Bus address of the buffer.
    public var address: UInt64
    public var length: UInt32
    /// The device writes this buffer (otherwise it reads it).
    public var isDeviceWritable: Bool

    public init(address: UInt64, length: UInt32, isDeviceWritable: Bool) {
        self.address = address
        self.length = length
        self.isDeviceWritable = isDeviceWritable
    }
}

/// A chain the device has finished with.
public struct VirtqueueUsedElement: Equatable, Sendable {
    /// Head descriptor index, as returned by `add`.
    public var id: UInt16
    /// Bytes the device wrote into the chain's writable buffers (checked
    /// against their total length).
    public var length: UInt32
}

/// A split virtqueue. The queue lives in one DMA allocation laid out as the
/// legacy interface requires (virtio 1.2 §2.7.2), so it works with both
/// transports: descriptors at 0, the available ring right after, the used
/// ring at the next 4096-byte boundary.
///
/// Every value the device writes is checked before use: a used index that
/// moves by more than the queue size, an id the driver never made available,
/// a length beyond the writable buffers. After such a fault the queue is
/// broken and refuses further work.
public final class SplitVirtqueue<DMA: DMAMemory> {
    /// Descriptor flags (§2.7.5).
    static var flagNext: UInt16 { 1 }
    static var flagWrite: UInt16 { 2 }
    static var flagIndirect: UInt16 { 4 }
    /// 0x0 flags of the available ring: VIRTQ_AVAIL_F_NO_INTERRUPT.
    static var availableNoInterrupt: UInt16 { 1 }
    /// 0x0 flags of the used ring: VIRTQ_USED_F_NO_NOTIFY.
    static var usedNoNotify: UInt16 { 1 }

    public let index: Int
    public let size: Int
    let dma: DMA
    let eventIndex: Bool
    /// Entries per indirect table (0: indirect descriptors not used).
    public let indirectCapacity: Int

    let memory: UnsafeMutableRawPointer
    let descriptors: UnsafeMutableRawPointer
    let available: UnsafeMutableRawPointer
    let used: UnsafeMutableRawPointer
    /// One indirect table per head descriptor.
    let indirectTables: UnsafeMutableRawPointer?

    var freeHead: UInt16
    public private(set) var freeCount: Int
    /// The driver's copy of avail->idx.
    var availableIndex: UInt16 = 0
    /// avail->idx at the last notification decision.
    var notifiedIndex: UInt16 = 0
    /// Next used-ring entry to consume.
    var lastUsedIndex: UInt16 = 0
    /// Per head: chain in flight, descriptors it holds, writable capacity.
    var inFlight: [Bool]
    var chainLength: [UInt16]
    var writableCapacity: [UInt32]
    public private(set) var fault: VirtioError?

    public var descriptorTableAddress: UInt64 { dma.physicalAddress(of: descriptors) }
    public var driverAreaAddress: UInt64 { dma.physicalAddress(of: available) }
    public var deviceAreaAddress: UInt64 { dma.physicalAddress(of: used) }
    /// Chains handed to the device and not yet returned.
    public private(set) var outstanding = 0

    /// Byte offsets of the three parts for a queue of `size` entries.
    public static func layout(size: Int) -> (available: Int, used: Int, total: Int) {
        let available = 16 * size
        let used = (available + 6 + 2 * size + 4095) & ~4095
        return (available, used, used + 6 + 8 * size)
    }

    /// Allocates and initializes a queue of `size` entries (a power of two,
    /// at most 32768).
    public init(index: Int, size: Int, dma: DMA, eventIndex: Bool, indirectCapacity: Int) throws(VirtioError) {
        guard size > 0, size <= 32768, size & (size - 1) == 0 else { throw .queueUnavailable(queue: index, size: size) }
        let layout = Self.layout(size: size)
        guard let memory = dma.allocate(byteCount: layout.total, alignment: 4096) else {
            throw .outOfDMAMemory(byteCount: layout.total)
        }
        if indirectCapacity > 0 {
            guard let tables = dma.allocate(byteCount: size * indirectCapacity * 16, alignment: 16) else {
                dma.deallocate(memory)
                throw .outOfDMAMemory(byteCount: size * indirectCapacity * 16)
            }
            indirectTables = tables
        } else {
            indirectTables = nil
        }
        self.index = index
        self.size = size
        self.dma = dma
        self.eventIndex = eventIndex
        self.indirectCapacity = indirectCapacity
        self.memory = memory
        descriptors = memory
        available = memory + layout.available
        used = memory + layout.used
        inFlight = [Bool](repeating: false, count: size)
        chainLength = [UInt16](repeating: 0, count: size)
        writableCapacity = [UInt32](repeating: 0, count: size)
        for entry in 0..<size {
            descriptors.storeLE16(entry * 16 + 14, UInt16(truncatingIfNeeded: entry + 1))
        }
        freeHead = 0
        freeCount = size
    }

    deinit {
        dma.deallocate(memory)
        if let indirectTables { dma.deallocate(indirectTables) }
    }

    /// Descriptors a chain of `segments` buffers needs.
    public func descriptorsNeeded(segments: Int) -> Int {
        segments > 1 && segments <= indirectCapacity ? 1 : segments
    }

    /// Makes a chain available to the device and returns its head id. Does
    /// not notify: call `needsNotification` after adding a batch.
    public func add(_ segments: UnsafeBufferPointer<VirtqueueSegment>) throws(VirtioError) -> UInt16 {
        if let fault { throw fault }
        guard !segments.isEmpty else { throw .chainTooLong(queue: index, segments: 0) }
        let needed = descriptorsNeeded(segments: segments.count)
        guard needed <= size else { throw .chainTooLong(queue: index, segments: segments.count) }
        guard needed <= freeCount else { throw .queueFull(queue: index) }

        var writable: UInt32 = 0
        for segment in segments where segment.isDeviceWritable { writable &+= segment.length }
        let head = freeHead
        if needed == 1 && segments.count > 1, let indirectTables {
            let table = indirectTables + Int(head) * indirectCapacity * 16
            for (position, segment) in segments.enumerated() {
                var flags: UInt16 = segment.isDeviceWritable ? Self.flagWrite : 0
                if position + 1 < segments.count { flags |= Self.flagNext }
                Self.writeDescriptor(
                    table + position * 16, address: segment.address, length: segment.length, flags: flags,
                    next: UInt16(truncatingIfNeeded: position + 1))
            }
            let descriptor = descriptors + Int(head) * 16
            freeHead = descriptor.loadLE16(14)
            Self.writeDescriptor(
                descriptor, address: dma.physicalAddress(of: table), length: UInt32(segments.count * 16),
                flags: Self.flagIndirect, next: 0)
        } else {
            var current = head
            for (position, segment) in segments.enumerated() {
                let descriptor = descriptors + Int(current) * 16
                let next = descriptor.loadLE16(14)
                var flags: UInt16 = segment.isDeviceWritable ? Self.flagWrite : 0
                if position + 1 < segments.count { flags |= Self.flagNext }
                Self.writeDescriptor(descriptor, address: segment.address, length: segment.length, flags: flags, next: next)
                if position + 1 < segments.count { current = next } else { freeHead = next }
            }
        }
        freeCount -= needed
        inFlight[Int(head)] = true
        outstanding += 1
        chainLength[Int(head)] = UInt16(needed)
        writableCapacity[Int(head)] = writable

        available.storeLE16(4 + 2 * (Int(availableIndex) & (size - 1)), head)
        // The ring entry and the descriptors must be visible before the index.
        dma.storeBarrier()
        availableIndex &+= 1
        available.storeLE16(2, availableIndex)
        return head
    }

    /// `add` for a single segment list held in an array.
    public func add(_ segments: [VirtqueueSegment]) throws(VirtioError) -> UInt16 {
        var result: Result<UInt16, VirtioError> = .failure(.deviceBroken)
        segments.withUnsafeBufferPointer { buffer in
            do throws(VirtioError) { result = .success(try add(buffer)) } catch { result = .failure(error) }
        }
        return try result.get()
    }

    static func writeDescriptor(_ descriptor: UnsafeMutableRawPointer, address: UInt64, length: UInt32, flags: UInt16, next: UInt16) {
        descriptor.storeLE64(0, address)
        descriptor.storeLE32(8, length)
        descriptor.storeLE16(12, flags)
        descriptor.storeLE16(14, next)
    }

    /// Whether the device wants a notification for the chains added since
    /// the last call (avail_event with EVENT_IDX, otherwise the used ring's
    /// NO_NOTIFY flag). Call after a batch of `add`s.
    public func needsNotification() -> Bool {
        // The new index must be visible before the device's event is read.
        dma.fullBarrier()
        let old = notifiedIndex
        let new = availableIndex
        notifiedIndex = new
        if old == new { return false }
        if eventIndex {
            let event = used.loadLE16(4 + 8 * size)
            // vring_need_event (§2.7.10): new - event - 1 < new - old, modulo 2^16.
            return new &- event &- 1 < new &- old
        }
        return used.loadLE16(0) & Self.usedNoNotify == 0
    }

    /// Asks the device not to interrupt (polled mode) or to interrupt again.
    /// Without EVENT_IDX this is the available ring's NO_INTERRUPT flag; with
    /// it, used_event is placed half a ring behind (never reached) or at the
    /// next entry.
    public func setInterruptsSuppressed(_ suppressed: Bool) {
        if eventIndex {
            available.storeLE16(4 + 2 * size, suppressed ? lastUsedIndex &- UInt16(truncatingIfNeeded: size) : lastUsedIndex)
        } else {
            available.storeLE16(0, suppressed ? Self.availableNoInterrupt : 0)
        }
        dma.fullBarrier()
    }

    /// Whether the device has returned a chain not yet taken by `next`.
    public var hasUsed: Bool {
        dma.loadBarrier()
        return used.loadLE16(2) != lastUsedIndex
    }

    /// The next chain the device returned, or nil. The chain's descriptors go
    /// back to the free list. Throws (and breaks the queue) when the device
    /// wrote something impossible.
    public func next() throws(VirtioError) -> VirtqueueUsedElement? {
        if let fault { throw fault }
        dma.loadBarrier()
        let deviceIndex = used.loadLE16(2)
        if deviceIndex == lastUsedIndex { return nil }
        let pending = Int(deviceIndex &- lastUsedIndex)
        guard pending <= outstanding else {
            return try broken(.usedIndexJumped(queue: index, previous: lastUsedIndex, current: deviceIndex))
        }
        // The entry must be read after the index that published it.
        dma.loadBarrier()
        let entry = 4 + 8 * (Int(lastUsedIndex) & (size - 1))
        let id = used.loadLE32(entry)
        let length = used.loadLE32(entry + 4)
        guard id < UInt32(size), inFlight[Int(id)] else {
            return try broken(.unknownDescriptorID(queue: index, id: id))
        }
        guard length <= writableCapacity[Int(id)] else {
            return try broken(.usedLengthTooLarge(queue: index, id: id, length: length, capacity: writableCapacity[Int(id)]))
        }
        release(head: UInt16(id))
        lastUsedIndex &+= 1
        if eventIndex {
            available.storeLE16(4 + 2 * size, lastUsedIndex)
        }
        return VirtqueueUsedElement(id: UInt16(id), length: length)
    }

    func release(head: UInt16) {
        inFlight[Int(head)] = false
        outstanding -= 1
        let count = Int(chainLength[Int(head)])
        var last = head
        for _ in 1..<max(count, 1) {
            last = descriptors.loadLE16(Int(last) * 16 + 14)
        }
        descriptors.storeLE16(Int(last) * 16 + 14, freeHead)
        freeHead = head
        freeCount += count
    }

    func broken(_ error: VirtioError) throws(VirtioError) -> VirtqueueUsedElement? {
        fault = error
        throw error
    }

    /// Heads of every chain still in flight (to fail their requests after a
    /// fault).
    public var outstandingIDs: [UInt16] {
        var ids: [UInt16] = []
        for head in 0..<size where inFlight[head] { ids.append(UInt16(head)) }
        return ids
    }
}
