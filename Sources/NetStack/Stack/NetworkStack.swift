// The network stack: interfaces, Ethernet/ARP/IPv4 input and output, routing, ICMP and timers (RFC 1122 §3.3 host behaviour, RFC 791, RFC 792, RFC 826).

/// Limits and tunables of a whole stack.
public struct NetworkStackConfiguration: Sendable {
    /// Defaults for every TCP connection.
    public var tcp = TCPConfiguration()
    /// Limits of each interface's ARP cache.
    public var arp = ARPConfiguration()
    /// Limits of fragment reassembly.
    public var reassembly = ReassemblyConfiguration()
    /// Seeds port choice and the initial-sequence-number key. A guest seeds it
    /// from its entropy source; tests pick a constant.
    public var seed: UInt64 = 0x5EED
    public var defaultTimeToLive: UInt8 = 64
    /// TCP connections of all states, including half-open and TIME-WAIT.
    public var maximumConnections = 4096
    /// Datagrams queued per UDP socket before new ones are dropped.
    public var udpReceiveQueueLimit = 64
    /// ICMP error messages sent per second at most (RFC 1812 §4.3.2.8 style limit).
    public var icmpErrorsPerSecond = 100
    /// ICMP echo replies waiting for `receiveEchoReply`.
    public var echoReplyQueueLimit = 16
    /// Local ports for connect and unbound UDP sockets (RFC 6335 §6).
    public var ephemeralPorts: ClosedRange<UInt16> = 49152...65535
    /// Frames held per interface while its driver's transmit queue is full
    /// (sent in order once slots free up); beyond this they are dropped.
    public var transmitBacklogLimit = 512
    public init() {}
}

/// Counters of a stack, for diagnostics and the `/stats` page. All are
/// cumulative since the stack was created; names say what is counted.
public struct NetworkStackStatistics: Equatable, Sendable {
    public var framesReceived = 0
    public var framesSent = 0
    public var framesDropped = 0
    public var malformedPackets = 0
    public var checksumErrors = 0
    public var arpRequestsSent = 0
    public var arpRepliesSent = 0
    public var arpConflicts = 0
    public var ipPacketsReceived = 0
    public var ipPacketsSent = 0
    public var ipNotForUs = 0
    public var ipFragmentsReceived = 0
    public var ipFragmentsSent = 0
    public var ipReassembled = 0
    public var ipFragmentsDropped = 0
    public var ipNoRoute = 0
    public var ipUnknownProtocol = 0
    public var icmpEchoRequestsAnswered = 0
    public var icmpErrorsReceived = 0
    public var icmpErrorsSent = 0
    public var icmpErrorsRateLimited = 0
    public var udpDatagramsReceived = 0
    public var udpDatagramsSent = 0
    public var udpNoPort = 0
    public var udpQueueOverflows = 0
    public var tcpSegmentsReceived = 0
    public var tcpSegmentsSent = 0
    public var tcpResetsSent = 0
    public var tcpConnectionsOpened = 0
    public var tcpConnectionsAccepted = 0
    public var tcpSynsDropped = 0
    public var tcpRetransmissions = 0
    public var transmitErrors = 0
    /// Frames that waited in the transmit backlog because the driver's queue was full.
    public var transmitDeferred = 0
    public init() {}
}

/// A received UDP datagram.
public struct UDPDatagram: Equatable, Sendable {
    public var source: IPv4Endpoint
    public var destination: IPv4Endpoint
    public var payload: [UInt8]
}

/// An ICMP echo reply received for `sendEchoRequest`.
public struct EchoReply: Equatable, Sendable {
    public var source: IPv4Address
    public var identifier: UInt16
    public var sequence: UInt16
    public var data: [UInt8]
}

/// A TCP/IPv4 stack over one or more interfaces of one driver type.
///
/// Single-threaded and poll-driven: the owner calls `poll(now:)` with a
/// monotonic clock in nanoseconds whenever frames may have arrived or
/// `nextDeadline` has passed. The stack never reads a clock itself; user calls
/// act at the time of the last `poll`.
public final class NetworkStack<Interface: NetworkInterface> {
    struct AttachedInterface {
        var device: Interface
        var configuration: IPv4InterfaceConfiguration?
        var arp: ARPCache
        var hardwareAddress: MACAddress
        /// Frames waiting for a free transmit slot, oldest first.
        var transmitBacklog: [[UInt8]] = []
        var transmitBacklogStart = 0
    }

