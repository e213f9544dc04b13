// TCP state machine transitions table by table (RFC 9293 §3.3.2 figure 5, §3.10.7; RFC 5961 challenge ACKs).
import Testing
@testable import NetStack

let localEndpoint = IPv4Endpoint(address: IPv4Address(10, 0, 0, 1), port: 1000)
let remoteEndpoint = IPv4Endpoint(address: IPv4Address(10, 0, 0, 2), port: 2000)
let ourInitialSequence: UInt32 = 100
let peerInitialSequence: UInt32 = 5000

/// Plain TCP without options, so tests can reason about bare sequence numbers.
func plainConfiguration() -> TCPConfiguration {
    var configuration = TCPConfiguration()
    configuration.timestamps = false
    configuration.windowScaling = false
    configuration.receiveBufferSize = 65535
    configuration.maximumSegmentSize = 1000
    return configuration
}

/// A segment from the peer.
func peerSegment(seq: UInt32, ack: UInt32? = nil, flags: TCPFlags, window: UInt16 = 65535, mss: UInt16? = nil) -> TCPHeader {
    var header = TCPHeader(sourcePort: remoteEndpoint.port, destinationPort: localEndpoint.port, sequenceNumber: seq, acknowledgmentNumber: ack ?? 0, flags: ack == nil ? flags : flags.union(.ack), window: window)
    header.options.maximumSegmentSize = mss
    return header
}

/// Delivers a segment and returns what the connection sent in response.
@discardableResult
func deliver(_ connection: TCPConnection, _ header: TCPHeader, payload: [UInt8] = [], now: UInt64 = 0) -> [TCPOutgoingSegment] {
    connection.receive(header, payload: payload[...], now: now)
    defer { connection.outbox.removeAll() }
    return connection.outbox
}

enum StartState: String, Sendable, CaseIterable {
    case synSent, synReceived, established, finWait1, finWait2, halfClosed, closeWait, closing, lastAck, timeWait
}

/// Drives a fresh connection into `start` through legitimate transitions.
func connection(in start: StartState, configuration: TCPConfiguration = plainConfiguration()) -> TCPConnection {
    let peerNext = peerInitialSequence + 1
    switch start {
    case .synSent:
        let connection = TCPConnection.connect(local: localEndpoint, remote: remoteEndpoint, initialSequence: SequenceNumber(ourInitialSequence), configuration: configuration, now: 0)
        connection.outbox.removeAll()
        return connection
    case .synReceived:
        let connection = TCPConnection.accept(syn: peerSegment(seq: peerInitialSequence, flags: .syn, mss: 1000), local: localEndpoint, remote: remoteEndpoint, initialSequence: SequenceNumber(ourInitialSequence), configuration: configuration, now: 0)
        connection.listenerPort = localEndpoint.port
        connection.outbox.removeAll()
        return connection
    case .established:
        let connection = connection(in: .synSent, configuration: configuration)
        deliver(connection, peerSegment(seq: peerInitialSequence, ack: ourInitialSequence + 1, flags: .syn, mss: 1000))
        return connection
    case .finWait1:
        let connection = connection(in: .established, configuration: configuration)
        connection.close(now: 0)
        connection.outbox.removeAll()
        return connection
    case .finWait2:
        let connection = connection(in: .finWait1, configuration: configuration)
        deliver(connection, peerSegment(seq: peerNext, ack: ourInitialSequence + 2, flags: []))
        return connection
    case .halfClosed:
        // FIN-WAIT-2 after shutdown: the user still reads.
        let connection = connection(in: .established, configuration: configuration)
        connection.shutdownWrite(now: 0)
        deliver(connection, peerSegment(seq: peerNext, ack: ourInitialSequence + 2, flags: []))
        connection.outbox.removeAll()
        return connection
    case .closeWait:
        let connection = connection(in: .established, configuration: configuration)
        deliver(connection, peerSegment(seq: peerNext, ack: ourInitialSequence + 1, flags: .fin))
        return connection
    case .closing:
        let connection = connection(in: .finWait1, configuration: configuration)
        deliver(connection, peerSegment(seq: peerNext, ack: ourInitialSequence + 1, flags: .fin))
        return connection
    case .lastAck:
        let connection = connection(in: .closeWait, configuration: configuration)
        connection.close(now: 0)
        connection.outbox.removeAll()
        return connection
    case .timeWait:
        let connection = connection(in: .finWait2, configuration: configuration)
        deliver(connection, peerSegment(seq: peerNext, ack: ourInitialSequence + 2, flags: .fin))
        return connection
    }
}

