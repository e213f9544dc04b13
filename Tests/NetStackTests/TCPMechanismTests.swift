// TCP data-path mechanisms: RTO (RFC 6298), fast retransmit/NewReno (RFC 5681, 6582), delayed ACK, reassembly queue, persist, keep-alive, option negotiation (RFC 7323).
import Testing
@testable import NetStack

@Test func retransmissionTimeoutFollowsRFC6298() {
    var estimator = RetransmissionTimeoutEstimator(initial: 1_000_000_000, minimum: 200_000_000, maximum: 60_000_000_000)
    #expect(estimator.timeout == 1_000_000_000)
    // First sample R = 100 ms: SRTT = 100, RTTVAR = 50, RTO = 100 + 4*50 = 300 ms.
    estimator.sample(100_000_000)
    #expect(estimator.smoothedRoundTripTime == 100_000_000)
    #expect(estimator.roundTripTimeVariance == 50_000_000)
    #expect(estimator.timeout == 300_000_000)
    // Second sample R = 200 ms: RTTVAR = 3/4*50 + 1/4*|100-200| = 62.5; SRTT = 7/8*100 + 1/8*200 = 112.5;
    // RTO = 112.5 + 4*62.5 = 362.5 ms.
    estimator.sample(200_000_000)
    #expect(estimator.roundTripTimeVariance == 62_500_000)
    #expect(estimator.smoothedRoundTripTime == 112_500_000)
    #expect(estimator.timeout == 362_500_000)
    // Backoff doubles and is clamped at the maximum.
    estimator.backOff()
    #expect(estimator.timeout == 725_000_000)
    for _ in 0..<30 { estimator.backOff() }
    #expect(estimator.timeout == 60_000_000_000)
    // A tiny RTT is clamped to the minimum.
    var fast = RetransmissionTimeoutEstimator(initial: 1_000_000_000, minimum: 200_000_000)
    fast.sample(1_000_000)
    #expect(fast.timeout == 200_000_000)
}

/// An established connection with data queued, its segments collected.
func sendingConnection(bytes: Int, configuration: TCPConfiguration = plainConfiguration()) -> (TCPConnection, [TCPOutgoingSegment]) {
    let connection = connection(in: .established, configuration: configuration)
    connection.noDelay = true
    let data = [UInt8](repeating: 0x42, count: bytes)
    _ = data.withUnsafeBytes { connection.write($0, now: 0) }
    defer { connection.outbox.removeAll() }
    return (connection, connection.outbox)
}

func ack(_ connection: TCPConnection, _ number: SequenceNumber, window: UInt16 = 65535, now: UInt64 = 0) -> [TCPOutgoingSegment] {
    deliver(connection, peerSegment(seq: connection.receiveNext.rawValue, ack: number.rawValue, flags: [], window: window), now: now)
}

@Test func initialWindowAndSlowStart() {
    let (connection, segments) = sendingConnection(bytes: 20_000)
    // RFC 5681 §3.1 with SMSS 1000: IW = min(4*1000, max(2*1000, 4380)) = 4000, four segments.
    #expect(segments.count == 4)
    #expect(segments.map(\.payload.count) == [1000, 1000, 1000, 1000])
    // Each ACK of a full segment in slow start grows cwnd by SMSS: two new segments per ACK.
    let more = ack(connection, SequenceNumber(ourInitialSequence + 1 + 1000))
    #expect(more.count == 2)
    #expect(connection.congestionWindow == 5000)
}

@Test func timeoutRetransmitsFromFirstUnacknowledgedAndCollapsesWindow() {
    let (connection, segments) = sendingConnection(bytes: 4000)
    #expect(segments.count == 4)
    let deadline = connection.nextDeadline!
    #expect(deadline == 1_000_000_000)
    connection.tick(now: deadline)
    #expect(connection.outbox.count == 1)
    #expect(connection.outbox[0].header.sequenceNumber == ourInitialSequence + 1)
    #expect(connection.outbox[0].isRetransmission)
    // ssthresh = max(FlightSize/2, 2*SMSS) = 2000; cwnd = 1 SMSS (RFC 5681 eq. 4).
    #expect(connection.slowStartThreshold == 2000 && connection.congestionWindow == 1000)
    // The timer backs off to 2 s.
    #expect(connection.nextDeadline == deadline + 2_000_000_000)
}

