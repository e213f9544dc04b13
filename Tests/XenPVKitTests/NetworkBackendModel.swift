// NetworkBackendModel: a netback for tests, written from Xen
// public/io/netif.h: rx in copy mode (grant copy into the frontend's
// buffers, responses in the slot of their request), tx through grant
// maps, the xenbus handshake through the xenstore model, and faults.
import CXen
import XenPVKit

final class NetworkBackendModel: BackendModel {
    enum Fault: Equatable {
        case none
        /// Takes transmit requests and keeps their grants mapped, never answers.
        case silent
        /// Answers transmit requests with made-up ids.
        case unknownIDs
        /// Answers transmit requests with NETIF_RSP_ERROR.
        case errorStatus
    }

    static let domain: DomainID = 0
    let hypervisor: SimulatedHypervisor
    let store: XenStoreDaemonModel
    let frontendPath: String
    let backendPath: String
    var fault: Fault = .none
    /// Stays in InitWait whatever the frontend does (a backend whose
    /// hotplug never finishes connecting).
    var hangs = false
    var state: XenbusDeviceState = .initialising
    var transmitRing: BackRing<NetifTransmitRing>?
    var receiveRing: BackRing<NetifReceiveRing>?
    var ringReferences: [GrantReference] = []
    var guestPort: EventChannelPort = 0
    var held: [GrantReference] = []
    /// Frames the guest sent, in order.
    var transmitted: [[UInt8]] = []
    /// Frames waiting to be delivered to the guest.
    var incoming: [[UInt8]] = []
    var droppedForLackOfBuffers = 0
    /// Bytes per receive fragment (a page at most).
    var fragmentSize = 4096
    var notifications = 0
    /// Read from the frontend at connect: "feature-sg" (netback then lets
    /// its vif carry frames above 1514 bytes) and the absence of
    /// "feature-no-csum-offload" (netback may then pass IPv4 TCP/UDP frames
    /// with a partial checksum and NETRXF_csum_blank).
    var canScatterGather = false
    var ipv4ChecksumOffload = true
    /// Ignores "feature-no-csum-offload" (a backend breaking netif.h).
    var ignoresNoChecksumOffload = false
    /// Frames the dom0 side could not pass: above 1514 bytes without
    /// "feature-sg" (netback caps the vif's MTU at ETH_DATA_LEN).
    var droppedForMTU = 0

    init(
        hypervisor: SimulatedHypervisor, store: XenStoreDaemonModel, frontendPath: String, rxCopy: Bool = true, mtu: Int? = nil,
        handle: Int = 0, mac: String = "00:16:3e:0a:0b:0c", writesBackendKey: Bool = true
    ) {
        self.hypervisor = hypervisor
        self.store = store
        self.frontendPath = frontendPath
        backendPath = "/local/domain/0/backend/vif/\(SimulatedHypervisor.selfDomain)/\(handle)"
        if writesBackendKey { store.set(frontendPath + "/backend", backendPath) }
        store.set(frontendPath + "/backend-id", "0")
        store.set(frontendPath + "/mac", mac)
        if let mtu { store.set(frontendPath + "/mtu", String(mtu)) }
        store.set(frontendPath + "/state", "1")
        store.set(backendPath + "/frontend", frontendPath)
        store.set(backendPath + "/state", "1")
        if rxCopy { store.set(backendPath + "/feature-rx-copy", "1") }
        setState(.initWait)
        hypervisor.backends.append(self)
    }

    func setState(_ new: XenbusDeviceState) {
        state = new
        store.set(backendPath + "/state", String(new.rawValue))
    }

    var frontendState: XenbusDeviceState {
        XenbusDeviceState(rawValue: UInt32(store.nodes[frontendPath + "/state"] ?? "0") ?? 0) ?? .unknown
    }

    func step() {
        if hangs { return }
        switch state {
        case .initWait where frontendState == .connected:
            connect()
        case .connected:
            if frontendState == .closing || frontendState == .closed {
                close()
                return
            }
            processTransmit()
            deliver()
        default:
            break
        }
    }

    func connect() {
        guard let tx = UInt32(store.nodes[frontendPath + "/tx-ring-ref"] ?? ""),
            let rx = UInt32(store.nodes[frontendPath + "/rx-ring-ref"] ?? ""),
            let port = UInt32(store.nodes[frontendPath + "/event-channel"] ?? ""),
            store.nodes[frontendPath + "/request-rx-copy"] == "1",
            // Linux netback from 3.18 to 5.x refuses a frontend without it
            // ("feature-rx-notify is mandatory"); later ones poll instead.
            store.nodes[frontendPath + "/feature-rx-notify"] == "1",
            let txPage = try? hypervisor.mapGrant(tx, by: Self.domain, writable: true),
            let rxPage = try? hypervisor.mapGrant(rx, by: Self.domain, writable: true),
            hypervisor.connectBackend(to: port, from: Self.domain, onNotify: { [unowned self] in notifications += 1 })
        else {
            setState(.closing)
            return
        }
        ringReferences = [tx, rx]
        guestPort = port
        // What netback reads at connect (read_xenbus_vif_flags).
        canScatterGather = store.nodes[frontendPath + "/feature-sg"] == "1"
        ipv4ChecksumOffload = store.nodes[frontendPath + "/feature-no-csum-offload"] != "1"
        transmitRing = BackRing(attaching: txPage)
        receiveRing = BackRing(attaching: rxPage)
        setState(.connected)
    }

