// Tests of two stacks over an in-memory link: ARP, ICMP echo, UDP, fragmentation and TCP (RFC 826, 792, 768, 791 §3.2, 9293).
#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import NetStack

@Test func pingResolvesARPAndGetsEchoReply() throws {
    let hosts = TwoHosts()
    try hosts.a.sendEchoRequest(to: TwoHosts.addressB, identifier: 7, sequence: 1, data: Array("ping".utf8))
    var reply: EchoReply?
    #expect(hosts.run { reply = hosts.a.receiveEchoReply(); return reply != nil })
    #expect(reply == EchoReply(source: TwoHosts.addressB, identifier: 7, sequence: 1, data: Array("ping".utf8)))
    #expect(hosts.a.arpLookup(TwoHosts.addressB, interface: 0) == TwoHosts.macB)
    // B learned A from the request addressed to it (RFC 826 merge rule).
    #expect(hosts.b.arpLookup(TwoHosts.addressA, interface: 0) == TwoHosts.macA)
    #expect(hosts.b.statistics.icmpEchoRequestsAnswered == 1)
    #expect(hosts.a.statistics.arpRequestsSent == 1)
}

@Test func attachingAnnouncesTheAddressWithGratuitousARP() throws {
    let link = MemoryLink(ports: 1)
    link.capturing = true
    let stack = NetworkStack<LinkPort>()
    stack.attach(LinkPort(link: link, port: 0, macAddress: TwoHosts.macA), configuration: IPv4InterfaceConfiguration(address: TwoHosts.addressA, prefixLength: 24))
    #expect(link.captured[0].count == 1)
    let (ethernet, payload) = try EthernetHeader.parse(link.captured[0][0][...])
    #expect(ethernet.destination == .broadcast && ethernet.etherType == .arp)
    let arp = try ARPPacket.parse(payload)
    #expect(arp.isGratuitous && arp.senderProtocolAddress == TwoHosts.addressA && arp.senderHardwareAddress == TwoHosts.macA)
}

@Test func arpEntriesExpireAndUnresolvedQueuesAreBounded() throws {
    var configuration = NetworkStackConfiguration()
    configuration.arp.maximumPendingPerAddress = 3
    let link = MemoryLink(ports: 1)  // nobody answers
    link.capturing = true
    let stack = NetworkStack<LinkPort>(configuration: configuration)
    stack.attach(LinkPort(link: link, port: 0, macAddress: TwoHosts.macA), configuration: IPv4InterfaceConfiguration(address: TwoHosts.addressA, prefixLength: 24))
    let socket = try stack.bindUDP()
    for _ in 0..<10 { try stack.send(socket, to: IPv4Endpoint(address: TwoHosts.addressB, port: 9), [1, 2, 3]) }
    // One request, three packets held, seven dropped.
    #expect(stack.statistics.arpRequestsSent == 1)
    #expect(stack.statistics.framesDropped == 7)
    // Two more requests one second apart, then the entry and its packets go.
    var now: UInt64 = 0
    for _ in 0..<5 {
        now += 1_000_000_000
        stack.poll(now: now)
    }
    #expect(stack.statistics.arpRequestsSent == 3)
    #expect(stack.arpEntryCount(interface: 0) == 0)
    #expect(stack.nextDeadline == nil)
}

@Test func resolvedARPEntriesExpire() throws {
    let hosts = TwoHosts()
    try hosts.a.sendEchoRequest(to: TwoHosts.addressB, identifier: 1, sequence: 1, data: [])
    #expect(hosts.run { hosts.a.receiveEchoReply() != nil })
    #expect(hosts.a.arpLookup(TwoHosts.addressB, interface: 0) != nil)
    hosts.now += ARPConfiguration().entryLifetime
    hosts.run(for: 0)
    #expect(hosts.a.arpLookup(TwoHosts.addressB, interface: 0) == nil)
}

@Test func udpEchoBetweenStacks() throws {
    let hosts = TwoHosts()
    let server = try hosts.b.bindUDP(port: 7)
    let client = try hosts.a.bindUDP()
    #expect(throws: SocketError.addressInUse(port: 7)) { try hosts.b.bindUDP(port: 7) }
    #expect(throws: SocketError.wouldBlock) { try hosts.b.receive(server) }
    try hosts.a.send(client, to: IPv4Endpoint(address: TwoHosts.addressB, port: 7), Array("hello".utf8))
    var echoed: UDPDatagram?
    #expect(hosts.run {
        if let datagram = try? hosts.b.receive(server) {
            try? hosts.b.send(server, to: datagram.source, datagram.payload.reversed())
        }
        echoed = try? hosts.a.receive(client)
        return echoed != nil
    })
    #expect(echoed?.payload == Array("olleh".utf8))
    #expect(echoed?.source == IPv4Endpoint(address: TwoHosts.addressB, port: 7))
}

