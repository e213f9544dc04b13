// rumpuser_daemonize_begin/done: fork before the rump kernel starts threads,
// and keep the parent waiting until the child reports that it is up; the
// parent then exits with the child's error (0 on success).

import CRumpUser

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The child's end of the socket pair to its waiting parent, or -1.
nonisolated(unsafe) private var daemonSocket: Int32 = -1
nonisolated(unsafe) private var daemonizing = false

/// In the parent this never returns; in the child it returns 0. A second
/// call while daemonizing is EINPROGRESS.
@_spi(RumpUserABI) @_cdecl("rumpuser_daemonize_begin")
public func rumpuserDaemonizeBegin() -> Int32 {
    if daemonizing { return NetBSDErrno.EINPROGRESS.rawValue }
    var pair: (Int32, Int32) = (-1, -1)
    let made = withUnsafeMutableBytes(of: &pair) {
        socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, $0.baseAddress!.assumingMemoryBound(to: Int32.self))
    }
    if made != 0 { return netbsdErrnoFromCurrentHostErrno() }
    daemonizing = true

    switch fork() {
    case -1:
        let error = netbsdErrnoFromCurrentHostErrno()
        close(pair.0)
        close(pair.1)
        daemonizing = false
        return error
    case 0:
        close(pair.0)
        daemonSocket = pair.1
        if setsid() == -1 { _ = rumpuserDaemonizeDone(crumpuser_errno()) }
        return 0
    default:
        close(pair.1)
        var status: Int32 = 0
        let received = recv(pair.0, &status, MemoryLayout<Int32>.size, Int32(MSG_NOSIGNAL))
        if received != MemoryLayout<Int32>.size { status = received < 0 ? crumpuser_errno() : ESRCH }
        _exit(status)
    }
}

/// Reports `error` (a host errno, 0 for success) to the waiting parent. On
/// success the child's standard descriptors are pointed at /dev/null.
@_spi(RumpUserABI) @_cdecl("rumpuser_daemonize_done")
public func rumpuserDaemonizeDone(_ error: Int32) -> Int32 {
    guard daemonizing, daemonSocket >= 0 else { return NetBSDErrno.ENOENT.rawValue }
    var status = error
    if status == 0 {
        let null = open("/dev/null", O_RDWR)
        if null < 0 {
            status = crumpuser_errno()
        } else {
            dup2(null, STDIN_FILENO)
            dup2(null, STDOUT_FILENO)
            dup2(null, STDERR_FILENO)
            if null > STDERR_FILENO { close(null) }
        }
    }
    let sent = send(daemonSocket, &status, MemoryLayout<Int32>.size, Int32(MSG_NOSIGNAL))
    let result: Int32 = sent == MemoryLayout<Int32>.size ? 0 : (sent < 0 ? crumpuser_errno() : EPIPE)
    close(daemonSocket)
    daemonSocket = -1
    daemonizing = false
    return netbsdErrno(fromHost: result)
}
