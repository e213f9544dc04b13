// NetworkInterface: the contract between Ethernet drivers (virtio-net,
// e1000, Xen netfront) and the network stack. Embedded-clean.

/// An IEEE 802 MAC address.
public struct MACAddress: Equatable, Hashable, Sendable {
    public var bytes: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8)

    public init(_ b0: UInt8, _ b1: UInt8, _ b2: UInt8, _ b3: UInt8, _ b4: UInt8, _ b5: UInt8) {
        bytes = (b0, b1, b2, b3, b4, b5)
    }

    public static var broadcast: MACAddress { MACAddress(0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF) }

    public var isMulticast: Bool { bytes.0 & 1 != 0 }

    public static func == (lhs: MACAddress, rhs: MACAddress) -> Bool {
        lhs.bytes.0 == rhs.bytes.0 && lhs.bytes.1 == rhs.bytes.1 && lhs.bytes.2 == rhs.bytes.2
            && lhs.bytes.3 == rhs.bytes.3 && lhs.bytes.4 == rhs.bytes.4 && lhs.bytes.5 == rhs.bytes.5
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(bytes.0)
        hasher.combine(bytes.1)
        hasher.combine(bytes.2)
        hasher.combine(bytes.3)
        hasher.combine(bytes.4)
        hasher.combine(bytes.5)
    }
}

/// Why a network interface refused an operation.
public enum NetworkInterfaceError: Error, Equatable, Sendable {
    case linkDown
    case frameTooLarge(size: Int, limit: Int)
    case frameTooSmall(size: Int)
    /// Every transmit slot is in use; retry after completions are reclaimed.
    case transmitQueueFull
    /// The device reported a failure the driver cannot recover from alone.
    case deviceError(code: Int)
}

/// Counters every interface keeps.
public struct NetworkInterfaceStatistics: Equatable, Sendable {
    public var framesSent = 0
    public var framesReceived = 0
    public var bytesSent = 0
    public var bytesReceived = 0
    public var transmitErrors = 0
    public var receiveErrors = 0
    public var receiveDropped = 0
    public init() {}
}

/// An Ethernet interface: frames include the 14-byte header, no FCS.
public protocol NetworkInterface {
    var macAddress: MACAddress { get }
    /// Largest payload after the Ethernet header (1500 by default).
    var mtu: Int { get }
    var isLinkUp: Bool { get }
    var statistics: NetworkInterfaceStatistics { get }

    /// Queues one frame for transmission; the bytes are copied or consumed
    /// before the call returns.
    mutating func send(frame: UnsafeRawBufferPointer) throws(NetworkInterfaceError)

    /// Hands up to `limit` received frames to `body`, each valid only during
    /// its call, and returns how many were delivered. Never blocks.
    mutating func receive(limit: Int, _ body: (UnsafeRawBufferPointer) -> Void) throws(NetworkInterfaceError) -> Int

    /// Starts a transmit batch: until `endTransmitBatch`, `send` may queue
    /// frames without telling the device about each one (a notification or
    /// tail-register write is an exit to the hypervisor). A driver that
    /// runs out of transmit slots in a batch tells the device before it
    /// reports `transmitQueueFull`, so the slots come back.
    mutating func beginTransmitBatch()

    /// Ends the batch: tells the device once about every frame queued in it.
    mutating func endTransmitBatch()
}

extension NetworkInterface {
    /// Without batching every `send` tells the device at once.
    public mutating func beginTransmitBatch() {}
    public mutating func endTransmitBatch() {}
}