@Test func udpToClosedPortDrawsPortUnreachable() throws {
    let hosts = TwoHosts()
    let client = try hosts.a.bindUDP()
    try hosts.a.send(client, to: IPv4Endpoint(address: TwoHosts.addressB, port: 9), [1])
    #expect(hosts.run { hosts.a.statistics.icmpErrorsReceived == 1 })
    #expect(hosts.b.statistics.udpNoPort == 1 && hosts.b.statistics.icmpErrorsSent == 1)
}

@Test func largeDatagramsAreFragmentedAndReassembled() throws {
    let hosts = TwoHosts(mtu: 576)
    // Resolve ARP first: the queue for an unresolved address holds 8 packets, fewer than the 17 fragments.
    try hosts.a.sendEchoRequest(to: TwoHosts.addressB, identifier: 1, sequence: 1, data: [])
    #expect(hosts.run { hosts.a.receiveEchoReply() != nil })
    let server = try hosts.b.bindUDP(port: 5000)
    let client = try hosts.a.bindUDP()
    let payload = (0..<9000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 8) }
    try hosts.a.send(client, to: IPv4Endpoint(address: TwoHosts.addressB, port: 5000), payload)
    var received: UDPDatagram?
    #expect(hosts.run { received = try? hosts.b.receive(server); return received != nil })
    #expect(received.map { $0.payload == payload } == true)
    #expect(hosts.a.statistics.ipFragmentsSent == 17)  // 9008 bytes in 552-byte pieces
    #expect(hosts.b.statistics.ipReassembled == 1)
    #expect(hosts.b.reassemblyUsage.bytes == 0)
}

@Test func tcpConnectEchoAndOrderlyClose() throws {
    let hosts = TwoHosts()
    let listener = try hosts.b.listen(port: 80)
    let client = try hosts.a.connect(to: IPv4Endpoint(address: TwoHosts.addressB, port: 80))
    #expect(try hosts.a.state(of: client) == .synSent)
    var server: SocketHandle?
    #expect(hosts.run { server = try? hosts.b.accept(listener); return server != nil })
    #expect(try hosts.b.state(of: server!) == .established)
    #expect(hosts.run { (try? hosts.a.state(of: client)) == .established })
    #expect(hosts.a.readiness(client).contains(.writable))
    #expect(try hosts.a.write(client, Array("GET /".utf8)) == 5)
    var request: [UInt8] = []
    #expect(hosts.run {
        if let bytes = try? hosts.b.read(server!, maximumCount: 100) { request += bytes }
        return request.count == 5
    })
    #expect(request == Array("GET /".utf8))
    // Server answers and closes; client sees data then end of stream.
    _ = try hosts.b.write(server!, Array("OK".utf8))
    hosts.b.close(server!)
    #expect(try hosts.b.state(of: listener) == .listen)
    var response: [UInt8] = []
    var endOfStream = false
    #expect(hosts.run {
        while let bytes = try? hosts.a.read(client, maximumCount: 100) {
            if bytes.isEmpty { endOfStream = true; break }
            response += bytes
        }
        return endOfStream
    })
    #expect(response == Array("OK".utf8))
    #expect(try hosts.a.state(of: client) == .closeWait)
    let serverConnection = hosts.b.connections.values.first!
    #expect(hosts.run { serverConnection.state == .finWait2 })
    let clientConnection = try hosts.a.tcpConnection(client)
    hosts.a.close(client)
    #expect(clientConnection.state == .lastAck)
    #expect(throws: SocketError.badHandle(client.rawValue)) { try hosts.a.state(of: client) }
    #expect(hosts.run { serverConnection.state == .timeWait })
    let entered = hosts.now
    #expect(hosts.run { hosts.a.connectionCount == 0 })  // LAST-ACK ends with the ACK of its FIN
    #expect(hosts.b.connectionCount == 1)
    // TIME-WAIT lasts 2 MSL, then the connection is gone.
    #expect(hosts.run { hosts.b.connectionCount == 0 })
    #expect(hosts.now - entered >= 2 * TCPConfiguration().maximumSegmentLifetime)
    #expect(serverConnection.state == .closed && serverConnection.error == nil)
}

