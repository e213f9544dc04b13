// A TCP connection's state, buffers and user calls (RFC 9293 §3.3.2 states, §3.9.1 user interface; RFC 7323 options negotiation).

/// The connection states of RFC 9293 §3.3.2.
public enum TCPState: Equatable, Sendable {
    case closed, listen, synSent, synReceived, established, finWait1, finWait2, closeWait, closing, lastAck, timeWait

    /// States after the three-way handshake in which sequence numbers are synchronized.
    public var isSynchronized: Bool {
        switch self {
        case .closed, .listen, .synSent, .synReceived: false
        default: true
        }
    }
}

/// Why a connection ended abnormally.
public enum TCPConnectionError: Error, Equatable, Sendable {
    /// The peer answered the SYN with a reset.
    case refused
    /// The peer reset an open connection.
    case reset
    /// Retransmissions or keep-alive probes went unanswered.
    case timedOut
    /// This side aborted (close with unread data, or `abort`).
    case aborted
}

/// Tunables of every TCP connection. Times are in nanoseconds.
public struct TCPConfiguration: Sendable {
    /// MSS to offer; the stack lowers it to the interface MTU minus 40.
    public var maximumSegmentSize = 1460
    public var receiveBufferSize = 256 * 1024
    public var sendBufferSize = 256 * 1024
    /// Offer window scaling (RFC 7323 §2).
    public var windowScaling = true
    /// Offer timestamps (RFC 7323 §3).
    public var timestamps = true
    /// Offer SACK-permitted and report out-of-order data in SACK blocks as a
    /// receiver (RFC 2018 §3-4). As a sender the stack ignores SACK blocks.
    public var selectiveAcknowledgments = true
    /// Maximum segment lifetime; TIME-WAIT lasts twice this.
    public var maximumSegmentLifetime: UInt64 = 30_000_000_000
    /// Longest an ACK is delayed (RFC 9293 §3.8.6.3: under 0.5 s).
    public var delayedAcknowledgmentTimeout: UInt64 = 100_000_000
    public var initialRetransmissionTimeout: UInt64 = 1_000_000_000
    /// RFC 6298 §2.4 says 1 s; lower values suit low-latency links.
    public var minimumRetransmissionTimeout: UInt64 = 1_000_000_000
    public var maximumRetransmissionTimeout: UInt64 = 60_000_000_000
    /// SYN retransmissions before a connect fails.
    public var synRetries = 6
    /// SYN-ACK retransmissions before a half-open connection is dropped.
    public var synAckRetries = 4
    /// Data retransmissions of one segment before the connection times out (R2).
    public var dataRetries = 15
    public var keepAliveIdle: UInt64 = 7200_000_000_000
    public var keepAliveInterval: UInt64 = 75_000_000_000
    public var keepAliveProbes = 9
    /// How long an orphaned connection may sit in FIN-WAIT-2.
    public var finWait2Timeout: UInt64 = 60_000_000_000
    /// Out-of-order segments held; later ones are dropped (their bytes are bounded by the window too).
    public var maximumOutOfOrderSegments = 128
    /// Disables Nagle's algorithm (RFC 9293 §3.7.4) for new connections.
    public var noDelay = false
    public init() {}
}

/// One segment the connection wants sent.
public struct TCPOutgoingSegment: Sendable {
    public var header: TCPHeader
    public var payload: ArraySlice<UInt8>
    /// Whether it resends sequence space sent before.
    public var isRetransmission = false
}

/// Counters of one connection.
public struct TCPConnectionStatistics: Equatable, Sendable {
    public var segmentsSent = 0
    public var segmentsReceived = 0
    public var retransmittedSegments = 0
    public var fastRetransmits = 0
    public var timeouts = 0
    public var duplicateSegments = 0
    public var outOfOrderSegments = 0
    public var challengeAcknowledgments = 0
    public init() {}
}

