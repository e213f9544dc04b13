// BlockDevice: the contract between block drivers (virtio-blk, Xen
// blkfront, host files) and their users (file systems, the rumpuser bio
// hypercall). Requests complete asynchronously. Embedded-clean.

/// Why a block request failed.
public enum BlockDeviceError: Error, Equatable, Sendable {
    case outOfRange(sector: UInt64, count: UInt64, capacity: UInt64)
    case misaligned(length: Int, sectorSize: Int)
    case readOnly
    case queueFull
    case deviceError(code: Int)
    case unsupported
}

/// One request. The buffer must stay valid until its completion is polled.
public struct BlockRequest: @unchecked Sendable {
    public enum Operation: Equatable, Sendable {
        case read
        case write
        case flush
    }

    public var operation: Operation
    /// First sector, in units of the device's `sectorSize`.
    public var sector: UInt64
    public var buffer: UnsafeMutableRawBufferPointer
    /// Chosen by the submitter; returned in the completion.
    public var tag: UInt64

    public init(operation: Operation, sector: UInt64, buffer: UnsafeMutableRawBufferPointer, tag: UInt64) {
        self.operation = operation
        self.sector = sector
        self.buffer = buffer
        self.tag = tag
    }
}

/// The end of one request: bytes transferred, or why it failed.
public struct BlockCompletion: Sendable {
    public var tag: UInt64
    public var result: Result<Int, BlockDeviceError>

    public init(tag: UInt64, result: Result<Int, BlockDeviceError>) {
        self.tag = tag
        self.result = result
    }
}

/// A device addressed in fixed-size sectors.
public protocol BlockDevice {
    var sectorSize: Int { get }
    var sectorCount: UInt64 { get }
    var isReadOnly: Bool { get }

    /// Starts a request; it completes later through `pollCompletions`.
    mutating func submit(_ request: BlockRequest) throws(BlockDeviceError)

    /// Hands finished requests to `body` and returns how many there were.
    mutating func pollCompletions(_ body: (BlockCompletion) -> Void) -> Int
}

extension BlockDevice {
    /// Checks a request against the device's geometry.
    public func validate(_ request: BlockRequest) throws(BlockDeviceError) {
        if request.operation == .flush { return }
        if request.operation == .write && isReadOnly { throw .readOnly }
        guard request.buffer.count % sectorSize == 0 else {
            throw .misaligned(length: request.buffer.count, sectorSize: sectorSize)
        }
        let count = UInt64(request.buffer.count / sectorSize)
        guard request.sector <= sectorCount, count <= sectorCount - request.sector else {
            throw .outOfRange(sector: request.sector, count: count, capacity: sectorCount)
        }
    }

    /// Submits one request and polls until it completes (busy-waits; for
    /// boot-time and test use where no scheduler is available).
    public mutating func perform(_ request: BlockRequest) throws(BlockDeviceError) -> Int {
        try submit(request)
        var outcome: Result<Int, BlockDeviceError>? = nil
        while outcome == nil {
            _ = pollCompletions { completion in
                if completion.tag == request.tag { outcome = completion.result }
            }
        }
        return try outcome!.get()
    }
}
