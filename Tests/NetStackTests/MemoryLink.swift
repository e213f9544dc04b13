// Test support: an in-memory Ethernet link between stacks with seeded loss, duplication, reordering and delay.
@testable import NetStack

/// A shared medium carrying frames between numbered ports, in simulated time.
final class MemoryLink {
    struct Impairment {
        var loss = 0.0
        var duplication = 0.0
        var reordering = 0.0
        /// One-way delay of every frame.
        var delay: UInt64 = 500_000
        /// Uniform extra delay up to this much.
        var jitter: UInt64 = 0
    }

    struct InFlight {
        var deliverAt: UInt64
        var order: Int
        var frame: [UInt8]
    }

    var impairment: Impairment
    var random: SplitMix64
    var now: UInt64 = 0
    var queues: [[InFlight]]
    var order = 0
    /// Every frame offered by each port, when capturing.
    var captured: [[[UInt8]]]
    var capturing = false
    var framesLost = 0
    var framesDuplicated = 0

    init(ports: Int = 2, seed: UInt64 = 1, impairment: Impairment = Impairment()) {
        self.impairment = impairment
        random = SplitMix64(seed: seed)
        queues = Array(repeating: [], count: ports)
        captured = Array(repeating: [], count: ports)
    }

    func chance(_ probability: Double) -> Bool {
        probability > 0 && Double(random.next() >> 11) / Double(1 << 53) < probability
    }

    /// Puts a frame from `port` on the wire towards every other port.
    func transmit(from port: Int, _ frame: [UInt8]) {
        if capturing { captured[port].append(frame) }
        for target in queues.indices where target != port {
            if chance(impairment.loss) {
                framesLost += 1
                continue
            }
            let copies = chance(impairment.duplication) ? 2 : 1
            if copies == 2 { framesDuplicated += 1 }
            for _ in 0..<copies {
                var delay = impairment.delay
                if impairment.jitter > 0 { delay += random.next() % impairment.jitter }
                if chance(impairment.reordering) { delay += 2 * impairment.delay + 1 }
                order += 1
                queues[target].append(InFlight(deliverAt: now + delay, order: order, frame: frame))
            }
        }
    }

    /// Injects a frame for `port` as if it arrived now.
    func inject(to port: Int, _ frame: [UInt8]) {
        order += 1
        queues[port].append(InFlight(deliverAt: now, order: order, frame: frame))
    }

    func take(for port: Int, limit: Int) -> [[UInt8]] {
        var due: [InFlight] = []
        var rest: [InFlight] = []
        for item in queues[port] {
            if item.deliverAt <= now { due.append(item) } else { rest.append(item) }
        }
        due.sort { ($0.deliverAt, $0.order) < ($1.deliverAt, $1.order) }
        if due.count > limit {
            rest.append(contentsOf: due[limit...])
            due.removeLast(due.count - limit)
        }
        queues[port] = rest
        return due.map(\.frame)
    }

    var nextDelivery: UInt64? {
        var earliest: UInt64? = nil
        for queue in queues {
            for item in queue { earliest = min(earliest ?? item.deliverAt, item.deliverAt) }
        }
        return earliest
    }
}

/// One port of a `MemoryLink`, seen by a stack as its driver.
struct LinkPort: NetworkInterface {
    let link: MemoryLink
    let port: Int
    let macAddress: MACAddress
    var mtu = 1500
    var isLinkUp = true
    var statistics = NetworkInterfaceStatistics()

    mutating func send(frame: UnsafeRawBufferPointer) throws(NetworkInterfaceError) {
        guard frame.count <= mtu + EthernetHeader.length else { throw .frameTooLarge(size: frame.count, limit: mtu + EthernetHeader.length) }
        statistics.framesSent += 1
        link.transmit(from: port, Array(frame))
    }

    mutating func receive(limit: Int, _ body: (UnsafeRawBufferPointer) -> Void) throws(NetworkInterfaceError) -> Int {
        let frames = link.take(for: port, limit: limit)
        for frame in frames {
            statistics.framesReceived += 1
            frame.withUnsafeBytes { body($0) }
        }
        return frames.count
    }
}

/// Two hosts on one link: A is 10.0.0.1, B is 10.0.0.2, both /24.
final class TwoHosts {
    let link: MemoryLink
    let a: NetworkStack<LinkPort>
    let b: NetworkStack<LinkPort>
    var now: UInt64 = 0
    static let addressA = IPv4Address(10, 0, 0, 1)
    static let addressB = IPv4Address(10, 0, 0, 2)
    static let macA = MACAddress(2, 0, 0, 0, 0, 1)
    static let macB = MACAddress(2, 0, 0, 0, 0, 2)

    init(seed: UInt64 = 1, impairment: MemoryLink.Impairment = MemoryLink.Impairment(), configuration: NetworkStackConfiguration = NetworkStackConfiguration(), mtu: Int = 1500, addressA: IPv4InterfaceConfiguration? = IPv4InterfaceConfiguration(address: TwoHosts.addressA, prefixLength: 24)) {
        link = MemoryLink(seed: seed, impairment: impairment)
        var configurationA = configuration
        configurationA.seed = seed &* 31 &+ 1
        var configurationB = configuration
        configurationB.seed = seed &* 31 &+ 2
        a = NetworkStack(configuration: configurationA)
        b = NetworkStack(configuration: configurationB)
        a.attach(LinkPort(link: link, port: 0, macAddress: Self.macA, mtu: mtu), configuration: addressA)
        b.attach(LinkPort(link: link, port: 1, macAddress: Self.macB, mtu: mtu), configuration: IPv4InterfaceConfiguration(address: Self.addressB, prefixLength: 24))
    }

    /// Advances simulated time event by event, calling `step` after each poll,
    /// until `step` returns true. Returns false if `limit` of simulated time
    /// passes or nothing remains to happen.
    @discardableResult
    func run(for limit: UInt64 = 600_000_000_000, _ step: () -> Bool = { false }) -> Bool {
        let end = now + limit
        var idleRounds = 0
        var rounds = 0
        var stuckRounds = 0
        while now <= end && rounds < 5_000_000 {
            rounds += 1
            link.now = now
            a.poll(now: now)
            b.poll(now: now)
            if step() { return true }
            var next: UInt64? = link.nextDelivery
            for deadline in [a.nextDeadline, b.nextDeadline] {
                if let deadline { next = min(next ?? deadline, deadline) }
            }
            guard let next else {
                idleRounds += 1
                if idleRounds > 2 { return false }
                continue
            }
            idleRounds = 0
            // A deadline that never moves is a bug; stop rather than spin.
            if next <= now {
                stuckRounds += 1
                if stuckRounds > 10_000 { return false }
            } else {
                stuckRounds = 0
            }
            now = max(now, next)
        }
        return false
    }
}