    final class Listener {
        let port: UInt16
        let address: IPv4Address
        let backlog: Int
        var halfOpen = 0
        var acceptQueue: [TCPConnection] = []
        init(port: UInt16, address: IPv4Address, backlog: Int) {
            self.port = port
            self.address = address
            self.backlog = backlog
        }
    }

    final class UDPSocket {
        let port: UInt16
        var queue: [UDPDatagram] = []
        init(port: UInt16) { self.port = port }
    }

    enum SocketEntry {
        case listener(Listener)
        case connection(TCPConnection)
        case udp(UDPSocket)
    }

    struct ConnectionKey: Hashable {
        var local: IPv4Endpoint
        var remote: IPv4Endpoint
    }

    public let configuration: NetworkStackConfiguration
    public internal(set) var statistics = NetworkStackStatistics()
    /// The clock value of the last `poll`.
    public private(set) var now: UInt64 = 0

    var interfaces: [AttachedInterface] = []
    var connections: [ConnectionKey: TCPConnection] = [:]
    var listeners: [UInt16: Listener] = [:]
    var udpSockets: [UInt16: UDPSocket] = [:]
    var sockets: [Int: SocketEntry] = [:]
    var nextSocket = 1
    var nextConnectionSerial = 0
    var reassembler: IPv4Reassembler
    var random: SplitMix64
    let sequenceKey: (UInt64, UInt64)
    var identification: UInt16
    /// Depth of nested `batchingTransmissions` calls.
    var transmitBatchDepth = 0
    /// Frames taken from an interface in `poll`, back to back, and where
    /// each ends (reused from poll to poll).
    var receivedBytes: [UInt8] = []
    var receivedFrameEnds: [Int] = []
    /// The buffer the last TCP segment's frame was built in, once the
    /// driver copied it (reused by `sendSegment`).
    var segmentFrameBuffer: [UInt8] = []
    var icmpTokens: Int
    var icmpRefill: UInt64 = 0
    var echoReplies: [EchoReply] = []
    var dhcpClients: [Int: DHCPClient] = [:]
    var dhcpSocket: SocketHandle?

    public init(configuration: NetworkStackConfiguration = NetworkStackConfiguration()) {
        self.configuration = configuration
        reassembler = IPv4Reassembler(configuration: configuration.reassembly)
        random = SplitMix64(seed: configuration.seed)
        sequenceKey = (random.next(), random.next())
        identification = UInt16(truncatingIfNeeded: random.next())
        icmpTokens = configuration.icmpErrorsPerSecond
    }

    // MARK: Interfaces

    /// Attaches an interface and returns its index. With a configuration the
    /// interface announces its address with a gratuitous ARP (RFC 5227 §3).
    @discardableResult
    public func attach(_ device: Interface, configuration: IPv4InterfaceConfiguration? = nil) -> Int {
        interfaces.append(AttachedInterface(device: device, configuration: nil, arp: ARPCache(configuration: self.configuration.arp), hardwareAddress: device.macAddress))
        let index = interfaces.count - 1
        if let configuration { configure(interface: index, configuration) }
        return index
    }

    /// Sets or replaces an interface's address and announces it.
    public func configure(interface index: Int, _ configuration: IPv4InterfaceConfiguration?) {
        interfaces[index].configuration = configuration
        if configuration != nil { announce(interface: index) }
    }

    /// Sends a gratuitous ARP for the interface's address.
    public func announce(interface index: Int) {
        guard let address = interfaces[index].configuration?.address else { return }
        let packet = ARPPacket.announcement(of: address, from: interfaces[index].hardwareAddress)
        sendARP(packet, to: .broadcast, interface: index)
    }

    public var interfaceCount: Int { interfaces.count }

    public func interfaceConfiguration(_ index: Int) -> IPv4InterfaceConfiguration? { interfaces[index].configuration }

    /// The driver of interface `index`, for its statistics or link state.
    public func device(_ index: Int) -> Interface { interfaces[index].device }

    /// Runs `body` on interface `index`'s driver in place.
    public func withDevice<Result>(_ index: Int, _ body: (inout Interface) -> Result) -> Result {
        body(&interfaces[index].device)
    }

    /// Entries in interface `index`'s ARP cache.
    public func arpEntryCount(interface index: Int) -> Int { interfaces[index].arp.count }