/// One TCP connection: the transmission control block of RFC 9293 §3.3.1 and
/// its buffers. Driven by `receive(_:payload:now:)`, `tick(now:)` and the
/// user calls; what it wants to send accumulates in `outbox`.
public final class TCPConnection {
    public internal(set) var state: TCPState
    public let local: IPv4Endpoint
    public let remote: IPv4Endpoint
    public internal(set) var configuration: TCPConfiguration
    public internal(set) var error: TCPConnectionError?
    public internal(set) var statistics = TCPConnectionStatistics()
    /// Segments to transmit, oldest first; the owner drains it.
    public var outbox: [TCPOutgoingSegment] = []

    /// Creation order within the owning stack; timers run in this order so
    /// runs are reproducible (dictionary order is randomized per process).
    var serial = 0
    /// The listening port that created this connection (passive open).
    var listenerPort: UInt16?
    /// Whether the owner handed the connection to accept's queue.
    var queuedForAccept = false

    // Send sequence space (RFC 9293 §3.3.1).
    var initialSendSequence: SequenceNumber
    var sendUnacknowledged: SequenceNumber
    var sendNext: SequenceNumber
    /// Highest sequence number sent so far, plus one; sendNext falls back below it after a timeout.
    var sendMaximum: SequenceNumber
    var sendWindow = 0
    var maximumSendWindow = 0
    var sendWindowUpdateSequence = SequenceNumber(0)
    var sendWindowUpdateAcknowledgment = SequenceNumber(0)
    var sendBuffer = ByteQueue()
    /// Sequence number of the first byte in `sendBuffer`.
    var sendBufferStart: SequenceNumber
    /// The user closed the sending side: a FIN follows the buffered data.
    var finQueued = false
    /// Payload bytes per segment after options.
    var sendSegmentSize = 536
    var sendScale: UInt8 = 0
    var receiveScale: UInt8 = 0
    var windowScalingEnabled = false
    var timestampsEnabled = false
    var timestampRecent: UInt32 = 0
    var lastAcknowledgmentSent = SequenceNumber(0)
    public internal(set) var peerOfferedSelectiveAcknowledgment = false
    /// Both sides agreed to SACK: ACKs carry SACK blocks.
    var selectiveAcknowledgmentsEnabled = false
    /// Start of the out-of-order data received most recently; its block goes first (RFC 2018 §4).
    var latestOutOfOrderSequence: SequenceNumber?

    // Receive sequence space.
    var initialReceiveSequence = SequenceNumber(0)
    var receiveNext = SequenceNumber(0)
    /// Right edge of the window last advertised; never moves left (RFC 9293 §3.8.6.2.1).
    var receiveAdvertised = SequenceNumber(0)
    var receiveBuffer = ByteQueue()
    var outOfOrder: [(sequence: SequenceNumber, bytes: [UInt8])] = []
    /// Sequence number of a FIN received ahead of missing data.
    var pendingFin: SequenceNumber?
    /// A FIN was received and all data before it: reads reach end of stream.
    public internal(set) var receiveClosed = false
    /// The user called close: nothing more will be read.
    var userClosed = false

    // Congestion control (RFC 5681, RFC 6582).
    var congestionWindow = 0
    var slowStartThreshold = Int.max
    var duplicateAcknowledgments = 0
    var recoveryPoint: SequenceNumber
    var inFastRecovery = false

    // Timers, as absolute deadlines on the caller's clock.
    var retransmissionTimeout: RetransmissionTimeoutEstimator
    var retransmitDeadline: UInt64?
    var retransmitCount = 0
    var persistDeadline: UInt64?
    var delayedAcknowledgmentDeadline: UInt64?
    var acknowledgeNow = false
    var unacknowledgedSegments = 0
    var timeWaitDeadline: UInt64?
    var finWait2Deadline: UInt64?
    public var keepAliveEnabled = false
    var keepAliveDeadline: UInt64?
    var keepAliveProbesSent = 0
    /// The segment being timed for an RTT sample when timestamps are off (Karn: never a retransmission).
    var roundTripTiming: (sequence: SequenceNumber, sentAt: UInt64)?
    var synRetransmitted = false
    public var noDelay: Bool

