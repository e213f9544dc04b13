// SimulatedHypervisor: a host model of the Xen hypercalls, shared info
// (2-level event channels) and grant table v1, written from Xen
// public/xen.h, event_channel.h and grant_table.h, for the protocol tests.
import CXen
import XenPVKit

/// Pseudo-physical memory: pages with frame numbers both sides can resolve.
final class SimulatedMemory {
    static let firstFrame: UInt64 = 0x1000
    let base: UnsafeMutableRawPointer
    let pageCount: Int
    var freePages: [Int]
    var allocated: Set<Int> = []

    init(pages: Int = 512) {
        pageCount = pages
        base = UnsafeMutableRawPointer.allocate(byteCount: pages * 4096, alignment: 4096)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: pages * 4096)
        freePages = Array((0..<pages).reversed())
    }

    deinit { base.deallocate() }

    func allocate() -> UnsafeMutableRawPointer? {
        guard let index = freePages.popLast() else { return nil }
        allocated.insert(index)
        let page = base + index * 4096
        page.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
        return page
    }

    func free(_ page: UnsafeMutableRawPointer) {
        let index = (page - base) / 4096
        precondition(allocated.remove(index) != nil, "double free")
        freePages.append(index)
    }

    func frame(of page: UnsafeMutableRawPointer) -> UInt64 { SimulatedMemory.firstFrame + UInt64((page - base) / 4096) }

    func page(frame: UInt64) -> UnsafeMutableRawPointer? {
        guard frame >= SimulatedMemory.firstFrame, frame < SimulatedMemory.firstFrame + UInt64(pageCount) else { return nil }
        return base + Int(frame - SimulatedMemory.firstFrame) * 4096
    }

    var allocatedCount: Int { allocated.count }
}

/// The guest's view of `SimulatedMemory`.
struct SimulatedPages: GuestMemory {
    let memory: SimulatedMemory
    func allocatePage() -> UnsafeMutableRawPointer? { memory.allocate() }
    func freePage(_ page: UnsafeMutableRawPointer) { memory.free(page) }
    func frameNumber(of page: UnsafeMutableRawPointer) -> UInt64 { memory.frame(of: page) }
}

/// Something in another domain that runs while the guest waits.
protocol BackendModel: AnyObject {
    func step()
}

enum GrantMapError: Error, Equatable {
    case notGranted(GrantReference)
    case wrongDomain(GrantReference)
    case readOnly(GrantReference)
    case badFrame(GrantReference)
}

/// Xen, as far as a frontend can tell: hypercalls interpreted on the real
/// structures, plus the backend-domain side of event channels and grants.
final class SimulatedHypervisor: Hypercalls {
    static let selfDomain: DomainID = 5

    enum Binding: Equatable {
        case virq(UInt32)
        case unbound(remote: DomainID)
        case interdomain(remote: DomainID, remotePort: EventChannelPort)
    }

    let memory: SimulatedMemory
    private(set) var sharedInfo: UnsafeMutableRawPointer
    var ports: [EventChannelPort: Binding] = [:]
    var nextPort: EventChannelPort = 1
    /// Backend-side handlers of the guest's notifications, by guest port.
    var remoteHandlers: [EventChannelPort: () -> Void] = [:]
    var deliveries: [EventChannelPort] = []
    var grantFrames: [UInt64] = []
    var mapCounts: [GrantReference: (reading: Int, writing: Int)] = [:]
    var backends: [BackendModel] = []
    var hvmParameters: [UInt32: UInt64] = [:]
    var emergencyConsole: [UInt8] = []
    var shutdownReason: UInt32?
    var timerDeadline: UInt64?
    var pageTableEntries: [UInt64: UInt64] = [:]
    var mappings: [UInt64: UInt64] = [:]
    var blockCount = 0
    var yieldCount = 0
    /// Hypercall numbers and commands, in order.
    var trace: [(call: Hypercall, command: Int32)] = []
    /// Boot-relevant calls with their arguments, in order (the fake CPU of
    /// the boot tests adds its MSR writes here too).
    var log: [String] = []
    /// The per-vCPU upcall vector (`HVMOP_set_evtchn_upcall_vector`).
    var upcallVector: UInt8?
    /// Answer `HVMOP_set_evtchn_upcall_vector` with -ENOSYS (Xen before 4.6).
    var lacksUpcallVectorCall = false
    /// PV: the machine frames Xen keeps the grant table in (Xen's own
    /// pages, outside the guest's memory), handed out by
    /// `GNTTABOP_setup_table`.
    let setupTableFrames: [UInt64] = [0x9_0000, 0x9_0007, 0x9_0002, 0x9_0005]
    /// PV: a `GNTTABOP_setup_table` status to answer with instead (a refusal).
    var setupTableStatus: Int16?
    /// PV: where the guest mapped Xen-owned machine frames with
    /// `update_va_mapping` (frame -> the guest's page): both sides then
    /// reach the same bytes there.
    var machineFrameViews: [UInt64: UnsafeMutableRawPointer] = [:]

