// TCP segment arrival (RFC 9293 §3.10.7.3-4; RFC 5961 §3-5 blind-attack checks; RFC 7323 §5 PAWS; RFC 5681 §3.2 and RFC 6582 NewReno).

extension TCPConnection {
    /// Processes one arriving segment addressed to this connection.
    public func receive(_ header: TCPHeader, payload: ArraySlice<UInt8>, now: UInt64) {
        statistics.segmentsReceived += 1
        switch state {
        case .closed, .listen:
            return
        case .synSent:
            receiveInSynSent(header, payload: payload, now: now)
            return
        default:
            break
        }
        let flags = header.flags
        let sequence = SequenceNumber(header.sequenceNumber)

        // The peer missed our SYN,ACK and sent its SYN again.
        if state == .synReceived && flags.contains(.syn) && !flags.contains(.ack) && sequence == initialReceiveSequence {
            sendSYN(now: now)
            return
        }

        // PAWS (RFC 7323 §5.3): a timestamp older than TS.Recent marks an old duplicate.
        if timestampsEnabled && !flags.contains(.rst), let stamps = header.options.timestamps,
            Int32(bitPattern: stamps.value &- timestampRecent) < 0
        {
            statistics.duplicateSegments += 1
            sendAcknowledgment(now: now)
            return
        }

        // First: the sequence number (RFC 9293 §3.10.7.4).
        var payload = payload
        var fin = flags.contains(.fin)
        let segmentLength = payload.count + (flags.contains(.syn) ? 1 : 0) + (fin ? 1 : 0)
        let window = receiveWindow
        let acceptable: Bool
        if segmentLength == 0 {
            acceptable = window == 0 ? sequence == receiveNext : (sequence >= receiveNext && sequence < receiveNext + window)
        } else if window == 0 {
            acceptable = false
        } else {
            let last = sequence + (segmentLength - 1)
            acceptable = (sequence >= receiveNext && sequence < receiveNext + window) || (last >= receiveNext && last < receiveNext + window)
        }
        var owesAcknowledgment = false
        if !acceptable {
            if window == 0 && sequence == receiveNext && flags.contains(.ack) && !flags.contains(.rst) && !flags.contains(.syn) {
                // A zero window still takes ACKs and a FIN that brings no data (§3.10.7.4).
                if !payload.isEmpty { fin = false }
                payload = []
                owesAcknowledgment = true
            } else {
                if !flags.contains(.rst) {
                    statistics.duplicateSegments += 1
                    if state == .timeWait && fin { timeWaitDeadline = now &+ 2 * configuration.maximumSegmentLifetime }
                    sendAcknowledgment(now: now)
                }
                return
            }
        }
        if timestampsEnabled, let stamps = header.options.timestamps, sequence <= lastAcknowledgmentSent,
            Int32(bitPattern: stamps.value &- timestampRecent) >= 0
        {
            timestampRecent = stamps.value  // RFC 7323 §4.3
        }

        // Second: RST (RFC 5961 §3.2: only an exact match resets; others draw a challenge ACK).
        if flags.contains(.rst) {
            if sequence == receiveNext {
                switch state {
                case .synReceived: terminate(listenerPort != nil ? nil : .refused)
                case .closing, .lastAck, .timeWait: terminate(nil)
                default: terminate(.reset)
                }
            } else {
                sendChallengeAcknowledgment(now: now)
            }
            return
        }

        // Fourth: SYN (RFC 5961 §4.2).
        if flags.contains(.syn) {
            if state == .synReceived && listenerPort != nil {
                terminate(nil)  // back to LISTEN: the listener keeps no per-connection state
            } else {
                sendChallengeAcknowledgment(now: now)
            }
            return
        }

        // Fifth: ACK.
        guard flags.contains(.ack) else { return }
        let acknowledgment = SequenceNumber(header.acknowledgmentNumber)
        if state == .synReceived {
            guard acknowledgment > sendUnacknowledged && acknowledgment <= sendMaximum else {
                emitBareReset(sequence: acknowledgment)
                return
            }
            state = .established
            if synRetransmitted { retransmissionTimeout.resetAfterHandshakeRetransmission() }
            sendWindow = Int(header.window) << Int(sendScale)
            maximumSendWindow = sendWindow
            sendWindowUpdateSequence = sequence
            sendWindowUpdateAcknowledgment = acknowledgment
            if finQueued { state = .finWait1 }
        }
        guard processAcknowledgment(header, acknowledgment: acknowledgment, payloadIsEmpty: payload.isEmpty && !fin, now: now) else { return }

        let ourFinAcknowledged = finQueued && sendUnacknowledged > finSequence
        switch state {
        case .finWait1 where ourFinAcknowledged:
            state = .finWait2
            if userClosed { finWait2Deadline = now &+ configuration.finWait2Timeout }
        case .closing where ourFinAcknowledged:
            enterTimeWait(now: now)
            return
        case .lastAck where ourFinAcknowledged:
            terminate(nil)
            return
        default:
            break
        }

        // Seventh: segment text.
        if !payload.isEmpty {
            switch state {
            case .established, .finWait1, .finWait2:
                if userClosed {
                    // Nobody will read it: tell the peer (RFC 9293 §3.10.4 leaves this to the implementation).
                    emitReset(sequence: sendNext)
                    terminate(.aborted)
                    return
                }
                acceptData(at: sequence, payload, now: now)
            default:
                break  // after the peer's FIN, data is bogus
            }
        }

        // Eighth: FIN, processed only once everything before it has arrived.
        if fin {
            let finAt = sequence + payload.count
            if finAt >= receiveNext && finAt <= receiveAdvertised && !receiveClosed { pendingFin = finAt }
            if finAt < receiveNext { acknowledgeNow = true }
        }
        if let finAt = pendingFin, finAt == receiveNext, !receiveClosed {
            processFin(now: now)
        }
        if owesAcknowledgment { acknowledgeNow = true }
        if keepAliveEnabled {
            keepAliveProbesSent = 0
            keepAliveDeadline = now &+ configuration.keepAliveIdle
        }
        if state != .closed { transmit(now: now) }
    }

