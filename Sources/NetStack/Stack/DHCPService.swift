// Runs DHCP clients on a stack's interfaces: UDP port 68, broadcast from 0.0.0.0, and interface configuration from leases (RFC 2131 §4.1, §4.4).

extension NetworkStack {
    /// Starts DHCP on interface `index`. The interface answers to broadcasts
    /// and its own MAC until a lease configures it; then it announces the address.
    public func startDHCP(interface index: Int, hostName: String = "") throws(SocketError) {
        if dhcpSocket == nil { dhcpSocket = try bindUDP(port: DHCPMessage.clientPort) }
        let client = DHCPClient(hardwareAddress: interfaces[index].hardwareAddress, seed: random.next())
        client.hostName = Array(hostName.utf8)
        dhcpClients[index] = client
        client.start(now: now)
        serviceDHCP()
    }

    /// The current lease of interface `index`.
    public func dhcpLease(interface index: Int) -> DHCPLease? { dhcpClients[index]?.lease }

    /// The DHCP client state of interface `index`.
    public func dhcpState(interface index: Int) -> DHCPClient.State? { dhcpClients[index]?.state }

    func serviceDHCP() {
        guard let socket = dhcpSocket else { return }
        while let datagram = try? receive(socket) {
            guard datagram.source.port == DHCPMessage.serverPort, let message = try? DHCPMessage.parse(datagram.payload[...]) else { continue }
            for client in dhcpClients.values where client.hardwareAddress == message.clientHardwareAddress {
                client.receive(message, now: now)
            }
        }
        for index in dhcpClients.keys.sorted() {
            let client = dhcpClients[index]!
            if let deadline = client.nextDeadline, deadline <= now { client.tick(now: now) }
            for event in client.events {
                switch event {
                case .bound(let lease): configure(interface: index, lease.configuration)
                case .renewed: break
                case .lost: configure(interface: index, nil)
                }
            }
            client.events.removeAll()
            for outgoing in client.outbox {
                var bytes: [UInt8] = []
                outgoing.message.write(to: &bytes)
                if outgoing.destination == .broadcast {
                    try? sendBroadcast(socket, interface: index, port: DHCPMessage.serverPort, bytes)
                } else {
                    try? send(socket, to: IPv4Endpoint(address: outgoing.destination, port: DHCPMessage.serverPort), bytes)
                }
            }
            client.outbox.removeAll()
        }
    }
}
