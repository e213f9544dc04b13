// Peer conformance: what the real peers (Linux xen-netback and xen-blkback,
// xenstored) read, write and check, as documented in the Xen public headers
// (io/netif.h, io/blkif.h, io/xs_wire.h, io/xenbus.h) and observed in those
// projects' behaviour. Each test names the peer rule it holds the frontends
// to; the models enforce the same rules (see Docs/xen.md, "Checked against
// the peers' documented behaviour").
import CXen
import DeviceInterfaces
import Testing
@testable import XenPVKit

/// Test-side TCP/UDP checksums over IPv4 and IPv6 Ethernet frames (the
/// models use them to play a backend stack; tests use them to check what
/// the frontend delivers).
enum PacketChecksums {
    /// (checksum field offset, pseudo-header words + segment range) of a TCP/UDP frame.
    static func layout(_ frame: [UInt8]) -> (field: Int, pseudo: [UInt8], segment: Range<Int>)? {
        let type = Int(frame[12]) << 8 | Int(frame[13])
        var pseudo: [UInt8] = []
        let proto: UInt8
        let start: Int
        let length: Int
        if type == 0x0800 {
            let ihl = Int(frame[14] & 0x0F) * 4
            length = (Int(frame[16]) << 8 | Int(frame[17])) - ihl
            proto = frame[23]
            start = 14 + ihl
            pseudo = Array(frame[26..<34])
        } else if type == 0x86DD {
            length = Int(frame[18]) << 8 | Int(frame[19])
            proto = frame[20]
            start = 54
            pseudo = Array(frame[22..<54])
        } else {
            return nil
        }
        pseudo += [0, proto, UInt8(length >> 8), UInt8(length & 0xFF)]
        let field = start + (proto == 6 ? 16 : 6)
        return (field, pseudo, start..<start + length)
    }

    static func onesComplementSum(_ bytes: [UInt8]) -> UInt16 {
        var total: UInt32 = 0
        for pair in stride(from: 0, to: bytes.count, by: 2) {
            total += UInt32(bytes[pair]) << 8 + (pair + 1 < bytes.count ? UInt32(bytes[pair + 1]) : 0)
        }
        while total > 0xFFFF { total = (total & 0xFFFF) + (total >> 16) }
        return UInt16(total)
    }

    /// Whether the frame's TCP/UDP checksum verifies.
    static func verifies(_ frame: [UInt8]) -> Bool {
        guard let (_, pseudo, segment) = layout(frame) else { return false }
        return onesComplementSum(pseudo + Array(frame[segment])) == 0xFFFF
    }

    /// Writes the complete checksum (what a stack does before handing a
    /// frame to a device without checksum offload).
    static func fill(_ frame: inout [UInt8]) {
        guard let (field, pseudo, segment) = layout(frame) else { return }
        frame[field] = 0
        frame[field + 1] = 0
        var value = ~onesComplementSum(pseudo + Array(frame[segment]))
        // UDP sends a computed zero as 0xFFFF (zero means "no checksum").
        if value == 0 && field == segment.lowerBound + 6 { value = 0xFFFF }
        frame[field] = UInt8(value >> 8)
        frame[field + 1] = UInt8(value & 0xFF)
    }

    /// Leaves only the pseudo-header sum in the checksum field, as Linux
    /// does for CHECKSUM_PARTIAL (the device or receiver finishes it).
    static func makePartial(_ frame: inout [UInt8]) {
        guard let (field, pseudo, _) = layout(frame) else { return }
        let value = onesComplementSum(pseudo)
        frame[field] = UInt8(value >> 8)
        frame[field + 1] = UInt8(value & 0xFF)
    }

    static let macs: [UInt8] = [0x00, 0x16, 0x3E, 0x0A, 0x0B, 0x0C, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]

    /// An Ethernet/IPv4 frame carrying `proto` (6 TCP, 17 UDP) with
    /// `payload` bytes of data, its IP header checksum valid and its
    /// transport checksum partial.
    static func ipv4(proto: UInt8, payload: Int) -> [UInt8] {
        let header = proto == 6 ? 20 : 8
        let total = 20 + header + payload
        var frame = macs + [0x08, 0x00]
        var ip: [UInt8] = [0x45, 0, UInt8(total >> 8), UInt8(total & 0xFF), 0x12, 0x34, 0x40, 0, 64, proto, 0, 0,
                           10, 0, 0, 1, 10, 0, 0, 5]
        let ipSum = ~onesComplementSum(ip)
        ip[10] = UInt8(ipSum >> 8)
        ip[11] = UInt8(ipSum & 0xFF)
        frame += ip
        frame += transport(proto: proto, payload: payload)
        makePartial(&frame)
        return frame
    }

