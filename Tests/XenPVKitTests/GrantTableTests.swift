// Grant table tests: v1 grants (Xen public/grant_table.h) against the
// simulated hypervisor's map/unmap, which sets GTF_reading/GTF_writing.
import CXen
import Testing
@testable import XenPVKit

/// A guest with a one-frame grant table mapped through add_to_physmap.
func makeGrantTable(frames: Int = 1) throws -> (SimulatedHypervisor, GrantTable) {
    let memory = SimulatedMemory()
    var hypervisor = SimulatedHypervisor(memory: memory)
    var numbers: [UInt64] = []
    var first: UnsafeMutableRawPointer? = nil
    for _ in 0..<frames {
        let page = memory.allocate()!
        if first == nil { first = page }
        numbers.append(memory.frame(of: page))
    }
    let buffer = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: numbers.count)
    defer { buffer.deallocate() }
    _ = buffer.initialize(from: numbers)
    try GrantTable.map(frameNumbers: UnsafeBufferPointer(buffer), using: &hypervisor)
    return (hypervisor, GrantTable(base: first!, frames: frames))
}

@Suite struct GrantTableTests {
    @Test func aGrantLetsOnlyItsDomainMapTheFrame() throws {
        var (hypervisor, table) = try makeGrantTable()
        let page = hypervisor.memory.allocate()!
        let frame = hypervisor.memory.frame(of: page)
        let reference = try table.grantAccess(to: 0, frame: frame, readOnly: false)
        #expect(reference >= GrantReference(GNTTAB_NR_RESERVED_ENTRIES))
        #expect(try hypervisor.mapGrant(reference, by: 0, writable: true) == page)
        #expect(table.isMappedByPeer(reference))
        #expect(throws: GrantMapError.wrongDomain(reference)) { _ = try hypervisor.mapGrant(reference, by: 3, writable: false) }
        hypervisor.unmapGrant(reference, writable: true)
        #expect(!table.isMappedByPeer(reference))

        let readOnly = try table.grantAccess(to: 0, frame: frame, readOnly: true)
        #expect(throws: GrantMapError.readOnly(readOnly)) { _ = try hypervisor.mapGrant(readOnly, by: 0, writable: true) }
        #expect(try hypervisor.queryGrantTableSize() == (frames: 1, maximumFrames: 4))
    }

    @Test func endingAnUnmappedGrantRevokesItAtOnce() throws {
        let (hypervisor, table) = try makeGrantTable()
        let reference = try table.grantAccess(to: 0, frame: SimulatedMemory.firstFrame + 9, readOnly: false)
        let before = table.freeCount
        #expect(try table.endAccess(reference) == .released)
        #expect(table.freeCount == before + 1)
        #expect(throws: GrantMapError.notGranted(reference)) { _ = try hypervisor.mapGrant(reference, by: 0, writable: false) }
        #expect(throws: GrantTableError.invalidReference(reference)) { _ = try table.endAccess(reference) }
    }

    @Test func aGrantStillMappedIsNeverReused() throws {
        let (hypervisor, table) = try makeGrantTable()
        let frame = SimulatedMemory.firstFrame + 20
        let busy = try table.grantAccess(to: 0, frame: frame, readOnly: false)
        _ = try hypervisor.mapGrant(busy, by: 0, writable: true)
        #expect(try table.endAccess(busy) == .deferred)
        #expect(table.awaitingReleaseCount == 1)
        // The backend can still use its mapping: the entry was not cleared.
        #expect(table.isMappedByPeer(busy))

        var handedOut: [GrantReference] = []
        while let reference = try? table.grantAccess(to: 0, frame: frame + 1, readOnly: true) {
            handedOut.append(reference)
        }
        #expect(!handedOut.contains(busy))
        #expect(handedOut.count == table.capacity - Int(GNTTAB_NR_RESERVED_ENTRIES) - 1)
        #expect(throws: GrantTableError.exhausted(capacity: table.capacity, awaitingRelease: 1)) {
            _ = try table.grantAccess(to: 0, frame: frame, readOnly: true)
        }

