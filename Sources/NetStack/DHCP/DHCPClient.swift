// The DHCP client state machine: discover/offer/request/ack, renewal and rebinding, lease expiry (RFC 2131 §4.4, figure 5; retransmission §4.1).

/// An address lease obtained with DHCP.
public struct DHCPLease: Equatable, Sendable {
    /// Address, prefix (from the subnet mask) and gateway (the first router).
    public var configuration: IPv4InterfaceConfiguration
    /// The server identifier, where RENEWING requests go.
    public var server: IPv4Address
    /// Option 6, recorded for the resolver.
    public var domainNameServers: [IPv4Address]
    /// Clock values (nanoseconds) of T1, T2 and the end of the lease; nil for an infinite lease.
    public var renewAt: UInt64?
    public var rebindAt: UInt64?
    public var expiresAt: UInt64?
}

/// A DHCP client for one interface. Pure state machine: the owner feeds it
/// server replies and clock ticks and sends what appears in `outbox`.
public final class DHCPClient {
    /// States of RFC 2131 figure 5 (INIT-REBOOT and REBOOTING are not used).
    public enum State: Equatable, Sendable {
        case initial, selecting, requesting, bound, renewing, rebinding
    }

    /// What the owner must act on.
    public enum Event: Equatable, Sendable {
        /// Configure the interface with this lease (first binding or a changed one).
        case bound(DHCPLease)
        /// The lease was extended; the address is unchanged.
        case renewed(DHCPLease)
        /// The lease ended or the server refused it: drop the address.
        case lost
    }

    /// A message to send: to the limited broadcast address or unicast to a server.
    public struct Outgoing: Equatable, Sendable {
        public var message: DHCPMessage
        public var destination: IPv4Address
    }

    /// The interface's MAC address, sent as chaddr.
    public let hardwareAddress: MACAddress
    /// Where the client is in RFC 2131 figure 5.
    public private(set) var state: State = .initial
    /// The lease in force, if any.
    public private(set) var lease: DHCPLease?
    /// Messages to send, oldest first; the owner drains it.
    public var outbox: [Outgoing] = []
    /// Events to act on, oldest first; the owner drains it.
    public var events: [Event] = []
    /// Option 12 sent in every request.
    public var hostName: [UInt8] = []

    var random: SplitMix64
    var transactionID: UInt32 = 0
    var startedAt: UInt64 = 0
    var offer: DHCPMessage?
    var retransmitDeadline: UInt64?
    var attempts = 0
    /// Requests sent in REQUESTING before starting over.
    let maximumRequests = 4

    /// A client in INIT; `seed` drives transaction IDs and retransmission jitter.
    public init(hardwareAddress: MACAddress, seed: UInt64) {
        self.hardwareAddress = hardwareAddress
        random = SplitMix64(seed: seed)
    }

    /// INIT: starts acquiring an address.
    public func start(now: UInt64) {
        state = .selecting
        transactionID = UInt32(truncatingIfNeeded: random.next())
        startedAt = now
        attempts = 0
        offer = nil
        send(discover(), to: .broadcast, now: now)
    }

    func baseMessage(now: UInt64) -> DHCPMessage {
        var message = DHCPMessage(operation: 1, transactionID: transactionID, clientHardwareAddress: hardwareAddress)
        message.seconds = UInt16(Swift.min((now - startedAt) / 1_000_000_000, 65535))
        message.hostName = hostName
        // Subnet mask, router, DNS, lease, T1, T2.
        message.parameterRequestList = [1, 3, 6, 51, 58, 59]
        return message
    }

    func discover() -> DHCPMessage {
        var message = baseMessage(now: startedAt)
        message.messageType = .discover
        message.broadcast = true
        return message
    }

    func request(now: UInt64) -> DHCPMessage {
        var message = baseMessage(now: now)
        message.messageType = .request
        switch state {
        case .requesting:
            // RFC 2131 §4.3.2 table 4: SELECTING answers carry server id and requested address, ciaddr 0.
            message.broadcast = true
            message.requestedAddress = offer?.yourAddress
            message.serverIdentifier = offer?.serverIdentifier
        default:
            // RENEWING and REBINDING: ciaddr is the leased address, no server id or requested address.
            message.clientAddress = lease?.configuration.address ?? .any
        }
        return message
    }

    /// Sends and arms retransmission: 4 s doubling to 64 s, randomized by ±1 s (RFC 2131 §4.1).
    func send(_ message: DHCPMessage, to destination: IPv4Address, now: UInt64) {
        outbox.append(Outgoing(message: message, destination: destination))
        let base = UInt64(4) << UInt64(Swift.min(attempts, 4))
        let jitter = random.next() % 2_000_000_001
        retransmitDeadline = now &+ base * 1_000_000_000 &+ jitter &- 1_000_000_000
        attempts += 1
    }

