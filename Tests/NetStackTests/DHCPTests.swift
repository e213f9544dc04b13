// DHCP: message format and the client against a small server written here (RFC 2131, RFC 2132).
import Testing
@testable import NetStack

@Test func dhcpMessageRoundTripAndLayout() throws {
    var message = DHCPMessage(operation: 1, transactionID: 0xDEAD_BEEF, clientHardwareAddress: TwoHosts.macA)
    message.messageType = .request
    message.broadcast = true
    message.requestedAddress = IPv4Address(10, 0, 0, 50)
    message.serverIdentifier = IPv4Address(10, 0, 0, 2)
    message.parameterRequestList = [1, 3, 6]
    message.leaseTime = 3600
    message.routers = [IPv4Address(10, 0, 0, 1)]
    message.subnetMask = IPv4Address(255, 255, 255, 0)
    var bytes: [UInt8] = []
    message.write(to: &bytes)
    #expect(bytes.count == 300)
    // RFC 2131 §2: op, htype 1, hlen 6, hops 0, xid; flags bit 15 = broadcast; chaddr at 28; cookie at 236.
    #expect(Array(bytes[0..<8]) == [1, 1, 6, 0, 0xDE, 0xAD, 0xBE, 0xEF])
    #expect(bytes[10] == 0x80 && bytes[11] == 0)
    #expect(Array(bytes[28..<34]) == [2, 0, 0, 0, 0, 1])
    #expect(Array(bytes[236..<243]) == [99, 130, 83, 99, 53, 1, 3])
    #expect(try DHCPMessage.parse(bytes[...]) == message)
    #expect(throws: PacketError.truncated(.dhcp, needed: 240, available: 239)) { try DHCPMessage.parse(bytes[0..<239]) }
    var badCookie = bytes
    badCookie[236] = 0
    #expect(throws: PacketError.self) { try DHCPMessage.parse(badCookie[...]) }
    // An option whose length runs past the end.
    let overrun = Array(bytes[0..<240]) + [51, 4, 0, 0]
    #expect(throws: PacketError.badOption(.dhcp, kind: 51, offset: 240)) { try DHCPMessage.parse(overrun[...]) }
    let badLength = Array(bytes[0..<240]) + [54, 3, 1, 2, 3, 255]
    #expect(throws: PacketError.badOption(.dhcp, kind: 54, offset: 240)) { try DHCPMessage.parse(badLength[...]) }
}

/// A minimal DHCP server on stack B for one client.
final class TestDHCPServer {
    let stack: NetworkStack<LinkPort>
    let socket: SocketHandle
    var leaseSeconds: UInt32 = 3600
    var answering = true
    var refuse = false
    var received: [DHCPMessage] = []
    let offered = IPv4Address(10, 0, 0, 50)

    init(stack: NetworkStack<LinkPort>) throws {
        self.stack = stack
        socket = try stack.bindUDP(port: 67)
    }

    func service() {
        while let datagram = try? stack.receive(socket) {
            guard let request = try? DHCPMessage.parse(datagram.payload[...]) else { continue }
            received.append(request)
            guard answering, let type = request.messageType else { continue }
            var reply = DHCPMessage(operation: 2, transactionID: request.transactionID, clientHardwareAddress: request.clientHardwareAddress)
            reply.yourAddress = offered
            reply.serverIdentifier = TwoHosts.addressB
            reply.leaseTime = leaseSeconds
            reply.subnetMask = IPv4Address(255, 255, 255, 0)
            reply.routers = [TwoHosts.addressB]
            switch type {
            case .discover: reply.messageType = .offer
            case .request: reply.messageType = refuse ? .negativeAcknowledge : .acknowledge
            default: continue
            }
            var bytes: [UInt8] = []
            reply.write(to: &bytes)
            if request.clientAddress != .any {
                try? stack.send(socket, to: IPv4Endpoint(address: request.clientAddress, port: 68), bytes)
            } else {
                try? stack.sendBroadcast(socket, interface: 0, port: 68, bytes)
            }
        }
    }
}