/// One row: in `start`, a peer segment with sequence and acknowledgment
/// numbers relative to RCV.NXT and SND.NXT leads to `end` and a reply.
struct Transition: Sendable, CustomTestStringConvertible {
    var start: StartState
    var name: String
    var flags: TCPFlags
    /// Added to RCV.NXT (to the peer's ISN in SYN-SENT, where RCV.NXT is unset).
    var sequenceOffset: Int = 0
    /// Added to SND.NXT; nil sends no ACK bit.
    var acknowledgmentOffset: Int? = 0
    var payload = 0
    var end: TCPState
    /// Control bits of the first reply (PSH ignored), nil for silence.
    var reply: TCPFlags?
    var error: TCPConnectionError? = nil

    var testDescription: String { "\(start.rawValue): \(name)" }
}

let transitions: [Transition] = [
    Transition(start: .synSent, name: "SYN,ACK completes the handshake", flags: .syn, end: .established, reply: .ack),
    Transition(start: .synSent, name: "SYN alone is a simultaneous open", flags: .syn, acknowledgmentOffset: nil, end: .synReceived, reply: [.syn, .ack]),
    Transition(start: .synSent, name: "ACK of an unsent number draws RST", flags: .syn, acknowledgmentOffset: 5, end: .synSent, reply: .rst),
    Transition(start: .synSent, name: "ACK of the ISN itself draws RST", flags: [], acknowledgmentOffset: -1, end: .synSent, reply: .rst),
    Transition(start: .synSent, name: "RST with acceptable ACK refuses", flags: .rst, end: .closed, reply: nil, error: .refused),
    Transition(start: .synSent, name: "RST without ACK is ignored", flags: .rst, acknowledgmentOffset: nil, end: .synSent, reply: nil),
    Transition(start: .synSent, name: "bare ACK without SYN is dropped", flags: [], end: .synSent, reply: nil),
    Transition(start: .synReceived, name: "ACK of SYN establishes", flags: [], end: .established, reply: nil),
    Transition(start: .synReceived, name: "ACK of an unsent number draws RST", flags: [], acknowledgmentOffset: 10, end: .synReceived, reply: .rst),
    Transition(start: .synReceived, name: "RST returns a passive open to LISTEN", flags: .rst, acknowledgmentOffset: nil, end: .closed, reply: nil),
    Transition(start: .synReceived, name: "retransmitted SYN repeats SYN,ACK", flags: .syn, sequenceOffset: -1, acknowledgmentOffset: nil, end: .synReceived, reply: [.syn, .ack]),
    Transition(start: .synReceived, name: "ACK carrying FIN goes to CLOSE-WAIT", flags: .fin, end: .closeWait, reply: .ack),
    Transition(start: .established, name: "FIN", flags: .fin, end: .closeWait, reply: .ack),
    Transition(start: .established, name: "exact RST resets", flags: .rst, end: .closed, reply: nil, error: .reset),
    Transition(start: .established, name: "in-window inexact RST draws a challenge ACK", flags: .rst, sequenceOffset: 100, end: .established, reply: .ack),
    Transition(start: .established, name: "out-of-window RST is dropped", flags: .rst, sequenceOffset: 1_000_000, end: .established, reply: nil),
    Transition(start: .established, name: "SYN draws a challenge ACK", flags: .syn, end: .established, reply: .ack),
    Transition(start: .established, name: "data beyond the window draws an ACK", flags: [], sequenceOffset: 70000, payload: 10, end: .established, reply: .ack),
    Transition(start: .established, name: "old duplicate data draws an ACK", flags: [], sequenceOffset: -20, payload: 10, end: .established, reply: .ack),
    Transition(start: .established, name: "ACK of unsent data draws an ACK", flags: [], acknowledgmentOffset: 50, end: .established, reply: .ack),
    Transition(start: .established, name: "segment without ACK bit is dropped", flags: [], acknowledgmentOffset: nil, payload: 10, end: .established, reply: nil),
    Transition(start: .established, name: "one in-order segment waits for the delayed ACK", flags: [], payload: 10, end: .established, reply: nil),
    Transition(start: .established, name: "out-of-order data draws a duplicate ACK at once", flags: [], sequenceOffset: 500, payload: 10, end: .established, reply: .ack),
    Transition(start: .finWait1, name: "ACK of FIN", flags: [], end: .finWait2, reply: nil),
    Transition(start: .finWait1, name: "FIN before our FIN is acknowledged", flags: .fin, acknowledgmentOffset: -1, end: .closing, reply: .ack),
    Transition(start: .finWait1, name: "FIN with ACK of our FIN", flags: .fin, end: .timeWait, reply: .ack),
    Transition(start: .finWait1, name: "exact RST resets", flags: .rst, end: .closed, reply: nil, error: .reset),
    Transition(start: .finWait2, name: "FIN", flags: .fin, end: .timeWait, reply: .ack),
    Transition(start: .finWait2, name: "data after close draws RST", flags: [], payload: 10, end: .closed, reply: [.rst, .ack], error: .aborted),
    Transition(start: .halfClosed, name: "data still arrives after shutdown", flags: [], payload: 10, end: .finWait2, reply: nil),
    Transition(start: .halfClosed, name: "FIN", flags: .fin, end: .timeWait, reply: .ack),
    Transition(start: .closeWait, name: "exact RST resets", flags: .rst, end: .closed, reply: nil, error: .reset),
    Transition(start: .closeWait, name: "a repeated FIN is acknowledged", flags: .fin, sequenceOffset: -1, end: .closeWait, reply: .ack),
    Transition(start: .closing, name: "ACK of FIN", flags: [], end: .timeWait, reply: nil),
    Transition(start: .lastAck, name: "ACK of FIN closes", flags: [], end: .closed, reply: nil),
    Transition(start: .lastAck, name: "exact RST closes quietly", flags: .rst, end: .closed, reply: nil),
    Transition(start: .timeWait, name: "a retransmitted FIN is acknowledged again", flags: .fin, sequenceOffset: -1, end: .timeWait, reply: .ack),
    Transition(start: .timeWait, name: "exact RST closes quietly", flags: .rst, end: .closed, reply: nil),
]