    /// RST without ACK: <SEQ=SEG.ACK><CTL=RST> (RFC 9293 §3.10.7.3).
    func emitBareReset(sequence: SequenceNumber) {
        let header = TCPHeader(sourcePort: local.port, destinationPort: remote.port, sequenceNumber: sequence.rawValue, acknowledgmentNumber: 0, flags: .rst, window: 0)
        statistics.segmentsSent += 1
        outbox.append(TCPOutgoingSegment(header: header, payload: []))
    }

    func receiveInSynSent(_ header: TCPHeader, payload: ArraySlice<UInt8>, now: UInt64) {
        let flags = header.flags
        let acknowledgment = SequenceNumber(header.acknowledgmentNumber)
        if flags.contains(.ack) {
            guard acknowledgment > initialSendSequence && acknowledgment <= sendMaximum else {
                if !flags.contains(.rst) { emitBareReset(sequence: acknowledgment) }
                return
            }
        }
        if flags.contains(.rst) {
            if flags.contains(.ack) { terminate(.refused) }
            return
        }
        guard flags.contains(.syn) else { return }
        let sequence = SequenceNumber(header.sequenceNumber)
        initialReceiveSequence = sequence
        receiveNext = sequence + 1
        receiveAdvertised = receiveNext
        negotiate(peerSYN: header, active: true)
        sendWindow = Int(header.window)  // never scaled in a SYN
        maximumSendWindow = sendWindow
        sendWindowUpdateSequence = sequence
        sendWindowUpdateAcknowledgment = acknowledgment
        if flags.contains(.ack) {
            sampleRoundTrip(header, acknowledgment: acknowledgment, now: now)
            sendUnacknowledged = acknowledgment
            state = .established
            retransmitCount = 0
            retransmitDeadline = nil
            if synRetransmitted { retransmissionTimeout.resetAfterHandshakeRetransmission() }
            if !payload.isEmpty { acceptData(at: sequence + 1, payload, now: now) }
            acknowledgeNow = true
            transmit(now: now)
        } else {
            // Simultaneous open (RFC 9293 §3.5, figure 8).
            state = .synReceived
            sendSYN(now: now)
        }
    }

    func sampleRoundTrip(_ header: TCPHeader, acknowledgment: SequenceNumber, now: UInt64) {
        if timestampsEnabled, let stamps = header.options.timestamps, stamps.echoReply != 0 {
            let elapsed = timestampClock(now) &- stamps.echoReply
            if elapsed < 1 << 31 { retransmissionTimeout.sample(UInt64(elapsed) * 1_000_000) }
            roundTripTiming = nil
        } else if let timing = roundTripTiming, acknowledgment > timing.sequence {
            retransmissionTimeout.sample(now - timing.sentAt)
            roundTripTiming = nil
        }
    }

