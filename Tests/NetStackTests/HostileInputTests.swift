// Hostile inputs: malformed and mutated frames, SYN floods, blind resets, fragment and ARP floods never crash the stack or grow its memory without bound (RFC 5961, RFC 4987).
import Testing
@testable import NetStack

/// An Ethernet+IPv4 frame to B carrying `transport`.
func ipv4Frame(from source: IPv4Address, to destination: IPv4Address = TwoHosts.addressB, protocol: IPProtocol, _ transport: [UInt8], identification: UInt16 = 0, fragmentOffset: Int = 0, moreFragments: Bool = false) -> [UInt8] {
    var frame: [UInt8] = []
    EthernetHeader(destination: TwoHosts.macB, source: MACAddress(2, 0, 0, 0, 0, 9), etherType: .ipv4).write(to: &frame)
    var header = IPv4Header(protocol: `protocol`, source: source, destination: destination)
    header.identification = identification
    header.fragmentOffset = UInt16(fragmentOffset / 8)
    header.moreFragments = moreFragments
    header.totalLength = UInt16(20 + transport.count)
    header.write(to: &frame)
    return frame + transport
}

func tcpFrame(from source: IPv4Endpoint, to port: UInt16, seq: UInt32, ack: UInt32 = 0, flags: TCPFlags, payload: [UInt8] = []) -> [UInt8] {
    let header = TCPHeader(sourcePort: source.port, destinationPort: port, sequenceNumber: seq, acknowledgmentNumber: ack, flags: flags, window: 65535)
    return ipv4Frame(from: source.address, protocol: .tcp, header.segment(payload: payload[...], source: source.address, destination: TwoHosts.addressB))
}

/// Memory the stack holds, which must stay bounded.
func checkBounds(_ stack: NetworkStack<LinkPort>, _ configuration: NetworkStackConfiguration = NetworkStackConfiguration()) {
    #expect(stack.connectionCount <= configuration.maximumConnections)
    #expect(stack.reassemblyUsage.bytes <= configuration.reassembly.maximumBytes)
    #expect(stack.reassemblyUsage.datagrams <= configuration.reassembly.maximumDatagrams)
    #expect(stack.arpEntryCount(interface: 0) <= configuration.arp.maximumEntries)
}