    /// Processes a server reply.
    public func receive(_ message: DHCPMessage, now: UInt64) {
        guard message.operation == 2, message.transactionID == transactionID, message.clientHardwareAddress == hardwareAddress, let type = message.messageType else { return }
        switch (state, type) {
        case (.selecting, .offer):
            guard message.yourAddress != .any, message.serverIdentifier != nil else { return }
            offer = message
            state = .requesting
            attempts = 0
            send(request(now: now), to: .broadcast, now: now)
        case (.requesting, .acknowledge), (.renewing, .acknowledge), (.rebinding, .acknowledge):
            bind(message, now: now)
        case (.requesting, .negativeAcknowledge), (.renewing, .negativeAcknowledge), (.rebinding, .negativeAcknowledge):
            if lease != nil { events.append(.lost) }
            lease = nil
            start(now: now)
        default:
            break
        }
    }

    func bind(_ message: DHCPMessage, now: UInt64) {
        let address = message.yourAddress
        guard address != .any else { return }
        let prefix: Int
        if let mask = message.subnetMask, IPv4Address.mask(prefixLength: mask.rawValue.nonzeroBitCount) == mask {
            prefix = mask.rawValue.nonzeroBitCount
        } else {
            // No (valid) mask: the classful default (RFC 1122 §3.3.1.1 historical rule).
            let first = address.rawValue >> 24
            prefix = first < 128 ? 8 : (first < 192 ? 16 : 24)
        }
        let configuration = IPv4InterfaceConfiguration(address: address, prefixLength: prefix, gateway: message.routers.first)
        let server = message.serverIdentifier ?? lease?.server ?? offer?.serverIdentifier ?? .any
        var newLease = DHCPLease(configuration: configuration, server: server, domainNameServers: message.domainNameServers)
        if let seconds = message.leaseTime, seconds != 0xFFFF_FFFF {
            let duration = UInt64(seconds) * 1_000_000_000
            // T1 = 0.5 and T2 = 0.875 of the lease unless the server says otherwise (RFC 2131 §4.4.5).
            let renew = message.renewalTime.map { UInt64($0) * 1_000_000_000 } ?? duration / 2
            let rebind = message.rebindingTime.map { UInt64($0) * 1_000_000_000 } ?? duration / 8 * 7
            newLease.renewAt = now &+ Swift.min(renew, duration)
            newLease.rebindAt = now &+ Swift.min(Swift.max(rebind, renew), duration)
            newLease.expiresAt = now &+ duration
        }
        let previous = lease
        lease = newLease
        state = .bound
        retransmitDeadline = nil
        attempts = 0
        if let previous, previous.configuration == newLease.configuration {
            events.append(.renewed(newLease))
        } else {
            events.append(.bound(newLease))
        }
    }

    /// The earliest clock value `tick` has work at.
    public var nextDeadline: UInt64? {
        var candidates: [UInt64?] = [lease?.expiresAt]
        switch state {
        case .bound: candidates.append(lease?.renewAt)
        case .renewing: candidates += [lease?.rebindAt, retransmitDeadline]
        case .selecting, .requesting, .rebinding: candidates.append(retransmitDeadline)
        case .initial: break
        }
        var earliest: UInt64? = nil
        for deadline in candidates {
            if let deadline { earliest = Swift.min(earliest ?? deadline, deadline) }
        }
        return earliest
    }

    /// Runs timers: retransmissions, T1, T2 and lease expiry.
    public func tick(now: UInt64) {
        if let lease, let expiry = lease.expiresAt, expiry <= now {
            self.lease = nil
            events.append(.lost)
            start(now: now)
            return
        }
        switch state {
        case .bound:
            if let renewAt = lease?.renewAt, renewAt <= now {
                state = .renewing
                transactionID = UInt32(truncatingIfNeeded: random.next())
                startedAt = now
                retransmitRenewal(now: now)
            }
        case .renewing:
            if let rebindAt = lease?.rebindAt, rebindAt <= now {
                state = .rebinding
                retransmitRenewal(now: now)
            } else if let deadline = retransmitDeadline, deadline <= now {
                retransmitRenewal(now: now)
            }
        case .rebinding:
            if let deadline = retransmitDeadline, deadline <= now { retransmitRenewal(now: now) }
        case .selecting:
            if let deadline = retransmitDeadline, deadline <= now { send(discover(), to: .broadcast, now: now) }
        case .requesting:
            if let deadline = retransmitDeadline, deadline <= now {
                if attempts >= maximumRequests {
                    start(now: now)
                } else {
                    send(request(now: now), to: .broadcast, now: now)
                }
            }
        case .initial:
            break
        }
    }

    /// RFC 2131 §4.4.5: in RENEWING and REBINDING, wait half the time left
    /// until T2 (or expiry), but at least 60 s.
    func retransmitRenewal(now: UInt64) {
        guard let lease else { return }
        let destination = state == .renewing ? lease.server : IPv4Address.broadcast
        outbox.append(Outgoing(message: request(now: now), destination: destination))
        let end = (state == .renewing ? lease.rebindAt : lease.expiresAt) ?? now
        let half = end > now ? (end - now) / 2 : 0
        retransmitDeadline = Swift.min(now &+ Swift.max(half, 60_000_000_000), end)
    }
}