        hypervisor.unmapGrant(busy, writable: true)
        let again = try table.grantAccess(to: 0, frame: frame + 2, readOnly: true)
        #expect(again == busy)
        #expect(table.awaitingReleaseCount == 0)
    }

    @Test func reclaimReleasesOnlyUnmappedGrants() throws {
        let (hypervisor, table) = try makeGrantTable(frames: 2)
        #expect(table.capacity == 1024)
        let first = try table.grantAccess(to: 0, frame: SimulatedMemory.firstFrame + 30, readOnly: true)
        let second = try table.grantAccess(to: 0, frame: SimulatedMemory.firstFrame + 31, readOnly: true)
        _ = try hypervisor.mapGrant(first, by: 0, writable: false)
        _ = try hypervisor.mapGrant(second, by: 0, writable: false)
        #expect(try table.endAccess(first) == .deferred)
        #expect(try table.endAccess(second) == .deferred)
        hypervisor.unmapGrant(second, writable: false)
        #expect(table.reclaim() == 1)
        #expect(table.awaitingReleaseCount == 1)
        #expect(throws: GrantTableError.invalidReference(3)) { _ = try table.endAccess(3) }
    }

    @Test func framesBeyondV1sReachAreRefused() throws {
        let (hypervisor, table) = try makeGrantTable()
        defer { withExtendedLifetime(hypervisor) {} }  // it owns the table's memory
        let before = table.freeCount
        #expect(throws: GrantTableError.frameOutOfRange(1 << 32)) { _ = try table.grantAccess(to: 0, frame: 1 << 32, readOnly: true) }
        #expect(table.freeCount == before)
        _ = try table.grantAccess(to: 0, frame: UInt64(UInt32.max), readOnly: true)
    }

    @Test func foreignGrantsMapAndUnmapWithTheirHandles() throws {
        var (hypervisor, _) = try makeGrantTable()
        let foreignPage = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { foreignPage.deallocate() }
        hypervisor.foreignGrants[0] = [12: (foreignPage, true)]
        let target = UInt64(SimulatedMemory.firstFrame + 40) << 12
        let handle = try hypervisor.mapForeignGrant(12, from: 0, at: target, readOnly: true)
        #expect(hypervisor.foreignMappings[handle]?.reference == 12)
        #expect(throws: HypercallError.grantStatus(command: UInt32(GNTTABOP_map_grant_ref), status: Int16(GNTST_permission_denied))) {
            _ = try hypervisor.mapForeignGrant(12, from: 0, at: target, readOnly: false)
        }
        #expect(throws: HypercallError.grantStatus(command: UInt32(GNTTABOP_map_grant_ref), status: Int16(GNTST_bad_gntref))) {
            _ = try hypervisor.mapForeignGrant(13, from: 0, at: target, readOnly: true)
        }
        #expect(throws: HypercallError.grantStatus(command: UInt32(GNTTABOP_map_grant_ref), status: Int16(GNTST_bad_domain))) {
            _ = try hypervisor.mapForeignGrant(12, from: 9, at: target, readOnly: true)
        }
        #expect(throws: HypercallError.grantStatus(command: UInt32(GNTTABOP_unmap_grant_ref), status: Int16(GNTST_bad_virt_addr))) {
            try hypervisor.unmapForeignGrant(handle, at: target + 4096)
        }
        try hypervisor.unmapForeignGrant(handle, at: target)
        #expect(hypervisor.foreignMappings.isEmpty)
        #expect(throws: HypercallError.grantStatus(command: UInt32(GNTTABOP_unmap_grant_ref), status: Int16(GNTST_bad_handle))) {
            try hypervisor.unmapForeignGrant(handle, at: target)
        }
    }
}
