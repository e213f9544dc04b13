// The socket-style API: UDP and TCP demultiplexing and user calls (RFC 9293 §3.9.1 user interface, §3.10.7.1-2 CLOSED and LISTEN; RFC 768; RFC 6528 ISNs).

/// A socket of a `NetworkStack`.
public struct SocketHandle: Hashable, Sendable {
    public let rawValue: Int
}

/// Why a socket call failed.
public enum SocketError: Error, Equatable, Sendable {
    case badHandle(Int)
    /// The call does not apply to this kind of socket (accept on a UDP socket).
    case wrongSocketType
    case addressInUse(port: UInt16)
    case noPortAvailable
    case noRoute(IPv4Address)
    /// Nothing to do right now; retry after `poll` (EAGAIN).
    case wouldBlock
    case notConnected
    /// The connection ended abnormally.
    case connection(TCPConnectionError)
    /// Writing after `shutdown` or `close`.
    case sendingClosed
    case messageTooLarge(size: Int, limit: Int)
    case tooManyConnections
}

/// What a non-blocking caller may do without getting `wouldBlock`.
public struct SocketReadiness: OptionSet, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Data, end of stream, an error, a datagram, or (listeners) a connection to accept.
    public static var readable: SocketReadiness { SocketReadiness(rawValue: 1) }
    public static var writable: SocketReadiness { SocketReadiness(rawValue: 2) }
    public static var error: SocketReadiness { SocketReadiness(rawValue: 4) }
    /// The peer closed its side.
    public static var hangUp: SocketReadiness { SocketReadiness(rawValue: 8) }
}

extension NetworkStack {
    func register(_ entry: SocketEntry) -> SocketHandle {
        let handle = SocketHandle(rawValue: nextSocket)
        nextSocket += 1
        sockets[handle.rawValue] = entry
        return handle
    }

    func entry(_ handle: SocketHandle) throws(SocketError) -> SocketEntry {
        guard let entry = sockets[handle.rawValue] else { throw .badHandle(handle.rawValue) }
        return entry
    }

    func connection(_ handle: SocketHandle) throws(SocketError) -> TCPConnection {
        guard case .connection(let connection) = try entry(handle) else { throw .wrongSocketType }
        return connection
    }

    /// A random free port in the ephemeral range (RFC 6056 §3.3.1 style).
    func ephemeralPort(inUse: (UInt16) -> Bool) throws(SocketError) -> UInt16 {
        let range = configuration.ephemeralPorts
        let size = Int(range.upperBound) - Int(range.lowerBound) + 1
        let start = Int(random.next() % UInt64(size))
        for step in 0..<size {
            let port = UInt16(Int(range.lowerBound) + (start + step) % size)
            if !inUse(port) { return port }
        }
        throw .noPortAvailable
    }

    /// RFC 6528: a 4 µs clock plus a keyed hash of the connection identifiers.
    func initialSequenceNumber(local: IPv4Endpoint, remote: IPv4Endpoint) -> SequenceNumber {
        var hash = SipHash(key0: sequenceKey.0, key1: sequenceKey.1)
        hash.add(UInt64(local.address.rawValue) << 32 | UInt64(remote.address.rawValue))
        hash.add(UInt64(local.port) << 16 | UInt64(remote.port))
        return SequenceNumber(UInt32(truncatingIfNeeded: now / 4000) &+ UInt32(truncatingIfNeeded: hash.finalize()))
    }

    func tcpConfiguration(towards destination: IPv4Address) -> TCPConfiguration {
        var tcp = configuration.tcp
        if let route = route(to: destination) {
            let mtu = interfaces[route.interface].device.mtu
            tcp.maximumSegmentSize = Swift.min(tcp.maximumSegmentSize, mtu - 40)
        }
        return tcp
    }

    // MARK: UDP

    /// Binds a UDP socket to `port` on every address; port 0 picks an ephemeral port.
    public func bindUDP(port: UInt16 = 0) throws(SocketError) -> SocketHandle {
        var chosen = port
        if chosen == 0 {
            chosen = try ephemeralPort { udpSockets[$0] != nil }
        } else if udpSockets[chosen] != nil {
            throw .addressInUse(port: chosen)
        }
        let socket = UDPSocket(port: chosen)
        udpSockets[chosen] = socket
        return register(.udp(socket))
    }

