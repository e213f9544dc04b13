// Static configuration and the rumprun network specification (`-W tag,inet,...`).
import Testing
@testable import NetStack

@Test func parsesStaticAndDHCPSpecifications() throws {
    #expect(try NetworkSpecification(parsing: "inet,dhcp") == .dhcp)
    #expect(try NetworkSpecification(parsing: "inet,static,10.0.0.2/24,10.0.0.1") == .static(IPv4InterfaceConfiguration(address: IPv4Address(10, 0, 0, 2), prefixLength: 24, gateway: IPv4Address(10, 0, 0, 1))))
    #expect(try NetworkSpecification(parsing: "inet,static,192.168.1.9/255.255.0.0") == .static(IPv4InterfaceConfiguration(address: IPv4Address(192, 168, 1, 9), prefixLength: 16)))
    #expect(throws: NetworkSpecificationError.unknownFamily("inet6")) { try NetworkSpecification(parsing: "inet6,auto") }
    #expect(throws: NetworkSpecificationError.unknownMethod("bootp")) { try NetworkSpecification(parsing: "inet,bootp") }
    #expect(throws: NetworkSpecificationError.badPrefix("33")) { try NetworkSpecification(parsing: "inet,static,10.0.0.2/33") }
    #expect(throws: NetworkSpecificationError.badPrefix("255.0.255.0")) { try NetworkSpecification(parsing: "inet,static,10.0.0.2/255.0.255.0") }
    #expect(throws: NetworkSpecificationError.badPrefix("10.0.0.2")) { try NetworkSpecification(parsing: "inet,static,10.0.0.2") }
    #expect(throws: NetworkSpecificationError.badAddress("10.0.0")) { try NetworkSpecification(parsing: "inet,static,10.0.0/8") }
    #expect(throws: NetworkSpecificationError.badAddress("gw")) { try NetworkSpecification(parsing: "inet,static,10.0.0.2/8,gw") }
    #expect(throws: NetworkSpecificationError.missingAddress) { try NetworkSpecification(parsing: "inet,static") }
    #expect(throws: NetworkSpecificationError.tooManyFields(5)) { try NetworkSpecification(parsing: "inet,static,10.0.0.2/8,10.0.0.1,x") }
}

@Test func subnetMembershipAndBroadcast() {
    let configuration = IPv4InterfaceConfiguration(address: IPv4Address(192, 168, 7, 20), prefixLength: 22)
    #expect(configuration.broadcast == IPv4Address(192, 168, 7, 255))
    #expect(configuration.contains(IPv4Address(192, 168, 4, 1)))
    #expect(!configuration.contains(IPv4Address(192, 168, 8, 1)))
}

@Test func trafficOffSubnetGoesThroughTheGateway() throws {
    // Three ports: A (10.0.0.1/24, gateway 10.0.0.254), the gateway, and nobody else.
    let link = MemoryLink(ports: 2)
    let a = NetworkStack<LinkPort>()
    a.attach(LinkPort(link: link, port: 0, macAddress: TwoHosts.macA), configuration: IPv4InterfaceConfiguration(address: TwoHosts.addressA, prefixLength: 24, gateway: IPv4Address(10, 0, 0, 254)))
    let gateway = NetworkStack<LinkPort>()
    gateway.attach(LinkPort(link: link, port: 1, macAddress: MACAddress(2, 0, 0, 0, 0, 0xFE)), configuration: IPv4InterfaceConfiguration(address: IPv4Address(10, 0, 0, 254), prefixLength: 24))
    link.capturing = true
    let socket = try a.bindUDP()
    try a.send(socket, to: IPv4Endpoint(address: IPv4Address(192, 0, 2, 7), port: 53), [1, 2, 3])
    var now: UInt64 = 0
    for _ in 0..<5 {
        now += 1_000_000
        link.now = now
        a.poll(now: now)
        gateway.poll(now: now)
    }
    // A asked for the gateway's MAC, then sent the datagram to it with the far destination in the IP header.
    let sent = link.captured[0].compactMap { frame -> (EthernetHeader, IPv4Header)? in
        guard let ethernet = try? EthernetHeader.parse(frame[...]), ethernet.header.etherType == .ipv4,
            let ip = try? IPv4Header.parse(ethernet.payload) else { return nil }
        return (ethernet.header, ip.header)
    }
    #expect(sent.count == 1)
    #expect(sent.first?.0.destination == MACAddress(2, 0, 0, 0, 0, 0xFE))
    #expect(sent.first?.1.destination == IPv4Address(192, 0, 2, 7))
    #expect(a.arpLookup(IPv4Address(10, 0, 0, 254), interface: 0) != nil)
    // A host does not forward: the gateway stack counts it as not for us.
    #expect(gateway.statistics.ipNotForUs == 1)
}

@Test func noRouteWithoutGateway() throws {
    let hosts = TwoHosts()
    let socket = try hosts.a.bindUDP()
    #expect(throws: SocketError.noRoute(IPv4Address(192, 0, 2, 7))) { try hosts.a.send(socket, to: IPv4Endpoint(address: IPv4Address(192, 0, 2, 7), port: 1), [1]) }
    #expect(throws: SocketError.noRoute(IPv4Address(192, 0, 2, 7))) { try hosts.a.connect(to: IPv4Endpoint(address: IPv4Address(192, 0, 2, 7), port: 1)) }
}

@Test func specificationFromGuestConfigurationFields() throws {
    #expect(try NetworkSpecification(method: "dhcp", address: nil, prefixLength: nil, gateway: nil) == .dhcp)
    #expect(try NetworkSpecification(method: "static", address: "10.0.0.2", prefixLength: 24, gateway: "10.0.0.1")
        == .static(IPv4InterfaceConfiguration(address: IPv4Address(10, 0, 0, 2), prefixLength: 24, gateway: IPv4Address(10, 0, 0, 1))))
    #expect(throws: NetworkSpecificationError.missingAddress) { try NetworkSpecification(method: "static", address: nil, prefixLength: 24, gateway: nil) }
    #expect(throws: NetworkSpecificationError.badPrefix("40")) { try NetworkSpecification(method: "static", address: "10.0.0.2", prefixLength: 40, gateway: nil) }
    #expect(throws: NetworkSpecificationError.badPrefix("")) { try NetworkSpecification(method: "static", address: "10.0.0.2", prefixLength: nil, gateway: nil) }
    #expect(throws: NetworkSpecificationError.badAddress("x")) { try NetworkSpecification(method: "static", address: "10.0.0.2", prefixLength: 8, gateway: "x") }
    #expect(throws: NetworkSpecificationError.unknownMethod("slaac")) { try NetworkSpecification(method: "slaac", address: nil, prefixLength: nil, gateway: nil) }
}