    init(memory: SimulatedMemory) {
        self.memory = memory
        sharedInfo = memory.allocate()!
    }

    // MARK: Hypercalls

    func schedOp(_ command: Int32, _ argument: UnsafeMutableRawPointer?) -> Int {
        trace.append((.schedOp, command))
        switch command {
        case SCHEDOP_yield:
            yieldCount += 1
            runBackends()
        case SCHEDOP_block:
            blockCount += 1
            runBackends()
        case SCHEDOP_shutdown:
            shutdownReason = argument!.load(as: sched_shutdown.self).reason
            log.append("sched_op shutdown reason=\(shutdownReason!)")
        default: return -Int(XEN_ENOSYS.rawValue)
        }
        return 0
    }

    func eventChannelOp(_ command: Int32, _ argument: UnsafeMutableRawPointer) -> Int {
        trace.append((.eventChannelOp, command))
        switch command {
        case EVTCHNOP_bind_virq:
            let request = argument.assumingMemoryBound(to: evtchn_bind_virq.self)
            guard request.pointee.virq < NR_VIRQS else { return -Int(XEN_EINVAL.rawValue) }
            if ports.values.contains(.virq(request.pointee.virq)) { return -Int(XEN_EEXIST.rawValue) }
            request.pointee.port = allocatePort(.virq(request.pointee.virq))
        case EVTCHNOP_alloc_unbound:
            let request = argument.assumingMemoryBound(to: evtchn_alloc_unbound.self)
            guard request.pointee.dom == cxen_domid_self else { return -Int(XEN_EPERM.rawValue) }
            request.pointee.port = allocatePort(.unbound(remote: request.pointee.remote_dom))
        case EVTCHNOP_bind_interdomain:
            let request = argument.assumingMemoryBound(to: evtchn_bind_interdomain.self)
            request.pointee.local_port = allocatePort(
                .interdomain(remote: request.pointee.remote_dom, remotePort: request.pointee.remote_port))
        case EVTCHNOP_send:
            let port = argument.load(as: evtchn_send.self).port
            guard let binding = ports[port] else { return -Int(XEN_EINVAL.rawValue) }
            if case .virq = binding { return -Int(XEN_EINVAL.rawValue) }
            deliveries.append(port)
        case EVTCHNOP_close:
            let port = argument.load(as: evtchn_close.self).port
            guard ports.removeValue(forKey: port) != nil else { return -Int(XEN_EINVAL.rawValue) }
            remoteHandlers[port] = nil
        case EVTCHNOP_unmask:
            let port = argument.load(as: evtchn_unmask.self).port
            guard ports[port] != nil else { return -Int(XEN_EINVAL.rawValue) }
            clearBit(maskOffset, port)
            // event_channel.h: deliver a notification if one is pending.
            if testBit(pendingOffset, port) { markUpcall(port) }
        default: return -Int(XEN_ENOSYS.rawValue)
        }
        return 0
    }

