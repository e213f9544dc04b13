// VirtioNetwork: the virtio network device driver (virtio 1.2 §5.1): MAC and
// link status from the device configuration, a receive queue kept full,
// mergeable receive buffers (§5.1.6.3.2), transmit with completion reclaim,
// polled or interrupt-driven operation, statistics.
import DeviceInterfaces

/// A virtio-net device as a `NetworkInterface`.
///
/// The driver owns all DMA memory it hands the device: a receive buffer per
/// receive-queue entry, a transmit slot per transmit-queue entry into which
/// `send` copies the frame. Any fault of the device (see `SplitVirtqueue`,
/// DEVICE_NEEDS_RESET) stops the driver: later calls throw
/// `.deviceError(code:)` with `VirtioError.code`, and `fault` keeps the error.
public struct VirtioNetwork<Transport: VirtioTransport, DMA: DMAMemory>: NetworkInterface {
    /// Feature bits (§5.1.3).
    public enum Feature {
        /// 5 VIRTIO_NET_F_MAC
        public static var mac: UInt64 { 1 << 5 }
        /// 15 VIRTIO_NET_F_MRG_RXBUF
        public static var mergeableReceiveBuffers: UInt64 { 1 << 15 }
        /// 16 VIRTIO_NET_F_STATUS
        public static var status: UInt64 { 1 << 16 }
    }

    // struct virtio_net_config (§5.1.4)
    /// 0x00 mac
    static var macOffset: Int { 0x00 }
    /// 0x06 status (bit 0 VIRTIO_NET_S_LINK_UP)
    static var statusOffset: Int { 0x06 }

    static var receiveQueueIndex: Int { 0 }
    static var transmitQueueIndex: Int { 1 }
    /// Ethernet header plus the largest payload.
    static var maximumFrame: Int { 14 + 1500 }

    public var core: VirtioDeviceCore<Transport, DMA>
    let receiveQueue: SplitVirtqueue<DMA>
    let transmitQueue: SplitVirtqueue<DMA>
    /// struct virtio_net_hdr: 12 bytes with num_buffers (VERSION_1 or
    /// MRG_RXBUF), 10 without.
    public let headerLength: Int
    public let receiveBufferSize: Int
    let receiveBuffers: UnsafeMutableRawPointer
    /// Receive buffer index handed out under each head id.
    var bufferOfHead: [Int]
    let transmitSlotSize: Int
    let transmitSlots: UnsafeMutableRawPointer
    var freeTransmitSlots: [Int]
    var transmitSlotOfHead: [Int]
    /// Reassembly of a frame spread over several mergeable buffers.
    let assembly: UnsafeMutableRawPointer
    var mergeExpected = 0
    var mergeCollected = 0
    var mergeLength = 0
    var mergeOverflow = false

    public let macAddress: MACAddress
    public let mtu = 1500
    public private(set) var statistics = NetworkInterfaceStatistics()
    public private(set) var fault: VirtioError?
    /// The link as last read from the device: at start, then whenever the
    /// ISR is read (see `pollStatus`) or an interrupt is handled. `send`
    /// checks this instead of reading the configuration space each time
    /// (one exit to the hypervisor per frame, and under QEMU one more
    /// acquisition of its global lock, which a busy network backend holds).
    var linkUpAtLastCheck = true
    /// Inside a transmit batch (`beginTransmitBatch`), and whether a frame
    /// was queued in it without a notification.
    var batchingTransmissions = false
    var transmitNotificationPending = false
    /// Whether each receive buffer may hold part of a frame.
    public var usesMergeableBuffers: Bool { core.has(Feature.mergeableReceiveBuffers) }

