// rumpuser(3) "Threads": host threads for the rump kernel, and the curlwp
// operations that bind a rump kernel lwp to the calling host thread.

import CRumpUser

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

public typealias RumpThreadFunction = @convention(c) (UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer?

/// What a new thread needs before it runs the kernel's function.
private struct ThreadStart {
    var function: RumpThreadFunction
    var argument: UnsafeMutableRawPointer?
    var name: (UInt64, UInt64)  // up to 15 characters and a NUL
}

/// Where ThreadStart records live: a fixed pool of cache-line slots that the
/// new thread hands back as soon as it has read its record.
///
/// Measured (Docs/rumphypercall.md, "thread create + join"): with a
/// malloc'ed record freed by the new thread, that free was the thread's
/// first use of malloc, so glibc attached the thread to an arena, built its
/// tcache and tore both down at thread exit: about 1 200 of the 1 550
/// instructions the create+join had above pthread's. The pool makes no
/// allocation on either side. When every slot is taken (more than
/// `count` threads being started at the same moment) a record comes from
/// the heap and the new thread frees it.
private enum StartSlots {
    static var count: Int { 32 }
    static var size: Int { 64 }
    /// Offset of the ThreadStart in a slot; the slot's first word is its
    /// state (0 free, 1 taken).
    static var recordOffset: Int { 16 }

    nonisolated(unsafe) static let base: UnsafeMutableRawPointer = {
        let memory = UnsafeMutableRawPointer.allocate(byteCount: count * size, alignment: size)
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: count * size)
        return memory
    }()

    /// A free slot (claimed), or a heap block of the same layout.
    static func take() -> UnsafeMutableRawPointer {
        let base = base
        for index in 0..<count {
            let state = (base + index * size).assumingMemoryBound(to: UInt32.self)
            if crumpuser_load_relaxed(state) == 0, crumpuser_cas_acquire(state, 0, 1) != 0 {
                return base + index * size
            }
        }
        return UnsafeMutableRawPointer.allocate(byteCount: size, alignment: size)
    }

    /// Gives a slot back (release: the record's reads happen before the
    /// next owner's writes) or frees a heap block.
    static func give(_ slot: UnsafeMutableRawPointer) {
        let base = base
        if slot >= base && slot < base + count * size {
            _ = crumpuser_exchange_release(slot.assumingMemoryBound(to: UInt32.self), 0)
        } else {
            slot.deallocate()
        }
    }

    static func record(_ slot: UnsafeMutableRawPointer) -> UnsafeMutablePointer<ThreadStart> {
        (slot + recordOffset).assumingMemoryBound(to: ThreadStart.self)
    }
}

/// The new thread copies its record, hands the slot back, and names itself
/// before the kernel's function runs, so the name is in place when it does.
private let threadTrampoline: @convention(c) (UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? = { raw in
    let slot = raw!
    let start = StartSlots.record(slot).pointee
    StartSlots.give(slot)
    var name = start.name
    if name.0 & 0xFF != 0 {
        withUnsafeBytes(of: &name) { crumpuser_set_own_thread_name($0.baseAddress!.assumingMemoryBound(to: CChar.self)) }
    }
    return start.function(start.argument)
}

/// The first 15 bytes of a C string, NUL-padded to 16.
@inline(__always)
private func threadName(_ name: UnsafePointer<CChar>?) -> (UInt64, UInt64) {
    var packed: (UInt64, UInt64) = (0, 0)
    guard let name else { return packed }
    withUnsafeMutableBytes(of: &packed) { bytes in
        var index = 0
        while index < 15 {
            let byte = name[index]
            if byte == 0 { break }
            bytes[index] = UInt8(bitPattern: byte)
            index += 1
        }
    }
    return packed
}

/// Creates a host thread running `function(argument)`, named `name` (cut to
/// 15 characters). For a joinable thread the cookie for
/// rumpuser_thread_join is the pthread_t itself. `priority` and `cpuIndex`
/// are hints this implementation does not use. EAGAIN is retried 10 times,
/// 10 ms apart, with the CPU released, as NetBSD's implementation does.
@_spi(RumpUserABI) @_cdecl("rumpuser_thread_create")
public func rumpuserThreadCreate(
    _ function: RumpThreadFunction, _ argument: UnsafeMutableRawPointer?, _ name: UnsafePointer<CChar>?,
    _ joinable: Int32, _ priority: Int32, _ cpuIndex: Int32,
    _ cookie: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    pthread_attr_setdetachstate(&attributes, Int32(joinable != 0 ? PTHREAD_CREATE_JOINABLE : PTHREAD_CREATE_DETACHED))

    let slot = StartSlots.take()
    StartSlots.record(slot).initialize(to: ThreadStart(function: function, argument: argument, name: threadName(name)))

    var thread = pthread_t()
    var rv = pthread_create(&thread, &attributes, threadTrampoline, slot)
    var attempts = 1
    while rv == EAGAIN, attempts < 10 {
        withCPUReleased {
            var pause = timespec(tv_sec: 0, tv_nsec: 10_000_000)
            _ = nanosleep(&pause, nil)
        }
        rv = pthread_create(&thread, &attributes, threadTrampoline, slot)
        attempts += 1
    }
    guard rv == 0 else {
        StartSlots.give(slot)
        return netbsdErrno(fromHost: rv)
    }
    if joinable != 0 {
        cookie?.pointee = UnsafeMutableRawPointer(bitPattern: UInt(thread))
    }
    return 0
}

@_spi(RumpUserABI) @_cdecl("rumpuser_thread_exit")
public func rumpuserThreadExit() -> Never {
    pthread_exit(nil)
}

/// Waits for a joinable thread, with the CPU released.
@_spi(RumpUserABI) @_cdecl("rumpuser_thread_join")
public func rumpuserThreadJoin(_ cookie: UnsafeMutableRawPointer?) -> Int32 {
    guard let cookie else { return NetBSDErrno.EINVAL.rawValue }
    let thread = pthread_t(UInt(bitPattern: cookie))
    let rv = withCPUReleased { pthread_join(thread, nil) }
    return netbsdErrno(fromHost: rv)
}

/// CREATE and DESTROY need no host state; SET binds `lwp` to the calling
/// thread (which must have none), CLEAR unbinds it (it must be bound).
@_spi(RumpUserABI) @_cdecl("rumpuser_curlwpop")
public func rumpuserCurlwpop(_ op: Int32, _ lwp: OpaquePointer?) {
    switch op {
    case Int32(RUMPUSER_LWP_SET.rawValue):
        if _slowPath(crumpuser_tls_curlwp() != nil) { hypervisorPanic("curlwpop SET: thread already has an lwp") }
        crumpuser_tls_set_curlwp(lwp)
    case Int32(RUMPUSER_LWP_CLEAR.rawValue):
        if _slowPath(crumpuser_tls_curlwp() != lwp) { hypervisorPanic("curlwpop CLEAR: lwp is not the thread's") }
        crumpuser_tls_set_curlwp(nil)
    case Int32(RUMPUSER_LWP_CREATE.rawValue), Int32(RUMPUSER_LWP_DESTROY.rawValue):
        break
    default:
        hypervisorPanic("curlwpop: unknown operation")
    }
}

// rumpuser_curlwp itself is defined in C (CRumpUser/host.c): it is a single
// thread-local load, and a Swift @_cdecl entry point would add a thunk.
