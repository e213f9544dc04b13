// XenRuntimeSetup: the steps of bringing up a domain's devices at run time,
// generic over `Hypercalls` and `GuestMemory` so host tests run them
// against the simulated hypervisor: grant-table frames placed with
// XENMEM_add_to_physmap (Xen public/memory.h XENMAPSPACE_grant_table,
// grant_table.h GNTTABOP_query_size) for HVM/PVH, or obtained with
// GNTTABOP_setup_table as machine frames and mapped with update_va_mapping
// for PV (grant_table.h, xen.h), the domain's xenstore home from its
// `domid` node (relative paths resolve below /local/domain/<domid> in
// xenstored, docs/misc/xenstore.txt), then device discovery. The guest
// (XenRuntime.swift) adds the upcall, the locks and the xenbus thread.
import CXen

/// Why the run time could not start the domain's devices.
public enum XenRuntimeError: Error, Equatable, Sendable {
    /// No memory for the grant-table frames.
    case noGrantTableMemory(frames: Int)
    case grantTable(GrantTableError)
    /// The `domid` node could not be read.
    case domainID(XenStoreError)
    /// The `domid` node is not a domain number.
    case malformedDomainID
    /// PV: `update_va_mapping` refused to map grant-table frame `index`
    /// (machine frame `machineFrame`) at its reserved page.
    case grantFrameMapping(index: Int, machineFrame: UInt64, HypercallError)
}

public enum XenRuntimeSetup {
    /// Places up to `frames` grant-table frames (fewer when Xen allows
    /// fewer) over the pages `allocate(pageCount)` returns, consecutive and
    /// page-aligned, and returns the table over them. The pages become
    /// Xen's grant frames: the caller must never free or reuse them, even
    /// when this throws (Xen may have replaced some already).
    public static func mapGrantTable<H: Hypercalls>(
        hypervisor: inout H, frames: UInt32, allocate: (Int) -> UnsafeMutableRawPointer?,
        frameNumber: (UnsafeMutableRawPointer) -> UInt64
    ) throws(XenRuntimeError) -> GrantTable {
        var count = max(frames, 1)
        if let size = try? hypervisor.queryGrantTableSize(), size.maximumFrames > 0 { count = min(count, size.maximumFrames) }
        guard let base = allocate(Int(count)) else { throw .noGrantTableMemory(frames: Int(count)) }
        var numbers: [UInt64] = []
        for index in 0..<Int(count) { numbers.append(frameNumber(base + index * xenPageSize)) }
        do throws(GrantTableError) {
            try numbers.withUnsafeBufferPointer { (buffer) throws(GrantTableError) in
                try GrantTable.map(frameNumbers: buffer, using: &hypervisor)
            }
        } catch {
            throw .grantTable(error)
        }
        return GrantTable(base: base, frames: Int(count))
    }

    /// PV: asks Xen for up to `frames` grant-table frames (fewer when Xen
    /// allows fewer) with `GNTTABOP_setup_table`, which answers with their
    /// machine frames, and maps each with `update_va_mapping` over the
    /// consecutive, page-aligned virtual pages `reserve(pageCount)`
    /// returns; returns the table over them. The caller guarantees those
    /// pages are mapped pages of its own that nothing else uses: their
    /// old frames are no longer reachable there, and they must never be
    /// freed or reused, even when this throws.
    public static func setUpGrantTable<H: Hypercalls>(
        hypervisor: inout H, frames: UInt32, reserve: (Int) -> UnsafeMutableRawPointer?
    ) throws(XenRuntimeError) -> GrantTable {
        var count = max(frames, 1)
        if let size = try? hypervisor.queryGrantTableSize(), size.maximumFrames > 0 { count = min(count, size.maximumFrames) }
        guard let base = reserve(Int(count)) else { throw .noGrantTableMemory(frames: Int(count)) }
        var machineFrames = [xen_pfn_t](repeating: 0, count: Int(count))
        do throws(HypercallError) {
            try machineFrames.withUnsafeMutableBufferPointer { (buffer) throws(HypercallError) in
                try hypervisor.setUpGrantTable(frameNumbers: buffer)
            }
        } catch {
            throw .grantTable(.hypercall(error))
        }
        for index in 0..<Int(count) {
            let frame = UInt64(machineFrames[index])
            let address = UInt64(UInt(bitPattern: base + index * xenPageSize))
            do throws(HypercallError) {
                try hypervisor.updateMapping(virtualAddress: address, entry: PVPageTableEntry.data(frame: frame))
            } catch {
                throw .grantFrameMapping(index: index, machineFrame: frame, error)
            }
        }
        return GrantTable(base: base, frames: Int(count))
    }

    /// The domain's xenstore home, `/local/domain/<domid>`, from the
    /// relative `domid` node.
    public static func home<H: Hypercalls>(store: inout XenStore<H>) throws(XenRuntimeError) -> String {
        let bytes: [UInt8]
        do { bytes = try store.read("domid") } catch { throw .domainID(error) }
        guard let domain = parseDecimal(bytes), domain < 0x7FF0 else { throw .malformedDomainID }
        return "/local/domain/" + XenbusDevice.decimalString(domain)
    }

    /// Finds the home, connects every listed device and returns them
    /// (failed devices are in `failures`).
    public static func startDevices<H: Hypercalls, Memory: GuestMemory>(
        store: XenStore<H>, events: XenEvents<H>, grants: GrantTable, memory: Memory, storeLock: any XenLock,
        limits: XenDeviceLimits = XenDeviceLimits(), makeLock: @escaping () -> any XenLock, clock: @escaping () -> UInt64
    ) throws(XenRuntimeError) -> XenDevices<H, Memory> {
        var store = store
        let home = try locked(storeLock) { () throws(XenRuntimeError) -> String in try Self.home(store: &store) }
        let devices = XenDevices(
            home: home, store: store, storeLock: storeLock, grants: grants, memory: memory, events: events, limits: limits,
            makeLock: makeLock, clock: clock)
        devices.discover()
        return devices
    }
}