    func grantTableOp(_ command: UInt32, _ arguments: UnsafeMutableRawPointer, count: UInt32) -> Int {
        trace.append((.grantTableOp, Int32(command)))
        switch command {
        case UInt32(GNTTABOP_map_grant_ref):
            let request = arguments.assumingMemoryBound(to: gnttab_map_grant_ref.self)
            request.pointee.status = mapForeign(request.pointee, handle: &request.pointee.handle)
        case UInt32(GNTTABOP_unmap_grant_ref):
            let request = arguments.assumingMemoryBound(to: gnttab_unmap_grant_ref.self)
            if let mapping = foreignMappings[request.pointee.handle] {
                if mapping.hostAddress == request.pointee.host_addr {
                    foreignMappings[request.pointee.handle] = nil
                    request.pointee.status = Int16(GNTST_okay)
                } else {
                    request.pointee.status = Int16(GNTST_bad_virt_addr)
                }
            } else {
                request.pointee.status = Int16(GNTST_bad_handle)
            }
        case UInt32(GNTTABOP_setup_table):
            let request = arguments.assumingMemoryBound(to: gnttab_setup_table.self)
            log.append("grant_table_op setup_table dom=\(hex(request.pointee.dom)) nr_frames=\(request.pointee.nr_frames)")
            // Xen (common/grant_table.c): only DOMID_SELF for an unprivileged
            // domain, at most max_nr_frames, and the answer in `status`.
            if let refusal = setupTableStatus {
                request.pointee.status = refusal
            } else if request.pointee.dom != cxen_domid_self {
                request.pointee.status = Int16(GNTST_permission_denied)
            } else if request.pointee.nr_frames > UInt32(setupTableFrames.count) {
                request.pointee.status = Int16(GNTST_general_error)
            } else {
                let count = Int(request.pointee.nr_frames)
                for index in 0..<count { request.pointee.frame_list.p![index] = xen_pfn_t(setupTableFrames[index]) }
                grantFrames = Array(setupTableFrames[0..<count])
                request.pointee.status = Int16(GNTST_okay)
            }
        case UInt32(GNTTABOP_query_size):
            let request = arguments.assumingMemoryBound(to: gnttab_query_size.self)
            request.pointee.nr_frames = UInt32(grantFrames.count)
            request.pointee.max_nr_frames = 4
            request.pointee.status = Int16(GNTST_okay)
        default: return -Int(XEN_ENOSYS.rawValue)
        }
        return 0
    }

    func memoryOp(_ command: Int32, _ argument: UnsafeMutableRawPointer) -> Int {
        trace.append((.memoryOp, command))
        guard command == XENMEM_add_to_physmap else { return -Int(XEN_ENOSYS.rawValue) }
        let request = argument.load(as: xen_add_to_physmap.self)
        log.append("memory_op add_to_physmap domid=\(hex(request.domid)) space=\(request.space) idx=\(request.idx) gpfn=\(hex(request.gpfn))")
        guard let page = memory.page(frame: UInt64(request.gpfn)) else { return -Int(XEN_EINVAL.rawValue) }
        switch request.space {
        case UInt32(XENMAPSPACE_shared_info):
            page.copyMemory(from: sharedInfo, byteCount: 4096)
            sharedInfo = page
        case UInt32(XENMAPSPACE_grant_table):
            guard request.idx == grantFrames.count, request.idx < 4 else { return -Int(XEN_EINVAL.rawValue) }
            grantFrames.append(UInt64(request.gpfn))
        default: return -Int(XEN_EINVAL.rawValue)
        }
        return 0
    }

