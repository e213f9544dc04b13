// Network: the application's TCP/IP networking. `Network.start()` brings up
// the interfaces the launcher attached (`-I`, addressed by `-W` static or
// DHCP), runs NetStack on a background thread woken by the NICs' interrupts
// (or a short timer) and by the stack's own timer deadlines, and hands out
// blocking sockets (TCPListener, TCPStream, UDPSocket) for application
// threads. The stack is only touched under one lock; threads waiting on a
// socket sleep on its condition variable, signalled when its readiness
// changes. Guest only. API guide: Docs/application-api.md.
#if hasFeature(Embedded)
import BareMetalKit
import DeviceInterfaces
import NetStack

/// Why bringing up the network or a socket call failed.
public enum NetworkError: Error, Equatable {
    // Bring-up.
    /// The launcher attached no interface and the PCI bus has no NIC.
    case noInterfaceConfigured
    /// Interface `tag` asks for a driver this platform has no PCI device for.
    case deviceNotFound(tag: String, driver: String)
    /// Interface `tag` names a driver the hw platform does not have.
    case unsupportedDriver(tag: String, driver: String)
    case driverFailed(tag: String, driver: String, code: Int)
    case badAddress(tag: String, address: String)
    /// No DHCP lease for `tag` within the time allowed.
    case dhcpTimedOut(tag: String)
    case notStarted
    case alreadyStarted

    // Sockets.
    /// The call's deadline passed first.
    case timedOut
    /// The peer answered the connection request with a reset.
    case connectionRefused
    /// The peer reset an open connection.
    case connectionReset
    /// Retransmissions or keep-alive probes went unanswered.
    case connectionTimedOut
    /// This side aborted the connection.
    case connectionAborted
    /// The socket was closed (by this thread or another), or its sending
    /// side was shut down.
    case closed
    case notConnected
    case noRoute(address: String)
    case addressInUse(port: UInt16)
    case noPortAvailable
    case messageTooLarge(size: Int, limit: Int)
    case tooManyConnections

    /// A one-line description for the console.
    public var description: String {
        switch self {
        case .noInterfaceConfigured:
            return "no network interface: run with -I net0,virtio-net,user (or e1000) on --machine pc"
        case .deviceNotFound(let tag, let driver):
            if driver.utf8.elementsEqual("virtio-net".utf8) || driver.utf8.elementsEqual("e1000".utf8) {
                return "\(tag): no \(driver) device on the PCI bus (ports 0xCF8/0xCFC; use --machine pc)"
            }
            var text = "\(tag): the platform attached no \(driver) device for it"
            for problem in PlatformDevices.problems { text += "; " + problem }
            return text
        case .unsupportedDriver(let tag, let driver): return "\(tag): driver \(driver) is not supported here (use virtio-net or e1000)"
        case .driverFailed(let tag, let driver, let code): return "\(tag): the \(driver) driver failed to start (code \(code))"
        case .badAddress(let tag, let address): return "\(tag): bad address \(address)"
        case .dhcpTimedOut(let tag): return "\(tag): no DHCP lease"
        case .notStarted: return "the network is not started"
        case .alreadyStarted: return "the network is already started"
        case .timedOut: return "timed out"
        case .connectionRefused: return "connection refused"
        case .connectionReset: return "connection reset"
        case .connectionTimedOut: return "connection timed out"
        case .connectionAborted: return "connection aborted"
        case .closed: return "socket closed"
        case .notConnected: return "not connected"
        case .noRoute(let address): return "no route to \(address)"
        case .addressInUse(let port): return "port \(port) in use"
        case .noPortAvailable: return "no port available"
        case .messageTooLarge(let size, let limit): return "message of \(size) bytes exceeds \(limit)"
        case .tooManyConnections: return "too many connections"
        }
    }

    init(_ error: SocketError) {
        switch error {
        case .connection(.refused): self = .connectionRefused
        case .connection(.reset): self = .connectionReset
        case .connection(.timedOut): self = .connectionTimedOut
        case .connection(.aborted): self = .connectionAborted
        case .badHandle, .sendingClosed: self = .closed
        case .notConnected, .wrongSocketType: self = .notConnected
        case .noRoute(let address): self = .noRoute(address: address.description)
        case .addressInUse(let port): self = .addressInUse(port: port)
        case .noPortAvailable: self = .noPortAvailable
        case .messageTooLarge(let size, let limit): self = .messageTooLarge(size: size, limit: limit)
        case .tooManyConnections: self = .tooManyConnections
        case .wouldBlock: self = .timedOut
        }
    }
}