    func close() {
        for reference in held { hypervisor.unmapGrant(reference, writable: false) }
        held.removeAll()
        for reference in ringReferences { hypervisor.unmapGrant(reference, writable: true) }
        ringReferences.removeAll()
        transmitRing = nil
        receiveRing = nil
        setState(.closing)
    }

    func processTransmit() {
        guard var ring = transmitRing else { return }
        while let request = try? ring.dequeueRequest() {
            var response = netif_tx_response(id: request.id, status: Int16(NETIF_RSP_OKAY))
            if let page = try? hypervisor.mapGrant(request.gref, by: Self.domain, writable: false) {
                transmitted.append(Array(UnsafeRawBufferPointer(start: page + Int(request.offset), count: Int(request.size))))
                if fault == .silent { held.append(request.gref) } else { hypervisor.unmapGrant(request.gref, writable: false) }
            } else {
                response.status = Int16(NETIF_RSP_ERROR)
            }
            switch fault {
            case .silent: continue
            case .unknownIDs: response.id = request.id &+ 500
            case .errorStatus: response.status = Int16(NETIF_RSP_ERROR)
            case .none: break
            }
            ring.enqueue(response)
        }
        if ring.pushResponses() { hypervisor.raise(guestPort) }
        transmitRing = ring
    }

    func deliver() {
        guard var ring = receiveRing else { return }
        while !incoming.isEmpty {
            let frame = incoming[0]
            if frame.count > 1514 && !canScatterGather {
                incoming.removeFirst()
                droppedForMTU += 1
                continue
            }
            let fragments = max(1, (frame.count + fragmentSize - 1) / fragmentSize)
            guard (try? ring.unconsumedRequests()) ?? 0 >= UInt32(fragments) else { break }
            incoming.removeFirst()
            for index in 0..<fragments {
                let request = try! ring.dequeueRequest()!
                let piece = Array(frame[index * fragmentSize..<min(frame.count, (index + 1) * fragmentSize)])
                var response = netif_rx_response(id: request.id, offset: 0, flags: 0, status: Int16(piece.count))
                do {
                    try hypervisor.copy(into: request.gref, by: Self.domain, offset: 0, bytes: piece)
                } catch {
                    response.status = Int16(NETIF_RSP_ERROR)
                }
                if index < fragments - 1 { response.flags = UInt16(NETRXF_more_data) }
                ring.enqueue(response)
            }
        }
        if ring.pushResponses() { hypervisor.raise(guestPort) }
        receiveRing = ring
    }

    /// Delivers `frame` in one slot flagged NETRXF_extra_info, followed by
    /// `extras` netif_extra_info slots (GSO metadata), the last without
    /// XEN_NETIF_EXTRA_FLAG_MORE.
    func deliverWithExtraInfo(_ frame: [UInt8], extras: Int) {
        guard var ring = receiveRing, let request = try? ring.dequeueRequest() else { return }
        try! hypervisor.copy(into: request.gref, by: Self.domain, offset: 0, bytes: frame)
        ring.enqueue(netif_rx_response(id: request.id, offset: 0, flags: UInt16(NETRXF_extra_info), status: Int16(frame.count)))
        for index in 0..<extras {
            _ = try! ring.dequeueRequest()
            var extra = netif_extra_info()
            extra.type = UInt8(XEN_NETIF_EXTRA_TYPE_GSO)
            extra.flags = index < extras - 1 ? UInt8(XEN_NETIF_EXTRA_FLAG_MORE) : 0
            extra.u.gso.size = 1448
            ring.enqueue(variant: extra)
        }
        if ring.pushResponses() { hypervisor.raise(guestPort) }
        receiveRing = ring
    }

    /// Delivers an IPv4 TCP/UDP `frame` generated in the backend's domain
    /// with a partial checksum (its checksum field holds the pseudo-header
    /// sum only), as Linux does for CHECKSUM_PARTIAL: with checksum offload
    /// on, as is, flagged NETRXF_csum_blank | NETRXF_data_validated; with it
    /// off, the backend's stack completes the checksum first.
    func deliverPartialChecksum(_ frame: [UInt8]) {
        guard var ring = receiveRing, let request = try? ring.dequeueRequest() else { return }
        var bytes = frame
        var flags: UInt16 = 0
        if ipv4ChecksumOffload || ignoresNoChecksumOffload {
            flags = UInt16(NETRXF_csum_blank | NETRXF_data_validated)
        } else {
            PacketChecksums.fill(&bytes)
        }
        try! hypervisor.copy(into: request.gref, by: Self.domain, offset: 0, bytes: bytes)
        ring.enqueue(netif_rx_response(id: request.id, offset: 0, flags: flags, status: Int16(bytes.count)))
        if ring.pushResponses() { hypervisor.raise(guestPort) }
        receiveRing = ring
    }

    /// Answers the next receive request with `frame` but a wrong id.
    func deliverWithWrongID(_ frame: [UInt8]) {
        guard var ring = receiveRing, let request = try? ring.dequeueRequest() else { return }
        try! hypervisor.copy(into: request.gref, by: Self.domain, offset: 0, bytes: frame)
        ring.enqueue(netif_rx_response(id: request.id &+ 100, offset: 0, flags: 0, status: Int16(frame.count)))
        if ring.pushResponses() { hypervisor.raise(guestPort) }
        receiveRing = ring
    }

    /// Puts a response with `status` (and no data) on the receive ring.
    func deliverError(_ status: Int32) {
        guard var ring = receiveRing, let request = try? ring.dequeueRequest() else { return }
        ring.enqueue(netif_rx_response(id: request.id, offset: 0, flags: 0, status: Int16(status)))
        if ring.pushResponses() { hypervisor.raise(guestPort) }
        receiveRing = ring
    }
}
