// NetFront: the Xen virtual network interface frontend (Xen public/io/netif.h
// tx/rx requests and responses on two io/ring.h rings; xenbus keys
// "tx-ring-ref", "rx-ring-ref", "event-channel", "request-rx-copy",
// "feature-rx-notify", "feature-no-csum-offload", "mac", "mtu"), behind
// `NetworkInterface`.
import CXen
import DeviceInterfaces

/// A protocol violation by the network backend, kept for diagnostics.
public enum NetFrontProtocolError: Error, Equatable, Sendable {
    case unknownTransmitID(UInt16)
    case unknownReceiveID(UInt16)
    case ring(RingError)
}

/// The frontend of one Xen virtual network interface (`vif`), single
/// queue, receive in copy mode ("request-rx-copy": the backend copies each
/// frame into a page we granted it).
///
/// Receive buffers are granted once and re-posted after each frame with
/// the same grant (the backend copies through the grant and never keeps
/// it mapped). Each transmitted frame is copied into a page of its own,
/// granted read-only and ended when its response arrives; a page whose
/// grant the backend still maps is kept out of use until it is released.
public struct NetFront<H: Hypercalls, Memory: GuestMemory>: NetworkInterface {
    public private(set) var macAddress: MACAddress
    public private(set) var mtu: Int
    public var isLinkUp: Bool { isConnected }
    public private(set) var statistics = NetworkInterfaceStatistics()
    public private(set) var isConnected = false
    public private(set) var device: XenbusDevice
    public private(set) var protocolErrors: [NetFrontProtocolError] = []

    public var hypervisor: H
    var memory: Memory
    let grants: GrantTable
    var transmitRing: FrontRing<NetifTransmitRing>
    var receiveRing: FrontRing<NetifReceiveRing>
    let transmitRingPage: UnsafeMutableRawPointer
    let receiveRingPage: UnsafeMutableRawPointer
    let transmitRingReference: GrantReference
    let receiveRingReference: GrantReference
    public let port: EventChannelPort
    var released = false

    struct Page {
        var reference: GrantReference
        var page: UnsafeMutableRawPointer
        /// Frame length, for transmit slots.
        var size = 0
    }

    /// Transmit slots by request id; nil when free.
    var transmitSlots: [Page?]
    var freeTransmitIDs: [UInt16]
    /// Receive buffers by request id (always posted while connected).
    var receiveBuffers: [Page?]
    /// The id posted in each receive ring slot. Responses come back in the
    /// slot of their request (netif.h), and extra-info slots carry no id.
    var receiveSlotIDs: [UInt16]
    /// The next receive slot holds a `netif_extra_info`, not a response.
    var expectingExtraInfo = false
    /// Fragments of a frame that continues in the next response.
    var partialFrame: [UInt8] = []
    /// The frame being reassembled was flagged `NETRXF_csum_blank`.
    var partialFrameChecksumBlank = false
    var dropPartial = false
    var quarantine = GrantedPageQuarantine()

    /// Frames handed to the backend and not yet answered.
    public var outstandingTransmitCount: Int { transmitSlots.count - freeTransmitIDs.count }
    /// Pages waiting for the backend to unmap them before they are freed.
    public var quarantinedPageCount: Int { quarantine.count }
    /// Frames received with `NETRXF_csum_blank` whose TCP/UDP checksum
    /// this frontend filled in (a backend ignoring "feature-no-csum-offload").
    public private(set) var checksumsCompleted = 0

    /// The largest MTU without "feature-sg" (ETH_DATA_LEN).
    public static var maximumMTU: Int { 1500 }

    /// Receive buffers currently posted.
    public var postedReceiveBufferCount: Int { receiveBuffers.count { $0 != nil } }

    // MARK: Connection

