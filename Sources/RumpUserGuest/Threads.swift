// Threads: rumpuser_thread_create/exit/join on guest threads (rumpuser(3)
// "Threads"). The join cookie is the guest thread's control block, retained
// until the join. Priority is a hint (every thread runs at normal
// priority); a CPU index binds the thread to that CPU (-1: any CPU).
import BareMetalKit
import CRumpUserGuest

enum GuestThreads {
    /// Stack of a kernel thread (whole pages, guard page below).
    static var stackSize: Int { 128 * 1024 }
    /// Names are kept up to this many bytes.
    static var maximumNameLength: Int { 31 }
}

@_cdecl("rumpuser_thread_create")
public func rumpuserThreadCreate(
    _ function: (@convention(c) (UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer?)?, _ argument: UnsafeMutableRawPointer?,
    _ name: UnsafePointer<CChar>?, _ mustJoin: Int32, _ priority: Int32, _ processor: Int32,
    _ cookie: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
    guard let function else { return NetBSDError.EINVAL }
    if mustJoin != 0 && cookie == nil { return NetBSDError.EINVAL }
    let threadName = name.map { bytes(of: $0, limit: GuestThreads.maximumNameLength) } ?? bytes(of: "rumpthread")
    if processor < -1 || Int(processor) >= ThreadRuntime.processorsForThreads { return NetBSDError.EINVAL }
    let control: ThreadControl
    do throws(ThreadError) {
        control = try ThreadRuntime.spawn(
            name: threadName, priority: ThreadRuntime.normalPriority, stackSize: GuestThreads.stackSize,
            processor: processor < 0 ? nil : Int(processor)
        ) {
            _ = function(argument)
            return 0
        }
    } catch {
        return NetBSDError.EAGAIN
    }
    if mustJoin != 0 {
        cookie!.pointee = Unmanaged.passRetained(control).toOpaque()
    } else {
        ThreadRuntime.detach(control)
    }
    return 0
}

@_cdecl("rumpuser_thread_exit")
public func rumpuserThreadExit() -> Never {
    ThreadRuntime.exit(0)
}

@_cdecl("rumpuser_thread_join")
public func rumpuserThreadJoin(_ cookie: UnsafeMutableRawPointer?) -> Int32 {
    guard let cookie else { return NetBSDError.EINVAL }
    let handle = Unmanaged<ThreadControl>.fromOpaque(cookie)
    let control = handle.takeUnretainedValue()
    if control.id == currentThread() { return NetBSDError.EDEADLK }
    let error: Int32 = Upcalls.blocking {
        do throws(ThreadError) {
            _ = try ThreadRuntime.join(control)
            return 0
        } catch {
            switch error {
            case .joinSelf: return NetBSDError.EDEADLK
            case .alreadyJoined: return NetBSDError.EINVAL
            default: return NetBSDError.ESRCH
            }
        }
    }
    if error == 0 { handle.release() }
    return error
}
