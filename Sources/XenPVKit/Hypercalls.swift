// Hypercalls: the Xen hypercall ABI (Xen public/xen.h hypercall numbers,
// sched.h, event_channel.h, grant_table.h, memory.h, hvm/hvm_op.h, vcpu.h)
// behind a protocol, so the platform runs on the hypercall page in the guest
// and against a simulated hypervisor in host tests.
import CXen

/// The hypercalls the Xen platform makes, one requirement per hypercall,
/// with the raw argument shapes of the hypercall page ABI: a command and a
/// pointer to the argument structure from the public headers. Results are
/// the hypercall's return value (0 or positive on success, `-errno` on
/// failure, Xen's errno values from public/errno.h).
///
/// In the guest the conformer is a zero-size struct that calls through the
/// hypercall page; host tests use a model that interprets the same
/// structures.
public protocol Hypercalls {
    /// `__HYPERVISOR_sched_op`: `SCHEDOP_yield`, `SCHEDOP_block`, `SCHEDOP_shutdown`, ...
    mutating func schedOp(_ command: Int32, _ argument: UnsafeMutableRawPointer?) -> Int
    /// `__HYPERVISOR_event_channel_op` with an `evtchn_*` structure.
    mutating func eventChannelOp(_ command: Int32, _ argument: UnsafeMutableRawPointer) -> Int
    /// `__HYPERVISOR_grant_table_op` with `count` `gnttab_*` structures.
    mutating func grantTableOp(_ command: UInt32, _ arguments: UnsafeMutableRawPointer, count: UInt32) -> Int
    /// `__HYPERVISOR_memory_op` (`XENMEM_*`).
    mutating func memoryOp(_ command: Int32, _ argument: UnsafeMutableRawPointer) -> Int
    /// `__HYPERVISOR_hvm_op` (`HVMOP_*`).
    mutating func hvmOp(_ operation: Int32, _ argument: UnsafeMutableRawPointer) -> Int
    /// `__HYPERVISOR_console_io` (`CONSOLEIO_write`, `CONSOLEIO_read`).
    mutating func consoleIO(_ command: Int32, count: Int32, _ buffer: UnsafeMutableRawPointer) -> Int
    /// `__HYPERVISOR_set_timer_op`: an absolute system time in nanoseconds, 0 cancels.
    mutating func setTimerOp(_ timeout: UInt64) -> Int
    /// `__HYPERVISOR_vcpu_op` (`VCPUOP_*`).
    mutating func vcpuOp(_ command: Int32, vcpu: UInt32, _ argument: UnsafeMutableRawPointer?) -> Int
    /// `__HYPERVISOR_mmu_update` (PV only): `count` `mmu_update` requests.
    mutating func mmuUpdate(
        _ requests: UnsafeMutablePointer<mmu_update>, count: UInt32,
        successCount: UnsafeMutablePointer<UInt32>?, domain: domid_t
    ) -> Int
    /// `__HYPERVISOR_update_va_mapping` (PV only).
    mutating func updateVAMapping(_ virtualAddress: UInt64, _ entry: UInt64, flags: UInt64) -> Int
}

/// Which hypercall failed.
public enum Hypercall: Equatable, Sendable {
    case schedOp, eventChannelOp, grantTableOp, memoryOp, hvmOp, consoleIO, setTimerOp, vcpuOp
    case mmuUpdate, updateVAMapping
}

/// A hypercall returned an error.
public enum HypercallError: Error, Equatable, Sendable {
    /// `status` is the negative Xen errno the hypervisor returned.
    case failed(Hypercall, command: Int32, status: Int)
    /// A grant-table operation succeeded as a hypercall but its per-entry
    /// status (`GNTST_*`) says otherwise.
    case grantStatus(command: UInt32, status: Int16)
}

/// A local event-channel port (`evtchn_port_t`).
public typealias EventChannelPort = evtchn_port_t
/// A Xen domain id (`domid_t`).
public typealias DomainID = domid_t
/// A grant reference (`grant_ref_t`).
public typealias GrantReference = grant_ref_t

/// Why the domain shuts down (`SHUTDOWN_*` in sched.h).
public enum ShutdownReason: UInt32, Sendable {
    case poweroff = 0
    case reboot = 1
    case suspend = 2
    case crash = 3
    case watchdog = 4
    case softReset = 5
}

extension Hypercalls {
    @inline(__always)
    mutating func check(_ status: Int, _ call: Hypercall, _ command: Int32) throws(HypercallError) -> Int {
        if status < 0 { throw .failed(call, command: command, status: status) }
        return status
    }

    // MARK: sched_op

    /// Gives up the CPU; the corresponding call is `SCHEDOP_yield`.
    public mutating func yield() { _ = schedOp(SCHEDOP_yield, nil) }

    /// Sleeps until an event is pending; `SCHEDOP_block`.
    public mutating func block() { _ = schedOp(SCHEDOP_block, nil) }