@Test func tcpConnectToClosedPortIsRefused() throws {
    let hosts = TwoHosts()
    let client = try hosts.a.connect(to: IPv4Endpoint(address: TwoHosts.addressB, port: 81))
    #expect(hosts.run { hosts.a.readiness(client).contains(.error) })
    #expect(throws: SocketError.connection(.refused)) { try hosts.a.read(client, maximumCount: 1) }
    #expect(hosts.b.statistics.tcpResetsSent == 1)
}

@Test func tcpConnectTimesOutWithoutPeer() throws {
    var configuration = NetworkStackConfiguration()
    configuration.tcp.synRetries = 2
    let hosts = TwoHosts(configuration: configuration)
    hosts.link.impairment.loss = 1.0
    let client = try hosts.a.connect(to: IPv4Endpoint(address: TwoHosts.addressB, port: 80))
    // ARP never resolves either, so the SYNs die in the ARP queue; the timer still runs: 1 s, 2 s, 4 s.
    #expect(hosts.run { hosts.a.readiness(client).contains(.error) })
    #expect(throws: SocketError.connection(.timedOut)) { try hosts.a.read(client, maximumCount: 1) }
    #expect(hosts.now >= 7_000_000_000)
}

/// Moves `total` pattern bytes from A to B, checking order as they arrive.
func transfer(_ hosts: TwoHosts, total: Int) throws -> (received: Int, intact: Bool) {
    var generator = SplitMix64(seed: UInt64(total))
    var data = [UInt8](repeating: 0, count: total)
    data.withUnsafeMutableBytes { buffer in
        var index = 0
        while index + 8 <= buffer.count {
            buffer.storeBytes(of: generator.next(), toByteOffset: index, as: UInt64.self)
            index += 8
        }
    }
    let listener = try hosts.b.listen(port: 9000)
    let client = try hosts.a.connect(to: IPv4Endpoint(address: TwoHosts.addressB, port: 9000))
    var server: SocketHandle?
    var sent = 0
    var received = 0
    var intact = true
    var readBuffer = [UInt8](repeating: 0, count: 65536)
    var closed = false
    let done = hosts.run(for: 3_600_000_000_000) {
        if server == nil { server = try? hosts.b.accept(listener) }
        while sent < total {
            let n = data.withUnsafeBytes { bytes in
                (try? hosts.a.write(client, UnsafeRawBufferPointer(rebasing: bytes[sent..<min(total, sent + 65536)]))) ?? 0
            }
            if n == 0 { break }
            sent += n
        }
        if sent == total && !closed {
            hosts.a.close(client)
            closed = true
        }
        if let server {
            while true {
                let n = readBuffer.withUnsafeMutableBytes { (try? hosts.b.read(server, into: $0)) ?? -1 }
                if n <= 0 {
                    if n == 0 { return true }
                    break
                }
                guard received + n <= total else {
                    intact = false
                    return true
                }
                let same = readBuffer.withUnsafeBytes { got in
                    data.withUnsafeBytes { want in memcmp(got.baseAddress!, want.baseAddress! + received, n) == 0 }
                }
                if !same { intact = false }
                received += n
            }
        }
        return false
    }
    #expect(done)
    return (received, intact)
}

@Test func bulkTransferOverCleanLink() throws {
    let hosts = TwoHosts()
    let result = try transfer(hosts, total: 2 << 20)
    #expect(result.received == 2 << 20 && result.intact)
    #expect(hosts.a.statistics.tcpRetransmissions == 0)
}

@Test func tenMebibytesArriveIntactUnderLossDuplicationAndReordering() throws {
    var impairment = MemoryLink.Impairment()
    impairment.loss = 0.05
    impairment.duplication = 0.01
    impairment.reordering = 0.02
    impairment.delay = 1_000_000
    impairment.jitter = 200_000
    let hosts = TwoHosts(seed: 42, impairment: impairment)
    let result = try transfer(hosts, total: 10 << 20)
    #expect(result.received == 10 << 20)
    #expect(result.intact)
    #expect(hosts.link.framesLost > 300)
    #expect(hosts.a.statistics.tcpRetransmissions > 0)
}