@Test func randomAndTruncatedFramesAreDropped() {
    let hosts = TwoHosts()
    _ = try? hosts.b.listen(port: 80)
    _ = try? hosts.b.bindUDP(port: 53)
    var random = SplitMix64(seed: 99)
    let valid = tcpFrame(from: IPv4Endpoint(address: TwoHosts.addressA, port: 4000), to: 80, seq: 1, flags: .syn)
    for round in 0..<20_000 {
        var frame: [UInt8]
        switch round % 4 {
        case 0:
            // Pure noise of any length.
            frame = (0..<Int(random.next() % 1600)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
        case 1:
            // Every truncation of a valid frame.
            frame = Array(valid[0..<(round / 4 % valid.count)])
        default:
            // A valid frame with a few bytes flipped past the Ethernet header.
            frame = valid
            for _ in 0..<(1 + Int(random.next() % 4)) {
                frame[14 + Int(random.next() % UInt64(frame.count - 14))] = UInt8(truncatingIfNeeded: random.next())
            }
        }
        hosts.b.input(frame: frame[...], interface: 0)
    }
    checkBounds(hosts.b)
    #expect(hosts.b.statistics.malformedPackets + hosts.b.statistics.checksumErrors > 10_000)
}

@Test func mutatedValidTrafficNeverCrashes() throws {
    // Capture a real exchange (handshake, data, close, ping, UDP), then replay mutants of it into a fresh stack.
    let hosts = TwoHosts()
    hosts.link.capturing = true
    let listener = try hosts.b.listen(port: 80)
    let client = try hosts.a.connect(to: IPv4Endpoint(address: TwoHosts.addressB, port: 80))
    var server: SocketHandle?
    hosts.run { server = try? hosts.b.accept(listener); return server != nil }
    _ = try hosts.a.write(client, [UInt8](repeating: 0x55, count: 5000))
    var got = 0
    hosts.run { got += (try? hosts.b.read(server!, maximumCount: 10000))?.count ?? 0; return got == 5000 }
    hosts.a.close(client)
    try hosts.a.sendEchoRequest(to: TwoHosts.addressB, identifier: 1, sequence: 1, data: [1, 2, 3])
    let udp = try hosts.a.bindUDP()
    try hosts.a.send(udp, to: IPv4Endpoint(address: TwoHosts.addressB, port: 53), [UInt8](repeating: 1, count: 100))
    hosts.run(for: 5_000_000_000)
    let corpus = hosts.link.captured[0]
    #expect(corpus.count >= 8)

    let target = TwoHosts(seed: 5)
    _ = try target.b.listen(port: 80)
    var random = SplitMix64(seed: 7)
    var now: UInt64 = 0
    for round in 0..<30_000 {
        var frame = corpus[Int(random.next() % UInt64(corpus.count))]
        let flips = Int(random.next() % 3)
        for _ in 0..<flips {
            frame[Int(random.next() % UInt64(frame.count))] = UInt8(truncatingIfNeeded: random.next())
        }
        if random.next() % 8 == 0 { frame.removeLast(Int(random.next() % UInt64(frame.count))) }
        target.b.input(frame: frame[...], interface: 0)
        if round % 100 == 0 {
            now += 50_000_000
            target.link.now = now
            target.b.poll(now: now)
        }
    }
    checkBounds(target.b)
}

@Test func synFloodIsBoundedByTheBacklog() throws {
    var configuration = NetworkStackConfiguration()
    configuration.tcp.synAckRetries = 2
    let hosts = TwoHosts(configuration: configuration)
    let listener = try hosts.b.listen(port: 80, backlog: 8)
    var random = SplitMix64(seed: 3)
    for _ in 0..<10_000 {
        let source = IPv4Endpoint(address: IPv4Address(rawValue: 0x0A00_0000 | UInt32(random.next() % 250 + 3)), port: UInt16(truncatingIfNeeded: random.next() | 1024))
        let frame = tcpFrame(from: source, to: 80, seq: UInt32(truncatingIfNeeded: random.next()), flags: .syn)
        hosts.b.input(frame: frame[...], interface: 0)
    }
    let usage = try hosts.b.backlogUsage(listener)
    #expect(usage.halfOpen == 8 && usage.queued == 0)
    #expect(hosts.b.connectionCount == 8)
    #expect(hosts.b.statistics.tcpSynsDropped == 10_000 - 8)
    // The half-open connections give up after their SYN,ACK retries (1 + 2 + 4 s) and free the backlog.
    hosts.link.impairment.loss = 1.0
    hosts.run(for: 10_000_000_000)
    #expect(try hosts.b.backlogUsage(listener).halfOpen == 0)
    #expect(hosts.b.connectionCount == 0)
    // A real client gets in afterwards.
    hosts.link.impairment.loss = 0
    _ = try hosts.a.connect(to: IPv4Endpoint(address: TwoHosts.addressB, port: 80))
    var accepted: SocketHandle?
    #expect(hosts.run { accepted = try? hosts.b.accept(listener); return accepted != nil })
}

@Test func blindResetsAndOutOfWindowDataDoNotHarmAConnection() throws {
    let hosts = TwoHosts()
    let listener = try hosts.b.listen(port: 80)
    let client = try hosts.a.connect(to: IPv4Endpoint(address: TwoHosts.addressB, port: 80))
    var server: SocketHandle?
    #expect(hosts.run { server = try? hosts.b.accept(listener); return server != nil })
    let connection = try hosts.b.tcpConnection(server!)
    let clientPort = connection.remote.port
    var random = SplitMix64(seed: 11)
    for round in 0..<5000 {
        var seq = UInt32(truncatingIfNeeded: random.next())
        // Keep the guesses outside RCV.NXT exactly; in-window ones must draw challenge ACKs only.
        if seq == connection.receiveNext.rawValue { seq &+= 1 }
        let flags: TCPFlags = round % 3 == 0 ? .rst : (round % 3 == 1 ? .syn : .ack)
        let payload = round % 3 == 2 ? [UInt8](repeating: 0xEE, count: 100) : []
        let frame = tcpFrame(from: IPv4Endpoint(address: TwoHosts.addressA, port: clientPort), to: 80, seq: seq, ack: UInt32(truncatingIfNeeded: random.next()), flags: flags, payload: payload)
        hosts.b.input(frame: frame[...], interface: 0)
    }
    #expect(connection.state == .established)
    #expect(connection.outOfOrder.count <= TCPConfiguration().maximumOutOfOrderSegments)
    #expect(connection.bytesReadable == 0)
    // The real peer is unaffected.
    _ = try hosts.a.write(client, Array("still here".utf8))
    var received: [UInt8] = []
    #expect(hosts.run { received += (try? hosts.b.read(server!, maximumCount: 100)) ?? []; return received.count == 10 })
}

@Test func fragmentFloodStaysWithinLimits() {
    let hosts = TwoHosts()
    var random = SplitMix64(seed: 13)
    for id in 0..<5000 {
        let frame = ipv4Frame(from: TwoHosts.addressA, protocol: .udp, [UInt8](repeating: 1, count: 1024), identification: UInt16(truncatingIfNeeded: id), fragmentOffset: Int(random.next() % 64) * 8, moreFragments: true)
        hosts.b.input(frame: frame[...], interface: 0)
        checkBounds(hosts.b)
    }
    #expect(hosts.b.statistics.ipFragmentsDropped > 4000)
    hosts.now += ReassemblyConfiguration().timeout
    hosts.run(for: 0)
    #expect(hosts.b.reassemblyUsage.datagrams == 0)
}

@Test func arpFloodStaysWithinLimits() {
    var configuration = NetworkStackConfiguration()
    configuration.arp.maximumEntries = 100
    let hosts = TwoHosts(configuration: configuration)
    for host in 0..<2000 {
        // Requests for B from many senders each create an entry (RFC 826), up to the limit.
        var frame: [UInt8] = []
        let mac = MACAddress(2, 1, 0, 0, UInt8(host >> 8), UInt8(host & 0xFF))
        EthernetHeader(destination: .broadcast, source: mac, etherType: .arp).write(to: &frame)
        ARPPacket(operation: .request, senderHardwareAddress: mac, senderProtocolAddress: IPv4Address(rawValue: 0x0A00_0000 | UInt32(host % 250 + 3)), targetHardwareAddress: MACAddress(0, 0, 0, 0, 0, 0), targetProtocolAddress: TwoHosts.addressB).write(to: &frame)
        hosts.b.input(frame: frame[...], interface: 0)
    }
    checkBounds(hosts.b, configuration)
    #expect(hosts.b.arpEntryCount(interface: 0) == 100)
    #expect(hosts.b.statistics.arpRepliesSent == 2000)
    // Someone claiming B's own address is a conflict, not a cache entry.
    var frame: [UInt8] = []
    EthernetHeader(destination: .broadcast, source: MACAddress(2, 9, 9, 9, 9, 9), etherType: .arp).write(to: &frame)
    ARPPacket.announcement(of: TwoHosts.addressB, from: MACAddress(2, 9, 9, 9, 9, 9)).write(to: &frame)
    hosts.b.input(frame: frame[...], interface: 0)
    #expect(hosts.b.statistics.arpConflicts == 1)
}

@Test func icmpErrorsAreRateLimited() {
    let hosts = TwoHosts()
    for port in 0..<1000 {
        let datagram = UDPHeader.datagram(sourcePort: 1, destinationPort: UInt16(1000 + port), payload: [1][...], source: TwoHosts.addressA, destination: TwoHosts.addressB)
        let frame = ipv4Frame(from: TwoHosts.addressA, protocol: .udp, datagram)
        hosts.b.input(frame: frame[...], interface: 0)
    }
    #expect(hosts.b.statistics.icmpErrorsSent == NetworkStackConfiguration().icmpErrorsPerSecond)
    #expect(hosts.b.statistics.icmpErrorsRateLimited == 1000 - NetworkStackConfiguration().icmpErrorsPerSecond)
}
