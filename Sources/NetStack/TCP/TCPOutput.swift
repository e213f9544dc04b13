// TCP output and timers: segmentization, Nagle, windows, retransmission (RFC 9293 §3.8, RFC 6298 §5, RFC 5681 §3, RFC 6582, RFC 1122 §4.2.3.6 keep-alive).

extension TCPConnection {
    /// The millisecond timestamp clock (RFC 7323 §5.4 asks for 1 ms to 1 s ticks).
    func timestampClock(_ now: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: now / 1_000_000 &+ 1) }

    /// Free receive space, the largest window that can be promised.
    var receiveSpace: Int { Swift.max(0, configuration.receiveBufferSize - receiveBuffer.count) }

    /// The window currently promised to the peer.
    var receiveWindow: Int { Swift.max(0, receiveAdvertised - receiveNext) }

    /// The window field for the next non-SYN segment, and the right edge it promises.
    /// Receiver silly-window avoidance (RFC 9293 §3.8.6.2.2): the edge only moves
    /// right by at least min(buffer/2, MSS).
    func windowToAdvertise() -> (field: UInt16, edge: SequenceNumber) {
        let promised = receiveWindow
        var window = Swift.min(receiveSpace, 65535 << Int(receiveScale))
        let threshold = Swift.min(configuration.receiveBufferSize / 2, sendSegmentSize)
        if window < promised || window - promised < threshold { window = promised }
        // Round up so scaling never pulls the edge left of a promise.
        let unit = 1 << Int(receiveScale)
        let field = Swift.min((window + unit - 1) >> Int(receiveScale), 65535)
        return (UInt16(field), receiveNext + (field << Int(receiveScale)))
    }

    func makeHeader(sequence: SequenceNumber, flags: TCPFlags, now: UInt64) -> TCPHeader {
        var header = TCPHeader(
            sourcePort: local.port, destinationPort: remote.port, sequenceNumber: sequence.rawValue,
            acknowledgmentNumber: flags.contains(.ack) ? receiveNext.rawValue : 0, flags: flags, window: 0)
        if flags.contains(.syn) {
            // Windows in SYN segments are never scaled (RFC 7323 §2.2).
            let window = Swift.min(receiveSpace, 65535)
            header.window = UInt16(window)
            receiveAdvertised = SequenceNumber.max(receiveAdvertised, receiveNext + window)
            header.options.maximumSegmentSize = UInt16(Swift.min(configuration.maximumSegmentSize, 65535))
            let offering = state == .synSent
            if configuration.windowScaling && (offering || windowScalingEnabled) {
                header.options.windowScale = receiveScale
            }
            if configuration.timestamps && (offering || timestampsEnabled) {
                header.options.timestamps = (timestampClock(now), offering ? 0 : timestampRecent)
            }
            if configuration.selectiveAcknowledgments && (offering || selectiveAcknowledgmentsEnabled) {
                header.options.sackPermitted = true
            }
        } else {
            let (field, edge) = windowToAdvertise()
            header.window = field
            receiveAdvertised = SequenceNumber.max(receiveAdvertised, edge)
            if timestampsEnabled { header.options.timestamps = (timestampClock(now), timestampRecent) }
        }
        return header
    }

    /// The SACK blocks describing the out-of-order queue: the block holding
    /// the latest arrival first, then the others in sequence order, as many as
    /// fit beside the other options (3 with timestamps, 4 without).
    func selectiveAcknowledgmentBlocks() -> [TCPSackBlock] {
        var blocks: [(start: SequenceNumber, end: SequenceNumber)] = []
        for piece in outOfOrder {
            let end = piece.sequence + piece.bytes.count
            if let last = blocks.last, last.end == piece.sequence {
                blocks[blocks.count - 1].end = end
            } else {
                blocks.append((piece.sequence, end))
            }
        }
        if let latest = latestOutOfOrderSequence, let index = blocks.firstIndex(where: { $0.start <= latest && latest < $0.end }), index > 0 {
            blocks.insert(blocks.remove(at: index), at: 0)
        }
        let limit = timestampsEnabled ? 3 : 4
        return blocks.prefix(limit).map { TCPSackBlock(left: $0.start.rawValue, right: $0.end.rawValue) }
    }

    func enqueue(_ header: TCPHeader, payload: ArraySlice<UInt8>) {
        var header = header
        // Only pure ACKs carry SACK blocks, so data segments never outgrow the MSS budget.
        if selectiveAcknowledgmentsEnabled && payload.isEmpty && !outOfOrder.isEmpty && header.flags.contains(.ack) && !header.flags.contains(.syn) && !header.flags.contains(.rst) {
            header.options.sackBlocks = selectiveAcknowledgmentBlocks()
        }
        if header.flags.contains(.ack) {
            lastAcknowledgmentSent = receiveNext
            acknowledgeNow = false
            delayedAcknowledgmentDeadline = nil
            unacknowledgedSegments = 0
        }
        statistics.segmentsSent += 1
        outbox.append(TCPOutgoingSegment(header: header, payload: payload))
    }

    func sendSYN(now: UInt64) {
        let flags: TCPFlags = state == .synSent ? .syn : [.syn, .ack]
        enqueue(makeHeader(sequence: initialSendSequence, flags: flags, now: now), payload: [])
    }

    func sendAcknowledgment(now: UInt64) {
        enqueue(makeHeader(sequence: sendNext, flags: .ack, now: now), payload: [])
    }

    /// RFC 5961 §3.2 and §4.2: answer a suspicious RST or SYN with an ACK instead of acting on it.
    func sendChallengeAcknowledgment(now: UInt64) {
        statistics.challengeAcknowledgments += 1
        sendAcknowledgment(now: now)
    }

    func emitReset(sequence: SequenceNumber) {
        var header = TCPHeader(sourcePort: local.port, destinationPort: remote.port, sequenceNumber: sequence.rawValue, acknowledgmentNumber: receiveNext.rawValue, flags: [.rst, .ack], window: 0)
        header.options = TCPOptions()
        statistics.segmentsSent += 1
        outbox.append(TCPOutgoingSegment(header: header, payload: []))
    }

    /// Bytes in flight: sent and not acknowledged.
    var flightSize: Int { sendMaximum - sendUnacknowledged }

    var sendingAllowed: Bool {
        switch state {
        case .established, .closeWait, .finWait1, .closing, .lastAck: true
        default: false
        }
    }

    /// Sequence number the FIN occupies once queued.
    var finSequence: SequenceNumber { sendBufferStart + sendBuffer.count }

    /// Emits the segment starting at `sequence` with at most `limit` data bytes,
    /// adding FIN when it ends the stream. Returns the sequence space used.
    @discardableResult
    func emitData(at sequence: SequenceNumber, limit: Int, now: UInt64) -> Int {
        let offset = Swift.max(0, sequence - sendBufferStart)
        let length = Swift.max(0, Swift.min(limit, sendBuffer.count - offset))
        var flags: TCPFlags = .ack
        if finQueued && sequence + length == finSequence { flags.insert(.fin) }
        if length > 0 && offset + length == sendBuffer.count { flags.insert(.psh) }
        guard length > 0 || flags.contains(.fin) else { return 0 }
        enqueue(makeHeader(sequence: sequence, flags: flags, now: now), payload: sendBuffer.slice(from: offset, length: length))
        if sequence < sendMaximum {
            statistics.retransmittedSegments += 1
            outbox[outbox.count - 1].isRetransmission = true
        }
        return length + (flags.contains(.fin) ? 1 : 0)
    }

    /// Sends what the windows, Nagle and the buffer allow, then a pure ACK if one is owed.
    func transmit(now: UInt64) {
        if sendingAllowed {
            while true {
                let usable = Swift.min(sendWindow, congestionWindow) - (sendNext - sendUnacknowledged)
                let offset = sendNext - sendBufferStart
                let unsent = Swift.max(0, sendBuffer.count - offset)
                let finUnsent = finQueued && sendNext <= finSequence
                if unsent == 0 && !finUnsent { break }
                let length = Swift.max(0, Swift.min(unsent, sendSegmentSize, usable))
                let finishes = finUnsent && length == unsent
                if length == 0 && !finishes { break }
                if length < sendSegmentSize && !finishes && sendNext > sendUnacknowledged {
                    // Nagle (RFC 9293 §3.7.4) and sender SWS avoidance (§3.8.6.2.1):
                    // small segments wait while data is in flight.
                    if !noDelay || length < unsent { break }
                }
                let used = emitData(at: sendNext, limit: length, now: now)
                if used == 0 { break }
                if roundTripTiming == nil && !timestampsEnabled && sendNext == sendMaximum {
                    roundTripTiming = (sendNext, now)
                }
                sendNext += used
                if sendNext > sendMaximum { sendMaximum = sendNext }
                if retransmitDeadline == nil { armRetransmitTimer(now: now) }
                persistDeadline = nil
            }
            // Zero window with data waiting and nothing in flight: probe (RFC 9293 §3.8.6.1).
            if sendWindow == 0 && sendBuffer.count > sendNext - sendBufferStart && sendNext == sendUnacknowledged && persistDeadline == nil {
                persistDeadline = now &+ retransmissionTimeout.timeout
            }
        }
        if acknowledgeNow && state != .closed && state != .synSent {
            sendAcknowledgment(now: now)
        }
    }

    func armRetransmitTimer(now: UInt64) {
        retransmitDeadline = now &+ retransmissionTimeout.timeout
    }

    /// After the user read: a window update if the window grew worthwhile (RFC 9293 §3.8.6.2.2).
    func openWindowIfWorthwhile(now: UInt64) {
        let promised = receiveWindow
        let threshold = Swift.min(configuration.receiveBufferSize / 2, sendSegmentSize)
        if receiveSpace - promised >= threshold && (promised < threshold || receiveSpace >= 2 * promised) {
            sendAcknowledgment(now: now)
        }
    }

    /// Runs expired timers.
    public func tick(now: UInt64) {
        if let deadline = timeWaitDeadline, deadline <= now {
            terminate(nil)
            return
        }
        if let deadline = finWait2Deadline, deadline <= now, state == .finWait2 {
            terminate(nil)
            return
        }
        if let deadline = retransmitDeadline, deadline <= now {
            retransmitDeadline = nil
            retransmissionTimerExpired(now: now)
            if state == .closed { return }
        }
        if let deadline = persistDeadline, deadline <= now {
            persistDeadline = nil
            if sendWindow == 0 && sendBuffer.count > sendNext - sendBufferStart {
                // One byte past the window forces a fresh ACK with the current window.
                let used = emitData(at: sendNext, limit: 1, now: now)
                sendNext += used
                if sendNext > sendMaximum { sendMaximum = sendNext }
                retransmissionTimeout.backOff()
                armRetransmitTimer(now: now)
            }
        }
        if let deadline = delayedAcknowledgmentDeadline, deadline <= now {
            delayedAcknowledgmentDeadline = nil
            if state != .closed { sendAcknowledgment(now: now) }
        }
        if let deadline = keepAliveDeadline, deadline <= now {
            keepAliveTimerExpired(now: now)
        }
    }

    func retransmissionTimerExpired(now: UInt64) {
        retransmitCount += 1
        statistics.timeouts += 1
        retransmissionTimeout.backOff()
        switch state {
        case .synSent, .synReceived:
            let limit = state == .synSent ? configuration.synRetries : configuration.synAckRetries
            guard retransmitCount <= limit else {
                terminate(state == .synSent ? .timedOut : nil)
                return
            }
            synRetransmitted = true
            roundTripTiming = nil  // Karn: an ambiguous sample
            statistics.retransmittedSegments += 1
            sendSYN(now: now)
            outbox[outbox.count - 1].isRetransmission = true
            armRetransmitTimer(now: now)
            return
        case .closed, .listen, .timeWait, .finWait2, .closeWait:
            if sendUnacknowledged == sendMaximum { return }
        default:
            break
        }
        guard retransmitCount <= configuration.dataRetries else {
            emitReset(sequence: sendNext)
            terminate(.timedOut)
            return
        }
        // RFC 5681 §3.1 eq. 4 on the first timeout of a series; RFC 6298 §5.4-5.6.
        if retransmitCount == 1 {
            slowStartThreshold = Swift.max(flightSize / 2, 2 * sendSegmentSize)
        }
        congestionWindow = sendSegmentSize
        inFastRecovery = false
        duplicateAcknowledgments = 0
        recoveryPoint = sendMaximum  // RFC 6582 §3.2 step 1 after a timeout
        roundTripTiming = nil
        sendNext = sendUnacknowledged
        transmit(now: now)
        if retransmitDeadline == nil { armRetransmitTimer(now: now) }
    }

    func keepAliveTimerExpired(now: UInt64) {
        guard keepAliveEnabled, state == .established || state == .closeWait else {
            keepAliveDeadline = nil
            return
        }
        if keepAliveProbesSent >= configuration.keepAliveProbes {
            terminate(.timedOut)
            return
        }
        keepAliveProbesSent += 1
        // RFC 1122 §4.2.3.6: SEG.SEQ = SND.NXT-1 draws an ACK from a live peer.
        enqueue(makeHeader(sequence: sendNext - 1, flags: .ack, now: now), payload: [])
        keepAliveDeadline = now &+ configuration.keepAliveInterval
    }

    /// Turns keep-alive probing on or off.
    public func setKeepAlive(_ enabled: Bool, now: UInt64) {
        keepAliveEnabled = enabled
        keepAliveProbesSent = 0
        keepAliveDeadline = enabled ? now &+ configuration.keepAliveIdle : nil
    }
}