@Test(arguments: transitions)
func stateTransition(_ row: Transition) throws {
    let connection = connection(in: row.start)
    try #require(connection.state == stateOf(row.start))
    let base = row.start == .synSent ? SequenceNumber(peerInitialSequence) : connection.receiveNext
    let sequence = (base + row.sequenceOffset).rawValue
    let acknowledgment = row.acknowledgmentOffset.map { (connection.sendNext + $0).rawValue }
    let payload = [UInt8](repeating: 0x61, count: row.payload)
    let replies = deliver(connection, peerSegment(seq: sequence, ack: acknowledgment, flags: row.flags), payload: payload)
    #expect(connection.state == row.end)
    var replyFlags = replies.first?.header.flags
    replyFlags?.remove(.psh)
    #expect(replyFlags == row.reply)
    #expect(connection.error == row.error)
}

func stateOf(_ start: StartState) -> TCPState {
    switch start {
    case .synSent: .synSent
    case .synReceived: .synReceived
    case .established: .established
    case .finWait1: .finWait1
    case .finWait2, .halfClosed: .finWait2
    case .closeWait: .closeWait
    case .closing: .closing
    case .lastAck: .lastAck
    case .timeWait: .timeWait
    }
}

/// User calls, table by table (RFC 9293 §3.10.4-5).
struct UserCallTransition: Sendable, CustomTestStringConvertible {
    enum Call: String, Sendable { case close, shutdown, abort }
    var start: StartState
    var call: Call
    var end: TCPState
    var reply: TCPFlags?
    var testDescription: String { "\(start.rawValue): \(call.rawValue)" }
}