/// One interface the network brought up.
public struct NetworkInterfaceStatus {
    /// The launcher's tag (`net0`), or "net0" for a NIC found without `-I`.
    public var tag: String
    public var driver: StaticString
    public var macAddress: MACAddress
    public var address: IPv4InterfaceConfiguration
    /// Whether the address came from DHCP.
    public var viaDHCP: Bool
    /// How the NIC signals the network thread ("MSI-X", "MSI", "INTx"),
    /// nil when the thread polls it on a short timer.
    public var interruptMode: StaticString?
}

/// Waiters of one socket.
final class SocketWaitState {
    let handle: SocketHandle
    let condition = Condition()
    var waiters = 0
    /// Readiness when the last waiter went to sleep or was signalled.
    var readiness: SocketReadiness = []
    var closed = false

    init(handle: SocketHandle) { self.handle = handle }
}

/// The guest's TCP/IP network.
public final class Network {
    /// The running network, after `start`.
    nonisolated(unsafe) public private(set) static var current: Network? = nil
    /// Serializes `start` (callers may race on several CPUs).
    nonisolated(unsafe) static let startLock = Mutex()

    /// How often the network thread polls a NIC without interrupts, and the
    /// longest it sleeps with interrupts (a lost interrupt costs at most this).
    public static var pollInterval: UInt64 { 1_000_000 }
    public static var idleInterval: UInt64 { 50_000_000 }

    let stack: NetworkStack<NetworkDevice>
    let lock = Mutex()
    var waitStates: [Int: SocketWaitState] = [:]
    var detachers: [() -> Void] = []
    var running = true
    var thread: Thread? = nil
    let stopped = Semaphore(count: 0)
    public private(set) var interfaces: [NetworkInterfaceStatus] = []
    /// Passes of the network thread's loop.
    public private(set) var loopIterations: UInt64 = 0

    init(stack: NetworkStack<NetworkDevice>) { self.stack = stack }