    init(local: IPv4Endpoint, remote: IPv4Endpoint, initialSequence: SequenceNumber, configuration: TCPConfiguration, state: TCPState) {
        self.local = local
        self.remote = remote
        self.configuration = configuration
        self.state = state
        initialSendSequence = initialSequence
        sendUnacknowledged = initialSequence
        sendNext = initialSequence
        sendMaximum = initialSequence
        sendBufferStart = initialSequence + 1
        recoveryPoint = initialSequence
        noDelay = configuration.noDelay
        retransmissionTimeout = RetransmissionTimeoutEstimator(
            initial: configuration.initialRetransmissionTimeout,
            minimum: configuration.minimumRetransmissionTimeout,
            maximum: configuration.maximumRetransmissionTimeout)
        var shift: UInt8 = 0
        while configuration.windowScaling && shift < 14 && (65535 << Int(shift)) < configuration.receiveBufferSize { shift += 1 }
        receiveScale = shift
    }

    /// An active open (RFC 9293 §3.10.1): sends a SYN and enters SYN-SENT.
    public static func connect(local: IPv4Endpoint, remote: IPv4Endpoint, initialSequence: SequenceNumber, configuration: TCPConfiguration, now: UInt64) -> TCPConnection {
        let connection = TCPConnection(local: local, remote: remote, initialSequence: initialSequence, configuration: configuration, state: .synSent)
        connection.sendSYN(now: now)
        connection.sendNext = initialSequence + 1
        connection.sendMaximum = connection.sendNext
        connection.armRetransmitTimer(now: now)
        connection.roundTripTiming = (initialSequence, now)
        return connection
    }

    /// A passive open: the LISTEN-state processing of a SYN (RFC 9293
    /// §3.10.7.2), which sends SYN,ACK and enters SYN-RECEIVED.
    public static func accept(syn header: TCPHeader, local: IPv4Endpoint, remote: IPv4Endpoint, initialSequence: SequenceNumber, configuration: TCPConfiguration, now: UInt64) -> TCPConnection {
        let connection = TCPConnection(local: local, remote: remote, initialSequence: initialSequence, configuration: configuration, state: .synReceived)
        connection.initialReceiveSequence = SequenceNumber(header.sequenceNumber)
        connection.receiveNext = connection.initialReceiveSequence + 1
        connection.receiveAdvertised = connection.receiveNext
        connection.negotiate(peerSYN: header, active: false)
        connection.sendWindow = Int(header.window)  // windows in SYNs are never scaled
        connection.sendWindowUpdateSequence = SequenceNumber(header.sequenceNumber)
        connection.sendSYN(now: now)
        connection.sendNext = initialSequence + 1
        connection.sendMaximum = connection.sendNext
        connection.armRetransmitTimer(now: now)
        connection.roundTripTiming = (initialSequence, now)
        return connection
    }

    // MARK: User calls (RFC 9293 §3.10)

    /// Bytes waiting to be read.
    public var bytesReadable: Int { receiveBuffer.count }

    /// Room left in the send buffer.
    public var sendSpace: Int {
        Swift.max(0, configuration.sendBufferSize - sendBuffer.count)
    }

    /// Whether writes are still allowed.
    public var canWrite: Bool {
        !finQueued && error == nil && (state == .established || state == .closeWait || state == .synSent || state == .synReceived)
    }

    /// Queues up to `sendSpace` bytes and returns how many were taken.
    public func write(_ bytes: UnsafeRawBufferPointer, now: UInt64) -> Int {
        guard canWrite else { return 0 }
        let count = Swift.min(bytes.count, sendSpace)
        guard count > 0 else { return 0 }
        sendBuffer.append(UnsafeRawBufferPointer(rebasing: bytes[0..<count]))
        transmit(now: now)
        return count
    }