    /// The ACK field in synchronized states; false means drop the segment.
    func processAcknowledgment(_ header: TCPHeader, acknowledgment: SequenceNumber, payloadIsEmpty: Bool, now: UInt64) -> Bool {
        if acknowledgment > sendMaximum {
            sendAcknowledgment(now: now)  // acknowledges something not yet sent
            return false
        }
        // RFC 5961 §5.2: an ACK far behind is from a blind attacker or ancient.
        if acknowledgment < sendUnacknowledged - Swift.max(maximumSendWindow, 65535) {
            sendChallengeAcknowledgment(now: now)
            return false
        }
        let sequence = SequenceNumber(header.sequenceNumber)
        let advertised = Int(header.window) << Int(sendScale)
        if acknowledgment > sendUnacknowledged {
            newAcknowledgment(header, acknowledgment: acknowledgment, now: now)
        } else if acknowledgment == sendUnacknowledged && payloadIsEmpty && sendMaximum > sendUnacknowledged && advertised == sendWindow {
            duplicateAcknowledgment(now: now)
        }
        if sendWindowUpdateSequence < sequence || (sendWindowUpdateSequence == sequence && sendWindowUpdateAcknowledgment <= acknowledgment) {
            if advertised > 0 && sendWindow == 0 { persistDeadline = nil }
            if advertised == 0 && sendWindow == 0 && acknowledgment == sendUnacknowledged {
                retransmitCount = 0  // a live peer answering probes with a closed window
            }
            sendWindow = advertised
            maximumSendWindow = Swift.max(maximumSendWindow, advertised)
            sendWindowUpdateSequence = sequence
            sendWindowUpdateAcknowledgment = acknowledgment
        }
        return true
    }

    func newAcknowledgment(_ header: TCPHeader, acknowledgment: SequenceNumber, now: UInt64) {
        sampleRoundTrip(header, acknowledgment: acknowledgment, now: now)
        let acknowledged = acknowledgment - sendUnacknowledged
        let dataAcknowledged = Swift.min(Swift.max(0, acknowledgment - sendBufferStart), sendBuffer.count)
        sendBuffer.removeFirst(dataAcknowledged)
        sendBufferStart += dataAcknowledged
        sendUnacknowledged = acknowledgment
        if sendNext < acknowledgment { sendNext = acknowledgment }
        retransmitCount = 0
        retransmissionTimeout.resetBackoff()

        if inFastRecovery {
            if acknowledgment >= recoveryPoint {
                // Full acknowledgment (RFC 6582 §3.2 step 3).
                congestionWindow = Swift.min(slowStartThreshold, Swift.max(flightSize, sendSegmentSize) + sendSegmentSize)
                inFastRecovery = false
                duplicateAcknowledgments = 0
            } else {
                // Partial acknowledgment: the next hole is lost too.
                emitData(at: acknowledgment, limit: sendSegmentSize, now: now)
                congestionWindow = Swift.max(congestionWindow - acknowledged + (acknowledged >= sendSegmentSize ? sendSegmentSize : 0), sendSegmentSize)
                armRetransmitTimer(now: now)
                return
            }
        } else {
            duplicateAcknowledgments = 0
            if congestionWindow < slowStartThreshold {
                congestionWindow += Swift.min(acknowledged, sendSegmentSize)
            } else {
                congestionWindow += Swift.max(1, sendSegmentSize * sendSegmentSize / Swift.max(congestionWindow, 1))
            }
            congestionWindow = Swift.min(congestionWindow, 1 << 30)
        }
        if sendUnacknowledged == sendMaximum {
            retransmitDeadline = nil
        } else {
            armRetransmitTimer(now: now)
        }
    }

    func duplicateAcknowledgment(now: UInt64) {
        duplicateAcknowledgments += 1
        if inFastRecovery {
            congestionWindow += sendSegmentSize
        } else if duplicateAcknowledgments == 3 && sendUnacknowledged > recoveryPoint {
            // Fast retransmit (RFC 5681 §3.2, RFC 6582 §3.2 step 2).
            slowStartThreshold = Swift.max(flightSize / 2, 2 * sendSegmentSize)
            recoveryPoint = sendMaximum
            inFastRecovery = true
            roundTripTiming = nil
            statistics.fastRetransmits += 1
            emitData(at: sendUnacknowledged, limit: sendSegmentSize, now: now)
            congestionWindow = slowStartThreshold + 3 * sendSegmentSize
        }
    }