    func hvmOp(_ operation: Int32, _ argument: UnsafeMutableRawPointer) -> Int {
        trace.append((.hvmOp, operation))
        switch operation {
        case HVMOP_get_param:
            let request = argument.assumingMemoryBound(to: xen_hvm_param.self)
            log.append("hvm_op get_param domid=\(hex(request.pointee.domid)) index=\(request.pointee.index)")
            guard let value = hvmParameters[request.pointee.index] else { return -Int(XEN_EINVAL.rawValue) }
            request.pointee.value = value
        case HVMOP_set_param:
            let request = argument.load(as: xen_hvm_param.self)
            log.append("hvm_op set_param domid=\(hex(request.domid)) index=\(request.index) value=\(hex(request.value))")
            hvmParameters[request.index] = request.value
        case HVMOP_set_evtchn_upcall_vector:
            let request = argument.load(as: xen_hvm_evtchn_upcall_vector.self)
            log.append("hvm_op set_evtchn_upcall_vector vcpu=\(request.vcpu) vector=\(hex(request.vector))")
            if lacksUpcallVectorCall { return -Int(XEN_ENOSYS.rawValue) }
            // Xen (arch/x86/hvm/hvm.c) refuses vectors below 0x10.
            guard request.vcpu == 0, request.vector >= 0x10 else { return -Int(XEN_EINVAL.rawValue) }
            upcallVector = request.vector
        default: return -Int(XEN_ENOSYS.rawValue)
        }
        return 0
    }

    func consoleIO(_ command: Int32, count: Int32, _ buffer: UnsafeMutableRawPointer) -> Int {
        trace.append((.consoleIO, command))
        guard command == CONSOLEIO_write else { return -Int(XEN_ENOSYS.rawValue) }
        emergencyConsole.append(contentsOf: UnsafeRawBufferPointer(start: buffer, count: Int(count)))
        return 0
    }

    func setTimerOp(_ timeout: UInt64) -> Int {
        trace.append((.setTimerOp, 0))
        timerDeadline = timeout == 0 ? nil : timeout
        return 0
    }

    func vcpuOp(_ command: Int32, vcpu: UInt32, _ argument: UnsafeMutableRawPointer?) -> Int {
        trace.append((.vcpuOp, command))
        guard command == VCPUOP_set_singleshot_timer, vcpu == 0, let argument else { return -Int(XEN_EINVAL.rawValue) }
        timerDeadline = argument.load(as: vcpu_set_singleshot_timer.self).timeout_abs_ns
        return 0
    }

    func mmuUpdate(
        _ requests: UnsafeMutablePointer<mmu_update>, count: UInt32,
        successCount: UnsafeMutablePointer<UInt32>?, domain: domid_t
    ) -> Int {
        trace.append((.mmuUpdate, 0))
        var done: UInt32 = 0
        for index in 0..<Int(count) {
            let request = requests[index]
            // xen.h: the command is in the low bits of ptr, which is 8-byte aligned.
            guard request.ptr & 7 == UInt64(MMU_NORMAL_PT_UPDATE) else { break }
            pageTableEntries[request.ptr & ~7] = request.val
            done += 1
        }
        successCount?.pointee = done
        return done == count ? 0 : -Int(XEN_EINVAL.rawValue)
    }

    func updateVAMapping(_ virtualAddress: UInt64, _ entry: UInt64, flags: UInt64) -> Int {
        trace.append((.updateVAMapping, 0))
        log.append("update_va_mapping va=\(hex(virtualAddress)) pte=\(hex(entry)) flags=\(flags)")
        guard virtualAddress & 0xFFF == 0 else { return -Int(XEN_EINVAL.rawValue) }
        mappings[virtualAddress] = entry
        let frame = XenPVEntry.frame(entry)
        if entry & PVPageTableEntry.present != 0, setupTableFrames.contains(frame) {
            // A Xen-owned frame is mappable only once it is the domain's grant frame.
            guard grantFrames.contains(frame) else { return -Int(XEN_EINVAL.rawValue) }
            // The page now shows the frame's bytes: Xen's zeroed grant frame,
            // or what an earlier mapping of it holds.
            let view = UnsafeMutableRawPointer(bitPattern: UInt(virtualAddress))!
            if let earlier = machineFrameViews[frame] {
                if earlier != view { view.copyMemory(from: earlier, byteCount: 4096) }
            } else {
                view.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
            }
            machineFrameViews[frame] = view
        }
        return 0
    }