    /// An Ethernet/IPv6 frame with a partial UDP or TCP checksum.
    static func ipv6(proto: UInt8, payload: Int) -> [UInt8] {
        let segment = transport(proto: proto, payload: payload)
        var frame = macs + [0x86, 0xDD]
        frame += [0x60, 0, 0, 0, UInt8(segment.count >> 8), UInt8(segment.count & 0xFF), proto, 64]
        frame += [0xFE, 0x80] + [UInt8](repeating: 0, count: 13) + [1]
        frame += [0xFE, 0x80] + [UInt8](repeating: 0, count: 13) + [5]
        frame += segment
        makePartial(&frame)
        return frame
    }

    static func transport(proto: UInt8, payload: Int) -> [UInt8] {
        let data = (0..<payload).map { UInt8(truncatingIfNeeded: $0 &* 29 &+ 3) }
        if proto == 17 {
            let length = 8 + payload
            return [0x30, 0x39, 0x00, 0x35, UInt8(length >> 8), UInt8(length & 0xFF), 0, 0] + data
        }
        return [0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xFF, 0xFF, 0, 0, 0, 0] + data
    }
}

@Suite struct PeerConformanceTests {
    // MARK: netfront against netback

    /// netback reads at connect (frontend Connected): tx-ring-ref,
    /// rx-ring-ref, event-channel (or the split -tx/-rx pair),
    /// request-rx-copy (must be 1), feature-rx-notify, feature-sg,
    /// feature-gso-*, feature-no-csum-offload, feature-ipv6-csum-offload,
    /// multi-queue-num-queues (absent: one queue). Ours: one queue, copy
    /// mode, no SG/GSO, checksum offload off.
    @Test func netfrontPublishesWhatNetbackReadsAtConnect() throws {
        var rig = NetRig()
        let front = try rig.connect()
        let node = rig.nodePath
        let writes = rig.daemon.writeLog.filter { $0.path.hasPrefix(node + "/") }
        let published = writes.filter { $0.transaction != 0 }
        var values: [String: String] = [:]
        for write in published { values[String(write.path.dropFirst(node.count + 1))] = write.value }
        #expect(values == [
            "tx-ring-ref": String(front.transmitRingReference), "rx-ring-ref": String(front.receiveRingReference),
            "event-channel": String(front.port), "request-rx-copy": "1", "feature-rx-notify": "1",
            "feature-no-csum-offload": "1", "state": "3",
        ])
        // Everything in one transaction, then Connected outside it (netback
        // connects on the frontend's Connected, reading the keys then).
        #expect(Set(published.map(\.transaction)).count == 1)
        #expect(writes.last.map { "\($0.path)=\($0.value)@\($0.transaction)" } == node + "/state=4@0")
        for absent in ["multi-queue-num-queues", "feature-sg", "feature-gso-tcpv4", "feature-gso-tcpv6",
                       "feature-ipv6-csum-offload", "event-channel-tx", "event-channel-rx", "feature-ctrl-ring"] {
            #expect(rig.daemon.nodes[node + "/" + absent] == nil, "\(absent) must stay unset")
        }
        #expect(rig.backend.state == .connected && !rig.backend.ipv4ChecksumOffload && !rig.backend.canScatterGather)
        // The ring references are the grants of the two ring pages, readable
        // and writable by the backend domain.
        for reference in [front.transmitRingReference, front.receiveRingReference] {
            let entry = rig.grants.entry(reference).load(as: grant_entry_v1.self)
            #expect(entry.flags & UInt16(GTF_type_mask) == UInt16(GTF_permit_access))
            #expect(entry.flags & UInt16(GTF_readonly) == 0 && entry.domid == 0)
        }
    }

    /// netif.h: without "feature-no-csum-offload" = 1 the backend may send
    /// IPv4 TCP/UDP frames with NETRXF_csum_blank, whose checksum holds only
    /// the pseudo-header sum. Linux does for traffic generated in dom0 or
    /// another guest on the host. The frontend must end up with complete
    /// checksums either way.
    @Test func framesWithPartialChecksumsArriveComplete() throws {
        var rig = NetRig()
        var front = try rig.connect()
        let udp = PacketChecksums.ipv4(proto: 17, payload: 100)
        #expect(!PacketChecksums.verifies(udp), "the test frame starts out partial")
        rig.backend.deliverPartialChecksum(udp)
        let frames = try receiveAll(&front)
        #expect(frames.count == 1)
        #expect(frames.first.map(PacketChecksums.verifies) == true, "delivered with a complete UDP checksum")
    }

    /// A backend that sends NETRXF_csum_blank anyway (netif.h makes IPv4
    /// offload the default): the frontend fills the TCP/UDP checksum in.
    @Test func checksumBlankFramesAreCompletedByTheFrontend() throws {
        var rig = NetRig()
        var front = try rig.connect()
        rig.backend.ignoresNoChecksumOffload = true
        let sent = [
            PacketChecksums.ipv4(proto: 6, payload: 333), PacketChecksums.ipv4(proto: 17, payload: 0),
            PacketChecksums.ipv6(proto: 17, payload: 57), PacketChecksums.ipv6(proto: 6, payload: 1000),
        ]
        for frame in sent { rig.backend.deliverPartialChecksum(frame) }
        let frames = try receiveAll(&front)
        #expect(frames.count == 4)
        #expect(frames.allSatisfy(PacketChecksums.verifies))
        #expect(front.checksumsCompleted == 4)
        // Only the checksum field changed.
        for (got, original) in zip(frames, sent) {
            let field = PacketChecksums.layout(original)!.field
            #expect(Array(got[..<field]) == Array(original[..<field]))
            #expect(Array(got[(field + 2)...]) == Array(original[(field + 2)...]))
        }
        // Frames without the flag are delivered untouched.
        let arp = frame(3, length: 60)
        rig.backend.incoming = [arp]
        rig.hypervisor.runBackends()
        #expect(try receiveAll(&front) == [arp])
        #expect(front.checksumsCompleted == 4)
    }

    /// netback caps its vif at ETH_DATA_LEN (1500) unless the frontend
    /// writes "feature-sg" (xenvif_change_mtu), and a frame we send is one
    /// slot. netif.h lets the toolstack's "mtu" only raise the MTU, and the
    /// frontend ignore it; a larger value would make our stack announce a
    /// TCP MSS the vif cannot carry.
    @Test func aToolstackMTUAboveWhatNetbackCarriesIsCapped() throws {
        var rig = NetRig(mtu: 9000)
        var front = try rig.connect()
        #expect(front.mtu == 1500)
        #expect(throws: NetworkInterfaceError.frameTooLarge(size: 1515, limit: 1514)) {
            try send(&front, frame(1, length: 1515))
        }
        try send(&front, frame(1, length: 1514))
        // The netback model drops what a 1500-byte vif could not carry.
        rig.backend.incoming = [frame(2, length: 1600), frame(3, length: 1514)]
        rig.hypervisor.runBackends()
        #expect(try receiveAll(&front) == [frame(3, length: 1514)])
        #expect(rig.backend.droppedForMTU == 1)

        var small = NetRig(mtu: 1400)
        #expect(try small.connect().mtu == 1400)
    }

    /// netback drops transmit requests shorter than an Ethernet header
    /// (ETH_HLEN) or crossing their page; the frontend refuses them first.
    @Test func framesNetbackWouldDropAreRefused() throws {
        var rig = NetRig()
        var front = try rig.connect()
        #expect(throws: NetworkInterfaceError.frameTooSmall(size: 13)) { try send(&front, frame(1, length: 13)) }
        try send(&front, frame(1, length: 14))
        rig.hypervisor.runBackends()
        #expect(rig.backend.transmitted == [frame(1, length: 14)])
    }

    // MARK: blkfront against blkback

    /// blkback reads ring-ref (no ring-page-order: one page), event-channel
    /// and protocol when the frontend is Initialised, connects, and only
    /// then does the frontend read the geometry and say Connected.
    @Test func blkfrontPublishesWhatBlkbackReadsWhenInitialised() throws {
        var rig = BlockRig()
        let front = try rig.connect()
        let node = rig.nodePath
        let writes = rig.daemon.writeLog.filter { $0.path.hasPrefix(node + "/") }
        let published = writes.filter { $0.transaction != 0 }
        var values: [String: String] = [:]
        for write in published { values[String(write.path.dropFirst(node.count + 1))] = write.value }
        #expect(values == [
            "ring-ref": String(front.ringReference), "event-channel": String(front.port),
            "protocol": "x86_64-abi", "state": "3",
        ])
        #expect(writes.last.map { "\($0.path)=\($0.value)@\($0.transaction)" } == node + "/state=4@0")
        #expect(front.device.backendStates == [.initWait, .connected], "Connected only after blkback connected")
        for absent in ["ring-page-order", "num-ring-pages", "multi-queue-num-queues", "feature-persistent",
                       "feature-large-sector-size", "ring-ref0"] {
            #expect(rig.daemon.nodes[node + "/" + absent] == nil, "\(absent) must stay unset")
        }
    }

    /// Linux blkback writes "sectors" in 512-byte units and "sector-size"
    /// as the disk's logical block size (4096 on a 4Kn disk); requests stay
    /// in 512-byte units. The capacity in 4096-byte blocks is sectors / 8.
    @Test func aDiskWithLargeSectorsHasBlkbacksCapacity() throws {
        var rig = BlockRig(sectors: 64, sectorSize: 4096)
        #expect(rig.daemon.nodes[rig.backend.backendPath + "/sectors"] == "512")
        var front = try rig.connect()
        #expect(front.sectorSize == 4096 && front.sectorCount == 64)
        #expect(front.physicalSectorSize == 4096)
        let last = Buffer(count: 4096)
        try front.submit(BlockRequest(operation: .read, sector: 63, buffer: last.bytes, tag: 1))
        let done = rig.drain(&front)
        #expect(try done.first?.result.get() == 4096)
        #expect(Array(last.bytes) == Array(rig.backend.disk[63 * 4096..<64 * 4096]))
        #expect(rig.backend.rejected == 0)
        #expect(throws: BlockDeviceError.outOfRange(sector: 64, count: 1, capacity: 64)) {
            try front.submit(BlockRequest(operation: .read, sector: 64, buffer: last.bytes, tag: 2))
        }
    }

    /// blkif.h: "physical-sector-size" defaults to "sector-size" and must
    /// be a multiple of it.
    @Test func thePhysicalSectorSizeIsReadAndChecked() throws {
        var rig = BlockRig()
        rig.daemon.set(rig.backend.backendPath + "/physical-sector-size", "4096")
        let front = try rig.connect()
        #expect(front.sectorSize == 512 && front.physicalSectorSize == 4096 && front.sectorCount == 256)

        var bad = BlockRig()
        bad.daemon.set(bad.backend.backendPath + "/physical-sector-size", "768")
        #expect(throws: XenbusError.malformedNode(path: bad.backend.backendPath + "/physical-sector-size")) {
            _ = try bad.connect()
        }
    }

    /// blkback's request checks: 1..11 segments direct, up to its
    /// advertised maximum indirect (segments packed 8 bytes each in the
    /// indirect page), first_sect <= last_sect <= 7 in 512-byte units, and
    /// the request inside the disk. Partial pages end at their last sector.
    @Test func requestsPassBlkbacksChecks() throws {
        for indirect in [nil, "256"] {
            var features = ["feature-flush-cache": "1"]
            if let indirect { features["feature-max-indirect-segments"] = indirect }
            var rig = BlockRig(sectors: 2048, features: features)
            var front = try rig.connect()
            let data = Buffer(count: 12 * 4096 + 1536) { UInt8(truncatingIfNeeded: $0 &* 5 &+ 1) }
            try front.submit(BlockRequest(operation: .write, sector: 2048 - 12 * 8 - 3, buffer: data.bytes, tag: 1))
            let done = rig.drain(&front)
            #expect(try done.first?.result.get() == data.bytes.count)
            #expect(rig.backend.rejected == 0)
            #expect(rig.backend.segmentCounts == (indirect == nil ? [11, 2] : [13]))
            #expect(Array(rig.backend.disk.suffix(data.bytes.count)) == Array(data.bytes))
        }
    }

    /// blkback answers a flush the disk below cannot do with
    /// BLKIF_RSP_EOPNOTSUPP; Linux blkfront then stops issuing it. So does
    /// ours: the next flush fails at once without a ring request.
    @Test func aRefusedFlushIsNotIssuedAgain() throws {
        let empty = Buffer(count: 0)
        var rig = BlockRig(features: ["feature-flush-cache": "1"])
        rig.backend.flushUnsupported = true
        var front = try rig.connect()
        try front.submit(BlockRequest(operation: .flush, sector: 0, buffer: empty.bytes, tag: 1))
        let done = rig.drain(&front)
        #expect(done.count == 1)
        if case .failure(.unsupported)? = done.first?.result {} else { Issue.record("expected .unsupported") }
        #expect(!front.supportsFlush)
        #expect(throws: BlockDeviceError.unsupported) {
            try front.submit(BlockRequest(operation: .flush, sector: 0, buffer: empty.bytes, tag: 2))
        }
        #expect(rig.backend.operations == [BLKIF_OP_FLUSH_DISKCACHE])

        // With a barrier also offered, the next flush falls back to it.
        var both = BlockRig(features: ["feature-flush-cache": "1", "feature-barrier": "1"])
        both.backend.flushUnsupported = true
        var second = try both.connect()
        try second.submit(BlockRequest(operation: .flush, sector: 0, buffer: empty.bytes, tag: 1))
        _ = both.drain(&second)
        both.backend.flushUnsupported = false
        try second.submit(BlockRequest(operation: .flush, sector: 0, buffer: empty.bytes, tag: 2))
        let last = both.drain(&second)
        #expect(try last.first?.result.get() == 0)
        #expect(both.backend.operations == [BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER])
    }

    // MARK: xenstore

    /// xenstored: a watch on a node fires when the node goes away with an
    /// ancestor (the toolstack removing a device's backend directory), and
    /// the frontend then sees its backend in state Unknown and closes.
    @Test func removingABackendDirectoryReachesTheFrontend() throws {
        var rig = BlockRig()
        var front = try rig.connect()
        let statePath = rig.backend.backendPath + "/state"
        try rig.store.watch(statePath, token: "be")
        #expect(try rig.store.waitForWatchEvent(token: "be").path == statePath)
        let directory = XenStoreDaemonModel.parent(rig.backend.backendPath)
        rig.daemon.removeTree(directory)
        let event = try rig.store.waitForWatchEvent(token: "be")
        #expect(event.path == statePath)
        try front.backendChanged(store: &rig.store)
        #expect(!front.isConnected && front.device.state == .closed)
    }

    /// xenstored: XS_RM of a missing node succeeds when its parent exists
    /// (ENOENT otherwise); XS_ERROR carries the errno name.
    @Test func removingAMissingNodeFollowsXenstored() throws {
        let memory = SimulatedMemory()
        let hypervisor = SimulatedHypervisor(memory: memory)
        let daemon = XenStoreDaemonModel(hypervisor: hypervisor)
        var store = daemon.client()
        daemon.set("/local/domain/5/data", "x")
        try store.remove("/local/domain/5/data/missing")
        #expect(throws: XenStoreError.store(.noEntry, request: UInt32(XS_RM.rawValue))) {
            try store.remove("/local/domain/5/nothing/missing")
        }
        // A second watch with the same path and token: EEXIST.
        try store.watch("/local/domain/5/data", token: "t")
        #expect(throws: XenStoreError.store(.exists, request: UInt32(XS_WATCH.rawValue))) {
            try store.watch("/local/domain/5/data", token: "t")
        }
    }

    /// xs_wire.h: XENSTORE_PAYLOAD_MAX (4096) bounds every message's
    /// payload; the client refuses a larger one before sending anything.
    @Test func payloadsAreBoundedByXenstorePayloadMax() throws {
        let memory = SimulatedMemory()
        let hypervisor = SimulatedHypervisor(memory: memory)
        let daemon = XenStoreDaemonModel(hypervisor: hypervisor)
        var store = daemon.client()
        let path = "/local/domain/5/big"
        let fits = String(repeating: "a", count: 4096 - path.utf8.count - 1)
        try store.write(path, fits)
        #expect(daemon.nodes[path]?.utf8.count == fits.utf8.count)
        let seen = daemon.requestsSeen.count
        #expect(throws: XenStoreError.payloadTooLarge(length: 4097)) { try store.write(path, fits + "a") }
        #expect(daemon.requestsSeen.count == seen)
    }
}