    /// Brings up every interface the launcher attached (`-I`; without any,
    /// the first NIC on PCI with DHCP), gives each its `-W` address (DHCP
    /// when none is given, waiting up to `dhcpTimeout` nanoseconds for a
    /// lease), and starts the network thread. With `interrupts` false the
    /// NICs are polled every `pollInterval` instead of interrupting.
    public static func start(dhcpTimeout: UInt64 = 30_000_000_000, interrupts: Bool = true) throws(NetworkError) -> Network {
        startLock.lock()
        defer { startLock.unlock() }
        if current != nil { throw .alreadyStarted }
        var configured = Rumprun.networkInterfaces
        // Interfaces the platform registered (Xen's netfront) are used by
        // driver name and unit; PCI is probed only for the others.
        let registered = PlatformDevices.networkInterfaces
        let needsPCI = configured.isEmpty ? registered.isEmpty : configured.contains { isPCIDriver($0.driver) }
        let found = needsPCI ? NetworkDeviceProbe.functions() : []
        if configured.isEmpty {
            if let first = registered.first {
                let name = first.device.driverName
                configured = [
                    GuestNetworkInterface(
                        tag: "net0", driver: String(decoding: UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount), as: UTF8.self),
                        mac: "", addressing: .dhcp)
                ]
            } else {
                guard let first = found.first else { throw .noInterfaceConfigured }
                configured = [GuestNetworkInterface(tag: "net0", driver: first.driver.utf8CodeUnitCount == 5 ? "e1000" : "virtio-net", mac: "", addressing: .dhcp)]
            }
        }
        var configuration = NetworkStackConfiguration()
        configuration.seed = Rumprun.random()
        let network = Network(stack: NetworkStack<NetworkDevice>(configuration: configuration))
        var used = [Bool](repeating: false, count: found.count)
        var dhcpInterfaces: [(index: Int, tag: String)] = []
        for (position, entry) in configured.enumerated() {
            let wantsVirtio = entry.driver.utf8.elementsEqual("virtio-net".utf8)
            let wantsE1000 = entry.driver.utf8.elementsEqual("e1000".utf8)
            var platformDevice: (any PlatformNetworkInterface)? = nil
            var slot = 0
            if wantsVirtio || wantsE1000 {
                guard let free = found.indices.first(where: { !used[$0] && found[$0].driver.utf8CodeUnitCount == (wantsE1000 ? 5 : 10) })
                else { throw .deviceNotFound(tag: entry.tag, driver: entry.driver) }
                slot = free
                used[slot] = true
            } else {
                // The n-th entry of a platform driver is its unit n (the
                // launcher writes one vif line per -I, in order).
                let unit = configured[0..<position].filter { $0.driver.utf8.elementsEqual(entry.driver.utf8) }.count
                guard let device = PlatformDevices.networkInterface(driver: entry.driver, unit: unit) else {
                    if registered.isEmpty && PlatformDevices.problems.isEmpty { throw .unsupportedDriver(tag: entry.tag, driver: entry.driver) }
                    throw .deviceNotFound(tag: entry.tag, driver: entry.driver)
                }
                platformDevice = device
            }
            // Addressing is checked before the device starts doing DMA.
            var address: IPv4InterfaceConfiguration? = nil
            if case let .staticAddress(text, prefixLength, gatewayText) = entry.addressing {
                guard let parsed = IPv4Address(text), (0...32).contains(prefixLength) else { throw .badAddress(tag: entry.tag, address: text) }
                var gateway: IPv4Address? = nil
                if let gatewayText {
                    guard let value = IPv4Address(gatewayText) else { throw .badAddress(tag: entry.tag, address: gatewayText) }
                    gateway = value
                }
                address = IPv4InterfaceConfiguration(address: parsed, prefixLength: prefixLength, gateway: gateway)
            }
            let started: StartedNetworkDevice
            if let platformDevice {
                let mode = interrupts ? platformDevice.connectWakeup { NetworkThreadWakeup.wake() } : nil
                started = StartedNetworkDevice(device: .platform(platformDevice), interruptMode: mode, detach: mode == nil ? nil : { platformDevice.disconnectWakeup() })
            } else {
                do throws(NetworkError) {
                    started = try NetworkDeviceProbe.start(found[slot].function, driver: found[slot].driver, tag: entry.tag, interrupts: interrupts)
                } catch {
                    network.stopDevices()
                    throw error
                }
            }
            if let detach = started.detach { network.detachers.append(detach) }
            let index = network.stack.attach(started.device, configuration: address)
            network.interfaces.append(
                NetworkInterfaceStatus(
                    tag: entry.tag, driver: started.device.driverName, macAddress: started.device.macAddress,
                    address: address ?? IPv4InterfaceConfiguration(address: IPv4Address(0, 0, 0, 0), prefixLength: 0),
                    viaDHCP: address == nil, interruptMode: started.interruptMode))
            if address == nil {
                do throws(SocketError) { try network.stack.startDHCP(interface: index, hostName: Rumprun.hostname) } catch {
                    network.stopDevices()
                    throw NetworkError(error)
                }
                dhcpInterfaces.append((index, entry.tag))
            } else {
                network.stack.announce(interface: index)
            }
        }
        network.startThread()
        current = network
        // Wait for the leases (the network thread runs DHCP).
        let deadline = Clock.monotonic &+ dhcpTimeout
        for (index, tag) in dhcpInterfaces {
            while true {
                let lease = network.lock.withLock { network.stack.dhcpLease(interface: index) }
                if let lease {
                    network.interfaces[index].address = lease.configuration
                    break
                }
                if Clock.monotonic >= deadline {
                    network.stop()
                    throw .dhcpTimedOut(tag: tag)
                }
                Thread.sleep(nanoseconds: 10_000_000)
            }
        }
        return network
    }

    static func isPCIDriver(_ driver: String) -> Bool {
        driver.utf8.elementsEqual("virtio-net".utf8) || driver.utf8.elementsEqual("e1000".utf8)
    }

    var anyPolled: Bool { interfaces.contains { $0.interruptMode == nil } }

    func startThread() {
        let polled = anyPolled
        guard
            let thread = Thread.spawn(name: "network", priority: .high, stackSize: 128 * 1024, { [self] in
                run(polled: polled)
                return 0
            })
        else { Rumprun.panic("Network: no memory for the network thread") }
        self.thread = thread
        NetworkThreadWakeup.thread = thread.control.id
    }

    /// The network thread: poll, tell waiters, sleep until a NIC interrupt,
    /// the stack's next deadline, or the poll/idle interval.
    func run(polled: Bool) {
        while true {
            lock.lock()
            if !running {
                lock.unlock()
                break
            }
            loopIterations &+= 1
            stack.poll(now: Clock.monotonic)
            signalChangedSockets()
            let now = Clock.monotonic
            var deadline = now &+ (polled ? Self.pollInterval : Self.idleInterval)
            if let next = stack.nextDeadline { deadline = min(deadline, max(next, now)) }
            lock.unlock()
            if deadline > now { Thread.block(until: deadline) } else { Thread.yield() }
        }
        stopped.up()
    }

    /// Wakes the waiters of every socket whose readiness changed. Called
    /// with the lock held.
    func signalChangedSockets() {
        for state in waitStates.values where state.waiters > 0 {
            let readiness = stack.readiness(state.handle)
            if readiness != state.readiness {
                state.readiness = readiness
                state.condition.broadcast()
            }
        }
    }

    /// Lets the network thread look at the stack again (after a user call
    /// that queued segments or moved a timer).
    func kick() { if running { thread?.wake() } }

    /// Stops the network thread and the NICs' DMA; sockets fail with
    /// `.closed` afterwards. Call before the guest exits when connections
    /// should finish cleanly: `linger` nanoseconds are given to the stack to
    /// send what is queued (FINs, last data).
    public func stop(linger: UInt64 = 0) {
        if linger > 0 {
            let end = Clock.monotonic &+ linger
            while Clock.monotonic < end {
                let pending = lock.withLock { stack.nextDeadline }
                if pending == nil { break }
                Thread.sleep(nanoseconds: 5_000_000)
            }
        }
        lock.lock()
        let wasRunning = running
        running = false
        for state in waitStates.values {
            state.closed = true
            state.condition.broadcast()
        }
        lock.unlock()
        guard wasRunning else { return }
        thread?.wake()
        stopped.down()
        NetworkThreadWakeup.thread = nil
        stopDevices()
        if Network.current === self { Network.current = nil }
    }

    func stopDevices() {
        for detach in detachers { detach() }
        detachers.removeAll()
        for index in 0..<stack.interfaceCount { stack.device(index).shutdown() }
    }

    /// The stack's counters.
    public var statistics: NetworkStackStatistics { lock.withLock { stack.statistics } }

    /// NIC interrupts that woke the network thread.
    public var interruptWakeups: UInt64 { NetworkThreadWakeup.interrupts }

    // MARK: Socket plumbing

    func register(_ handle: SocketHandle) -> SocketWaitState {
        let state = SocketWaitState(handle: handle)
        waitStates[handle.rawValue] = state
        return state
    }

    /// Runs `attempt` under the lock until it stops answering `wouldBlock`,
    /// sleeping on the socket's condition in between, at most until
    /// `deadline` (`Clock.monotonic` nanoseconds; nil waits forever).
    func blocking<Result>(
        _ state: SocketWaitState, deadline: UInt64?, _ attempt: () throws(SocketError) -> Result
    ) throws(NetworkError) -> Result {
        lock.lock()
        defer { lock.unlock() }
        /// One try: the result, or nil when the call would block.
        func once() throws(NetworkError) -> Result? {
            if state.closed || !running { throw .closed }
            do throws(SocketError) {
                let result = try attempt()
                kick()
                return result
            } catch {
                guard error == .wouldBlock else {
                    kick()
                    throw NetworkError(error)
                }
                return nil
            }
        }
        while true {
            if let result = try once() { return result }
            state.readiness = stack.readiness(state.handle)
            state.waiters += 1
            var signalled = true
            if let deadline {
                signalled = state.condition.wait(lock, until: deadline)
            } else {
                state.condition.wait(lock)
            }
            state.waiters -= 1
            if !signalled, let deadline, Clock.monotonic >= deadline {
                // One more try: the readiness may have changed at the deadline.
                if let result = try once() { return result }
                throw .timedOut
            }
        }
    }

    /// Runs a non-blocking call under the lock.
    func locked<Result>(_ state: SocketWaitState?, _ body: () throws(SocketError) -> Result) throws(NetworkError) -> Result {
        lock.lock()
        defer { lock.unlock() }
        if let state, state.closed { throw .closed }
        if !running { throw .closed }
        do throws(SocketError) {
            let result = try body()
            kick()
            return result
        } catch {
            throw NetworkError(error)
        }
    }

    func release(_ state: SocketWaitState, abort: Bool = false) {
        lock.lock()
        if !state.closed {
            // After `stop` the devices are reset: the stack sends nothing more.
            if running {
                if abort { stack.abort(state.handle) } else { stack.close(state.handle) }
            }
            state.closed = true
            state.condition.broadcast()
        }
        waitStates.removeValue(forKey: state.handle.rawValue)
        lock.unlock()
        kick()
    }

    // MARK: Opening sockets

    /// A TCP listener on `port` of every address.
    public func listen(port: UInt16, backlog: Int = 16) throws(NetworkError) -> TCPListener {
        let state = try locked(nil) { () throws(SocketError) in register(try stack.listen(port: port, backlog: backlog)) }
        return TCPListener(network: self, state: state, port: port)
    }

    /// Opens a TCP connection to `address:port` and waits until it is
    /// established (or refused, or `timeout` nanoseconds pass).
    public func connect(to address: IPv4Address, port: UInt16, timeout: UInt64? = 30_000_000_000) throws(NetworkError) -> TCPStream {
        let remote = IPv4Endpoint(address: address, port: port)
        let state = try locked(nil) { () throws(SocketError) in register(try stack.connect(to: remote)) }
        let deadline = timeout.map { Clock.monotonic &+ $0 }
        do throws(NetworkError) {
            try blocking(state, deadline: deadline) { () throws(SocketError) in
                let connection = try stack.tcpConnection(state.handle)
                if let error = connection.error { throw .connection(error) }
                if connection.state.isSynchronized { return }
                if connection.state == .closed { throw .notConnected }
                throw .wouldBlock
            }
        } catch {
            release(state, abort: true)
            throw error
        }
        return TCPStream(network: self, state: state)
    }

    /// A UDP socket bound to `port` (0: an ephemeral port).
    public func bindUDP(port: UInt16 = 0) throws(NetworkError) -> UDPSocket {
        let state = try locked(nil) { () throws(SocketError) in register(try stack.bindUDP(port: port)) }
        return UDPSocket(network: self, state: state)
    }
}