    /// Asks Xen to shut the domain down; `SCHEDOP_shutdown`. Returns only if
    /// Xen refuses (or, for `.suspend`, when the domain resumes).
    public mutating func shutdown(_ reason: ShutdownReason) throws(HypercallError) {
        var argument = sched_shutdown(reason: reason.rawValue)
        _ = try check(schedOp(SCHEDOP_shutdown, &argument), .schedOp, SCHEDOP_shutdown)
    }

    // MARK: event_channel_op

    /// Binds a virtual IRQ (`VIRQ_*`) on `vcpu` to a new port; `EVTCHNOP_bind_virq`.
    public mutating func bindVIRQ(_ virq: UInt32, vcpu: UInt32 = 0) throws(HypercallError) -> EventChannelPort {
        var argument = evtchn_bind_virq(virq: virq, vcpu: vcpu, port: 0)
        _ = try check(eventChannelOp(EVTCHNOP_bind_virq, &argument), .eventChannelOp, EVTCHNOP_bind_virq)
        return argument.port
    }

    /// Allocates a port that `remoteDomain` may bind to; `EVTCHNOP_alloc_unbound`.
    public mutating func allocateUnboundPort(remoteDomain: DomainID) throws(HypercallError) -> EventChannelPort {
        var argument = evtchn_alloc_unbound(dom: cxen_domid_self, remote_dom: remoteDomain, port: 0)
        _ = try check(eventChannelOp(EVTCHNOP_alloc_unbound, &argument), .eventChannelOp, EVTCHNOP_alloc_unbound)
        return argument.port
    }

    /// Connects a new local port to `remotePort` of `remoteDomain`; `EVTCHNOP_bind_interdomain`.
    public mutating func bindInterdomain(
        remoteDomain: DomainID, remotePort: EventChannelPort
    ) throws(HypercallError) -> EventChannelPort {
        var argument = evtchn_bind_interdomain(remote_dom: remoteDomain, remote_port: remotePort, local_port: 0)
        _ = try check(
            eventChannelOp(EVTCHNOP_bind_interdomain, &argument), .eventChannelOp, EVTCHNOP_bind_interdomain)
        return argument.local_port
    }

    /// Notifies the other end of `port`; `EVTCHNOP_send`.
    public mutating func notify(_ port: EventChannelPort) throws(HypercallError) {
        var argument = evtchn_send(port: port)
        _ = try check(eventChannelOp(EVTCHNOP_send, &argument), .eventChannelOp, EVTCHNOP_send)
    }

    /// Closes `port`; `EVTCHNOP_close`.
    public mutating func closePort(_ port: EventChannelPort) throws(HypercallError) {
        var argument = evtchn_close(port: port)
        _ = try check(eventChannelOp(EVTCHNOP_close, &argument), .eventChannelOp, EVTCHNOP_close)
    }

    /// Clears the port's mask bit and redelivers a pending event; `EVTCHNOP_unmask`.
    public mutating func unmaskPort(_ port: EventChannelPort) throws(HypercallError) {
        var argument = evtchn_unmask(port: port)
        _ = try check(eventChannelOp(EVTCHNOP_unmask, &argument), .eventChannelOp, EVTCHNOP_unmask)
    }

    // MARK: memory_op

    /// Places a Xen-owned page (shared info, grant-table frame) at guest
    /// frame `gpfn`; `XENMEM_add_to_physmap` (HVM/PVH guests).
    public mutating func addToPhysmap(space: UInt32, index: UInt, gpfn: UInt) throws(HypercallError) {
        var argument = xen_add_to_physmap()
        argument.domid = cxen_domid_self
        argument.space = space
        argument.idx = index
        argument.gpfn = gpfn
        _ = try check(memoryOp(XENMEM_add_to_physmap, &argument), .memoryOp, XENMEM_add_to_physmap)
    }

    // MARK: grant_table_op

    /// How many grant-table frames the domain has and may have; `GNTTABOP_query_size`.
    public mutating func queryGrantTableSize() throws(HypercallError) -> (frames: UInt32, maximumFrames: UInt32) {
        var argument = gnttab_query_size()
        argument.dom = cxen_domid_self
        _ = try check(
            grantTableOp(UInt32(GNTTABOP_query_size), &argument, count: 1), .grantTableOp, GNTTABOP_query_size)
        if argument.status != GNTST_okay {
            throw .grantStatus(command: UInt32(GNTTABOP_query_size), status: argument.status)
        }
        return (argument.nr_frames, argument.max_nr_frames)
    }

    /// Asks Xen for the domain's first `frameNumbers.count` grant-table
    /// frames and writes their machine frame numbers into `frameNumbers`
    /// (PV guests, which then map them with `update_va_mapping`);
    /// `GNTTABOP_setup_table`. The per-call `status` (`GNTST_*`) is checked.
    public mutating func setUpGrantTable(frameNumbers: UnsafeMutableBufferPointer<xen_pfn_t>) throws(HypercallError) {
        var argument = gnttab_setup_table()
        argument.dom = cxen_domid_self
        argument.nr_frames = UInt32(frameNumbers.count)
        argument.frame_list = __guest_handle_xen_pfn_t(p: frameNumbers.baseAddress)
        _ = try check(
            grantTableOp(UInt32(GNTTABOP_setup_table), &argument, count: 1), .grantTableOp, GNTTABOP_setup_table)
        if argument.status != GNTST_okay {
            throw .grantStatus(command: UInt32(GNTTABOP_setup_table), status: argument.status)
        }
    }