    /// Initializes the device (§3.1.1), fills the receive queue and sets
    /// DRIVER_OK. Without VIRTIO_NET_F_MAC the interface uses
    /// `fallbackAddress`. `receiveBufferSize` below header plus 1514 bytes
    /// is only usable with mergeable buffers; such a request is raised to
    /// that size when the device does not offer them.
    public init(
        transport: Transport, dma: DMA, queueSize: Int = 128, receiveBufferSize: Int = 2048,
        fallbackAddress: MACAddress = MACAddress(0x02, 0, 0, 0, 0, 1)
    ) throws(VirtioError) {
        core = try VirtioDeviceCore(
            transport: transport, dma: dma, required: 0,
            optional: Feature.mac | Feature.mergeableReceiveBuffers | Feature.status
                | VirtioFeature.indirectDescriptors | VirtioFeature.eventIndex)
        headerLength = core.has(VirtioFeature.version1) || core.has(Feature.mergeableReceiveBuffers) ? 12 : 10
        let mergeable = core.has(Feature.mergeableReceiveBuffers)
        self.receiveBufferSize =
            mergeable ? max(receiveBufferSize, headerLength + 60) : max(receiveBufferSize, headerLength + Self.maximumFrame)
        do throws(VirtioError) {
            receiveQueue = try core.makeQueue(index: Self.receiveQueueIndex, maximumSize: queueSize)
            transmitQueue = try core.makeQueue(index: Self.transmitQueueIndex, maximumSize: queueSize, indirectCapacity: 2)
        } catch {
            core.fail()
            throw error
        }
        transmitSlotSize = (headerLength + Self.maximumFrame + 63) & ~63
        let receiveBytes = receiveQueue.size * self.receiveBufferSize
        let transmitBytes = transmitQueue.size * transmitSlotSize
        guard let receive = dma.allocate(byteCount: receiveBytes, alignment: 64) else {
            core.fail()
            throw .outOfDMAMemory(byteCount: receiveBytes)
        }
        guard let transmit = dma.allocate(byteCount: transmitBytes, alignment: 64) else {
            dma.deallocate(receive)
            core.fail()
            throw .outOfDMAMemory(byteCount: transmitBytes)
        }
        receiveBuffers = receive
        transmitSlots = transmit
        assembly = UnsafeMutableRawPointer.allocate(byteCount: Self.maximumFrame, alignment: 16)
        bufferOfHead = [Int](repeating: -1, count: receiveQueue.size)
        freeTransmitSlots = Array((0..<transmitQueue.size).reversed())
        transmitSlotOfHead = [Int](repeating: -1, count: transmitQueue.size)
        if core.has(Feature.mac) {
            var bytes: [UInt8] = []
            for index in 0..<6 { bytes.append(transport.readConfiguration8(at: Self.macOffset + index)) }
            macAddress = MACAddress(bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5])
        } else {
            macAddress = fallbackAddress
        }
        for buffer in 0..<receiveQueue.size {
            try post(receiveBuffer: buffer)
        }
        core.start()
        core.notifyIfNeeded(receiveQueue)
        linkUpAtLastCheck = isLinkUp
    }

    /// VIRTIO_NET_S_LINK_UP, or always up without VIRTIO_NET_F_STATUS
    /// (read from the device now).
    public var isLinkUp: Bool {
        guard fault == nil else { return false }
        guard core.has(Feature.status) else { return true }
        return core.transport.readConfiguration16(at: Self.statusOffset) & 1 != 0
    }

    mutating func post(receiveBuffer buffer: Int) throws(VirtioError) {
        let address = core.dma.physicalAddress(of: receiveBuffers + buffer * receiveBufferSize)
        let head = try receiveQueue.add([
            VirtqueueSegment(address: address, length: UInt32(receiveBufferSize), isDeviceWritable: true)
        ])
        bufferOfHead[Int(head)] = buffer
    }

    /// Returns finished transmit slots to the free list.
    public mutating func reclaimTransmitted() throws(NetworkInterfaceError) {
        if let fault { throw .deviceError(code: fault.code) }
        do throws(VirtioError) {
            while let element = try transmitQueue.next() {
                freeTransmitSlots.append(transmitSlotOfHead[Int(element.id)])
                transmitSlotOfHead[Int(element.id)] = -1
            }
        } catch {
            throw stop(error)
        }
    }

    public mutating func send(frame: UnsafeRawBufferPointer) throws(NetworkInterfaceError) {
        if let fault { throw .deviceError(code: fault.code) }
        guard frame.count >= 14 else { throw .frameTooSmall(size: frame.count) }
        guard frame.count <= Self.maximumFrame else { throw .frameTooLarge(size: frame.count, limit: Self.maximumFrame) }
        do throws(VirtioError) {
            try pollStatusAndLink()
        } catch {
            throw stop(error)
        }
        guard linkUpAtLastCheck else { throw .linkDown }
        if freeTransmitSlots.isEmpty { try reclaimTransmitted() }
        guard let slot = freeTransmitSlots.popLast() else {
            // Frames held back by a batch must reach the device, or their
            // slots never come back.
            notifyPendingTransmissions()
            statistics.transmitErrors += 1
            throw .transmitQueueFull
        }
        let base = transmitSlots + slot * transmitSlotSize
        // An all-zero header: no checksum offload, no segmentation.
        base.initializeMemory(as: UInt8.self, repeating: 0, count: headerLength)
        (base + headerLength).copyMemory(from: frame.baseAddress!, byteCount: frame.count)
        let address = core.dma.physicalAddress(of: base)
        do throws(VirtioError) {
            let head = try transmitQueue.add([
                VirtqueueSegment(address: address, length: UInt32(headerLength), isDeviceWritable: false),
                VirtqueueSegment(address: address + UInt64(headerLength), length: UInt32(frame.count), isDeviceWritable: false),
            ])
            transmitSlotOfHead[Int(head)] = slot
        } catch {
            freeTransmitSlots.append(slot)
            if case .queueFull = error {
                notifyPendingTransmissions()
                statistics.transmitErrors += 1
                throw .transmitQueueFull
            }
            throw stop(error)
        }
        if batchingTransmissions {
            transmitNotificationPending = true
        } else {
            core.notifyIfNeeded(transmitQueue)
        }
        statistics.framesSent += 1
        statistics.bytesSent += frame.count
    }

    public mutating func receive(limit: Int, _ body: (UnsafeRawBufferPointer) -> Void) throws(NetworkInterfaceError) -> Int {
        if let fault { throw .deviceError(code: fault.code) }
        var delivered = 0
        do throws(VirtioError) {
            try pollStatusAndLink()
            while delivered < limit, let element = try receiveQueue.next() {
                let buffer = bufferOfHead[Int(element.id)]
                bufferOfHead[Int(element.id)] = -1
                let start = receiveBuffers + buffer * receiveBufferSize
                let length = Int(element.length)
                if deliver(start, length, body) { delivered += 1 }
                try post(receiveBuffer: buffer)
            }
            core.notifyIfNeeded(receiveQueue)
            try reclaimTransmittedOrThrow()
        } catch {
            throw stop(error)
        }
        return delivered
    }

    mutating func reclaimTransmittedOrThrow() throws(VirtioError) {
        while let element = try transmitQueue.next() {
            freeTransmitSlots.append(transmitSlotOfHead[Int(element.id)])
            transmitSlotOfHead[Int(element.id)] = -1
        }
    }

    /// Handles one used receive buffer; returns whether a whole frame went up.
    mutating func deliver(_ start: UnsafeMutableRawPointer, _ length: Int, _ body: (UnsafeRawBufferPointer) -> Void) -> Bool {
        if mergeExpected > 0 {
            // A continuation buffer: no header, payload only.
            append(start, length)
            mergeCollected += 1
            return finishMergeIfComplete(body)
        }
        guard length >= headerLength else {
            statistics.receiveErrors += 1
            return false
        }
        let payload = length - headerLength
        let buffers = usesMergeableBuffers ? Int(start.loadLE16(10)) : 1
        if buffers > 1 {
            mergeExpected = buffers
            mergeCollected = 1
            mergeLength = 0
            mergeOverflow = false
            append(start + headerLength, payload)
            return finishMergeIfComplete(body)
        }
        guard buffers == 1 || !usesMergeableBuffers else {
            statistics.receiveErrors += 1  // num_buffers 0 is invalid
            return false
        }
        guard payload >= 14, payload <= Self.maximumFrame else {
            statistics.receiveErrors += 1
            return false
        }
        body(UnsafeRawBufferPointer(start: start + headerLength, count: payload))
        statistics.framesReceived += 1
        statistics.bytesReceived += payload
        return true
    }

    mutating func append(_ start: UnsafeMutableRawPointer, _ length: Int) {
        guard mergeLength + length <= Self.maximumFrame else {
            mergeOverflow = true
            return
        }
        (assembly + mergeLength).copyMemory(from: start, byteCount: length)
        mergeLength += length
    }

    mutating func finishMergeIfComplete(_ body: (UnsafeRawBufferPointer) -> Void) -> Bool {
        guard mergeCollected == mergeExpected else { return false }
        mergeExpected = 0
        if mergeOverflow || mergeLength < 14 {
            statistics.receiveErrors += 1
            return false
        }
        body(UnsafeRawBufferPointer(start: assembly, count: mergeLength))
        statistics.framesReceived += 1
        statistics.bytesReceived += mergeLength
        return true
    }

    /// `pollStatus`, re-reading the link whenever that read the ISR.
    mutating func pollStatusAndLink() throws(VirtioError) {
        if try core.pollStatus() { linkUpAtLastCheck = isLinkUp }
    }

    public mutating func beginTransmitBatch() { batchingTransmissions = true }

    public mutating func endTransmitBatch() {
        batchingTransmissions = false
        notifyPendingTransmissions()
    }

    /// One notification (if the device wants it) for the frames queued
    /// since the batch began.
    mutating func notifyPendingTransmissions() {
        guard transmitNotificationPending else { return }
        transmitNotificationPending = false
        core.notifyIfNeeded(transmitQueue)
    }

    /// Polled mode (`true`) asks the device not to interrupt; `false`
    /// re-enables used-buffer notifications on both queues.
    public func setPolled(_ polled: Bool) {
        receiveQueue.setInterruptsSuppressed(polled)
        transmitQueue.setInterruptsSuppressed(polled)
    }

    /// For interrupt mode: reads the ISR and reports whether either queue
    /// has used buffers waiting (the caller then calls `receive`).
    public mutating func handleInterrupt() throws(NetworkInterfaceError) -> Bool {
        if let fault { throw .deviceError(code: fault.code) }
        do throws(VirtioError) { _ = try core.checkInterruptStatus() } catch { throw stop(error) }
        linkUpAtLastCheck = isLinkUp
        return receiveQueue.hasUsed || transmitQueue.hasUsed
    }

    /// Resets the device so it no longer touches the driver's buffers; call
    /// before dropping the driver.
    public func shutdown() throws(VirtioError) { try core.transport.reset() }

    /// Records the fault and marks the device FAILED.
    mutating func stop(_ error: VirtioError) -> NetworkInterfaceError {
        if fault == nil { fault = error }
        core.fail()
        return .deviceError(code: error.code)
    }
}