/// A listening TCP socket.
public final class TCPListener {
    let network: Network
    let state: SocketWaitState
    public let port: UInt16

    init(network: Network, state: SocketWaitState, port: UInt16) {
        self.network = network
        self.state = state
        self.port = port
    }

    deinit { network.release(state) }

    /// The next established connection; waits at most `timeout` nanoseconds
    /// (nil: forever).
    public func accept(timeout: UInt64? = nil) throws(NetworkError) -> TCPStream {
        let network = self.network
        let state = self.state
        let deadline = timeout.map { Clock.monotonic &+ $0 }
        let accepted = try network.blocking(state, deadline: deadline) { () throws(SocketError) in
            network.register(try network.stack.accept(state.handle))
        }
        return TCPStream(network: network, state: accepted)
    }

    /// Stops listening; connections not yet accepted are reset, and a
    /// thread waiting in `accept` gets `.closed`.
    public func close() { network.release(state) }
}

/// A connected TCP socket.
public final class TCPStream {
    let network: Network
    let state: SocketWaitState
    public let remote: IPv4Endpoint
    public let local: IPv4Endpoint

    init(network: Network, state: SocketWaitState) {
        self.network = network
        self.state = state
        let connection = network.lock.withLock { try? network.stack.tcpConnection(state.handle) }
        remote = connection?.remote ?? IPv4Endpoint(address: IPv4Address(0, 0, 0, 0), port: 0)
        local = connection?.local ?? IPv4Endpoint(address: IPv4Address(0, 0, 0, 0), port: 0)
    }