    /// The resolved hardware address of `address` on interface `index`.
    public func arpLookup(_ address: IPv4Address, interface index: Int) -> MACAddress? {
        interfaces[index].arp.lookup(address, now: now)
    }

    /// Datagrams under reassembly and the fragment bytes they hold.
    public var reassemblyUsage: (datagrams: Int, bytes: Int) { (reassembler.datagramsInProgress, reassembler.heldBytes) }

    /// TCP connections the stack tracks (any state).
    public var connectionCount: Int { connections.count }

    // MARK: Driving the stack

    /// Runs `body` with every interface in a transmit batch, so the frames
    /// it sends reach each device with one notification; a nested call
    /// joins the outer batch.
    func batchingTransmissions<Result, Failure: Error>(_ body: () throws(Failure) -> Result) throws(Failure) -> Result {
        transmitBatchDepth += 1
        if transmitBatchDepth == 1 {
            for index in interfaces.indices { interfaces[index].device.beginTransmitBatch() }
        }
        defer {
            transmitBatchDepth -= 1
            if transmitBatchDepth == 0 {
                for index in interfaces.indices { interfaces[index].device.endTransmitBatch() }
            }
        }
        return try body()
    }

    /// Takes received frames from every interface, then runs due timers.
    public func poll(now: UInt64, receiveLimit: Int = 64) {
        batchingTransmissions { pollInBatch(now: now, receiveLimit: receiveLimit) }
    }

    func pollInBatch(now: UInt64, receiveLimit: Int) {
        self.now = Swift.max(self.now, now)
        for index in interfaces.indices {
            // The frames are copied out of the driver's buffers (processing
            // them may send, which the driver cannot do inside `receive`)
            // into one reused buffer, not an array per frame.
            receivedBytes.removeAll(keepingCapacity: true)
            receivedFrameEnds.removeAll(keepingCapacity: true)
            do {
                _ = try interfaces[index].device.receive(limit: receiveLimit) { frame in
                    receivedBytes.append(contentsOf: frame)
                    receivedFrameEnds.append(receivedBytes.count)
                }
            } catch {
                statistics.framesDropped += 1
            }
            // Receiving let the driver reclaim transmit slots.
            flushTransmitBacklog(interface: index)
            let bytes = receivedBytes
            var start = 0
            for end in receivedFrameEnds {
                input(frame: bytes[start..<end], interface: index)
                start = end
            }
        }
        runTimers()
        if !dhcpClients.isEmpty { serviceDHCP() }
    }

    /// Processes one received frame (the path every packet takes; also the fuzzing entry point).
    public func input(frame: ArraySlice<UInt8>, interface index: Int) {
        statistics.framesReceived += 1
        let ethernet: (header: EthernetHeader, payload: ArraySlice<UInt8>)
        do {
            ethernet = try EthernetHeader.parse(frame)
        } catch {
            count(error)
            return
        }
        let destination = ethernet.header.destination
        guard destination == interfaces[index].hardwareAddress || destination.isMulticast else {
            statistics.framesDropped += 1
            return
        }
        switch ethernet.header.etherType {
        case .arp: arpInput(ethernet.payload, interface: index)
        case .ipv4: ipv4Input(ethernet.payload, interface: index)
        default: statistics.framesDropped += 1
        }
    }

    /// The earliest clock value at which `poll` has timer work.
    public var nextDeadline: UInt64? {
        // Frames waiting for transmit slots: poll again at once.
        if interfaces.indices.contains(where: { transmitBacklogCount(interface: $0) > 0 }) { return now }
        var earliest = reassembler.nextDeadline
        for attached in interfaces {
            if let deadline = attached.arp.nextDeadline { earliest = Swift.min(earliest ?? deadline, deadline) }
        }
        for connection in connections.values {
            if let deadline = connection.nextDeadline { earliest = Swift.min(earliest ?? deadline, deadline) }
        }
        for client in dhcpClients.values {
            if let deadline = client.nextDeadline { earliest = Swift.min(earliest ?? deadline, deadline) }
        }
        return earliest
    }