@Test func dhcpAcquiresAddressAndTheInterfaceWorks() throws {
    let hosts = TwoHosts(addressA: nil)
    let server = try TestDHCPServer(stack: hosts.b)
    try hosts.a.startDHCP(interface: 0, hostName: "guest")
    #expect(hosts.a.dhcpState(interface: 0) == .selecting)
    #expect(hosts.run { server.service(); return hosts.a.dhcpState(interface: 0) == .bound })
    #expect(server.received.map(\.messageType) == [.discover, .request])
    #expect(server.received[1].requestedAddress == server.offered && server.received[1].serverIdentifier == TwoHosts.addressB)
    #expect(server.received[0].hostName == Array("guest".utf8))
    #expect(hosts.a.interfaceConfiguration(0) == IPv4InterfaceConfiguration(address: server.offered, prefixLength: 24, gateway: TwoHosts.addressB))
    // The new address works for ordinary traffic.
    try hosts.a.sendEchoRequest(to: TwoHosts.addressB, identifier: 3, sequence: 3, data: [])
    #expect(hosts.run { hosts.a.receiveEchoReply() != nil })
}

@Test func dhcpRenewsAtT1AndLosesTheLeaseWhenTheServerIsGone() throws {
    let hosts = TwoHosts(addressA: nil)
    let server = try TestDHCPServer(stack: hosts.b)
    server.leaseSeconds = 1000
    try hosts.a.startDHCP(interface: 0)
    #expect(hosts.run { server.service(); return hosts.a.dhcpState(interface: 0) == .bound })
    let bound = hosts.now
    let firstLease = try #require(hosts.a.dhcpLease(interface: 0))
    #expect(firstLease.renewAt == bound + 500_000_000_000)
    #expect(firstLease.rebindAt == bound + 875_000_000_000)
    // At T1 the client unicasts a REQUEST with ciaddr set; the ACK extends the lease.
    #expect(hosts.run { server.service(); return (hosts.a.dhcpLease(interface: 0)?.expiresAt ?? 0) > firstLease.expiresAt! })
    let renewal = server.received.last!
    #expect(renewal.clientAddress == server.offered && renewal.serverIdentifier == nil && renewal.requestedAddress == nil)
    #expect(hosts.now >= bound + 500_000_000_000)
    #expect(hosts.a.dhcpState(interface: 0) == .bound)
    // The server goes silent: RENEWING, then REBINDING with broadcasts, then the lease expires.
    server.answering = false
    let seen = server.received.count
    let renewed = hosts.now
    #expect(hosts.run(for: 2_000_000_000_000) { server.service(); return hosts.a.interfaceConfiguration(0) == nil })
    #expect(hosts.now >= renewed + 1000_000_000_000)
    #expect(server.received.count > seen + 2)
    // Afterwards the client starts over with DISCOVER.
    #expect(hosts.a.dhcpState(interface: 0) == .selecting)
    #expect(hosts.run { server.service(); return server.received.last?.messageType == .discover })
}

@Test func dhcpNegativeAcknowledgmentRestarts() throws {
    let hosts = TwoHosts(addressA: nil)
    let server = try TestDHCPServer(stack: hosts.b)
    server.refuse = true
    try hosts.a.startDHCP(interface: 0)
    #expect(hosts.run { server.service(); return server.received.filter { $0.messageType == .discover }.count == 2 })
    #expect(hosts.a.interfaceConfiguration(0) == nil)
    #expect(hosts.a.dhcpState(interface: 0) == .selecting)
}

@Test func dhcpDiscoverRetransmitsWithBackoff() throws {
    let hosts = TwoHosts(addressA: nil)
    let server = try TestDHCPServer(stack: hosts.b)
    server.answering = false
    try hosts.a.startDHCP(interface: 0)
    var times: [UInt64] = []
    hosts.run(for: 200_000_000_000) {
        let before = server.received.count
        server.service()
        if server.received.count > before { times.append(hosts.now) }
        return times.count == 6
    }
    #expect(times.count == 6)
    let gaps = zip(times.dropFirst(), times).map { Double($0 - $1) / 1e9 }
    // 4, 8, 16, 32, 64 s, each within ±1 s (RFC 2131 §4.1).
    for (gap, expected) in zip(gaps, [4.0, 8.0, 16.0, 32.0, 64.0]) {
        #expect(abs(gap - expected) <= 1.01, "gap \(gap) expected \(expected)")
    }
}