    func hex<T: BinaryInteger>(_ value: T) -> String { "0x" + String(value, radix: 16) }

    // MARK: Event channel internals (2-level ABI, as Xen implements it)

    var pendingOffset: Int { MemoryLayout<shared_info>.offset(of: \shared_info.evtchn_pending)! }
    var maskOffset: Int { MemoryLayout<shared_info>.offset(of: \shared_info.evtchn_mask)! }

    func allocatePort(_ binding: Binding) -> EventChannelPort {
        let port = nextPort
        nextPort += 1
        ports[port] = binding
        return port
    }

    func testBit(_ base: Int, _ port: EventChannelPort) -> Bool {
        cxen_load64(sharedInfo + base + Int(port / 64) * 8) & (1 << UInt64(port % 64)) != 0
    }
    func setBit(_ base: Int, _ port: EventChannelPort) { cxen_or64(sharedInfo + base + Int(port / 64) * 8, 1 << UInt64(port % 64)) }
    func clearBit(_ base: Int, _ port: EventChannelPort) { cxen_and64(sharedInfo + base + Int(port / 64) * 8, ~(1 << UInt64(port % 64))) }

    func markUpcall(_ port: EventChannelPort) {
        let info = sharedInfo + MemoryLayout<shared_info>.offset(of: \shared_info.vcpu_info)!
        cxen_or64(info + MemoryLayout<vcpu_info>.offset(of: \vcpu_info.evtchn_pending_sel)!, 1 << UInt64(port / 64))
        cxen_store8(info + MemoryLayout<vcpu_info>.offset(of: \vcpu_info.evtchn_upcall_pending)!, 1)
    }

    /// Raises `port` in the guest: pending bit, then selector and upcall
    /// flag only on a 0->1 transition of an unmasked port (xen.h).
    func raise(_ port: EventChannelPort) {
        let wasPending = testBit(pendingOffset, port)
        setBit(pendingOffset, port)
        if !wasPending && !testBit(maskOffset, port) { markUpcall(port) }
    }

    var upcallPending: Bool {
        let info = sharedInfo + MemoryLayout<shared_info>.offset(of: \shared_info.vcpu_info)!
        return cxen_load8(info + MemoryLayout<vcpu_info>.offset(of: \vcpu_info.evtchn_upcall_pending)!) != 0
    }

    /// A backend domain's side: binds to the guest's unbound `port`.
    func connectBackend(to port: EventChannelPort, from domain: DomainID, onNotify: @escaping () -> Void) -> Bool {
        guard case .unbound(let remote) = ports[port], remote == domain else { return false }
        ports[port] = .interdomain(remote: domain, remotePort: 1000 + port)
        remoteHandlers[port] = onNotify
        return true
    }

    /// Creates a guest port already connected to a backend (like the store
    /// and console channels Xen sets up before the guest starts).
    func preconnectedPort(domain: DomainID, onNotify: @escaping () -> Void) -> EventChannelPort {
        let port = allocatePort(.interdomain(remote: domain, remotePort: 2000 + nextPort))
        remoteHandlers[port] = onNotify
        return port
    }

    /// Hands queued guest notifications to backends, then lets each step.
    func runBackends() {
        let queued = deliveries
        deliveries.removeAll()
        for port in queued { remoteHandlers[port]?() }
        for backend in backends { backend.step() }
    }

    // MARK: Grant table internals (v1)

    func grantEntry(_ reference: GrantReference) -> UnsafeMutableRawPointer? {
        let perFrame = 4096 / MemoryLayout<grant_entry_v1>.stride
        let frameIndex = Int(reference) / perFrame
        guard frameIndex < grantFrames.count,
            let page = machineFrameViews[grantFrames[frameIndex]] ?? memory.page(frame: grantFrames[frameIndex])
        else { return nil }
        return page + (Int(reference) % perFrame) * MemoryLayout<grant_entry_v1>.stride
    }

