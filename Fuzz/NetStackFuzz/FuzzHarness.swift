// FuzzHarness: drives NetStack's packet input path from arbitrary bytes, for
// the libFuzzer target (Fuzz/NetStackFuzz, Scripts/fuzz-netstack) and for
// replaying found inputs in Tests/NetStackTests (a symbolic link there).
// The stack starts with a known ARP entry, a listener on TCP port 80 with an
// established connection holding unacknowledged data, and a UDP socket on
// port 7; the input is then read as a sequence of commands: raw frames, and
// IPv4/UDP/TCP/ICMP packets whose checksums are made valid so the fuzzer
// reaches the protocol logic behind them (TCP segments on the established
// connection use its real sequence numbers plus a fuzzed offset), user
// socket calls, and time steps. After every command the harness checks the
// stack's memory bounds; a violation traps like a crash.
import DeviceInterfaces
import NetStack

/// Frames the stack sent, most recent last (bounded).
final class FuzzOutbox {
    var frames: [[UInt8]] = []
    var total = 0
}

/// A link that records what the stack sends and never receives by itself
/// (the harness calls `NetworkStack.input` directly).
struct FuzzInterface: NetworkInterface {
    let outbox: FuzzOutbox
    var macAddress: MACAddress { FuzzHarness.stackMAC }
    var mtu: Int { 1500 }
    var isLinkUp: Bool { true }
    var statistics = NetworkInterfaceStatistics()

    mutating func send(frame: UnsafeRawBufferPointer) throws(NetworkInterfaceError) {
        guard frame.count <= 1514 else { throw .frameTooLarge(size: frame.count, limit: 1514) }
        guard frame.count >= 14 else { throw .frameTooSmall(size: frame.count) }
        if outbox.frames.count >= 64 { outbox.frames.removeFirst(32) }
        outbox.frames.append(Array(frame))
        outbox.total += 1
        statistics.framesSent += 1
    }

    mutating func receive(limit: Int, _ body: (UnsafeRawBufferPointer) -> Void) throws(NetworkInterfaceError) -> Int { 0 }
}

/// Reads fuzz input bytes front to back; zeros once exhausted.
struct FuzzReader {
    let bytes: [UInt8]
    var position = 0

    var isAtEnd: Bool { position >= bytes.count }

    mutating func byte() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func word() -> UInt16 { UInt16(byte()) << 8 | UInt16(byte()) }

    mutating func long() -> UInt32 { UInt32(word()) << 16 | UInt32(word()) }

    /// Up to `count` bytes (fewer at the end of the input).
    mutating func take(_ count: Int) -> [UInt8] {
        let end = min(bytes.count, position + count)
        guard position < end else { return [] }
        defer { position = end }
        return Array(bytes[position..<end])
    }
}

/// One stack and its fixed peer; `run` feeds one input.
struct FuzzHarness {
    static let stackMAC = MACAddress(0x02, 0, 0, 0, 0, 0x02)
    static let peerMAC = MACAddress(0x02, 0, 0, 0, 0, 0x01)
    static let stackAddress = IPv4Address(10, 0, 0, 2)
    static let peerAddress = IPv4Address(10, 0, 0, 1)
    static let peerPort: UInt16 = 40000

    let configuration: NetworkStackConfiguration
    let stack: NetworkStack<FuzzInterface>
    let outbox = FuzzOutbox()
    var now: UInt64 = 1_000_000_000
    let listener: SocketHandle
    let udp: SocketHandle
    var connection: SocketHandle?
    /// The peer's next sequence number and the stack's, on the established connection.
    var peerSequence: UInt32 = 1000
    var stackSequence: UInt32 = 0

    /// Why the setup failed (a bug in the harness or the stack, not the input).
    enum SetupError: Error { case socket, handshake }

