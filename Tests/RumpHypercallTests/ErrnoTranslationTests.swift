// Host errno → NetBSD errno, value by value (NetBSD sys/sys/errno.h), and
// NetBSD signal → host signal (NetBSD sys/sys/signal.h).

import Testing

@testable import RumpHypercall

#if canImport(Glibc)
import Glibc
#endif

/// (name, host constant, NetBSD number): every errno NetBSD defines that the
/// host has too.
let errnoTable: [(String, Int32, Int32)] = [
    ("EPERM", EPERM, 1), ("ENOENT", ENOENT, 2), ("ESRCH", ESRCH, 3), ("EINTR", EINTR, 4),
    ("EIO", EIO, 5), ("ENXIO", ENXIO, 6), ("E2BIG", E2BIG, 7), ("ENOEXEC", ENOEXEC, 8),
    ("EBADF", EBADF, 9), ("ECHILD", ECHILD, 10), ("EDEADLK", EDEADLK, 11), ("ENOMEM", ENOMEM, 12),
    ("EACCES", EACCES, 13), ("EFAULT", EFAULT, 14), ("ENOTBLK", ENOTBLK, 15), ("EBUSY", EBUSY, 16),
    ("EEXIST", EEXIST, 17), ("EXDEV", EXDEV, 18), ("ENODEV", ENODEV, 19), ("ENOTDIR", ENOTDIR, 20),
    ("EISDIR", EISDIR, 21), ("EINVAL", EINVAL, 22), ("ENFILE", ENFILE, 23), ("EMFILE", EMFILE, 24),
    ("ENOTTY", ENOTTY, 25), ("ETXTBSY", ETXTBSY, 26), ("EFBIG", EFBIG, 27), ("ENOSPC", ENOSPC, 28),
    ("ESPIPE", ESPIPE, 29), ("EROFS", EROFS, 30), ("EMLINK", EMLINK, 31), ("EPIPE", EPIPE, 32),
    ("EDOM", EDOM, 33), ("ERANGE", ERANGE, 34), ("EAGAIN", EAGAIN, 35), ("EWOULDBLOCK", EWOULDBLOCK, 35),
    ("EINPROGRESS", EINPROGRESS, 36), ("EALREADY", EALREADY, 37), ("ENOTSOCK", ENOTSOCK, 38),
    ("EDESTADDRREQ", EDESTADDRREQ, 39), ("EMSGSIZE", EMSGSIZE, 40), ("EPROTOTYPE", EPROTOTYPE, 41),
    ("ENOPROTOOPT", ENOPROTOOPT, 42), ("EPROTONOSUPPORT", EPROTONOSUPPORT, 43),
    ("ESOCKTNOSUPPORT", ESOCKTNOSUPPORT, 44), ("EOPNOTSUPP", EOPNOTSUPP, 45), ("ENOTSUP", ENOTSUP, 45),
    ("EPFNOSUPPORT", EPFNOSUPPORT, 46), ("EAFNOSUPPORT", EAFNOSUPPORT, 47), ("EADDRINUSE", EADDRINUSE, 48),
    ("EADDRNOTAVAIL", EADDRNOTAVAIL, 49), ("ENETDOWN", ENETDOWN, 50), ("ENETUNREACH", ENETUNREACH, 51),
    ("ENETRESET", ENETRESET, 52), ("ECONNABORTED", ECONNABORTED, 53), ("ECONNRESET", ECONNRESET, 54),
    ("ENOBUFS", ENOBUFS, 55), ("EISCONN", EISCONN, 56), ("ENOTCONN", ENOTCONN, 57),
    ("ESHUTDOWN", ESHUTDOWN, 58), ("ETOOMANYREFS", ETOOMANYREFS, 59), ("ETIMEDOUT", ETIMEDOUT, 60),
    ("ECONNREFUSED", ECONNREFUSED, 61), ("ELOOP", ELOOP, 62), ("ENAMETOOLONG", ENAMETOOLONG, 63),
    ("EHOSTDOWN", EHOSTDOWN, 64), ("EHOSTUNREACH", EHOSTUNREACH, 65), ("ENOTEMPTY", ENOTEMPTY, 66),
    ("EUSERS", EUSERS, 68), ("EDQUOT", EDQUOT, 69), ("ESTALE", ESTALE, 70), ("EREMOTE", EREMOTE, 71),
    ("ENOLCK", ENOLCK, 77), ("ENOSYS", ENOSYS, 78), ("EIDRM", EIDRM, 82), ("ENOMSG", ENOMSG, 83),
    ("EOVERFLOW", EOVERFLOW, 84), ("EILSEQ", EILSEQ, 85), ("ECANCELED", ECANCELED, 87),
    ("EBADMSG", EBADMSG, 88), ("ENODATA", ENODATA, 89), ("ENOSR", ENOSR, 90), ("ENOSTR", ENOSTR, 91),
    ("ETIME", ETIME, 92), ("EMULTIHOP", EMULTIHOP, 94), ("ENOLINK", ENOLINK, 95), ("EPROTO", EPROTO, 96),
    ("EOWNERDEAD", EOWNERDEAD, 97), ("ENOTRECOVERABLE", ENOTRECOVERABLE, 98),
]

