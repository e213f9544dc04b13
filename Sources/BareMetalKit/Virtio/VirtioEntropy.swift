// VirtioEntropy: the virtio entropy device driver (virtio 1.2 §5.4): one
// request queue of device-writable buffers the device fills with random bytes.

/// A virtio-rng device.
public struct VirtioEntropy<Transport: VirtioTransport, DMA: DMAMemory> {
    public var core: VirtioDeviceCore<Transport, DMA>
    let queue: SplitVirtqueue<DMA>
    let bounce: UnsafeMutableRawPointer
    public static var bounceSize: Int { 256 }
    public private(set) var fault: VirtioError?

    /// Initializes the device and its queue, then sets DRIVER_OK.
    public init(transport: Transport, dma: DMA) throws(VirtioError) {
        core = try VirtioDeviceCore(transport: transport, dma: dma, required: 0, optional: 0)
        do throws(VirtioError) { queue = try core.makeQueue(index: 0, maximumSize: 8) } catch {
            core.fail()
            throw error
        }
        guard let bounce = dma.allocate(byteCount: Self.bounceSize, alignment: 16) else {
            core.fail()
            throw .outOfDMAMemory(byteCount: Self.bounceSize)
        }
        self.bounce = bounce
        core.start()
    }

    /// Resets the device; call before dropping the driver.
    public func shutdown() throws(VirtioError) { try core.transport.reset() }

    /// Fills `buffer` with bytes from the device, busy-polling. Gives up
    /// with `.deviceBroken` when the device returns nothing for
    /// `spinLimit` polls of one request.
    public mutating func fill(_ buffer: UnsafeMutableRawBufferPointer, spinLimit: Int = 10_000_000) throws(VirtioError) {
        if let fault { throw fault }
        var filled = 0
        var emptyAnswers = 0
        while filled < buffer.count {
            let want = min(Self.bounceSize, buffer.count - filled)
            do throws(VirtioError) {
                _ = try queue.add([
                    VirtqueueSegment(address: core.dma.physicalAddress(of: bounce), length: UInt32(want), isDeviceWritable: true)
                ])
                core.notifyIfNeeded(queue)
                var spins = 0
                var element: VirtqueueUsedElement? = nil
                while element == nil {
                    try core.pollStatus()
                    element = try queue.next()
                    spins += 1
                    if element == nil && spins >= spinLimit { throw VirtioError.deviceBroken }
                }
                let got = Int(element!.length)
                if got == 0 {
                    emptyAnswers += 1
                    if emptyAnswers > 16 { throw VirtioError.deviceBroken }
                }
                (buffer.baseAddress! + filled).copyMemory(from: bounce, byteCount: got)
                filled += got
            } catch {
                fault = error
                core.fail()
                throw error
            }
        }
    }
}
