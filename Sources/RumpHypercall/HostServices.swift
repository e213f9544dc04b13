// rumpuser(3) "Parameter retrieval", "Termination", "Console output",
// "Random pool", and rumpuser_seterrno / rumpuser_kill.

import CRumpUser

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The number of virtual CPUs when RUMP_NCPU is not set (NetBSD's default).
let defaultVirtualCPUCount = 2

/// `_RUMPUSER_NCPU`: RUMP_NCPU from the environment ("host" means the host's
/// online CPU count), else 2. `_RUMPUSER_HOSTNAME`: "rump-PID.HOSTNAME",
/// truncated to the buffer. Other names beginning with "_" are EINVAL; any
/// other name is looked up in the environment (ENOENT if unset, ERANGE if
/// the value does not fit).
@_spi(RumpUserABI) @_cdecl("rumpuser_getparam")
public func rumpuserGetparam(_ name: UnsafePointer<CChar>, _ buffer: UnsafeMutableRawPointer, _ length: Int) -> Int32 {
    if strcmp(name, RUMPUSER_PARAM_NCPU) == 0 {
        var count = defaultVirtualCPUCount
        if let value = getenv("RUMP_NCPU") {
            if strcmp(value, "host") == 0 {
                count = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
            } else {
                return copyCString(value, to: buffer, capacity: length) ? 0 : NetBSDErrno.ERANGE.rawValue
            }
        }
        return String(count).withCString { copyCString($0, to: buffer, capacity: length) } ? 0 : NetBSDErrno.ERANGE.rawValue
    }
    if strcmp(name, RUMPUSER_PARAM_HOSTNAME) == 0 {
        guard length > 0 else { return NetBSDErrno.ERANGE.rawValue }
        var host = [CChar](repeating: 0, count: 256)
        var text = "rump-" + String(getpid()).leftPadded(to: 5)
        if gethostname(&host, host.count - 1) == 0 {
            text += "." + String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        text.withCString { source in
            let count = min(strlen(source), length - 1)
            memcpy(buffer, source, count)
            buffer.storeBytes(of: 0, toByteOffset: count, as: CChar.self)
        }
        return 0
    }
    if name.pointee == 0x5F {  // "_": reserved for mandatory parameters
        return NetBSDErrno.EINVAL.rawValue
    }
    guard let value = getenv(name) else { return NetBSDErrno.ENOENT.rawValue }
    return copyCString(value, to: buffer, capacity: length) ? 0 : NetBSDErrno.ERANGE.rawValue
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

/// Sets the calling thread's errno (used for rump system calls made by local
/// clients). The value is a NetBSD errno and is stored untranslated.
@_spi(RumpUserABI) @_cdecl("rumpuser_seterrno")
public func rumpuserSeterrno(_ error: Int32) {
    crumpuser_set_errno(error)
}

/// Raises the NetBSD signal `signal` in this process (the only process a
/// POSIX host implementation can signal); signals the host lacks are dropped.
@_spi(RumpUserABI) @_cdecl("rumpuser_kill")
public func rumpuserKill(_ pid: Int64, _ signal: Int32) -> Int32 {
    let host = hostSignal(fromNetBSD: signal)
    if host > 0 { raise(host) }
    return 0
}

/// Ends the process; RUMPUSER_PANIC aborts so that a core dump is produced.
@_spi(RumpUserABI) @_cdecl("rumpuser_exit")
public func rumpuserExit(_ value: Int32) -> Never {
    puts("halted")
    if value == RUMPUSER_PANIC {
        fflush(nil)
        abort()
    }
    exit(value)
}

@_spi(RumpUserABI) @_cdecl("rumpuser_putchar")
public func rumpuserPutchar(_ character: Int32) {
    putchar(character)
}

/// Random bytes from the host kernel (getrandom(2)). RANDOM_HARD asks for
/// the blocking pool; without RANDOM_NOWAIT the call always fills the whole
/// buffer, releasing the CPU if the host pool makes it wait. With NOWAIT it
/// returns what is available now, or EAGAIN.
@_spi(RumpUserABI) @_cdecl("rumpuser_getrandom")
public func rumpuserGetrandom(_ buffer: UnsafeMutableRawPointer, _ length: Int, _ flags: Int32, _ retp: UnsafeMutablePointer<Int>) -> Int32 {
    let hard: Int32 = flags & RUMPUSER_RANDOM_HARD != 0 ? 1 : 0
    let mayWait = flags & RUMPUSER_RANDOM_NOWAIT == 0
    var filled = 0
    var released = false
    var nlocks: Int32 = 0
    var error: Int32 = 0
    while filled < length {
        let n = crumpuser_host_getrandom(buffer + filled, length - filled, released ? 0 : 1, hard)
        if n > 0 {
            filled += n
            continue
        }
        let hostError = crumpuser_errno()
        if hostError == EINTR { continue }
        if hostError == EAGAIN, mayWait, !released {
            nlocks = crumpuser_unschedule(nil)
            released = true
            continue
        }
        if filled == 0 { error = hostError }
        break
    }
    if released { crumpuser_schedule(nlocks, nil) }
    if error != 0 { return netbsdErrno(fromHost: error) }
    retp.pointee = filled
    return 0
}