    init() throws {
        var configuration = NetworkStackConfiguration()
        configuration.seed = 1
        configuration.maximumConnections = 64
        self.configuration = configuration
        stack = NetworkStack<FuzzInterface>(configuration: configuration)
        _ = stack.attach(
            FuzzInterface(outbox: outbox),
            configuration: IPv4InterfaceConfiguration(address: Self.stackAddress, prefixLength: 24, gateway: Self.peerAddress))
        stack.poll(now: now)
        do {
            listener = try stack.listen(port: 80, backlog: 4)
            udp = try stack.bindUDP(port: 7)
        } catch {
            throw SetupError.socket
        }
        // The peer announces itself with an ARP request for our address.
        var arp: [UInt8] = []
        EthernetHeader(destination: .broadcast, source: Self.peerMAC, etherType: .arp).write(to: &arp)
        ARPPacket(
            operation: .request, senderHardwareAddress: Self.peerMAC, senderProtocolAddress: Self.peerAddress,
            targetHardwareAddress: MACAddress(0, 0, 0, 0, 0, 0), targetProtocolAddress: Self.stackAddress
        ).write(to: &arp)
        stack.input(frame: arp[...], interface: 0)
        // Handshake: SYN with every option, SYN-ACK from the stack, ACK.
        var syn = TCPHeader(sourcePort: Self.peerPort, destinationPort: 80, sequenceNumber: peerSequence &- 1, acknowledgmentNumber: 0, flags: .syn, window: 65535)
        syn.options.maximumSegmentSize = 1460
        syn.options.windowScale = 7
        syn.options.sackPermitted = true
        syn.options.timestamps = (100, 0)
        outbox.frames.removeAll()
        stack.input(frame: Self.ipv4Frame(protocol: .tcp, syn.segment(payload: [], source: Self.peerAddress, destination: Self.stackAddress))[...], interface: 0)
        stack.poll(now: now)
        guard let synAck = outbox.frames.last, synAck.count >= 54 else { throw SetupError.handshake }
        let sequence = UInt32(synAck[38]) << 24 | UInt32(synAck[39]) << 16 | UInt32(synAck[40]) << 8 | UInt32(synAck[41])
        stackSequence = sequence &+ 1
        var ack = TCPHeader(sourcePort: Self.peerPort, destinationPort: 80, sequenceNumber: peerSequence, acknowledgmentNumber: stackSequence, flags: .ack, window: 512)
        ack.options.timestamps = (101, 1)
        stack.input(frame: Self.ipv4Frame(protocol: .tcp, ack.segment(payload: [], source: Self.peerAddress, destination: Self.stackAddress))[...], interface: 0)
        stack.poll(now: now)
        do {
            let accepted = try stack.accept(listener)
            connection = accepted
            // Unacknowledged data in flight, so ACKs, SACKs and timers matter.
            _ = try stack.write(accepted, [UInt8](repeating: 0x61, count: 6000))
        } catch {
            throw SetupError.handshake
        }
        stack.poll(now: now)
    }

    /// An Ethernet frame from the peer to the stack holding an IPv4 packet.
    static func ipv4Frame(protocol: IPProtocol, _ payload: [UInt8], header: IPv4Header? = nil) -> [UInt8] {
        var frame: [UInt8] = []
        EthernetHeader(destination: stackMAC, source: peerMAC, etherType: .ipv4).write(to: &frame)
        var ip = header ?? IPv4Header(protocol: `protocol`, source: peerAddress, destination: stackAddress)
        ip.totalLength = UInt16(truncatingIfNeeded: ip.headerLength + payload.count)
        ip.write(to: &frame)
        return frame + payload
    }

    /// Feeds one fuzz input.
    mutating func run(_ input: [UInt8]) {
        var reader = FuzzReader(bytes: input)
        var commands = 0
        while !reader.isAtEnd && commands < 256 {
            step(&reader)
            commands += 1
            checkBounds()
        }
        // Let every timer fire: retransmissions, TIME-WAIT, reassembly expiry.
        for _ in 0..<8 {
            now += 40_000_000_000
            stack.poll(now: now)
            checkBounds()
        }
    }