    func runTimers() {
        reassembler.expire(now: now)
        for index in interfaces.indices {
            for address in interfaces[index].arp.expire(now: now).sorted() { sendARPRequest(for: address, interface: index) }
        }
        var due: [TCPConnection] = []
        for connection in connections.values {
            if let deadline = connection.nextDeadline, deadline <= now { due.append(connection) }
        }
        due.sort { $0.serial < $1.serial }
        for connection in due {
            connection.tick(now: now)
            settle(connection)
        }
    }

    func count(_ error: PacketError) {
        if case .badChecksum = error {
            statistics.checksumErrors += 1
        } else {
            statistics.malformedPackets += 1
        }
    }

    // MARK: ARP

    func arpInput(_ bytes: ArraySlice<UInt8>, interface index: Int) {
        let packet: ARPPacket
        do {
            packet = try ARPPacket.parse(bytes)
        } catch {
            count(error)
            return
        }
        guard let configuration = interfaces[index].configuration else { return }
        if packet.senderProtocolAddress == configuration.address && packet.senderHardwareAddress != interfaces[index].hardwareAddress {
            statistics.arpConflicts += 1
            return
        }
        let forUs = packet.targetProtocolAddress == configuration.address
        // Probes (sender 0.0.0.0) and foreign subnets teach nothing (RFC 5227 §2.1.1).
        if packet.senderProtocolAddress != .any && configuration.contains(packet.senderProtocolAddress) {
            let waiting = interfaces[index].arp.update(packet.senderProtocolAddress, hardwareAddress: packet.senderHardwareAddress, now: now, create: forUs)
            for var frame in waiting {
                frame.set(mac: packet.senderHardwareAddress, at: 0)
                transmit(frame, interface: index)
            }
        }
        if forUs && packet.operation == .request && !packet.isGratuitous {
            let reply = ARPPacket(
                operation: .reply, senderHardwareAddress: interfaces[index].hardwareAddress, senderProtocolAddress: configuration.address,
                targetHardwareAddress: packet.senderHardwareAddress, targetProtocolAddress: packet.senderProtocolAddress)
            statistics.arpRepliesSent += 1
            sendARP(reply, to: packet.senderHardwareAddress, interface: index)
        }
    }

    func sendARP(_ packet: ARPPacket, to destination: MACAddress, interface index: Int) {
        var frame: [UInt8] = []
        frame.reserveCapacity(60)
        EthernetHeader(destination: destination, source: interfaces[index].hardwareAddress, etherType: .arp).write(to: &frame)
        packet.write(to: &frame)
        // Pad to the 60-byte minimum frame some drivers expect.
        while frame.count < 60 { frame.append(0) }
        transmit(frame, interface: index)
    }

    func sendARPRequest(for address: IPv4Address, interface index: Int) {
        guard let configuration = interfaces[index].configuration else { return }
        statistics.arpRequestsSent += 1
        let request = ARPPacket(
            operation: .request, senderHardwareAddress: interfaces[index].hardwareAddress, senderProtocolAddress: configuration.address,
            targetHardwareAddress: MACAddress(0, 0, 0, 0, 0, 0), targetProtocolAddress: address)
        sendARP(request, to: .broadcast, interface: index)
    }

    /// Hands a frame to the driver. While the driver's transmit queue is
    /// full, frames wait in a bounded backlog (in order) instead of being
    /// lost: dropping a burst of TCP segments would cost retransmission
    /// timeouts. `poll` and later transmits retry the backlog first.
    /// Returns the frame's buffer when the driver copied it (sent or
    /// failed), so the caller can build the next frame in it.
    @discardableResult
    func transmit(_ frame: consuming [UInt8], interface index: Int) -> [UInt8]? {
        if interfaces[index].transmitBacklogStart < interfaces[index].transmitBacklog.count {
            flushTransmitBacklog(interface: index)
        }
        if interfaces[index].transmitBacklogStart < interfaces[index].transmitBacklog.count {
            holdForTransmission(frame, interface: index)
            return nil
        }
        switch send(frame, interface: index) {
        case .sent: statistics.framesSent += 1
        case .queueFull:
            holdForTransmission(frame, interface: index)
            return nil
        case .failed: statistics.transmitErrors += 1
        }
        return frame
    }

    enum TransmitOutcome { case sent, queueFull, failed }

    func send(_ frame: [UInt8], interface index: Int) -> TransmitOutcome {
        let result = frame.withUnsafeBytes { bytes in
            Result { () throws(NetworkInterfaceError) in try interfaces[index].device.send(frame: bytes) }
        }
        switch result {
        case .success: return .sent
        case .failure(.transmitQueueFull): return .queueFull
        case .failure: return .failed
        }
    }