@Test func threeDuplicateAcksTriggerFastRetransmitAndNewRenoRecovery() {
    let (connection, segments) = sendingConnection(bytes: 4000)
    #expect(segments.count == 4)
    let first = SequenceNumber(ourInitialSequence + 1)
    // Segment 1 is lost; segments 2-4 each produce a duplicate ACK.
    #expect(ack(connection, first).isEmpty)
    #expect(ack(connection, first).isEmpty)
    let third = ack(connection, first)
    #expect(third.first?.header.sequenceNumber == first.rawValue && third.first?.isRetransmission == true)
    #expect(connection.inFastRecovery)
    #expect(connection.slowStartThreshold == 2000)
    #expect(connection.congestionWindow == 2000 + 3 * 1000)
    #expect(connection.statistics.fastRetransmits == 1)
    // A partial ACK (segments 1 and 2 were missing) retransmits the next hole and stays in recovery.
    let partial = ack(connection, first + 1000)
    #expect(partial.first?.header.sequenceNumber == (first + 1000).rawValue)
    #expect(connection.inFastRecovery)
    // The full ACK ends recovery with cwnd = min(ssthresh, FlightSize + SMSS).
    _ = ack(connection, first + 4000)
    #expect(!connection.inFastRecovery)
    // Nothing is in flight: min(2000, max(0, 1000) + 1000) = 2000.
    #expect(connection.congestionWindow == 2000)
}

@Test func delayedAcknowledgment() {
    let connection = connection(in: .established)
    let next = peerInitialSequence + 1
    // One segment: no ACK until the delayed-ACK timer.
    #expect(deliver(connection, peerSegment(seq: next, ack: ourInitialSequence + 1, flags: []), payload: [UInt8](repeating: 1, count: 100), now: 10).isEmpty)
    #expect(connection.nextDeadline == 10 + plainConfiguration().delayedAcknowledgmentTimeout)
    // The second segment is acknowledged at once (RFC 9293 §3.8.6.3: every second full segment).
    let replies = deliver(connection, peerSegment(seq: next + 100, ack: ourInitialSequence + 1, flags: []), payload: [UInt8](repeating: 2, count: 100), now: 20)
    #expect(replies.count == 1 && replies[0].header.acknowledgmentNumber == next + 200)
    // A lone segment is acknowledged when the timer fires.
    _ = deliver(connection, peerSegment(seq: next + 200, ack: ourInitialSequence + 1, flags: []), payload: [3], now: 30)
    connection.tick(now: 30 + plainConfiguration().delayedAcknowledgmentTimeout)
    #expect(connection.outbox.count == 1 && connection.outbox[0].header.acknowledgmentNumber == next + 201)
}

@Test func outOfOrderSegmentsAreQueuedAndMerged() {
    let connection = connection(in: .established)
    let next = peerInitialSequence + 1
    func send(_ offset: UInt32, _ bytes: [UInt8]) -> [TCPOutgoingSegment] {
        deliver(connection, peerSegment(seq: next + offset, ack: ourInitialSequence + 1, flags: []), payload: bytes)
    }
    // Arrivals: [10,20), [5,15) overlapping, [30,40), then the hole [0,10) and [20,30).
    #expect(send(10, Array(10..<20)).first?.header.acknowledgmentNumber == next)
    _ = send(5, Array(5..<15))
    _ = send(30, Array(30..<40))
    #expect(connection.outOfOrder.count == 3)  // [5,10) added without duplicating [10,15)
    #expect(connection.bytesReadable == 0)
    let fill = send(0, Array(0..<10))
    #expect(fill.first?.header.acknowledgmentNumber == next + 20)
    _ = send(20, Array(20..<30))
    #expect(connection.bytesReadable == 40)
    var buffer = [UInt8](repeating: 0, count: 64)
    let n = buffer.withUnsafeMutableBytes { connection.read(into: $0, now: 0) }
    #expect(Array(buffer[0..<n]) == Array(0..<40))
    #expect(connection.outOfOrder.isEmpty)
}

