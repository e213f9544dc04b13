// BlockBackendModel: a blkback for tests, written from Xen public/io/blkif.h
// and io/xenbus.h: the xenbus handshake through the xenstore model, the
// ring consumed through BackRing, segments mapped through the simulated
// grant table, and injectable faults.
import CXen
import XenPVKit

final class BlockBackendModel: BackendModel {
    enum Fault: Equatable {
        case none
        /// Takes requests and maps their grants, never answers.
        case silent
        /// Answers every request with a made-up id.
        case unknownIDs
        /// Answers every read/write with BLKIF_RSP_ERROR.
        case errorStatus
        /// Processes this many requests normally, then closes.
        case closeAfter(Int)
    }

    static let domain: DomainID = 0
    let hypervisor: SimulatedHypervisor
    let store: XenStoreDaemonModel
    let frontendPath: String
    let backendPath: String
    var disk: [UInt8]
    let sectorSize: Int
    var fault: Fault = .none
    /// Closes instead of connecting (a backend that cannot open its disk).
    var refusesConnection = false
    /// Stays in InitWait whatever the frontend does.
    var hangs = false
    /// Runs when the frontend has published its ring, before connecting
    /// (tests make other things happen mid-handshake).
    var onFrontendInitialised: (() -> Void)? = nil
    /// Steps to let pass after the frontend is Initialised before connecting.
    var connectDelay = 0
    var state: XenbusDeviceState = .initialising
    var ring: BackRing<BlkifRing>?
    var ringReference: GrantReference = 0
    var guestPort: EventChannelPort = 0
    var held: [(GrantReference, Bool)] = []
    var processed = 0
    var notifications = 0
    var operations: [Int32] = []
    var segmentCounts: [Int] = []
    /// Requests refused as blkback refuses them (bad segments, beyond the
    /// end, writes to a read-only disk), answered BLKIF_RSP_ERROR.
    var rejected = 0
    /// Answers flushes and barriers with BLKIF_RSP_EOPNOTSUPP (a disk
    /// below that cannot flush).
    var flushUnsupported = false
    let readOnly: Bool
    let maximumIndirectSegments: Int