    /// Takes in-window data: in order into the receive buffer, otherwise into the
    /// out-of-order queue (RFC 9293 §3.10.7.4 seventh; ACK policy RFC 5681 §4.2).
    func acceptData(at sequence: SequenceNumber, _ payload: ArraySlice<UInt8>, now: UInt64) {
        var start = sequence
        var bytes = payload
        if start < receiveNext {
            let cut = receiveNext - start
            guard cut < bytes.count else {
                acknowledgeNow = true
                return
            }
            bytes = bytes.dropFirst(cut)
            start = receiveNext
        }
        let room = receiveAdvertised - start
        guard room > 0 else {
            acknowledgeNow = true
            return
        }
        if bytes.count > room { bytes = bytes.prefix(room) }
        if start == receiveNext {
            receiveBuffer.append(bytes)
            receiveNext += bytes.count
            var filled = false
            while let first = outOfOrder.first, first.sequence <= receiveNext {
                outOfOrder.removeFirst()
                let end = first.sequence + first.bytes.count
                if end > receiveNext {
                    receiveBuffer.append(first.bytes[(receiveNext - first.sequence)...])
                    receiveNext = end
                }
                filled = true
            }
            if filled || !outOfOrder.isEmpty {
                acknowledgeNow = true
            } else {
                unacknowledgedSegments += 1
                if unacknowledgedSegments >= 2 {
                    acknowledgeNow = true
                } else if delayedAcknowledgmentDeadline == nil {
                    delayedAcknowledgmentDeadline = now &+ configuration.delayedAcknowledgmentTimeout
                }
            }
        } else {
            statistics.outOfOrderSegments += 1
            latestOutOfOrderSequence = start
            insertOutOfOrder(start, bytes)
            acknowledgeNow = true  // the duplicate ACK drives the sender's fast retransmit
        }
    }

    /// Stores only the parts not already held, keeping the queue sorted and disjoint.
    func insertOutOfOrder(_ start: SequenceNumber, _ bytes: ArraySlice<UInt8>) {
        let end = start + bytes.count
        var cursor = start
        var pieces: [(sequence: SequenceNumber, bytes: [UInt8])] = []
        for piece in outOfOrder {
            let pieceEnd = piece.sequence + piece.bytes.count
            if pieceEnd <= cursor { continue }
            if piece.sequence >= end { break }
            if piece.sequence > cursor {
                pieces.append((cursor, Array(bytes[(bytes.startIndex + (cursor - start))..<(bytes.startIndex + (piece.sequence - start))])))
            }
            cursor = SequenceNumber.max(cursor, pieceEnd)
            if cursor >= end { break }
        }
        if cursor < end {
            pieces.append((cursor, Array(bytes[(bytes.startIndex + (cursor - start))...])))
        }
        guard !pieces.isEmpty, outOfOrder.count + pieces.count <= configuration.maximumOutOfOrderSegments else { return }
        outOfOrder.append(contentsOf: pieces)
        let base = receiveNext
        outOfOrder.sort { ($0.sequence - base) < ($1.sequence - base) }
    }

    func processFin(now: UInt64) {
        receiveNext += 1
        receiveClosed = true
        pendingFin = nil
        acknowledgeNow = true
        switch state {
        case .synReceived, .established:
            state = .closeWait
        case .finWait1:
            if finQueued && sendUnacknowledged > finSequence {
                enterTimeWait(now: now)
            } else {
                state = .closing
            }
        case .finWait2:
            enterTimeWait(now: now)
        case .timeWait:
            timeWaitDeadline = now &+ 2 * configuration.maximumSegmentLifetime
        default:
            break
        }
    }

    func enterTimeWait(now: UInt64) {
        state = .timeWait
        timeWaitDeadline = now &+ 2 * configuration.maximumSegmentLifetime
        retransmitDeadline = nil
        persistDeadline = nil
        keepAliveDeadline = nil
        finWait2Deadline = nil
        outOfOrder.removeAll()
    }
}