    func holdForTransmission(_ frame: [UInt8], interface index: Int) {
        let waiting = interfaces[index].transmitBacklog.count - interfaces[index].transmitBacklogStart
        guard waiting < configuration.transmitBacklogLimit else {
            statistics.transmitErrors += 1
            return
        }
        interfaces[index].transmitBacklog.append(frame)
        statistics.transmitDeferred += 1
    }

    /// Sends waiting frames, oldest first, until the driver is full again.
    func flushTransmitBacklog(interface index: Int) {
        while interfaces[index].transmitBacklogStart < interfaces[index].transmitBacklog.count {
            let frame = interfaces[index].transmitBacklog[interfaces[index].transmitBacklogStart]
            let outcome = send(frame, interface: index)
            if outcome == .queueFull { break }
            if outcome == .sent { statistics.framesSent += 1 } else { statistics.transmitErrors += 1 }
            interfaces[index].transmitBacklogStart += 1
        }
        if interfaces[index].transmitBacklogStart == interfaces[index].transmitBacklog.count {
            interfaces[index].transmitBacklog.removeAll(keepingCapacity: true)
            interfaces[index].transmitBacklogStart = 0
        } else if interfaces[index].transmitBacklogStart >= 64 {
            interfaces[index].transmitBacklog.removeFirst(interfaces[index].transmitBacklogStart)
            interfaces[index].transmitBacklogStart = 0
        }
    }

    /// Frames waiting for a transmit slot on interface `index`.
    public func transmitBacklogCount(interface index: Int) -> Int {
        interfaces[index].transmitBacklog.count - interfaces[index].transmitBacklogStart
    }

    // MARK: IPv4

    /// Whether a packet to `destination` arriving on interface `index` is for this host.
    func isLocal(_ destination: IPv4Address, interface index: Int) -> Bool {
        if destination == .broadcast { return true }
        guard let configuration = interfaces[index].configuration else {
            return true  // unconfigured: accept what reaches our MAC (DHCP offers to the new address)
        }
        if destination == configuration.address || destination == configuration.broadcast { return true }
        // RFC 1122 §3.3.4.2 weak host model: any of our addresses on any interface.
        for attached in interfaces where attached.configuration?.address == destination { return true }
        return false
    }

    func ipv4Input(_ bytes: ArraySlice<UInt8>, interface index: Int) {
        let parsed: (header: IPv4Header, payload: ArraySlice<UInt8>)
        do {
            parsed = try IPv4Header.parse(bytes)
        } catch {
            count(error)
            return
        }
        statistics.ipPacketsReceived += 1
        let header = parsed.header
        guard isLocal(header.destination, interface: index) else {
            statistics.ipNotForUs += 1  // a host does not forward (RFC 1122 §3.3.1.6)
            return
        }
        // Source addresses that cannot be a single host (RFC 1122 §3.2.1.3).
        if header.source == .broadcast || header.source.isMulticast { return }
        if header.isFragment {
            statistics.ipFragmentsReceived += 1
            do {
                guard let whole = try reassembler.add(header: header, payload: parsed.payload, now: now) else { return }
                statistics.ipReassembled += 1
                deliver(whole.header, payload: whole.payload[...], original: bytes, interface: index)
            } catch {
                statistics.ipFragmentsDropped += 1
            }
            return
        }
        deliver(header, payload: parsed.payload, original: bytes, interface: index)
    }

    func deliver(_ header: IPv4Header, payload: ArraySlice<UInt8>, original: ArraySlice<UInt8>, interface index: Int) {
        switch header.protocol {
        case .icmp: icmpInput(header, payload, interface: index)
        case .udp: udpInput(header, payload, original: original, interface: index)
        case .tcp: tcpInput(header, payload, interface: index)
        default:
            statistics.ipUnknownProtocol += 1
            sendUnreachable(.protocol, about: header, original: original)
        }
    }

