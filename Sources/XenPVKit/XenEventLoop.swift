// XenEventLoop: the run-time side of event channels (Xen public/xen.h
// 2-level ABI, event_channel.h) once the platform has threads: one port
// table shared by the upcall and the threads, in which a port is unmasked
// only together with its handler; and a `Hypercalls` wrapper whose
// SCHEDOP_block waits the way the platform waits (a thread sleeping until
// its port's handler wakes it, in the guest).
import CXen

/// A lock around state the Xen run time shares between threads (and, for
/// `XenEvents`, with the upcall). The guest uses a thread mutex, or for the
/// event table a spinlock that masks interrupts; host tests anything.
public protocol XenLock: AnyObject {
    func lock()
    func unlock()
}

/// Runs `body` holding `lock`. (A free function: Embedded Swift cannot
/// specialize a protocol extension's generic method on an existential.)
@inline(__always)
func locked<Result, Failure: Error>(_ lock: any XenLock, _ body: () throws(Failure) -> Result) throws(Failure) -> Result {
    lock.lock()
    defer { lock.unlock() }
    return try body()
}

/// The event channels of the running domain: the upcall's `dispatch` and
/// the threads' `bind`/`unbind` under one lock.
///
/// Every port starts masked (`EventChannels.init`). `bind` installs the
/// handler and then unmasks the port through `EVTCHNOP_unmask`, so an event
/// raised while it was masked is delivered then; there is no way to unmask
/// a port without a handler, and the upcall masks again any pending port
/// that has none (counted in `unhandledEvents`).
public final class XenEvents<H: Hypercalls> {
    public typealias Handler = EventChannels<H>.Handler

    var channels: EventChannels<H>
    let lock: any XenLock
    /// Upcalls taken (calls of `dispatch`).
    public private(set) var upcalls: UInt64 = 0
    /// Events delivered to handlers or dropped, over all upcalls.
    public private(set) var events: UInt64 = 0

    /// Takes over the mapped shared info page (masking every port).
    ///
    /// - Parameter lock: taken by `dispatch` in the upcall, so in the guest
    ///   it must mask interrupts while held.
    public init(sharedInfo: UnsafeMutableRawPointer, hypervisor: H, lock: any XenLock) {
        channels = EventChannels(sharedInfo: sharedInfo, hypervisor: hypervisor)
        self.lock = lock
    }

    /// Installs `handler` for the already allocated `port` and unmasks it.
    /// Handlers run in the upcall with the lock held: they may only wake
    /// threads (no `bind`, no allocation, no waiting).
    public func bind(_ port: EventChannelPort, _ handler: @escaping Handler) throws(EventChannelError) {
        try locked(lock) { () throws(EventChannelError) in try channels.attach(port, handler) }
    }

    /// Masks `port` and removes its handler; the port stays open.
    public func unbind(_ port: EventChannelPort) {
        locked(lock) { channels.detach(port) }
    }

    /// The upcall: runs the handler of every pending, unmasked port of
    /// `vcpu`; returns how many events it took.
    @discardableResult
    public func dispatch(vcpu: Int = 0) -> Int {
        locked(lock) {
            upcalls &+= 1
            let handled = channels.dispatch(vcpu: vcpu)
            events &+= UInt64(handled)
            return handled
        }
    }

    /// Pending events that found no handler (their ports were masked again).
    public var unhandledEvents: Int { locked(lock) { channels.unhandledEvents } }
    public func isMasked(_ port: EventChannelPort) -> Bool { locked(lock) { channels.isMasked(port) } }
    public func isPending(_ port: EventChannelPort) -> Bool { locked(lock) { channels.isPending(port) } }
    public func hasHandler(_ port: EventChannelPort) -> Bool { locked(lock) { channels.hasHandler(port) } }
}

/// How a thread waits for "some event" when a protocol client blocks:
/// in the guest, a semaphore the xenstore port's handler signals, with a
/// timeout so a lost event costs a bounded delay; in tests, a step of the
/// simulated backends.
public protocol XenEventWait: AnyObject {
    func waitForEvent()
}

/// `Hypercalls` whose `SCHEDOP_block` waits through `waiter` instead of
/// blocking the vCPU, so the xenstore client (which blocks between ring
/// reads) sleeps only its own thread once the platform has threads.
/// Everything else goes to `base`.
public struct WaitingHypercalls<Base: Hypercalls>: Hypercalls {
    public var base: Base
    public let waiter: any XenEventWait

    public init(_ base: Base, waiter: any XenEventWait) {
        self.base = base
        self.waiter = waiter
    }

    public mutating func schedOp(_ command: Int32, _ argument: UnsafeMutableRawPointer?) -> Int {
        if command == SCHEDOP_block {
            waiter.waitForEvent()
            return 0
        }
        return base.schedOp(command, argument)
    }
    public mutating func eventChannelOp(_ command: Int32, _ argument: UnsafeMutableRawPointer) -> Int {
        base.eventChannelOp(command, argument)
    }
    public mutating func grantTableOp(_ command: UInt32, _ arguments: UnsafeMutableRawPointer, count: UInt32) -> Int {
        base.grantTableOp(command, arguments, count: count)
    }
    public mutating func memoryOp(_ command: Int32, _ argument: UnsafeMutableRawPointer) -> Int {
        base.memoryOp(command, argument)
    }
    public mutating func hvmOp(_ operation: Int32, _ argument: UnsafeMutableRawPointer) -> Int {
        base.hvmOp(operation, argument)
    }
    public mutating func consoleIO(_ command: Int32, count: Int32, _ buffer: UnsafeMutableRawPointer) -> Int {
        base.consoleIO(command, count: count, buffer)
    }
    public mutating func setTimerOp(_ timeout: UInt64) -> Int { base.setTimerOp(timeout) }
    public mutating func vcpuOp(_ command: Int32, vcpu: UInt32, _ argument: UnsafeMutableRawPointer?) -> Int {
        base.vcpuOp(command, vcpu: vcpu, argument)
    }
    public mutating func mmuUpdate(
        _ requests: UnsafeMutablePointer<mmu_update>, count: UInt32,
        successCount: UnsafeMutablePointer<UInt32>?, domain: domid_t
    ) -> Int {
        base.mmuUpdate(requests, count: count, successCount: successCount, domain: domain)
    }
    public mutating func updateVAMapping(_ virtualAddress: UInt64, _ entry: UInt64, flags: UInt64) -> Int {
        base.updateVAMapping(virtualAddress, entry, flags: flags)
    }
}