    /// Runs the xenbus handshake for the interface at `nodePath` (for
    /// instance `/local/domain/5/device/vif/0`) with `receiveBuffers`
    /// posted pages and up to `transmitSlots` frames in flight.
    public static func connect(
        nodePath: String, store: inout XenStore<H>, memory: Memory, grants: GrantTable,
        receiveBuffers: Int = 64, transmitSlots: Int = 64
    ) throws(XenbusError) -> NetFront {
        var device = try XenbusDevice(nodePath: nodePath, store: &store)
        _ = try device.waitForBackend(store: &store, expecting: .initWait) {
            $0 == .initWait || $0 == .initialised || $0 == .connected
        }
        guard try device.backendFeature("feature-rx-copy", store: &store) else {
            throw .missingFeature("feature-rx-copy")
        }
        let macText: [UInt8]
        do { macText = try store.read(nodePath + "/mac") } catch { throw .store(error) }
        guard let mac = Self.parseMAC(macText) else { throw .malformedNode(path: nodePath + "/mac") }
        var mtu = Self.maximumMTU
        do {
            // netif.h: the toolstack's "mtu" may only raise the MTU above
            // 1500. This frontend does not write "feature-sg", and netback
            // then caps its vif at ETH_DATA_LEN (1500) and sends no frame
            // larger than that; transmit is one slot (one page) per frame.
            // So a larger value is ignored, a smaller one honoured.
            if let value = parseDecimal(try store.read(nodePath + "/mtu")), value >= 68 {
                mtu = Int(min(value, UInt64(Self.maximumMTU)))
            }
        } catch {
            if case .store(.noEntry, _) = error {} else { throw .store(error) }
        }

        var memory = memory
        guard let transmitPage = memory.allocatePage() else { throw .outOfMemory }
        guard let receivePage = memory.allocatePage() else {
            memory.freePage(transmitPage)
            throw .outOfMemory
        }
        let transmitRing = FrontRing<NetifTransmitRing>(initializing: transmitPage)
        let receiveRing = FrontRing<NetifReceiveRing>(initializing: receivePage)
        let transmitReference: GrantReference
        let receiveReference: GrantReference
        do {
            transmitReference = try grants.grantAccess(
                to: device.backendDomain, frame: memory.frameNumber(of: transmitPage), readOnly: false)
        } catch {
            memory.freePage(transmitPage)
            memory.freePage(receivePage)
            throw .grantTable(error)
        }
        do {
            receiveReference = try grants.grantAccess(
                to: device.backendDomain, frame: memory.frameNumber(of: receivePage), readOnly: false)
        } catch {
            if (try? grants.endAccess(transmitReference)) == .released { memory.freePage(transmitPage) }
            memory.freePage(receivePage)
            throw .grantTable(error)
        }
        var hypervisor = store.hypervisor
        let port: EventChannelPort
        do { port = try hypervisor.allocateUnboundPort(remoteDomain: device.backendDomain) } catch {
            if (try? grants.endAccess(transmitReference)) == .released { memory.freePage(transmitPage) }
            if (try? grants.endAccess(receiveReference)) == .released { memory.freePage(receivePage) }
            throw .eventChannel(.hypercall(error))
        }
        let slots = min(transmitSlots, Int(transmitRing.size))
        var front = NetFront(
            macAddress: mac, mtu: mtu, device: device, hypervisor: hypervisor, memory: memory, grants: grants,
            transmitRing: transmitRing, receiveRing: receiveRing, transmitRingPage: transmitPage,
            receiveRingPage: receivePage, transmitRingReference: transmitReference,
            receiveRingReference: receiveReference, port: port,
            transmitSlots: Array(repeating: nil, count: slots),
            freeTransmitIDs: (0..<UInt16(slots)).reversed(),
            receiveBuffers: Array(repeating: nil, count: Int(receiveRing.size)))
        do {
            try front.postReceiveBuffers(min(receiveBuffers, Int(receiveRing.size)))
            try front.publishAndConnect(store: &store)
        } catch {
            front.releaseAll()
            throw error
        }
        return front
    }