    /// The interface and next hop for `destination` (RFC 1122 §3.3.1.1): the
    /// directly attached subnet, otherwise the first default gateway.
    func route(to destination: IPv4Address) -> (interface: Int, nextHop: IPv4Address, source: IPv4Address)? {
        for (index, attached) in interfaces.enumerated() {
            if let configuration = attached.configuration, configuration.contains(destination) || destination == .broadcast {
                return (index, destination, configuration.address)
            }
        }
        for (index, attached) in interfaces.enumerated() {
            if let configuration = attached.configuration, let gateway = configuration.gateway {
                return (index, gateway, configuration.address)
            }
        }
        return nil
    }

    /// Sends a transport payload in one or more IPv4 packets.
    /// `interface` forces the outgoing interface (DHCP before an address exists).
    @discardableResult
    func ipOutput(_ payload: [UInt8], protocol: IPProtocol, source: IPv4Address, destination: IPv4Address, dontFragment: Bool, interface forced: Int? = nil) -> Bool {
        let index: Int
        let nextHop: IPv4Address
        if let forced {
            index = forced
            nextHop = destination
        } else {
            guard let route = route(to: destination) else {
                statistics.ipNoRoute += 1
                return false
            }
            index = route.interface
            nextHop = route.nextHop
        }
        identification &+= 1
        var header = IPv4Header(protocol: `protocol`, source: source, destination: destination, timeToLive: configuration.defaultTimeToLive)
        header.identification = identification
        header.dontFragment = dontFragment
        let mtu = interfaces[index].device.mtu
        if IPv4Header.minimumLength + payload.count <= mtu {
            header.totalLength = UInt16(IPv4Header.minimumLength + payload.count)
            send(header, payload: payload[...], nextHop: nextHop, interface: index)
            return true
        }
        guard !dontFragment, payload.count + IPv4Header.minimumLength <= 65535 else {
            statistics.framesDropped += 1
            return false
        }
        // RFC 791 §3.2 fragmentation: every fragment but the last carries a multiple of 8 bytes.
        let chunk = (mtu - IPv4Header.minimumLength) / 8 * 8
        var offset = 0
        while offset < payload.count {
            let length = Swift.min(chunk, payload.count - offset)
            var fragment = header
            fragment.fragmentOffset = UInt16(offset / 8)
            fragment.moreFragments = offset + length < payload.count
            fragment.totalLength = UInt16(IPv4Header.minimumLength + length)
            send(fragment, payload: payload[offset..<(offset + length)], nextHop: nextHop, interface: index)
            statistics.ipFragmentsSent += 1
            offset += length
        }
        return true
    }

    func send(_ header: IPv4Header, payload: ArraySlice<UInt8>, nextHop: IPv4Address, interface index: Int) {
        var frame: [UInt8] = []
        frame.reserveCapacity(EthernetHeader.length + header.headerLength + payload.count)
        EthernetHeader(destination: .broadcast, source: interfaces[index].hardwareAddress, etherType: .ipv4).write(to: &frame)
        header.write(to: &frame)
        frame.append(contentsOf: payload)
        deliver(frame, nextHop: nextHop, interface: index)
    }

    /// Sends a TCP segment built in place in one frame (Ethernet, IPv4 with
    /// DF, TCP header and payload), so the payload is copied once. False
    /// when there is no route or the packet would need fragmenting; the
    /// caller then takes the general `ipOutput` path.
    func sendSegment(_ segment: TCPHeader, payload: ArraySlice<UInt8>, source: IPv4Address, destination: IPv4Address) -> Bool {
        guard let route = route(to: destination) else { return false }
        let length = IPv4Header.minimumLength + segment.headerLength + payload.count
        guard length <= interfaces[route.interface].device.mtu else { return false }
        identification &+= 1
        var header = IPv4Header(protocol: .tcp, source: source, destination: destination, timeToLive: configuration.defaultTimeToLive)
        header.identification = identification
        header.dontFragment = true
        header.totalLength = UInt16(length)
        // Built in the buffer of the last segment the driver copied (taken
        // out of the property, so it is uniquely referenced while written).
        var frame: [UInt8] = []
        swap(&frame, &segmentFrameBuffer)
        frame.removeAll(keepingCapacity: true)
        frame.reserveCapacity(EthernetHeader.length + length)
        EthernetHeader(destination: .broadcast, source: interfaces[route.interface].hardwareAddress, etherType: .ipv4).write(to: &frame)
        header.write(to: &frame)
        segment.write(payload: payload, source: source, destination: destination, to: &frame)
        if let spare = deliver(frame, nextHop: route.nextHop, interface: route.interface) { segmentFrameBuffer = spare }
        return true
    }

