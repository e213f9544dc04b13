// Event channel tests: the 2-level ABI (Xen public/xen.h shared_info,
// event_channel.h) against the simulated hypervisor.
import CXen
import Testing
@testable import XenPVKit

final class Recorder {
    var ports: [EventChannelPort] = []
}

func makeEvents() -> (SimulatedHypervisor, EventChannels<SimulatedHypervisor>) {
    let hypervisor = SimulatedHypervisor(memory: SimulatedMemory())
    return (hypervisor, EventChannels(sharedInfo: hypervisor.sharedInfo, hypervisor: hypervisor))
}

@Suite struct EventChannelTests {
    @Test func timerVIRQIsDispatchedToItsHandler() throws {
        var (hypervisor, events) = makeEvents()
        let seen = Recorder()
        let port = try events.bindVIRQ(UInt32(VIRQ_TIMER)) { seen.ports.append($0) }
        #expect(!events.isMasked(port))
        #expect(events.dispatch() == 0)
        hypervisor.raise(port)
        #expect(hypervisor.upcallPending)
        #expect(events.dispatch() == 1)
        #expect(seen.ports == [port])
        #expect(!events.isPending(port))
        #expect(!hypervisor.upcallPending)
    }

    @Test func anEventRaisedWhileMaskedIsDeliveredOnUnmask() throws {
        var (hypervisor, events) = makeEvents()
        let seen = Recorder()
        let port = try events.bindVIRQ(UInt32(VIRQ_TIMER)) { seen.ports.append($0) }
        try events.mask(port)
        hypervisor.raise(port)
        #expect(!hypervisor.upcallPending)
        #expect(events.dispatch() == 0)
        #expect(events.isPending(port))
        try events.unmask(port)
        #expect(hypervisor.upcallPending)
        #expect(events.dispatch() == 1)
        #expect(seen.ports == [port])
    }

    @Test func portsBeyondTheFirstWordUseTheSelector() throws {
        var (hypervisor, events) = makeEvents()
        let seen = Recorder()
        var ports: [EventChannelPort] = []
        for _ in 0..<70 {
            ports.append(try events.allocateUnbound(remoteDomain: 0) { seen.ports.append($0) })
        }
        let high = ports[66]
        #expect(high >= 64)
        hypervisor.raise(high)
        hypervisor.raise(ports[2])
        #expect(events.dispatch() == 2)
        #expect(Set(seen.ports) == [high, ports[2]])
    }

    @Test func interdomainChannelsNotifyBothWays() throws {
        var (hypervisor, events) = makeEvents()
        let seen = Recorder()
        var backendNotified = 0
        let port = try events.allocateUnbound(remoteDomain: 0) { seen.ports.append($0) }
        #expect(hypervisor.connectBackend(to: port, from: 0) { backendNotified += 1 })
        try events.send(port)
        hypervisor.runBackends()
        #expect(backendNotified == 1)
        hypervisor.raise(port)
        _ = events.dispatch()
        #expect(seen.ports == [port])

        let bound = try events.bindInterdomain(remoteDomain: 0, remotePort: 7) { seen.ports.append($0) }
        #expect(hypervisor.ports[bound] == .interdomain(remote: 0, remotePort: 7))
    }

    @Test func eventsOnPortsWithoutHandlersAreCountedAndCleared() throws {
        var (hypervisor, events) = makeEvents()
        let port = try hypervisor.allocateUnboundPort(remoteDomain: 0)
        try events.unmask(port)
        hypervisor.raise(port)
        #expect(events.dispatch() == 1)
        #expect(events.unhandledEvents == 1)
        #expect(!events.isPending(port))
    }

