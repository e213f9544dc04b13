// EventChannels: the 2-level event channel ABI (Xen public/xen.h
// shared_info/vcpu_info pending, mask and selector bits; event_channel.h).
import CXen

/// Why an event-channel operation failed.
public enum EventChannelError: Error, Equatable, Sendable {
    /// The 2-level ABI has `64 * 64` ports on x86-64; the port is beyond them.
    case portOutOfRange(EventChannelPort, limit: Int)
    case hypercall(HypercallError)
}

/// Event channels of one domain, delivered through the shared info page.
///
/// Xen sets a port's pending bit and, when the port is unmasked, the
/// selector bit of its word and the vCPU's `evtchn_upcall_pending`; the
/// guest's upcall calls `dispatch`, which clears those bits in the order the
/// header prescribes and runs each pending, unmasked port's handler.
public struct EventChannels<H: Hypercalls> {
    /// Handlers run from the upcall: they should only wake threads.
    public typealias Handler = (EventChannelPort) -> Void

    /// Bits in one `xen_ulong_t` word of the pending and mask arrays.
    public static var portsPerWord: Int { MemoryLayout<xen_ulong_t>.size * 8 }
    /// Ports addressable by the 2-level ABI.
    public static var portLimit: Int { portsPerWord * portsPerWord }

    public var hypervisor: H
    let sharedInfo: UnsafeMutableRawPointer
    var handlers: [Handler?]
    /// Pending events on ports with no handler, counted and dropped.
    public private(set) var unhandledEvents = 0

    static var pendingOffset: Int { CXEN_OFFSETOF_shared_info_evtchn_pending }
    static var maskOffset: Int { CXEN_OFFSETOF_shared_info_evtchn_mask }
    static var vcpuInfoOffset: Int { CXEN_OFFSETOF_shared_info_vcpu_info }
    static var upcallPendingOffset: Int { CXEN_OFFSETOF_vcpu_info_evtchn_upcall_pending }
    static var pendingSelectorOffset: Int { CXEN_OFFSETOF_vcpu_info_evtchn_pending_sel }

    /// Takes over the shared info page and masks every port, so nothing is
    /// delivered before it has a handler.
    ///
    /// - Parameter sharedInfo: the mapped `shared_info` page; it must stay
    ///   mapped for the life of the value.
    public init(sharedInfo: UnsafeMutableRawPointer, hypervisor: H) {
        self.sharedInfo = sharedInfo
        self.hypervisor = hypervisor
        self.handlers = Array(repeating: nil, count: Self.portLimit)
        for word in 0..<Self.portsPerWord {
            cxen_or64(sharedInfo + Self.maskOffset + word * 8, ~0)
        }
    }

    func word(_ base: Int, _ port: EventChannelPort) -> UnsafeMutableRawPointer {
        sharedInfo + base + Int(port) / Self.portsPerWord * MemoryLayout<xen_ulong_t>.stride
    }

    func bit(_ port: EventChannelPort) -> UInt64 { 1 << UInt64(Int(port) % Self.portsPerWord) }

    func checked(_ port: EventChannelPort) throws(EventChannelError) {
        if Int(port) >= Self.portLimit { throw .portOutOfRange(port, limit: Self.portLimit) }
    }

    /// Whether Xen has marked `port` pending.
    public func isPending(_ port: EventChannelPort) -> Bool {
        Int(port) < Self.portLimit && cxen_load64(word(Self.pendingOffset, port)) & bit(port) != 0
    }

    /// Whether `port` is masked.
    public func isMasked(_ port: EventChannelPort) -> Bool {
        Int(port) < Self.portLimit && cxen_load64(word(Self.maskOffset, port)) & bit(port) != 0
    }

    /// Installs `handler` for `port` and unmasks it.
    public mutating func attach(_ port: EventChannelPort, _ handler: @escaping Handler) throws(EventChannelError) {
        try checked(port)
        handlers[Int(port)] = handler
        try unmask(port)
    }

    /// Binds `virq` (for instance `VIRQ_TIMER`) on vCPU 0 and attaches `handler`.
    public mutating func bindVIRQ(_ virq: UInt32, _ handler: @escaping Handler) throws(EventChannelError) -> EventChannelPort {
        let port: EventChannelPort
        do { port = try hypervisor.bindVIRQ(virq) } catch { throw .hypercall(error) }
        try attach(port, handler)
        return port
    }