    func setFlags(_ entry: UnsafeMutableRawPointer, reading: Bool, writing: Bool) {
        let flags = entry + MemoryLayout<grant_entry_v1>.offset(of: \grant_entry_v1.flags)!
        while true {
            let old = cxen_load16(flags)
            var new = old & ~UInt16(GTF_reading | GTF_writing)
            if reading { new |= UInt16(GTF_reading) }
            if writing { new |= UInt16(GTF_writing) }
            if cxen_cmpxchg16(flags, old, new) == old { return }
        }
    }

    /// `GNTTABOP_map_grant_ref` from `domain`: checks the entry and marks it
    /// in use (`GTF_reading`/`GTF_writing`) as Xen does.
    func mapGrant(_ reference: GrantReference, by domain: DomainID, writable: Bool) throws(GrantMapError) -> UnsafeMutableRawPointer {
        guard let entry = grantEntry(reference) else { throw .notGranted(reference) }
        let value = entry.load(as: grant_entry_v1.self)
        guard value.flags & UInt16(GTF_type_mask) == UInt16(GTF_permit_access) else { throw .notGranted(reference) }
        guard value.domid == domain else { throw .wrongDomain(reference) }
        if writable && value.flags & UInt16(GTF_readonly) != 0 { throw .readOnly(reference) }
        guard let page = memory.page(frame: UInt64(value.frame)) else { throw .badFrame(reference) }
        var counts = mapCounts[reference] ?? (0, 0)
        counts.reading += 1
        if writable { counts.writing += 1 }
        mapCounts[reference] = counts
        setFlags(entry, reading: true, writing: counts.writing > 0)
        return page
    }

    /// `GNTTABOP_unmap_grant_ref`.
    func unmapGrant(_ reference: GrantReference, writable: Bool) {
        guard var counts = mapCounts[reference], let entry = grantEntry(reference) else { return }
        counts.reading -= 1
        if writable { counts.writing -= 1 }
        mapCounts[reference] = counts.reading == 0 ? nil : counts
        setFlags(entry, reading: counts.reading > 0, writing: counts.writing > 0)
    }

    /// `GNTTABOP_copy` into a granted frame (netback's rx-copy path).
    func copy(into reference: GrantReference, by domain: DomainID, offset: Int, bytes: [UInt8]) throws(GrantMapError) {
        let page = try mapGrant(reference, by: domain, writable: true)
        bytes.withUnsafeBytes { (page + offset).copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        unmapGrant(reference, writable: true)
    }

    var mappedGrantCount: Int { mapCounts.count }

    // MARK: Grants other domains offer the guest

    /// Frames other domains granted to this guest, by domain and reference.
    var foreignGrants: [DomainID: [GrantReference: (page: UnsafeMutableRawPointer, readOnly: Bool)]] = [:]
    var foreignMappings: [grant_handle_t: (domain: DomainID, reference: GrantReference, hostAddress: UInt64)] = [:]
    var nextHandle: grant_handle_t = 1

    /// `GNTTABOP_map_grant_ref` by the guest, checked as Xen checks it.
    func mapForeign(_ request: gnttab_map_grant_ref, handle: inout grant_handle_t) -> Int16 {
        guard request.flags & UInt32(GNTMAP_host_map) != 0 else { return Int16(GNTST_general_error) }
        guard let grants = foreignGrants[request.dom] else { return Int16(GNTST_bad_domain) }
        guard let grant = grants[request.ref] else { return Int16(GNTST_bad_gntref) }
        if grant.readOnly && request.flags & UInt32(GNTMAP_readonly) == 0 { return Int16(GNTST_permission_denied) }
        guard request.host_addr & 0xFFF == 0, memory.page(frame: request.host_addr >> 12) != nil else {
            return Int16(GNTST_bad_virt_addr)
        }
        handle = nextHandle
        nextHandle += 1
        foreignMappings[handle] = (request.dom, request.ref, request.host_addr)
        return Int16(GNTST_okay)
    }
}