    @Test func closingAPortDetachesItsHandler() throws {
        var (hypervisor, events) = makeEvents()
        let seen = Recorder()
        let port = try events.bindVIRQ(UInt32(VIRQ_TIMER)) { seen.ports.append($0) }
        try events.close(port)
        #expect(hypervisor.ports[port] == nil)
        #expect(events.isMasked(port))
        #expect(throws: EventChannelError.hypercall(.failed(.eventChannelOp, command: EVTCHNOP_send, status: -Int(XEN_EINVAL.rawValue)))) {
            try events.send(port)
        }
    }

    @Test func hypervisorErrorsSurfaceTyped() throws {
        var (_, events) = makeEvents()
        _ = try events.bindVIRQ(UInt32(VIRQ_TIMER)) { _ in }
        #expect(throws: EventChannelError.hypercall(.failed(.eventChannelOp, command: EVTCHNOP_bind_virq, status: -Int(XEN_EEXIST.rawValue)))) {
            _ = try events.bindVIRQ(UInt32(VIRQ_TIMER)) { _ in }
        }
        #expect(throws: EventChannelError.portOutOfRange(5000, limit: 4096)) { try events.mask(5000) }
    }
}

@Suite struct HypercallTests {
    @Test func wrappersFillTheHeaderStructures() throws {
        var hypervisor = SimulatedHypervisor(memory: SimulatedMemory())
        hypervisor.hvmParameters[UInt32(HVM_PARAM_STORE_EVTCHN)] = 3
        #expect(try hypervisor.hvmParameter(UInt32(HVM_PARAM_STORE_EVTCHN)) == 3)
        #expect(throws: HypercallError.failed(.hvmOp, command: HVMOP_get_param, status: -Int(XEN_EINVAL.rawValue))) {
            _ = try hypervisor.hvmParameter(UInt32(HVM_PARAM_CONSOLE_PFN))
        }
        try hypervisor.shutdown(.crash)
        #expect(hypervisor.shutdownReason == UInt32(SHUTDOWN_crash))
        let text: [UInt8] = Array("early\n".utf8)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: text.count, alignment: 1)
        defer { buffer.deallocate() }
        buffer.copyBytes(from: text)
        try hypervisor.consoleWrite(UnsafeRawBufferPointer(buffer))
        #expect(hypervisor.emergencyConsole == text)
        try hypervisor.setSingleshotTimer(vcpu: 0, deadline: 1_000_000)
        #expect(hypervisor.timerDeadline == 1_000_000)
        try hypervisor.setTimer(deadline: 0)
        #expect(hypervisor.timerDeadline == nil)
        hypervisor.yield()
        hypervisor.block()
        #expect(hypervisor.yieldCount == 1 && hypervisor.blockCount == 1)
    }

    @Test func pvMemoryUpdatesReportPartialSuccess() throws {
        var hypervisor = SimulatedHypervisor(memory: SimulatedMemory())
        let updates = UnsafeMutableBufferPointer<mmu_update>.allocate(capacity: 2)
        defer { updates.deallocate() }
        updates[0] = mmu_update(ptr: 0x2000 | UInt64(MMU_NORMAL_PT_UPDATE), val: 0x5003)
        updates[1] = mmu_update(ptr: 0x2008 | UInt64(MMU_NORMAL_PT_UPDATE), val: 0x6003)
        let done = try hypervisor.applyMMUUpdates(updates)
        #expect(done == 2)
        #expect(hypervisor.pageTableEntries == [0x2000: 0x5003, 0x2008: 0x6003])
        updates[1].ptr = 0x3000 | UInt64(MMU_MACHPHYS_UPDATE)
        #expect(throws: HypercallError.failed(.mmuUpdate, command: 0, status: -Int(XEN_EINVAL.rawValue))) {
            _ = try hypervisor.applyMMUUpdates(updates)
        }
        try hypervisor.updateMapping(virtualAddress: 0x40_0000, entry: 0x7003)
        #expect(hypervisor.mappings[0x40_0000] == 0x7003)
    }

    @Test func sharedInfoIsPlacedThroughAddToPhysmap() throws {
        let memory = SimulatedMemory()
        var hypervisor = SimulatedHypervisor(memory: memory)
        let page = memory.allocate()!
        try hypervisor.addToPhysmap(space: UInt32(XENMAPSPACE_shared_info), index: 0, gpfn: UInt(memory.frame(of: page)))
        #expect(hypervisor.sharedInfo == page)
        #expect(throws: HypercallError.self) {
            try hypervisor.addToPhysmap(space: UInt32(XENMAPSPACE_shared_info), index: 0, gpfn: 1)
        }
    }
}