    /// Sends one datagram; larger than the MTU means IPv4 fragments.
    public func send(_ handle: SocketHandle, to destination: IPv4Endpoint, _ payload: [UInt8]) throws(SocketError) {
        guard case .udp(let socket) = try entry(handle) else { throw .wrongSocketType }
        let limit = 65535 - IPv4Header.minimumLength - UDPHeader.length
        guard payload.count <= limit else { throw .messageTooLarge(size: payload.count, limit: limit) }
        guard let route = route(to: destination.address) else {
            statistics.ipNoRoute += 1
            throw .noRoute(destination.address)
        }
        let datagram = UDPHeader.datagram(sourcePort: socket.port, destinationPort: destination.port, payload: payload[...], source: route.source, destination: destination.address)
        statistics.udpDatagramsSent += 1
        ipOutput(datagram, protocol: .udp, source: route.source, destination: destination.address, dontFragment: false)
    }

    /// Sends a datagram from 0.0.0.0 out of interface `index` to the limited
    /// broadcast address, as a client without an address must (RFC 2131 §4.1).
    public func sendBroadcast(_ handle: SocketHandle, interface index: Int, port: UInt16, _ payload: [UInt8]) throws(SocketError) {
        guard case .udp(let socket) = try entry(handle) else { throw .wrongSocketType }
        let source = interfaces[index].configuration?.address ?? .any
        let datagram = UDPHeader.datagram(sourcePort: socket.port, destinationPort: port, payload: payload[...], source: source, destination: .broadcast)
        statistics.udpDatagramsSent += 1
        ipOutput(datagram, protocol: .udp, source: source, destination: .broadcast, dontFragment: false, interface: index)
    }

    /// The oldest queued datagram, or `wouldBlock`.
    public func receive(_ handle: SocketHandle) throws(SocketError) -> UDPDatagram {
        guard case .udp(let socket) = try entry(handle) else { throw .wrongSocketType }
        guard !socket.queue.isEmpty else { throw .wouldBlock }
        return socket.queue.removeFirst()
    }

    func udpInput(_ header: IPv4Header, _ payload: ArraySlice<UInt8>, original: ArraySlice<UInt8>, interface index: Int) {
        let parsed: (header: UDPHeader, payload: ArraySlice<UInt8>)
        do {
            parsed = try UDPHeader.parse(payload, source: header.source, destination: header.destination)
        } catch {
            count(error)
            return
        }
        statistics.udpDatagramsReceived += 1
        guard let socket = udpSockets[parsed.header.destinationPort] else {
            statistics.udpNoPort += 1
            sendUnreachable(.port, about: header, original: original)
            return
        }
        guard socket.queue.count < configuration.udpReceiveQueueLimit else {
            statistics.udpQueueOverflows += 1
            return
        }
        socket.queue.append(UDPDatagram(
            source: IPv4Endpoint(address: header.source, port: parsed.header.sourcePort),
            destination: IPv4Endpoint(address: header.destination, port: parsed.header.destinationPort),
            payload: Array(parsed.payload)))
    }

    // MARK: TCP demultiplexing

    func tcpInput(_ ip: IPv4Header, _ payload: ArraySlice<UInt8>, interface index: Int) {
        let parsed: (header: TCPHeader, payload: ArraySlice<UInt8>)
        do {
            parsed = try TCPHeader.parse(payload, source: ip.source, destination: ip.destination)
        } catch {
            count(error)
            return
        }
        statistics.tcpSegmentsReceived += 1
        // TCP is unicast only (RFC 9293 §3.9.2.1 / RFC 1122 §4.2.3.10).
        guard ip.destination != .broadcast, !ip.destination.isMulticast, ip.destination != interfaces[index].configuration?.broadcast else { return }
        let header = parsed.header
        let key = ConnectionKey(local: IPv4Endpoint(address: ip.destination, port: header.destinationPort), remote: IPv4Endpoint(address: ip.source, port: header.sourcePort))
        if let connection = connections[key] {
            // A new SYN may end TIME-WAIT early when its sequence number is beyond the old connection's (RFC 9293 §3.6.1, RFC 6191).
            if connection.state == .timeWait && header.flags == .syn && SequenceNumber(header.sequenceNumber) > connection.receiveNext && listeners[key.local.port] != nil {
                connection.terminate(nil)
                settle(connection)
            } else {
                connection.receive(header, payload: parsed.payload, now: now)
                settle(connection)
                return
            }
        }
        if let listener = listeners[key.local.port], listener.address == .any || listener.address == key.local.address {
            listenInput(listener, key: key, header: header, payloadCount: parsed.payload.count)
            return
        }
        resetUnknown(key: key, header: header, payloadCount: parsed.payload.count)
    }

