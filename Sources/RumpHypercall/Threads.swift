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
    var name: (UInt64, UInt64) = (0, 0)  // 15 characters and a NUL
}

/// The new thread names itself before anything else runs, so the name is
/// in place when the kernel's function starts.
private let threadTrampoline: @convention(c) (UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? = { raw in
    let start = raw!.assumingMemoryBound(to: ThreadStart.self)
    let function = start.pointee.function
    let argument = start.pointee.argument
    withUnsafeBytes(of: &start.pointee.name) { name in
        if name[0] != 0 {
            _ = crumpuser_set_thread_name(pthread_self(), name.baseAddress!.assumingMemoryBound(to: CChar.self))
        }
    }
    start.deallocate()
    return function(argument)
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

    let start = UnsafeMutablePointer<ThreadStart>.allocate(capacity: 1)
    start.initialize(to: ThreadStart(function: function, argument: argument))
    if let name {
        withUnsafeMutableBytes(of: &start.pointee.name) {
            _ = strncpy($0.baseAddress!.assumingMemoryBound(to: CChar.self), name, 15)
        }
    }

    var thread = pthread_t()
    var rv = pthread_create(&thread, &attributes, threadTrampoline, start)
    var attempts = 1
    while rv == EAGAIN, attempts < 10 {
        withCPUReleased {
            var pause = timespec(tv_sec: 0, tv_nsec: 10_000_000)
            _ = nanosleep(&pause, nil)
        }
        rv = pthread_create(&thread, &attributes, threadTrampoline, start)
        attempts += 1
    }
    guard rv == 0 else {
        start.deallocate()
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