    mutating func step(_ reader: inout FuzzReader) {
        switch reader.byte() % 10 {
        case 0:
            // A raw frame, whatever it holds.
            let length = Int(reader.word() % 1600)
            stack.input(frame: reader.take(length)[...], interface: 0)
        case 1:
            // An IPv4 packet with fuzzed header fields and options, valid checksum.
            var header = IPv4Header(protocol: IPProtocol(rawValue: reader.byte()), source: Self.peerAddress, destination: Self.stackAddress)
            let flags = reader.byte()
            header.moreFragments = flags & 1 != 0
            header.dontFragment = flags & 2 != 0
            if flags & 4 != 0 { header.destination = IPv4Address(rawValue: reader.long()) }
            if flags & 8 != 0 { header.source = IPv4Address(rawValue: reader.long()) }
            if flags & 16 != 0 { header.options = reader.take(Int(reader.byte() % 41)) }
            header.fragmentOffset = reader.word() & 0x1FFF
            header.identification = UInt16(reader.byte() % 4)
            header.timeToLive = reader.byte()
            let payload = reader.take(Int(reader.word() % 1500))
            var frame = Self.ipv4Frame(protocol: header.protocol, payload, header: header)
            if flags & 32 != 0, frame.count > 17 {
                // A lying total length (the checksum is recomputed below).
                let length = reader.word()
                frame[16] = UInt8(length >> 8)
                frame[17] = UInt8(length & 0xFF)
                fixIPv4Checksum(&frame)
            }
            stack.input(frame: frame[...], interface: 0)
        case 2:
            // A UDP datagram to port 7, an ephemeral port or a closed port.
            let ports: [UInt16] = [7, 7, 68, reader.word()]
            let port = ports[Int(reader.byte() % 4)]
            let payload = reader.take(Int(reader.word() % 1600))
            stack.input(frame: Self.ipv4Frame(protocol: .udp, UDPHeader.datagram(sourcePort: 5000, destinationPort: port, payload: payload[...], source: Self.peerAddress, destination: Self.stackAddress))[...], interface: 0)
        case 3, 4:
            // A TCP segment on the established connection.
            tcpSegment(&reader, sourcePort: Self.peerPort, sequenceBase: peerSequence, acknowledgmentBase: stackSequence)
        case 5:
            // A TCP segment to the listener from another port (SYNs and strays).
            let port = Self.peerPort &+ 1 &+ UInt16(reader.byte() % 8)
            tcpSegment(&reader, sourcePort: port, sequenceBase: 5000, acknowledgmentBase: 0)
        case 6:
            // An ICMP message with a valid checksum.
            var body: [UInt8] = [reader.byte() % 20, reader.byte(), 0, 0]
            body += reader.take(Int(reader.word() % 600))
            let checksum = InternetChecksum.of(body[...])
            body[2] = UInt8(checksum >> 8)
            body[3] = UInt8(checksum & 0xFF)
            stack.input(frame: Self.ipv4Frame(protocol: .icmp, body)[...], interface: 0)
        case 7:
            // Time passes.
            now += UInt64(reader.word()) * 1_000_000
            stack.poll(now: now)
        case 8:
            userCall(&reader)
        default:
            // An ARP packet with fuzzed fields.
            var frame: [UInt8] = []
            EthernetHeader(destination: reader.byte() & 1 == 0 ? .broadcast : Self.stackMAC, source: Self.peerMAC, etherType: .arp).write(to: &frame)
            frame += [0, 1, 8, 0, 6, 4, 0, reader.byte() % 4]
            frame += reader.take(20)
            stack.input(frame: frame[...], interface: 0)
        }
        stack.poll(now: now)
        learnSequenceNumbers()
    }

    /// Follows the stack's sequence numbers in what it sent, so later fuzzed
    /// segments stay near the window.
    mutating func learnSequenceNumbers() {
        for frame in outbox.frames where frame.count >= 54 && frame[23] == 6 {
            let ipLength = Int(frame[14] & 0x0F) * 4
            let tcp = 14 + ipLength
            guard frame.count >= tcp + 20, frame[tcp] == UInt8(80 >> 8), frame[tcp + 1] == 80,
                UInt16(frame[tcp + 2]) << 8 | UInt16(frame[tcp + 3]) == Self.peerPort
            else { continue }
            let acknowledgment = UInt32(frame[tcp + 8]) << 24 | UInt32(frame[tcp + 9]) << 16 | UInt32(frame[tcp + 10]) << 8 | UInt32(frame[tcp + 11])
            if frame[tcp + 13] & 0x10 != 0 { peerSequence = acknowledgment }
        }
        outbox.frames.removeAll(keepingCapacity: true)
    }