    /// RFC 9293 §3.10.7.1: a segment for no connection draws a RST unless it is one.
    func resetUnknown(key: ConnectionKey, header: TCPHeader, payloadCount: Int) {
        guard !header.flags.contains(.rst) else { return }
        var reply: TCPHeader
        if header.flags.contains(.ack) {
            reply = TCPHeader(sourcePort: key.local.port, destinationPort: key.remote.port, sequenceNumber: header.acknowledgmentNumber, acknowledgmentNumber: 0, flags: .rst, window: 0)
        } else {
            let length = payloadCount + (header.flags.contains(.syn) ? 1 : 0) + (header.flags.contains(.fin) ? 1 : 0)
            reply = TCPHeader(sourcePort: key.local.port, destinationPort: key.remote.port, sequenceNumber: 0, acknowledgmentNumber: header.sequenceNumber &+ UInt32(length), flags: [.rst, .ack], window: 0)
        }
        reply.options = TCPOptions()
        statistics.tcpResetsSent += 1
        statistics.tcpSegmentsSent += 1
        ipOutput(reply.segment(payload: [], source: key.local.address, destination: key.remote.address), protocol: .tcp, source: key.local.address, destination: key.remote.address, dontFragment: true)
    }

    /// RFC 9293 §3.10.7.2: LISTEN. The backlog bounds half-open plus unaccepted
    /// connections, so a SYN flood costs at most `backlog` connection blocks.
    func listenInput(_ listener: Listener, key: ConnectionKey, header: TCPHeader, payloadCount: Int) {
        let flags = header.flags
        if flags.contains(.rst) { return }
        if flags.contains(.ack) {
            resetUnknown(key: key, header: header, payloadCount: payloadCount)
            return
        }
        guard flags.contains(.syn) else { return }
        guard listener.halfOpen + listener.acceptQueue.count < listener.backlog, connections.count < configuration.maximumConnections else {
            statistics.tcpSynsDropped += 1
            return
        }
        let connection = TCPConnection.accept(
            syn: header, local: key.local, remote: key.remote,
            initialSequence: initialSequenceNumber(local: key.local, remote: key.remote),
            configuration: tcpConfiguration(towards: key.remote.address), now: now)
        connection.listenerPort = listener.port
        listener.halfOpen += 1
        track(connection, key: key)
        settle(connection)
    }

    func track(_ connection: TCPConnection, key: ConnectionKey) {
        nextConnectionSerial += 1
        connection.serial = nextConnectionSerial
        connections[key] = connection
    }

    /// After any event on a connection: move it to accept's queue, release
    /// backlog slots, transmit its segments and forget it once closed.
    func settle(_ connection: TCPConnection) {
        if let port = connection.listenerPort, !connection.queuedForAccept {
            let listener = listeners[port]
            if connection.state.isSynchronized {
                connection.queuedForAccept = true
                listener?.halfOpen -= 1
                listener?.acceptQueue.append(connection)
            } else if connection.state == .closed {
                listener?.halfOpen -= 1
                connection.listenerPort = nil
            }
        }
        for segment in connection.outbox {
            statistics.tcpSegmentsSent += 1
            if segment.header.flags.contains(.rst) { statistics.tcpResetsSent += 1 }
            if segment.isRetransmission { statistics.tcpRetransmissions += 1 }
            if sendSegment(segment.header, payload: segment.payload, source: connection.local.address, destination: connection.remote.address) { continue }
            // No route (counted there) or larger than the MTU: the general path.
            var bytes: [UInt8] = []
            bytes.reserveCapacity(segment.header.headerLength + segment.payload.count)
            segment.header.write(payload: segment.payload, source: connection.local.address, destination: connection.remote.address, to: &bytes)
            ipOutput(bytes, protocol: .tcp, source: connection.local.address, destination: connection.remote.address, dontFragment: true)
        }
        connection.outbox.removeAll(keepingCapacity: true)
        if connection.state == .closed {
            let key = ConnectionKey(local: connection.local, remote: connection.remote)
            if connections[key] === connection { connections.removeValue(forKey: key) }
        }
    }