    /// Maps frame `reference` that `domain` granted us at guest address
    /// `hostAddress` (HVM/PVH: a free guest-physical frame; PV: a virtual
    /// address) and returns the handle for unmapping; `GNTTABOP_map_grant_ref`
    /// with `GNTMAP_host_map`.
    public mutating func mapForeignGrant(
        _ reference: GrantReference, from domain: DomainID, at hostAddress: UInt64, readOnly: Bool
    ) throws(HypercallError) -> grant_handle_t {
        var argument = gnttab_map_grant_ref()
        argument.host_addr = hostAddress
        argument.flags = UInt32(GNTMAP_host_map) | (readOnly ? UInt32(GNTMAP_readonly) : 0)
        argument.ref = reference
        argument.dom = domain
        _ = try check(
            grantTableOp(UInt32(GNTTABOP_map_grant_ref), &argument, count: 1), .grantTableOp, GNTTABOP_map_grant_ref)
        if argument.status != GNTST_okay {
            throw .grantStatus(command: UInt32(GNTTABOP_map_grant_ref), status: argument.status)
        }
        return argument.handle
    }

    /// Undoes `mapForeignGrant`; `GNTTABOP_unmap_grant_ref`.
    public mutating func unmapForeignGrant(_ handle: grant_handle_t, at hostAddress: UInt64) throws(HypercallError) {
        var argument = gnttab_unmap_grant_ref()
        argument.host_addr = hostAddress
        argument.handle = handle
        _ = try check(
            grantTableOp(UInt32(GNTTABOP_unmap_grant_ref), &argument, count: 1), .grantTableOp, GNTTABOP_unmap_grant_ref)
        if argument.status != GNTST_okay {
            throw .grantStatus(command: UInt32(GNTTABOP_unmap_grant_ref), status: argument.status)
        }
    }

    // MARK: hvm_op

    /// Reads an HVM parameter (`HVM_PARAM_STORE_PFN`, `HVM_PARAM_CONSOLE_EVTCHN`, ...); `HVMOP_get_param`.
    public mutating func hvmParameter(_ index: UInt32) throws(HypercallError) -> UInt64 {
        var argument = xen_hvm_param()
        argument.domid = cxen_domid_self
        argument.index = index
        _ = try check(hvmOp(HVMOP_get_param, &argument), .hvmOp, HVMOP_get_param)
        return argument.value
    }

    // MARK: console_io, timers

    /// Writes bytes to Xen's emergency console; `CONSOLEIO_write`.
    public mutating func consoleWrite(_ bytes: UnsafeRawBufferPointer) throws(HypercallError) {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return }
        _ = try check(
            consoleIO(CONSOLEIO_write, count: Int32(bytes.count), UnsafeMutableRawPointer(mutating: base)),
            .consoleIO, CONSOLEIO_write)
    }

    /// Arms the one-shot timer for absolute system time `deadline` (ns); 0 cancels.
    public mutating func setTimer(deadline: UInt64) throws(HypercallError) {
        _ = try check(setTimerOp(deadline), .setTimerOp, 0)
    }

    /// Arms `vcpu`'s single-shot timer; `VCPUOP_set_singleshot_timer`.
    public mutating func setSingleshotTimer(vcpu: UInt32, deadline: UInt64) throws(HypercallError) {
        var argument = vcpu_set_singleshot_timer(timeout_abs_ns: deadline, flags: 0)
        _ = try check(
            vcpuOp(VCPUOP_set_singleshot_timer, vcpu: vcpu, &argument), .vcpuOp, VCPUOP_set_singleshot_timer)
    }

    // MARK: PV memory

    /// Applies page-table updates (`MMU_NORMAL_PT_UPDATE`, `MMU_MACHPHYS_UPDATE`)
    /// and returns how many succeeded; `__HYPERVISOR_mmu_update`.
    public mutating func applyMMUUpdates(_ updates: UnsafeMutableBufferPointer<mmu_update>) throws(HypercallError) -> Int {
        guard let base = updates.baseAddress else { return 0 }
        var done: UInt32 = 0
        _ = try check(
            mmuUpdate(base, count: UInt32(updates.count), successCount: &done, domain: cxen_domid_self),
            .mmuUpdate, 0)
        return Int(done)
    }

    /// Rewrites the page-table entry mapping `virtualAddress`; `__HYPERVISOR_update_va_mapping`.
    public mutating func updateMapping(
        virtualAddress: UInt64, entry: UInt64, flags: UInt64 = cxen_uvmf_invlpg
    ) throws(HypercallError) {
        _ = try check(updateVAMapping(virtualAddress, entry, flags: flags), .updateVAMapping, 0)
    }
}