    mutating func tcpSegment(_ reader: inout FuzzReader, sourcePort: UInt16, sequenceBase: UInt32, acknowledgmentBase: UInt32) {
        let sequenceOffset = Int32(Int16(bitPattern: reader.word()))
        let acknowledgmentOffset = Int32(Int16(bitPattern: reader.word()))
        let flags = reader.byte()
        let window = reader.word()
        let optionBytes = reader.take(Int(reader.byte() % 41))
        let payload = reader.take(Int(reader.word() % 1600))
        let optionLength = (optionBytes.count + 3) / 4 * 4
        var segment: [UInt8] = []
        segment += [UInt8(sourcePort >> 8), UInt8(sourcePort & 0xFF), 0, 80]
        let sequence = sequenceBase &+ UInt32(bitPattern: sequenceOffset)
        let acknowledgment = acknowledgmentBase &+ UInt32(bitPattern: acknowledgmentOffset)
        for shift in [24, 16, 8, 0] as [UInt32] { segment.append(UInt8(truncatingIfNeeded: sequence >> shift)) }
        for shift in [24, 16, 8, 0] as [UInt32] { segment.append(UInt8(truncatingIfNeeded: acknowledgment >> shift)) }
        segment += [UInt8((20 + optionLength) / 4) << 4, flags, UInt8(window >> 8), UInt8(window & 0xFF), 0, 0, 0, 0]
        segment += optionBytes
        segment += [UInt8](repeating: 0, count: optionLength - optionBytes.count)
        segment += payload
        var checksum = InternetChecksum.pseudoHeader(source: Self.peerAddress, destination: Self.stackAddress, protocol: .tcp, length: segment.count)
        checksum.add(segment[...])
        let value = checksum.value
        segment[16] = UInt8(value >> 8)
        segment[17] = UInt8(value & 0xFF)
        stack.input(frame: Self.ipv4Frame(protocol: .tcp, segment)[...], interface: 0)
        if sourcePort == Self.peerPort && flags & 0x04 == 0 && sequenceOffset == 0 {
            peerSequence = peerSequence &+ UInt32(payload.count) &+ (flags & 0x03 != 0 ? 1 : 0)
        }
    }

    mutating func userCall(_ reader: inout FuzzReader) {
        let choice = reader.byte()
        switch choice % 8 {
        case 0:
            if let connection { _ = try? stack.read(connection, maximumCount: Int(reader.word())) }
        case 1:
            if let connection { _ = try? stack.write(connection, reader.take(Int(reader.word() % 4000))) }
        case 2:
            if let connection { try? stack.shutdown(connection) }
        case 3:
            if let connection {
                stack.close(connection)
                self.connection = nil
            }
        case 4:
            if let accepted = try? stack.accept(listener) {
                if let connection { stack.close(connection) }
                connection = accepted
            }
        case 5:
            _ = try? stack.receive(udp)
            try? stack.send(udp, to: IPv4Endpoint(address: Self.peerAddress, port: reader.word()), reader.take(Int(reader.word() % 3000)))
        case 6:
            if let connection {
                try? stack.setKeepAlive(connection, reader.byte() & 1 == 0)
                _ = stack.readiness(connection)
            }
        default:
            _ = try? stack.connect(to: IPv4Endpoint(address: IPv4Address(rawValue: Self.peerAddress.rawValue &+ UInt32(reader.byte() % 3)), port: reader.word()))
        }
    }

    func fixIPv4Checksum(_ frame: inout [UInt8]) {
        let headerLength = Int(frame[14] & 0x0F) * 4
        guard frame.count >= 14 + headerLength else { return }
        frame[24] = 0
        frame[25] = 0
        let value = InternetChecksum.of(frame[14..<(14 + headerLength)])
        frame[24] = UInt8(value >> 8)
        frame[25] = UInt8(value & 0xFF)
    }

    /// The memory bounds the stack promises whatever arrives.
    func checkBounds() {
        precondition(stack.connectionCount <= configuration.maximumConnections, "connections over the limit")
        precondition(stack.reassemblyUsage.bytes <= configuration.reassembly.maximumBytes, "reassembly bytes over the limit")
        precondition(stack.reassemblyUsage.datagrams <= configuration.reassembly.maximumDatagrams, "reassembly datagrams over the limit")
        precondition(stack.arpEntryCount(interface: 0) <= configuration.arp.maximumEntries, "ARP entries over the limit")
    }
}