    init(
        macAddress: MACAddress, mtu: Int, device: XenbusDevice, hypervisor: H, memory: Memory, grants: GrantTable,
        transmitRing: FrontRing<NetifTransmitRing>, receiveRing: FrontRing<NetifReceiveRing>,
        transmitRingPage: UnsafeMutableRawPointer, receiveRingPage: UnsafeMutableRawPointer,
        transmitRingReference: GrantReference, receiveRingReference: GrantReference, port: EventChannelPort,
        transmitSlots: [Page?], freeTransmitIDs: [UInt16], receiveBuffers: [Page?]
    ) {
        self.macAddress = macAddress
        self.mtu = mtu
        self.device = device
        self.hypervisor = hypervisor
        self.memory = memory
        self.grants = grants
        self.transmitRing = transmitRing
        self.receiveRing = receiveRing
        self.transmitRingPage = transmitRingPage
        self.receiveRingPage = receiveRingPage
        self.transmitRingReference = transmitRingReference
        self.receiveRingReference = receiveRingReference
        self.port = port
        self.transmitSlots = transmitSlots
        self.freeTransmitIDs = freeTransmitIDs
        self.receiveBuffers = receiveBuffers
        self.receiveSlotIDs = Array(repeating: 0, count: Int(receiveRing.size))
    }

    mutating func postReceive(id: UInt16, reference: GrantReference) {
        receiveSlotIDs[Int(receiveRing.requestProducerPrivate & (receiveRing.size - 1))] = id
        receiveRing.enqueue(netif_rx_request(id: id, pad: 0, gref: reference))
    }