let userCallTransitions: [UserCallTransition] = [
    UserCallTransition(start: .synSent, call: .close, end: .closed, reply: nil),
    UserCallTransition(start: .synReceived, call: .close, end: .synReceived, reply: nil),
    UserCallTransition(start: .established, call: .close, end: .finWait1, reply: [.fin, .ack]),
    UserCallTransition(start: .established, call: .shutdown, end: .finWait1, reply: [.fin, .ack]),
    UserCallTransition(start: .established, call: .abort, end: .closed, reply: [.rst, .ack]),
    UserCallTransition(start: .closeWait, call: .close, end: .lastAck, reply: [.fin, .ack]),
    UserCallTransition(start: .finWait2, call: .close, end: .finWait2, reply: nil),
    UserCallTransition(start: .timeWait, call: .close, end: .timeWait, reply: nil),
]

@Test(arguments: userCallTransitions)
func userCallTransition(_ row: UserCallTransition) {
    let connection = connection(in: row.start)
    switch row.call {
    case .close: connection.close(now: 0)
    case .shutdown: connection.shutdownWrite(now: 0)
    case .abort: connection.abort(now: 0)
    }
    #expect(connection.state == row.end)
    #expect(connection.outbox.first?.header.flags == row.reply)
}

@Test func synReceivedWithCloseSendsFinOnceEstablished() {
    let connection = connection(in: .synReceived)
    connection.close(now: 0)
    let replies = deliver(connection, peerSegment(seq: peerInitialSequence + 1, ack: ourInitialSequence + 1, flags: []))
    #expect(connection.state == .finWait1)
    #expect(replies.first?.header.flags == [.fin, .ack])
}

@Test func closeWithUnreadDataResets() {
    let connection = connection(in: .established)
    deliver(connection, peerSegment(seq: peerInitialSequence + 1, ack: ourInitialSequence + 1, flags: []), payload: [1, 2, 3])
    connection.close(now: 0)
    #expect(connection.state == .closed && connection.error == .aborted)
    #expect(connection.outbox.first?.header.flags == [.rst, .ack])
}

@Test func dataAfterFullCloseResets() {
    let connection = connection(in: .finWait2)
    connection.close(now: 0)
    let replies = deliver(connection, peerSegment(seq: peerInitialSequence + 1, ack: ourInitialSequence + 2, flags: []), payload: [1])
    #expect(replies.first?.header.flags == [.rst, .ack])
    #expect(connection.state == .closed)
}

@Test func timeWaitLastsTwoSegmentLifetimes() {
    let connection = connection(in: .timeWait)
    let lifetime = plainConfiguration().maximumSegmentLifetime
    #expect(connection.nextDeadline == 2 * lifetime)
    connection.tick(now: 2 * lifetime - 1)
    #expect(connection.state == .timeWait)
    // A retransmitted FIN restarts the timer.
    deliver(connection, peerSegment(seq: peerInitialSequence + 1, ack: ourInitialSequence + 2, flags: .fin), now: lifetime)
    connection.tick(now: 2 * lifetime)
    #expect(connection.state == .timeWait)
    connection.tick(now: 3 * lifetime)
    #expect(connection.state == .closed && connection.error == nil)
}

@Test func orphanedFinWait2TimesOut() {
    let connection = connection(in: .finWait1)  // close() was the user's last word
    deliver(connection, peerSegment(seq: peerInitialSequence + 1, ack: ourInitialSequence + 2, flags: []), now: 5)
    #expect(connection.state == .finWait2)
    connection.tick(now: 5 + plainConfiguration().finWait2Timeout)
    #expect(connection.state == .closed)
}

@Test func unacknowledgedSynIsRetransmittedWithBackoffThenFails() {
    var configuration = plainConfiguration()
    configuration.synRetries = 3
    let connection = connection(in: .synSent, configuration: configuration)
    var now: UInt64 = 0
    var intervals: [UInt64] = []
    while connection.state == .synSent, let deadline = connection.nextDeadline {
        intervals.append(deadline - now)
        now = deadline
        connection.tick(now: now)
        if connection.state == .synSent { #expect(connection.outbox.last?.header.flags == .syn) }
        connection.outbox.removeAll()
    }
    // RFC 6298 §2.1 and §5.5: 1 s, then doubling.
    #expect(intervals == [1_000_000_000, 2_000_000_000, 4_000_000_000, 8_000_000_000])
    #expect(connection.error == .timedOut)
}