@Test func manyConcurrentRequestResponseConnectionsUnderLoss() throws {
    var impairment = MemoryLink.Impairment()
    impairment.loss = 0.03
    impairment.reordering = 0.02
    let hosts = TwoHosts(seed: 77, impairment: impairment)
    let listener = try hosts.b.listen(port: 8080, backlog: 64)
    var clients: [SocketHandle] = []
    for _ in 0..<40 { clients.append(try hosts.a.connect(to: IPv4Endpoint(address: TwoHosts.addressB, port: 8080))) }
    var servers: [SocketHandle] = []
    var requested = Set<Int>()
    var responses: [Int: [UInt8]] = [:]
    var answered = Set<Int>()
    var requests: [Int: [UInt8]] = [:]
    var shortWrites = 0
    let done = hosts.run {
        while let server = try? hosts.b.accept(listener) { servers.append(server) }
        for (index, client) in clients.enumerated() where !requested.contains(index) && hosts.a.readiness(client).contains(.writable) {
            _ = try? hosts.a.write(client, Array("request \(index)\n".utf8))
            requested.insert(index)
        }
        for server in servers where !answered.contains(server.rawValue) {
            requests[server.rawValue, default: []] += (try? hosts.b.read(server, maximumCount: 100)) ?? []
            if requests[server.rawValue]!.last == UInt8(ascii: "\n") {
                // Echo the request back 200 times, then close.
                let body = Array(repeating: requests[server.rawValue]!, count: 200).flatMap { $0 }
                var offset = 0
                while offset < body.count, let n = try? hosts.b.write(server, Array(body[offset...])) { offset += n }
                if offset != body.count { shortWrites += 1 }
                hosts.b.close(server)
                answered.insert(server.rawValue)
            }
        }
        var finished = 0
        for (index, client) in clients.enumerated() {
            while let bytes = try? hosts.a.read(client, maximumCount: 4096), !bytes.isEmpty { responses[index, default: []] += bytes }
            if hosts.a.readiness(client).contains(.hangUp) { finished += 1 }
        }
        return finished == clients.count
    }
    #expect(done)
    #expect(shortWrites == 0)  // each 2.4 KB response fits the send buffer at once
    for index in clients.indices {
        let expected = Array(repeating: Array("request \(index)\n".utf8), count: 200).flatMap { $0 }
        #expect(responses[index] == expected, "client \(index)")
    }
    for client in clients { hosts.a.close(client) }
    #expect(hosts.run { hosts.a.connectionCount == 0 && hosts.b.connectionCount == 0 })
}

@Test func transfersBothWaysAtOnceOverASmallMTU() throws {
    var impairment = MemoryLink.Impairment()
    impairment.loss = 0.02
    let hosts = TwoHosts(seed: 9, impairment: impairment, mtu: 576)
    let listener = try hosts.b.listen(port: 7000)
    let client = try hosts.a.connect(to: IPv4Endpoint(address: TwoHosts.addressB, port: 7000))
    var server: SocketHandle?
    #expect(hosts.run { server = try? hosts.b.accept(listener); return server != nil })
    let total = 512 * 1024
    let upstream = (0..<total).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
    let downstream = (0..<total).map { UInt8(truncatingIfNeeded: $0 &* 17 &+ 3) }
    var sentUp = 0, sentDown = 0
    var receivedUp: [UInt8] = [], receivedDown: [UInt8] = []
    receivedUp.reserveCapacity(total)
    receivedDown.reserveCapacity(total)
    #expect(hosts.run {
        while sentUp < total, let n = try? hosts.a.write(client, Array(upstream[sentUp..<min(total, sentUp + 16384)])) { sentUp += n }
        while sentDown < total, let n = try? hosts.b.write(server!, Array(downstream[sentDown..<min(total, sentDown + 16384)])) { sentDown += n }
        while let bytes = try? hosts.b.read(server!, maximumCount: 65536), !bytes.isEmpty { receivedUp += bytes }
        while let bytes = try? hosts.a.read(client, maximumCount: 65536), !bytes.isEmpty { receivedDown += bytes }
        return receivedUp.count == total && receivedDown.count == total
    })
    #expect(receivedUp == upstream)
    #expect(receivedDown == downstream)
    // MSS follows the 576-byte MTU: 536 minus 12 bytes of timestamps.
    #expect(try hosts.a.tcpConnection(client).sendSegmentSize == 524)
}