    // MARK: TCP user calls

    /// Opens a listening socket on `port` of every address (RFC 9293 §3.10.1 passive OPEN).
    public func listen(port: UInt16, backlog: Int = 16) throws(SocketError) -> SocketHandle {
        guard listeners[port] == nil else { throw .addressInUse(port: port) }
        let listener = Listener(port: port, address: .any, backlog: Swift.max(1, backlog))
        listeners[port] = listener
        return register(.listener(listener))
    }

    /// Takes an established connection from the listener's queue, or `wouldBlock`.
    public func accept(_ handle: SocketHandle) throws(SocketError) -> SocketHandle {
        guard case .listener(let listener) = try entry(handle) else { throw .wrongSocketType }
        guard !listener.acceptQueue.isEmpty else { throw .wouldBlock }
        let connection = listener.acceptQueue.removeFirst()
        connection.listenerPort = nil
        statistics.tcpConnectionsAccepted += 1
        return register(.connection(connection))
    }

    /// Starts an active open; the socket becomes writable once established.
    public func connect(to remote: IPv4Endpoint, localPort: UInt16 = 0) throws(SocketError) -> SocketHandle {
        guard let route = route(to: remote.address) else {
            statistics.ipNoRoute += 1
            throw .noRoute(remote.address)
        }
        guard connections.count < configuration.maximumConnections else { throw .tooManyConnections }
        let source = route.source
        var port = localPort
        if port == 0 {
            port = try ephemeralPort { candidate in
                listeners[candidate] != nil || connections[ConnectionKey(local: IPv4Endpoint(address: source, port: candidate), remote: remote)] != nil
            }
        }
        let local = IPv4Endpoint(address: source, port: port)
        let key = ConnectionKey(local: local, remote: remote)
        guard connections[key] == nil else { throw .addressInUse(port: port) }
        let connection = TCPConnection.connect(local: local, remote: remote, initialSequence: initialSequenceNumber(local: local, remote: remote), configuration: tcpConfiguration(towards: remote.address), now: now)
        track(connection, key: key)
        statistics.tcpConnectionsOpened += 1
        settle(connection)
        return register(.connection(connection))
    }

    /// Reads into `buffer`: the byte count, 0 at end of stream, or `wouldBlock`.
    public func read(_ handle: SocketHandle, into buffer: UnsafeMutableRawBufferPointer) throws(SocketError) -> Int {
        let connection = try connection(handle)
        if connection.bytesReadable > 0 {
            let n = connection.read(into: buffer, now: now)
            settle(connection)
            return n
        }
        if connection.receiveClosed { return 0 }
        if let error = connection.error { throw .connection(error) }
        if connection.state == .closed { throw .notConnected }
        throw .wouldBlock
    }