    /// Parses "00:16:3e:xx:xx:xx".
    static func parseMAC(_ bytes: [UInt8]) -> MACAddress? {
        var octets: [UInt8] = []
        var value: UInt8 = 0
        var digits = 0
        for byte in bytes + [UInt8(ascii: ":")] {
            if byte == UInt8(ascii: ":") {
                guard digits == 2 else { return nil }
                octets.append(value)
                value = 0
                digits = 0
                continue
            }
            let nibble: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): nibble = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): nibble = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): nibble = byte - UInt8(ascii: "A") + 10
            default: return nil
            }
            guard digits < 2 else { return nil }
            value = value << 4 | nibble
            digits += 1
        }
        guard octets.count == 6 else { return nil }
        return MACAddress(octets[0], octets[1], octets[2], octets[3], octets[4], octets[5])
    }

    mutating func postReceiveBuffers(_ count: Int) throws(XenbusError) {
        for index in 0..<count {
            guard let page = memory.allocatePage() else { throw .outOfMemory }
            let reference: GrantReference
            do {
                reference = try grants.grantAccess(to: device.backendDomain, frame: memory.frameNumber(of: page), readOnly: false)
            } catch {
                memory.freePage(page)
                throw .grantTable(error)
            }
            receiveBuffers[index] = Page(reference: reference, page: page)
            postReceive(id: UInt16(index), reference: reference)
        }
        _ = receiveRing.pushRequests()
    }

    mutating func publishAndConnect(store: inout XenStore<H>) throws(XenbusError) {
        let node = device.nodePath
        let transmitReference = transmitRingReference
        let receiveReference = receiveRingReference
        let port = self.port
        do {
            try store.withTransaction { store, transaction throws(XenStoreError) in
                try store.write(node + "/tx-ring-ref", XenbusDevice.decimalString(UInt64(transmitReference)), in: transaction)
                try store.write(node + "/rx-ring-ref", XenbusDevice.decimalString(UInt64(receiveReference)), in: transaction)
                try store.write(node + "/event-channel", XenbusDevice.decimalString(UInt64(port)), in: transaction)
                try store.write(node + "/request-rx-copy", "1", in: transaction)
                try store.write(node + "/feature-rx-notify", "1", in: transaction)
                // netif.h: without this key the backend may hand over
                // IPv4 TCP/UDP frames with NETRXF_csum_blank (a partial
                // checksum, as Linux sends locally generated traffic);
                // the network stack above verifies checksums, so ask for
                // complete ones. IPv6 offload is off unless asked for.
                try store.write(node + "/feature-no-csum-offload", "1", in: transaction)
                try store.write(node + "/state", XenbusDevice.decimalString(UInt64(XenbusDeviceState.initialised.rawValue)), in: transaction)
            }
        } catch { throw .store(error) }
        device.didPublish(.initialised)
        // netback connects once the frontend says Connected.
        try device.switchState(to: .connected, store: &store)
        _ = try device.waitForBackend(store: &store, expecting: .connected) { $0 == .connected }
        isConnected = true
    }

    /// Reacts to a change of the backend's state node (from the platform's
    /// xenbus watch): a backend leaving Connected takes the link down and
    /// releases every grant.
    public mutating func backendChanged(store: inout XenStore<H>) throws(XenbusError) {
        let state = try device.backendState(store: &store)
        guard isConnected, state != .connected else { return }
        isConnected = false
        releaseAll()
        if device.state != .closing { try device.switchState(to: .closing, store: &store) }
        if state == .closed || state == .unknown { try device.switchState(to: .closed, store: &store) }
    }

    /// Gives up on a backend that stopped answering: in-flight frames count
    /// as transmit errors, the link goes down and every grant is ended.
    public mutating func abandonOutstanding() {
        isConnected = false
        releaseAll()
    }

    /// Closes the interface in order (Closing, backend Closing/Closed, Closed).
    public mutating func disconnect(store: inout XenStore<H>) throws(XenbusError) {
        isConnected = false
        if device.state != .closing && device.state != .closed { try device.switchState(to: .closing, store: &store) }
        _ = try? device.waitForBackend(store: &store, expecting: .closed) { $0 == .closing || $0 == .closed }
        releaseAll()
        if device.state != .closed { try device.switchState(to: .closed, store: &store) }
    }

    mutating func releaseAll() {
        guard !released else { return }
        released = true
        for index in transmitSlots.indices {
            if let slot = transmitSlots[index] {
                statistics.transmitErrors += 1
                release(slot)
                transmitSlots[index] = nil
                freeTransmitIDs.append(UInt16(index))
            }
        }
        for index in receiveBuffers.indices {
            if let buffer = receiveBuffers[index] {
                release(buffer)
                receiveBuffers[index] = nil
            }
        }
        try? hypervisor.closePort(port)
        release(Page(reference: transmitRingReference, page: transmitRingPage))
        release(Page(reference: receiveRingReference, page: receiveRingPage))
    }

    mutating func release(_ page: Page) {
        quarantine.release(page.reference, page: page.page, grants: grants, memory: &memory)
    }

    mutating func sweepQuarantine() {
        quarantine.sweep(grants: grants, memory: &memory)
    }

    mutating func ringFailed(_ error: RingError) {
        protocolErrors.append(.ring(error))
        isConnected = false
        releaseAll()
    }

    // MARK: NetworkInterface

    public mutating func send(frame: UnsafeRawBufferPointer) throws(NetworkInterfaceError) {
        sweepQuarantine()
        guard isConnected else { throw .linkDown }
        reapTransmitResponses()
        guard isConnected else { throw .linkDown }
        guard frame.count >= 14 else { throw .frameTooSmall(size: frame.count) }
        guard frame.count <= mtu + 14, frame.count <= xenPageSize else {
            throw .frameTooLarge(size: frame.count, limit: min(mtu + 14, xenPageSize))
        }
        guard !transmitRing.isFull, let id = freeTransmitIDs.last else { throw .transmitQueueFull }
        guard let page = memory.allocatePage() else { throw .transmitQueueFull }
        page.copyMemory(from: frame.baseAddress!, byteCount: frame.count)
        let reference: GrantReference
        do {
            reference = try grants.grantAccess(to: device.backendDomain, frame: memory.frameNumber(of: page), readOnly: true)
        } catch {
            memory.freePage(page)
            throw .transmitQueueFull
        }
        freeTransmitIDs.removeLast()
        transmitSlots[Int(id)] = Page(reference: reference, page: page, size: frame.count)
        transmitRing.enqueue(netif_tx_request(gref: reference, offset: 0, flags: 0, id: id, size: UInt16(frame.count)))
        if transmitRing.pushRequests() { try? hypervisor.notify(port) }
    }

    public mutating func receive(
        limit: Int, _ body: (UnsafeRawBufferPointer) -> Void
    ) throws(NetworkInterfaceError) -> Int {
        sweepQuarantine()
        guard isConnected else { throw .linkDown }
        reapTransmitResponses()
        var delivered = 0
        var reposted = false
        while delivered < limit && isConnected {
            let slot = Int(receiveRing.responseConsumer & (receiveRing.size - 1))
            let response: netif_rx_response?
            do { response = try receiveRing.dequeueResponse() } catch {
                ringFailed(error)
                break
            }
            guard let response else {
                if (try? receiveRing.finalCheckForResponses()) == true { continue }
                break
            }
            let id = receiveSlotIDs[slot]
            guard let buffer = receiveBuffers[Int(id)] else {
                protocolErrors.append(.unknownReceiveID(id))
                continue
            }
            defer {
                // The same page and grant serve the next frame: copy mode
                // never leaves the grant mapped.
                postReceive(id: id, reference: buffer.reference)
                reposted = true
            }
            if expectingExtraInfo {
                // GSO/hash metadata this frontend did not ask for: skipped.
                let extra = withUnsafeBytes(of: response) { $0.loadUnaligned(as: netif_extra_info.self) }
                expectingExtraInfo = UInt32(extra.flags) & XEN_NETIF_EXTRA_FLAG_MORE != 0
                continue
            }
            let flags = UInt32(response.flags)
            expectingExtraInfo = flags & NETRXF_extra_info != 0
            if response.id != id {
                protocolErrors.append(.unknownReceiveID(response.id))
                statistics.receiveErrors += 1
                dropPartial = flags & NETRXF_more_data != 0
                partialFrame.removeAll()
            } else if response.status < 0 || dropPartial {
                if response.status == Int16(NETIF_RSP_DROPPED) { statistics.receiveDropped += 1 } else { statistics.receiveErrors += 1 }
                dropPartial = flags & NETRXF_more_data != 0
                partialFrame.removeAll()
            } else if Int(response.offset) + Int(response.status) > xenPageSize {
                statistics.receiveErrors += 1
                dropPartial = flags & NETRXF_more_data != 0
                partialFrame.removeAll()
            } else {
                let bytes = UnsafeMutableRawBufferPointer(start: buffer.page + Int(response.offset), count: Int(response.status))
                // The first slot of a frame carries its checksum flags.
                if partialFrame.isEmpty { partialFrameChecksumBlank = flags & NETRXF_csum_blank != 0 }
                if flags & NETRXF_more_data != 0 {
                    partialFrame.append(contentsOf: bytes)
                } else if partialFrame.isEmpty {
                    if partialFrameChecksumBlank, InternetChecksum.completeTransportChecksum(frame: bytes) {
                        checksumsCompleted += 1
                    }
                    body(UnsafeRawBufferPointer(bytes))
                    delivered += 1
                    statistics.framesReceived += 1
                    statistics.bytesReceived += bytes.count
                } else {
                    partialFrame.append(contentsOf: bytes)
                    if partialFrameChecksumBlank,
                        partialFrame.withUnsafeMutableBytes({ InternetChecksum.completeTransportChecksum(frame: $0) })
                    {
                        checksumsCompleted += 1
                    }
                    partialFrame.withUnsafeBytes { body($0) }
                    delivered += 1
                    statistics.framesReceived += 1
                    statistics.bytesReceived += partialFrame.count
                    partialFrame.removeAll()
                }
            }
        }
        if reposted && isConnected && receiveRing.pushRequests() { try? hypervisor.notify(port) }
        return delivered
    }

    mutating func reapTransmitResponses() {
        while true {
            let response: netif_tx_response?
            do { response = try transmitRing.dequeueResponse() } catch {
                ringFailed(error)
                return
            }
            guard let response else {
                if (try? transmitRing.finalCheckForResponses()) == true { continue }
                return
            }
            if response.status == Int16(NETIF_RSP_NULL) { continue }
            guard Int(response.id) < transmitSlots.count, let slot = transmitSlots[Int(response.id)] else {
                protocolErrors.append(.unknownTransmitID(response.id))
                continue
            }
            transmitSlots[Int(response.id)] = nil
            freeTransmitIDs.append(response.id)
            if response.status == Int16(NETIF_RSP_OKAY) {
                statistics.framesSent += 1
                statistics.bytesSent += slot.size
            } else {
                statistics.transmitErrors += 1
            }
            release(slot)
        }
    }
}