    init(
        hypervisor: SimulatedHypervisor, store: XenStoreDaemonModel, frontendPath: String,
        sectors: Int = 256, sectorSize: Int = 512, features: [String: String] = ["feature-flush-cache": "1"],
        info: Int = 0, virtualDevice: Int = 768, physicalSectorSize: Int? = nil
    ) {
        self.hypervisor = hypervisor
        self.store = store
        self.frontendPath = frontendPath
        self.sectorSize = sectorSize
        backendPath = "/local/domain/0/backend/vbd/\(SimulatedHypervisor.selfDomain)/\(virtualDevice)"
        disk = (0..<sectors * sectorSize).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) }
        // What the toolstack writes before the guest starts.
        store.set(frontendPath + "/backend", backendPath)
        store.set(frontendPath + "/backend-id", "0")
        store.set(frontendPath + "/state", "1")
        store.set(backendPath + "/frontend", frontendPath)
        store.set(backendPath + "/state", "1")
        for (key, value) in features { store.set(backendPath + "/" + key, value) }
        // As Linux blkback: "sectors" in 512-byte units whatever the
        // logical block size ("sector-size").
        store.set(backendPath + "/sectors", String(sectors * sectorSize / 512))
        store.set(backendPath + "/sector-size", String(sectorSize))
        if let physicalSectorSize { store.set(backendPath + "/physical-sector-size", String(physicalSectorSize)) }
        readOnly = info & Int(VDISK_READONLY) != 0
        maximumIndirectSegments = Int(features["feature-max-indirect-segments"] ?? "0") ?? 0
        store.set(backendPath + "/info", String(info))
        // Hotplug done: wait for the frontend.
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
        case .initWait where frontendState == .initialised:
            onFrontendInitialised?()
            onFrontendInitialised = nil
            if connectDelay > 0 {
                connectDelay -= 1
                return
            }
            if refusesConnection { setState(.closing) } else { connect() }
        case .connected:
            if frontendState == .closing || frontendState == .closed {
                close()
                return
            }
            process()
        default:
            break
        }
    }

    func connect() {
        guard let reference = UInt32(store.nodes[frontendPath + "/ring-ref"] ?? ""),
            let port = UInt32(store.nodes[frontendPath + "/event-channel"] ?? ""),
            store.nodes[frontendPath + "/protocol"] == "x86_64-abi",
            let page = try? hypervisor.mapGrant(reference, by: Self.domain, writable: true),
            hypervisor.connectBackend(to: port, from: Self.domain, onNotify: { [unowned self] in notifications += 1 })
        else {
            setState(.closing)
            return
        }
        ringReference = reference
        guestPort = port
        ring = BackRing(attaching: page)
        setState(.connected)
    }

    /// Lets go of everything, as a backend domain that shuts down does.
    func close() {
        for (reference, writable) in held { hypervisor.unmapGrant(reference, writable: writable) }
        held.removeAll()
        if ring != nil {
            hypervisor.unmapGrant(ringReference, writable: true)
            ring = nil
        }
        setState(.closing)
    }

    func segments(of request: blkif_request) -> [blkif_request_segment]? {
        if Int32(request.operation) == BLKIF_OP_INDIRECT {
            let indirect = withUnsafeBytes(of: request) { $0.loadUnaligned(as: blkif_request_indirect.self) }
            guard let page = try? hypervisor.mapGrant(indirect.indirect_grefs.0, by: Self.domain, writable: false) else {
                return nil
            }
            let list = (0..<Int(indirect.nr_segments)).map { page.load(fromByteOffset: $0 * 8, as: blkif_request_segment.self) }
            hypervisor.unmapGrant(indirect.indirect_grefs.0, writable: false)
            return list
        }
        return withUnsafeBytes(of: request.seg) { Array($0.bindMemory(to: blkif_request_segment.self).prefix(Int(request.nr_segments))) }
    }

    /// The checks Linux blkback makes before any I/O: 1 to 11 segments
    /// in a direct request, at most the advertised maximum in an indirect
    /// one; each segment within its page (first_sect <= last_sect <= 7, in
    /// 512-byte units); the whole request inside the disk; no writes to a
    /// read-only disk.
    func isValid(_ list: [blkif_request_segment], request: blkif_request, operation: Int32, sector: UInt64) -> Bool {
        let indirect = Int32(request.operation) == BLKIF_OP_INDIRECT
        guard !list.isEmpty, list.count <= (indirect ? maximumIndirectSegments : Int(BLKIF_MAX_SEGMENTS_PER_REQUEST)) else {
            return false
        }
        var sectors = 0
        for segment in list {
            guard segment.first_sect <= segment.last_sect, Int(segment.last_sect) < 4096 / 512 else { return false }
            sectors += Int(segment.last_sect) - Int(segment.first_sect) + 1
        }
        guard Int(sector) + sectors <= disk.count / 512 else { return false }
        return !(operation == BLKIF_OP_WRITE && readOnly)
    }

    func process() {
        guard var ring else { return }
        while let request = try? ring.dequeueRequest() {
            if case .closeAfter(let limit) = fault, processed >= limit {
                // Answers already queued go out before the backend leaves.
                if ring.pushResponses() { hypervisor.raise(guestPort) }
                self.ring = ring
                close()
                return
            }
            processed += 1
            operations.append(Int32(request.operation))
            var response = blkif_response()
            response.id = request.id
            response.operation = request.operation
            response.status = Int16(BLKIF_RSP_OKAY)
            var operation = Int32(request.operation)
            var sector = request.sector_number
            if operation == BLKIF_OP_INDIRECT {
                let indirect = withUnsafeBytes(of: request) { $0.loadUnaligned(as: blkif_request_indirect.self) }
                operation = Int32(indirect.indirect_op)
                sector = indirect.sector_number
            }
            if (operation == BLKIF_OP_FLUSH_DISKCACHE || operation == BLKIF_OP_WRITE_BARRIER) && flushUnsupported {
                response.status = Int16(BLKIF_RSP_EOPNOTSUPP)
                ring.enqueue(response)
                continue
            }
            if operation == BLKIF_OP_READ || operation == BLKIF_OP_WRITE {
                guard let list = segments(of: request), isValid(list, request: request, operation: operation, sector: sector) else {
                    rejected += 1
                    response.status = Int16(BLKIF_RSP_ERROR)
                    ring.enqueue(response)
                    continue
                }
                segmentCounts.append(list.count)
                var offset = Int(sector) * 512
                for segment in list {
                    let writable = operation == BLKIF_OP_READ
                    guard let page = try? hypervisor.mapGrant(segment.gref, by: Self.domain, writable: writable) else {
                        response.status = Int16(BLKIF_RSP_ERROR)
                        break
                    }
                    let start = Int(segment.first_sect) * 512
                    let count = (Int(segment.last_sect) - Int(segment.first_sect) + 1) * 512
                    if fault != .errorStatus, offset + count <= disk.count {
                        if writable {
                            disk.withUnsafeBytes { (page + start).copyMemory(from: $0.baseAddress! + offset, byteCount: count) }
                        } else {
                            disk.withUnsafeMutableBytes { $0.baseAddress!.advanced(by: offset).copyMemory(from: page + start, byteCount: count) }
                        }
                    }
                    offset += count
                    if fault == .silent {
                        held.append((segment.gref, writable))
                    } else {
                        hypervisor.unmapGrant(segment.gref, writable: writable)
                    }
                }
                if fault == .errorStatus { response.status = Int16(BLKIF_RSP_ERROR) }
            }
            switch fault {
            case .silent: continue
            case .unknownIDs: response.id = request.id + 1000
            default: break
            }
            ring.enqueue(response)
        }
        if ring.pushResponses() { hypervisor.raise(guestPort) }
        self.ring = ring
    }
}