@Suite("NetBSD errno translation")
struct ErrnoTranslationTests {
    @Test("every host errno with a NetBSD twin", arguments: errnoTable)
    func translates(entry: (String, Int32, Int32)) {
        let (name, host, netbsd) = entry
        #expect(netbsdErrno(fromHost: host) == netbsd, "\(name) (host \(host))")
        #expect(NetBSDErrno(hostErrno: host).rawValue == netbsd)
    }

    @Test("the Linux numbers the issue names")
    func linuxNumbers() {
        #expect(netbsdErrno(fromHost: 2) == 2)  // ENOENT
        #expect(netbsdErrno(fromHost: 110) == 60)  // Linux ETIMEDOUT
        #expect(netbsdErrno(fromHost: 11) == 35)  // Linux EAGAIN
        #expect(netbsdErrno(fromHost: 95) == 45)  // Linux EOPNOTSUPP
        #expect(netbsdErrno(fromHost: 0) == 0)
    }

    @Test("host-only errnos become EINVAL")
    func hostOnly() {
        for host in [ECHRNG, EL2NSYNC, EBADFD, ENOTUNIQ, EKEYEXPIRED, ERFKILL, EHWPOISON, 4096] {
            #expect(netbsdErrno(fromHost: host) == 22, "host \(host)")
        }
    }

    @Test("the table covers every distinct NetBSD number the host can produce")
    func coverage() {
        let covered = Set(errnoTable.map(\.2))
        // NetBSD numbers with no Linux counterpart: EPROCLIM 67, the RPC errors
        // 72-76, EFTYPE 79, EAUTH 80, ENEEDAUTH 81, ENOTSUP's own 86, ENOATTR 93.
        let noHostTwin: Set<Int32> = [67, 72, 73, 74, 75, 76, 79, 80, 81, 86, 93]
        for netbsd in Int32(1)...98 where !noHostTwin.contains(netbsd) {
            #expect(covered.contains(netbsd), "NetBSD errno \(netbsd) untested")
        }
    }

    @Test("NetBSD signals to host signals")
    func signals() {
        let table: [(Int32, Int32)] = [
            (1, SIGHUP), (2, SIGINT), (3, SIGQUIT), (4, SIGILL), (5, SIGTRAP), (6, SIGABRT), (8, SIGFPE),
            (9, SIGKILL), (10, SIGBUS), (11, SIGSEGV), (12, SIGSYS), (13, SIGPIPE), (14, SIGALRM),
            (15, SIGTERM), (16, SIGURG), (17, SIGSTOP), (18, SIGTSTP), (19, SIGCONT), (20, SIGCHLD),
            (21, SIGTTIN), (22, SIGTTOU), (23, SIGIO), (24, SIGXCPU), (25, SIGXFSZ), (26, SIGVTALRM),
            (27, SIGPROF), (28, SIGWINCH), (30, SIGUSR1), (31, SIGUSR2), (32, SIGPWR),
        ]
        for (netbsd, host) in table {
            #expect(hostSignal(fromNetBSD: netbsd) == host, "NetBSD signal \(netbsd)")
        }
        #expect(hostSignal(fromNetBSD: 7) == -1)  // SIGEMT
        #expect(hostSignal(fromNetBSD: 29) == -1)  // SIGINFO
        #expect(hostSignal(fromNetBSD: 0) == -1)
    }
}