@Test func receiveWindowShrinksWithBufferedDataAndReopens() {
    var configuration = plainConfiguration()
    configuration.receiveBufferSize = 4000
    let connection = connection(in: .established, configuration: configuration)
    let next = peerInitialSequence + 1
    var replies: [TCPOutgoingSegment] = []
    for index in 0..<4 {
        replies += deliver(connection, peerSegment(seq: next + UInt32(index * 1000), ack: ourInitialSequence + 1, flags: []), payload: [UInt8](repeating: 7, count: 1000))
    }
    #expect(replies.last?.header.window == 0)
    // A segment into the zero window is not accepted but acknowledged.
    let probe = deliver(connection, peerSegment(seq: next + 4000, ack: ourInitialSequence + 1, flags: []), payload: [1])
    #expect(probe.first?.header.acknowledgmentNumber == next + 4000 && probe.first?.header.window == 0)
    #expect(connection.bytesReadable == 4000)
    // Reading half the buffer sends a window update (receiver SWS avoidance threshold min(2000, 1000)).
    var buffer = [UInt8](repeating: 0, count: 2000)
    _ = buffer.withUnsafeMutableBytes { connection.read(into: $0, now: 0) }
    #expect(connection.outbox.last?.header.window == 2000)
}

@Test func zeroWindowIsProbed() {
    let connection = connection(in: .established)
    connection.noDelay = true
    // The peer closes its window.
    _ = ack(connection, SequenceNumber(ourInitialSequence + 1), window: 0)
    let data = [UInt8](repeating: 9, count: 500)
    _ = data.withUnsafeBytes { connection.write($0, now: 0) }
    #expect(connection.outbox.isEmpty)
    let deadline = connection.nextDeadline!
    connection.tick(now: deadline)
    #expect(connection.outbox.count == 1 && connection.outbox[0].payload.count == 1)
    connection.outbox.removeAll()
    // The window opens: the rest flows.
    let rest = ack(connection, SequenceNumber(ourInitialSequence + 2), window: 65535, now: deadline + 1)
    #expect(rest.map(\.payload.count).reduce(0, +) == 499)
}

@Test func keepAliveProbesThenTimesOut() {
    var configuration = plainConfiguration()
    configuration.keepAliveIdle = 10_000_000_000
    configuration.keepAliveInterval = 1_000_000_000
    configuration.keepAliveProbes = 3
    let connection = connection(in: .established, configuration: configuration)
    connection.setKeepAlive(true, now: 0)
    var probes = 0
    var now: UInt64 = 0
    while connection.state == .established, let deadline = connection.nextDeadline {
        now = deadline
        connection.tick(now: now)
        for segment in connection.outbox {
            // RFC 1122 §4.2.3.6: SEG.SEQ = SND.NXT - 1.
            #expect(segment.header.sequenceNumber == ourInitialSequence)
            probes += 1
        }
        connection.outbox.removeAll()
    }
    #expect(probes == 3)
    #expect(connection.error == .timedOut)
    #expect(now == 10_000_000_000 + 3 * 1_000_000_000)
}

@Test func keepAliveAnsweredKeepsTheConnection() {
    var configuration = plainConfiguration()
    configuration.keepAliveIdle = 10_000_000_000
    configuration.keepAliveInterval = 1_000_000_000
    let connection = connection(in: .established, configuration: configuration)
    connection.setKeepAlive(true, now: 0)
    connection.tick(now: 10_000_000_000)
    #expect(connection.outbox.count == 1)
    connection.outbox.removeAll()
    _ = ack(connection, SequenceNumber(ourInitialSequence + 1), now: 10_000_000_001)
    #expect(connection.nextDeadline == 20_000_000_001)
}

@Test func windowScaleTimestampsAndMSSAreNegotiated() {
    var configuration = TCPConfiguration()
    configuration.receiveBufferSize = 1 << 20
    let client = TCPConnection.connect(local: localEndpoint, remote: remoteEndpoint, initialSequence: SequenceNumber(1), configuration: configuration, now: 5_000_000)
    let syn = client.outbox[0].header
    client.outbox.removeAll()
    // 1 MiB needs shift 5 (65535 << 5 >= 2^20).
    #expect(syn.options.windowScale == 5)
    #expect(syn.options.maximumSegmentSize == 1460)
    #expect(syn.options.timestamps?.value == 6 && syn.options.timestamps?.echoReply == 0)
    var synAck = peerSegment(seq: 900, ack: 2, flags: .syn, window: 20000, mss: 1200)
    synAck.options.windowScale = 3
    synAck.options.timestamps = (777, 6)
    let replies = deliver(client, synAck, now: 15_000_000)
    #expect(client.state == .established)
    #expect(client.sendScale == 3 && client.receiveScale == 5)
    #expect(client.timestampsEnabled)
    #expect(client.sendSegmentSize == 1200 - 12)
    #expect(client.sendWindow == 20000)  // SYN windows are not scaled
    #expect(replies[0].header.options.timestamps?.echoReply == 777)
    // RTT from the timestamp echo: 16 ms - 6 ms = 10 ms.
    #expect(client.retransmissionTimeout.smoothedRoundTripTime == 10_000_000)
    // Later windows are scaled.
    _ = deliver(client, { var h = peerSegment(seq: 901, ack: 2, flags: [], window: 100); h.options.timestamps = (778, 16); return h }())
    #expect(client.sendWindow == 800)

    // A peer that offers neither gets neither.
    let plain = TCPConnection.connect(local: localEndpoint, remote: remoteEndpoint, initialSequence: SequenceNumber(1), configuration: configuration, now: 0)
    plain.outbox.removeAll()
    _ = deliver(plain, peerSegment(seq: 900, ack: 2, flags: .syn, window: 20000))
    #expect(plain.sendScale == 0 && plain.receiveScale == 0 && !plain.timestampsEnabled)
    #expect(plain.sendSegmentSize == 536)  // RFC 9293 §3.7.1 default MSS
}