    /// Addresses an Ethernet frame holding an IPv4 packet to `nextHop` and
    /// sends it, or queues it behind ARP resolution. Returns the buffer when
    /// the driver copied the frame (see `transmit`).
    @discardableResult
    func deliver(_ frame: consuming [UInt8], nextHop: IPv4Address, interface index: Int) -> [UInt8]? {
        statistics.ipPacketsSent += 1
        let configuration = interfaces[index].configuration
        if nextHop == .broadcast || nextHop == configuration?.broadcast {
            return transmit(frame, interface: index)
        }
        if let hardware = interfaces[index].arp.lookup(nextHop, now: now) {
            frame.set(mac: hardware, at: 0)
            return transmit(frame, interface: index)
        }
        switch interfaces[index].arp.enqueue(frame, for: nextHop, now: now) {
        case .sendRequest: sendARPRequest(for: nextHop, interface: index)
        case .queued: break
        case .dropped: statistics.framesDropped += 1
        }
        return nil
    }

    // MARK: ICMP

    func icmpInput(_ header: IPv4Header, _ payload: ArraySlice<UInt8>, interface index: Int) {
        let message: ICMPMessage
        do {
            message = try ICMPMessage.parse(payload)
        } catch {
            count(error)
            return
        }
        switch message.type {
        case ICMPMessage.echoRequestType:
            // Broadcast echo requests may be ignored (RFC 1122 §3.2.2.6); doing so avoids smurf amplification.
            guard header.destination != .broadcast, header.destination != interfaces[index].configuration?.broadcast else { return }
            var reply: [UInt8] = []
            ICMPMessage.echoReply(identifier: message.identifier, sequence: message.sequence, data: message.body).write(to: &reply)
            statistics.icmpEchoRequestsAnswered += 1
            ipOutput(reply, protocol: .icmp, source: header.destination, destination: header.source, dontFragment: false)
        case ICMPMessage.echoReplyType:
            if echoReplies.count < configuration.echoReplyQueueLimit {
                echoReplies.append(EchoReply(source: header.source, identifier: message.identifier, sequence: message.sequence, data: message.body))
            }
        default:
            // Errors are counted; TCP treats them as soft errors (RFC 5461).
            if message.isError { statistics.icmpErrorsReceived += 1 }
        }
    }

    /// Sends an ICMP error about a received datagram unless RFC 1122 §3.2.2 forbids it.
    func sendUnreachable(_ code: ICMPMessage.UnreachableCode, about header: IPv4Header, original: ArraySlice<UInt8>) {
        guard header.destination != .broadcast, !header.destination.isMulticast, header.fragmentOffset == 0, header.source != .any else { return }
        for attached in interfaces where attached.configuration?.broadcast == header.destination { return }
        if header.protocol == .icmp, let type = original.dropFirst(header.headerLength).first, type != ICMPMessage.echoRequestType && type != ICMPMessage.echoReplyType { return }
        // Token bucket: bounded output under floods.
        if now >= icmpRefill {
            icmpTokens = configuration.icmpErrorsPerSecond
            icmpRefill = now &+ 1_000_000_000
        }
        guard icmpTokens > 0 else {
            statistics.icmpErrorsRateLimited += 1
            return
        }
        icmpTokens -= 1
        var bytes: [UInt8] = []
        ICMPMessage.destinationUnreachable(code, quoting: original, headerLength: header.headerLength).write(to: &bytes)
        statistics.icmpErrorsSent += 1
        ipOutput(bytes, protocol: .icmp, source: header.destination, destination: header.source, dontFragment: false)
    }

    /// Sends an ICMP echo request; replies appear through `receiveEchoReply`.
    public func sendEchoRequest(to destination: IPv4Address, identifier: UInt16, sequence: UInt16, data: [UInt8]) throws(SocketError) {
        guard let route = route(to: destination) else { throw .noRoute(destination) }
        var bytes: [UInt8] = []
        ICMPMessage.echoRequest(identifier: identifier, sequence: sequence, data: data).write(to: &bytes)
        ipOutput(bytes, protocol: .icmp, source: route.source, destination: destination, dontFragment: false)
    }

    /// The oldest echo reply not yet taken.
    public func receiveEchoReply() -> EchoReply? {
        echoReplies.isEmpty ? nil : echoReplies.removeFirst()
    }
}