    deinit { network.release(state) }

    /// Reads what has arrived into `buffer`, waiting for at least one byte
    /// (at most `timeout` nanoseconds; nil: forever). 0 means the peer
    /// closed its side (end of stream).
    public func read(into buffer: UnsafeMutableRawBufferPointer, timeout: UInt64? = nil) throws(NetworkError) -> Int {
        guard buffer.count > 0 else { return 0 }
        let network = self.network
        let state = self.state
        let deadline = timeout.map { Clock.monotonic &+ $0 }
        return try network.blocking(state, deadline: deadline) { () throws(SocketError) in
            try network.stack.read(state.handle, into: buffer)
        }
    }

    /// Up to `maximumCount` bytes; empty at end of stream.
    public func read(maximumCount: Int = 4096, timeout: UInt64? = nil) throws(NetworkError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: maximumCount)
        let count = try bytes.withUnsafeMutableBytes { buffer in Result { () throws(NetworkError) in try read(into: buffer, timeout: timeout) } }.get()
        bytes.removeLast(maximumCount - count)
        return bytes
    }

    /// Writes all of `bytes`, waiting for send-buffer space as needed (the
    /// whole call at most `timeout` nanoseconds; on a timeout some bytes
    /// may have been queued).
    public func write(_ bytes: UnsafeRawBufferPointer, timeout: UInt64? = nil) throws(NetworkError) {
        let network = self.network
        let state = self.state
        let deadline = timeout.map { Clock.monotonic &+ $0 }
        var offset = 0
        while offset < bytes.count {
            let start = offset
            offset += try network.blocking(state, deadline: deadline) { () throws(SocketError) in
                try network.stack.write(state.handle, UnsafeRawBufferPointer(rebasing: bytes[start...]))
            }
        }
    }

    public func write(_ bytes: [UInt8], timeout: UInt64? = nil) throws(NetworkError) {
        try bytes.withUnsafeBytes { buffer in Result { () throws(NetworkError) in try write(buffer, timeout: timeout) } }.get()
    }

    public func write(_ text: String, timeout: UInt64? = nil) throws(NetworkError) {
        try write(Array(text.utf8), timeout: timeout)
    }

    /// Sends a FIN after the queued data; reading continues.
    public func shutdown() throws(NetworkError) {
        let network = self.network
        let state = self.state
        try network.locked(state) { () throws(SocketError) in try network.stack.shutdown(state.handle) }
    }

    /// Turns Nagle's algorithm off (true) or on.
    public func setNoDelay(_ enabled: Bool) throws(NetworkError) {
        let network = self.network
        let state = self.state
        try network.locked(state) { () throws(SocketError) in try network.stack.setNoDelay(state.handle, enabled) }
    }

    /// Releases the socket; the connection finishes its close in the
    /// background. Threads blocked on it get `.closed`.
    public func close() { network.release(state) }

    /// Resets the connection and releases the socket.
    public func abort() { network.release(state, abort: true) }
}

/// A UDP socket.
public final class UDPSocket {
    let network: Network
    let state: SocketWaitState

    init(network: Network, state: SocketWaitState) {
        self.network = network
        self.state = state
    }

    deinit { network.release(state) }

    /// Sends one datagram.
    public func send(_ payload: [UInt8], to address: IPv4Address, port: UInt16) throws(NetworkError) {
        let network = self.network
        let state = self.state
        try network.locked(state) { () throws(SocketError) in
            try network.stack.send(state.handle, to: IPv4Endpoint(address: address, port: port), payload)
        }
    }

    /// The next datagram; waits at most `timeout` nanoseconds (nil: forever).
    public func receive(timeout: UInt64? = nil) throws(NetworkError) -> UDPDatagram {
        let network = self.network
        let state = self.state
        let deadline = timeout.map { Clock.monotonic &+ $0 }
        return try network.blocking(state, deadline: deadline) { () throws(SocketError) in try network.stack.receive(state.handle) }
    }

    public func close() { network.release(state) }
}
#endif