@Test func pawsDropsOldTimestamps() {
    var configuration = TCPConfiguration()
    configuration.windowScaling = false
    let client = TCPConnection.connect(local: localEndpoint, remote: remoteEndpoint, initialSequence: SequenceNumber(1), configuration: configuration, now: 0)
    client.outbox.removeAll()
    var synAck = peerSegment(seq: 900, ack: 2, flags: .syn)
    synAck.options.timestamps = (1000, 1)
    _ = deliver(client, synAck)
    var old = peerSegment(seq: 901, ack: 2, flags: [])
    old.options.timestamps = (999, 1)
    let replies = deliver(client, old, payload: [1, 2, 3])
    #expect(client.bytesReadable == 0)
    #expect(replies.count == 1)
    #expect(client.statistics.duplicateSegments == 1)
}

@Test func outOfOrderDataIsReportedInSackBlocks() {
    let client = TCPConnection.connect(local: localEndpoint, remote: remoteEndpoint, initialSequence: SequenceNumber(ourInitialSequence), configuration: plainConfiguration(), now: 0)
    #expect(client.outbox[0].header.options.sackPermitted)
    client.outbox.removeAll()
    var synAck = peerSegment(seq: peerInitialSequence, ack: ourInitialSequence + 1, flags: .syn, mss: 1000)
    synAck.options.sackPermitted = true
    deliver(client, synAck)
    let next = peerInitialSequence + 1
    func send(_ offset: UInt32, _ count: Int) -> [TCPSackBlock]? {
        deliver(client, peerSegment(seq: next + offset, ack: ourInitialSequence + 1, flags: []), payload: [UInt8](repeating: 1, count: count)).first?.header.options.sackBlocks
    }
    // RFC 2018 §4: the block with the latest arrival comes first; adjacent pieces merge.
    #expect(send(100, 50) == [TCPSackBlock(left: next + 100, right: next + 150)])
    #expect(send(300, 50) == [TCPSackBlock(left: next + 300, right: next + 350), TCPSackBlock(left: next + 100, right: next + 150)])
    #expect(send(150, 50) == [TCPSackBlock(left: next + 100, right: next + 200), TCPSackBlock(left: next + 300, right: next + 350)])
    for index in 0..<4 { _ = send(UInt32(500 + 100 * index), 10) }
    // Without timestamps four blocks fit.
    #expect(send(1000, 10)?.count == 4)
    // Filling the first hole acknowledges up to the next one; the remaining blocks follow.
    let fill = deliver(client, peerSegment(seq: next, ack: ourInitialSequence + 1, flags: []), payload: [UInt8](repeating: 1, count: 100))
    #expect(fill.first?.header.acknowledgmentNumber == next + 200)
    // The latest out-of-order arrival still leads, then sequence order.
    #expect(fill.first?.header.options.sackBlocks == [
        TCPSackBlock(left: next + 1000, right: next + 1010), TCPSackBlock(left: next + 300, right: next + 350),
        TCPSackBlock(left: next + 500, right: next + 510), TCPSackBlock(left: next + 600, right: next + 610),
    ])
    // A peer without SACK-permitted gets no blocks.
    let plain = connection(in: .established)
    let replies = deliver(plain, peerSegment(seq: next + 100, ack: ourInitialSequence + 1, flags: []), payload: [1])
    #expect(replies.first?.header.options.sackBlocks == [])
}