/// The Internet checksum (RFC 1071) of TCP and UDP over IPv4 and IPv6, for
/// frames a backend hands over with `NETRXF_csum_blank`: the checksum field
/// then holds only the pseudo-header sum, and the receiver must finish it.
enum InternetChecksum {
    /// Computes the TCP or UDP checksum of the Ethernet `frame` in place.
    /// False (frame unchanged) when it is not an unfragmented IPv4/IPv6
    /// TCP/UDP frame whose lengths fit.
    static func completeTransportChecksum(frame: UnsafeMutableRawBufferPointer) -> Bool {
        var l3 = 14
        guard frame.count >= l3 else { return false }
        var etherType = be16(frame, 12)
        if etherType == 0x8100 {
            guard frame.count >= 18 else { return false }
            etherType = be16(frame, 16)
            l3 = 18
        }
        var sum: UInt64 = 0
        let l4: Int
        let l4Length: Int
        let proto: UInt8
        switch etherType {
        case 0x0800:
            guard frame.count >= l3 + 20, frame[l3] >> 4 == 4 else { return false }
            let headerLength = Int(frame[l3] & 0x0F) * 4
            let totalLength = Int(be16(frame, l3 + 2))
            // A fragment's transport checksum covers other fragments too.
            guard headerLength >= 20, totalLength >= headerLength, l3 + totalLength <= frame.count,
                be16(frame, l3 + 6) & 0x3FFF == 0
            else { return false }
            proto = frame[l3 + 9]
            l4 = l3 + headerLength
            l4Length = totalLength - headerLength
            sum = add(frame, from: l3 + 12, count: 8, to: sum)
        case 0x86DD:
            guard frame.count >= l3 + 40, frame[l3] >> 4 == 6 else { return false }
            l4Length = Int(be16(frame, l3 + 4))
            proto = frame[l3 + 6]
            l4 = l3 + 40
            guard l4 + l4Length <= frame.count else { return false }
            sum = add(frame, from: l3 + 8, count: 32, to: sum)
        default:
            return false
        }
        let field: Int
        switch proto {
        case 6: field = l4 + 16
        case 17: field = l4 + 6
        default: return false
        }
        guard field + 2 <= l4 + l4Length else { return false }
        sum += UInt64(proto) + UInt64(l4Length)
        frame[field] = 0
        frame[field + 1] = 0
        sum = add(frame, from: l4, count: l4Length, to: sum)
        while sum > 0xFFFF { sum = (sum & 0xFFFF) + (sum >> 16) }
        var checksum = ~UInt16(sum)
        if proto == 17 && checksum == 0 { checksum = 0xFFFF }
        frame[field] = UInt8(checksum >> 8)
        frame[field + 1] = UInt8(checksum & 0xFF)
        return true
    }

    static func be16(_ bytes: UnsafeMutableRawBufferPointer, _ offset: Int) -> UInt16 {
        UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    /// Adds `count` bytes as big-endian 16-bit words (an odd last byte
    /// padded with zero).
    static func add(_ bytes: UnsafeMutableRawBufferPointer, from start: Int, count: Int, to sum: UInt64) -> UInt64 {
        var sum = sum
        var index = start
        let end = start + count
        while index + 1 < end {
            sum += UInt64(bytes[index]) << 8 | UInt64(bytes[index + 1])
            index += 2
        }
        if index < end { sum += UInt64(bytes[index]) << 8 }
        return sum
    }
}