    /// Copies received bytes out; returns 0 at end of stream or when nothing is there.
    public func read(into buffer: UnsafeMutableRawBufferPointer, now: UInt64) -> Int {
        let n = receiveBuffer.read(into: buffer)
        if n > 0 && state.isSynchronized { openWindowIfWorthwhile(now: now) }
        return n
    }

    /// Closes the sending side: a FIN follows the queued data (RFC 9293 §3.10.4).
    public func shutdownWrite(now: UInt64) {
        guard !finQueued else { return }
        switch state {
        case .synSent, .closed, .listen:
            abortSilently()
        case .synReceived:
            finQueued = true  // FIN-WAIT-1 once established (RFC 9293 §3.10.4)
        case .established:
            finQueued = true
            state = .finWait1
            transmit(now: now)
        case .closeWait:
            finQueued = true
            state = .lastAck
            transmit(now: now)
        default:
            break
        }
    }

    /// Closes both directions. Unread data makes this an abort with RST, so
    /// the peer learns its data was lost (RFC 9293 §3.10.4, RFC 2525 §2.17).
    public func close(now: UInt64) {
        userClosed = true
        if receiveBuffer.count > 0 && state.isSynchronized {
            abort(now: now)
            return
        }
        shutdownWrite(now: now)
        if state == .finWait2 { finWait2Deadline = now &+ configuration.finWait2Timeout }
    }

    /// Sends a RST if synchronized and drops the connection (RFC 9293 §3.10.5).
    public func abort(now: UInt64) {
        if state.isSynchronized || state == .synReceived {
            emitReset(sequence: sendNext)
        }
        terminate(.aborted)
    }

    func abortSilently() {
        terminate(nil)
    }

    func terminate(_ reason: TCPConnectionError?) {
        if error == nil { error = reason }
        state = .closed
        retransmitDeadline = nil
        persistDeadline = nil
        delayedAcknowledgmentDeadline = nil
        timeWaitDeadline = nil
        finWait2Deadline = nil
        keepAliveDeadline = nil
        outOfOrder.removeAll()
    }

    /// The earliest deadline `tick` must run at.
    public var nextDeadline: UInt64? {
        var earliest: UInt64? = nil
        for deadline in [retransmitDeadline, persistDeadline, delayedAcknowledgmentDeadline, timeWaitDeadline, finWait2Deadline, keepAliveDeadline] {
            if let deadline { earliest = Swift.min(earliest ?? deadline, deadline) }
        }
        return earliest
    }

    // MARK: Option negotiation

    /// Adopts what the peer's SYN offers (RFC 9293 §3.7.1, RFC 7323 §2.2 and §3.2).
    func negotiate(peerSYN header: TCPHeader, active: Bool) {
        let options = header.options
        let peerMSS = Int(options.maximumSegmentSize ?? 536)  // RFC 9293 §3.7.1 default
        if let shift = options.windowScale, configuration.windowScaling {
            sendScale = Swift.min(shift, 14)
            windowScalingEnabled = true
        } else {
            windowScalingEnabled = false
            sendScale = 0
            receiveScale = 0
        }
        if let stamps = options.timestamps, configuration.timestamps {
            timestampsEnabled = true
            timestampRecent = stamps.value
        } else {
            timestampsEnabled = false
        }
        peerOfferedSelectiveAcknowledgment = options.sackPermitted
        selectiveAcknowledgmentsEnabled = options.sackPermitted && configuration.selectiveAcknowledgments
        sendSegmentSize = Swift.max(64, Swift.min(peerMSS, configuration.maximumSegmentSize) - (timestampsEnabled ? 12 : 0))
        // RFC 5681 §3.1 initial window.
        congestionWindow = Swift.min(4 * sendSegmentSize, Swift.max(2 * sendSegmentSize, 4380))
    }
}