    /// Reads up to `maximumCount` bytes: empty at end of stream, or `wouldBlock`.
    public func read(_ handle: SocketHandle, maximumCount: Int) throws(SocketError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: maximumCount)
        let result = bytes.withUnsafeMutableBytes { buffer in Result { () throws(SocketError) in try read(handle, into: buffer) } }
        let n = try result.get()
        bytes.removeLast(maximumCount - n)
        return bytes
    }

    /// Queues bytes for sending and returns how many fit, or `wouldBlock` if none did.
    public func write(_ handle: SocketHandle, _ bytes: UnsafeRawBufferPointer) throws(SocketError) -> Int {
        let connection = try connection(handle)
        if let error = connection.error { throw .connection(error) }
        guard connection.canWrite else { throw connection.finQueued ? .sendingClosed : .notConnected }
        guard !bytes.isEmpty else { return 0 }
        let n = connection.write(bytes, now: now)
        batchingTransmissions { settle(connection) }
        guard n > 0 else { throw .wouldBlock }
        return n
    }

    /// Queues bytes for sending and returns how many fit, or `wouldBlock` if none did.
    public func write(_ handle: SocketHandle, _ bytes: [UInt8]) throws(SocketError) -> Int {
        try bytes.withUnsafeBytes { buffer in Result { () throws(SocketError) in try write(handle, buffer) } }.get()
    }

    /// Closes the sending direction; reads continue until the peer's FIN.
    public func shutdown(_ handle: SocketHandle) throws(SocketError) {
        let connection = try connection(handle)
        connection.shutdownWrite(now: now)
        settle(connection)
    }

    /// Releases the socket. TCP connections finish their close in the
    /// background; a listener resets the connections nobody accepted.
    public func close(_ handle: SocketHandle) {
        guard let entry = sockets.removeValue(forKey: handle.rawValue) else { return }
        switch entry {
        case .udp(let socket):
            udpSockets.removeValue(forKey: socket.port)
        case .listener(let listener):
            listeners.removeValue(forKey: listener.port)
            var orphans = listener.acceptQueue
            for connection in connections.values where connection.listenerPort == listener.port && !connection.queuedForAccept {
                orphans.append(connection)
            }
            orphans.sort { $0.serial < $1.serial }
            listener.acceptQueue.removeAll()
            for connection in orphans {
                connection.listenerPort = nil
                connection.abort(now: now)
                settle(connection)
            }
        case .connection(let connection):
            connection.close(now: now)
            settle(connection)
        }
    }

    /// Resets the connection and releases the socket.
    public func abort(_ handle: SocketHandle) {
        if case .connection(let connection)? = sockets[handle.rawValue] {
            connection.abort(now: now)
            settle(connection)
        }
        sockets.removeValue(forKey: handle.rawValue)
    }

    /// What the socket is ready for.
    public func readiness(_ handle: SocketHandle) -> SocketReadiness {
        guard let entry = sockets[handle.rawValue] else { return .error }
        switch entry {
        case .udp(let socket):
            return socket.queue.isEmpty ? .writable : [.readable, .writable]
        case .listener(let listener):
            return listener.acceptQueue.isEmpty ? [] : .readable
        case .connection(let connection):
            var ready: SocketReadiness = []
            if connection.bytesReadable > 0 || connection.receiveClosed || connection.error != nil { ready.insert(.readable) }
            if connection.canWrite && connection.state.isSynchronized && connection.sendSpace > 0 { ready.insert(.writable) }
            if connection.error != nil { ready.insert(.error) }
            if connection.receiveClosed || connection.state == .closed { ready.insert(.hangUp) }
            return ready
        }
    }

    /// The TCP state of a connection or listener socket.
    public func state(of handle: SocketHandle) throws(SocketError) -> TCPState {
        switch try entry(handle) {
        case .listener: return .listen
        case .connection(let connection): return connection.state
        case .udp: throw .wrongSocketType
        }
    }

    /// The connection object behind a socket, for statistics and options.
    public func tcpConnection(_ handle: SocketHandle) throws(SocketError) -> TCPConnection {
        try connection(handle)
    }

    /// Turns keep-alive probes on or off (RFC 1122 §4.2.3.6).
    public func setKeepAlive(_ handle: SocketHandle, _ enabled: Bool) throws(SocketError) {
        try connection(handle).setKeepAlive(enabled, now: now)
    }

    /// Turns Nagle's algorithm off (true) or on.
    public func setNoDelay(_ handle: SocketHandle, _ enabled: Bool) throws(SocketError) {
        let connection = try connection(handle)
        connection.noDelay = enabled
        connection.transmit(now: now)
        settle(connection)
    }

    /// Connections waiting in a listener's accept queue and half-open ones.
    public func backlogUsage(_ handle: SocketHandle) throws(SocketError) -> (halfOpen: Int, queued: Int) {
        guard case .listener(let listener) = try entry(handle) else { throw .wrongSocketType }
        return (listener.halfOpen, listener.acceptQueue.count)
    }
}