    /// Allocates a port for `remoteDomain` to bind and attaches `handler`.
    public mutating func allocateUnbound(
        remoteDomain: DomainID, _ handler: @escaping Handler
    ) throws(EventChannelError) -> EventChannelPort {
        let port: EventChannelPort
        do { port = try hypervisor.allocateUnboundPort(remoteDomain: remoteDomain) } catch { throw .hypercall(error) }
        try attach(port, handler)
        return port
    }

    /// Binds to `remotePort` of `remoteDomain` and attaches `handler`.
    public mutating func bindInterdomain(
        remoteDomain: DomainID, remotePort: EventChannelPort, _ handler: @escaping Handler
    ) throws(EventChannelError) -> EventChannelPort {
        let port: EventChannelPort
        do {
            port = try hypervisor.bindInterdomain(remoteDomain: remoteDomain, remotePort: remotePort)
        } catch { throw .hypercall(error) }
        try attach(port, handler)
        return port
    }

    /// Notifies the remote end of `port`.
    public mutating func send(_ port: EventChannelPort) throws(EventChannelError) {
        do { try hypervisor.notify(port) } catch { throw .hypercall(error) }
    }

    /// Masks `port`: Xen keeps setting its pending bit but raises no upcall.
    public mutating func mask(_ port: EventChannelPort) throws(EventChannelError) {
        try checked(port)
        cxen_or64(word(Self.maskOffset, port), bit(port))
    }

    /// Unmasks `port`. Xen redelivers an event that became pending while
    /// masked (the edge would otherwise be lost), so this goes through
    /// `EVTCHNOP_unmask` rather than clearing the bit locally.
    public mutating func unmask(_ port: EventChannelPort) throws(EventChannelError) {
        try checked(port)
        do { try hypervisor.unmaskPort(port) } catch { throw .hypercall(error) }
    }

    /// Masks `port` and forgets its handler; the port stays open (its
    /// owner closes it, for instance a frontend releasing its channel).
    public mutating func detach(_ port: EventChannelPort) {
        guard Int(port) < Self.portLimit else { return }
        cxen_or64(word(Self.maskOffset, port), bit(port))
        handlers[Int(port)] = nil
    }

    /// Whether `port` has a handler.
    public func hasHandler(_ port: EventChannelPort) -> Bool {
        Int(port) < Self.portLimit && handlers[Int(port)] != nil
    }

    /// Detaches the handler, masks and closes `port`.
    public mutating func close(_ port: EventChannelPort) throws(EventChannelError) {
        try mask(port)
        handlers[Int(port)] = nil
        do { try hypervisor.closePort(port) } catch { throw .hypercall(error) }
        cxen_and64(word(Self.pendingOffset, port), ~bit(port))
    }

    /// The upcall: handles every pending, unmasked port of `vcpu` and
    /// returns how many events it handled (handled or dropped).
    public mutating func dispatch(vcpu: Int = 0) -> Int {
        let info = sharedInfo + Self.vcpuInfoOffset + vcpu * MemoryLayout<vcpu_info>.stride
        var handled = 0
        // Clear the upcall flag before reading the selector (xen.h: "cleared
        // by the guest OS /before/ checking for pending work").
        while cxen_load8(info + Self.upcallPendingOffset) != 0 {
            cxen_store8(info + Self.upcallPendingOffset, 0)
            cxen_mb()
            var selector = cxen_xchg64(info + Self.pendingSelectorOffset, 0)
            while selector != 0 {
                let wordIndex = selector.trailingZeroBitCount
                selector &= selector - 1
                let pendingWord = sharedInfo + Self.pendingOffset + wordIndex * 8
                let maskWord = sharedInfo + Self.maskOffset + wordIndex * 8
                var ready = cxen_load64(pendingWord) & ~cxen_load64(maskWord)
                while ready != 0 {
                    let bitIndex = ready.trailingZeroBitCount
                    ready &= ready - 1
                    // Clear before handling, so an event arriving during the
                    // handler sets the bit again and is not lost.
                    cxen_and64(pendingWord, ~(UInt64(1) << UInt64(bitIndex)))
                    let port = EventChannelPort(wordIndex * Self.portsPerWord + bitIndex)
                    if let handler = handlers[Int(port)] {
                        handler(port)
                    } else {
                        // Nobody waits on it: keep it masked so it raises
                        // no further upcalls (a later `attach` unmasks it
                        // and Xen redelivers what is pending by then).
                        cxen_or64(maskWord, UInt64(1) << UInt64(bitIndex))
                        unhandledEvents += 1
                    }
                    handled += 1
                }
            }
        }
        return handled
    }
}
