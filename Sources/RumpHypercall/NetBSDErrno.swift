// NetBSD errno and signal numbers, and their translation from/to the host's
// (NetBSD sys/sys/errno.h and sys/sys/signal.h; rumpuser(3) RETURN VALUES).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An error number in the NetBSD namespace, which is what every rumpuser
/// hypercall returns to the rump kernel.
///
/// Host errors are translated with ``init(hostErrno:)``; a host error with no
/// NetBSD counterpart becomes ``EINVAL``, as in NetBSD's own librumpuser.
public struct NetBSDErrno: Error, Hashable, Sendable, RawRepresentable, CustomStringConvertible {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// Translates a host (Linux) errno value. Zero stays zero.
    public init(hostErrno: Int32) { self.rawValue = netbsdErrno(fromHost: hostErrno) }

    public var description: String { "NetBSD errno \(rawValue)" }

    public static let EPERM = NetBSDErrno(rawValue: 1)
    public static let ENOENT = NetBSDErrno(rawValue: 2)
    public static let ESRCH = NetBSDErrno(rawValue: 3)
    public static let EINTR = NetBSDErrno(rawValue: 4)
    public static let EIO = NetBSDErrno(rawValue: 5)
    public static let ENXIO = NetBSDErrno(rawValue: 6)
    public static let E2BIG = NetBSDErrno(rawValue: 7)
    public static let EBADF = NetBSDErrno(rawValue: 9)
    public static let ENOMEM = NetBSDErrno(rawValue: 12)
    public static let EACCES = NetBSDErrno(rawValue: 13)
    public static let EFAULT = NetBSDErrno(rawValue: 14)
    public static let EBUSY = NetBSDErrno(rawValue: 16)
    public static let EEXIST = NetBSDErrno(rawValue: 17)
    public static let ENOTDIR = NetBSDErrno(rawValue: 20)
    public static let EISDIR = NetBSDErrno(rawValue: 21)
    public static let EINVAL = NetBSDErrno(rawValue: 22)
    public static let ENOSPC = NetBSDErrno(rawValue: 28)
    public static let ESPIPE = NetBSDErrno(rawValue: 29)
    public static let ERANGE = NetBSDErrno(rawValue: 34)
    public static let EAGAIN = NetBSDErrno(rawValue: 35)
    public static let EINPROGRESS = NetBSDErrno(rawValue: 36)
    public static let EOPNOTSUPP = NetBSDErrno(rawValue: 45)
    public static let ETIMEDOUT = NetBSDErrno(rawValue: 60)
    public static let ENAMETOOLONG = NetBSDErrno(rawValue: 63)
    public static let ENOSYS = NetBSDErrno(rawValue: 78)
}

/// Host errno → NetBSD errno. One `case` per host constant so that every
/// value is checked by the tests; aliases (EWOULDBLOCK, EDEADLOCK, ENOTSUP)
/// share the host number of their twin and need no case of their own.
@inline(never)
func netbsdErrno(fromHost error: Int32) -> Int32 {
    switch error {
    case 0: return 0
    case EPERM: return 1
    case ENOENT: return 2
    case ESRCH: return 3
    case EINTR: return 4
    case EIO: return 5
    case ENXIO: return 6
    case E2BIG: return 7
    case ENOEXEC: return 8
    case EBADF: return 9
    case ECHILD: return 10
    case EDEADLK: return 11
    case ENOMEM: return 12
    case EACCES: return 13
    case EFAULT: return 14
    case ENOTBLK: return 15
    case EBUSY: return 16
    case EEXIST: return 17
    case EXDEV: return 18
    case ENODEV: return 19
    case ENOTDIR: return 20
    case EISDIR: return 21
    case EINVAL: return 22
    case ENFILE: return 23
    case EMFILE: return 24
    case ENOTTY: return 25
    case ETXTBSY: return 26
    case EFBIG: return 27
    case ENOSPC: return 28
    case ESPIPE: return 29
    case EROFS: return 30
    case EMLINK: return 31
    case EPIPE: return 32
    case EDOM: return 33
    case ERANGE: return 34
    case EAGAIN: return 35
    case EINPROGRESS: return 36
    case EALREADY: return 37
    case ENOTSOCK: return 38
    case EDESTADDRREQ: return 39
    case EMSGSIZE: return 40
    case EPROTOTYPE: return 41
    case ENOPROTOOPT: return 42
    case EPROTONOSUPPORT: return 43
    case ESOCKTNOSUPPORT: return 44
    case EOPNOTSUPP: return 45
    case EPFNOSUPPORT: return 46
    case EAFNOSUPPORT: return 47
    case EADDRINUSE: return 48
    case EADDRNOTAVAIL: return 49
    case ENETDOWN: return 50
    case ENETUNREACH: return 51
    case ENETRESET: return 52
    case ECONNABORTED: return 53
    case ECONNRESET: return 54
    case ENOBUFS: return 55
    case EISCONN: return 56
    case ENOTCONN: return 57
    case ESHUTDOWN: return 58
    case ETOOMANYREFS: return 59
    case ETIMEDOUT: return 60
    case ECONNREFUSED: return 61
    case ELOOP: return 62
    case ENAMETOOLONG: return 63
    case EHOSTDOWN: return 64
    case EHOSTUNREACH: return 65
    case ENOTEMPTY: return 66
    case EUSERS: return 68
    case EDQUOT: return 69
    case ESTALE: return 70
    case EREMOTE: return 71
    case ENOLCK: return 77
    case ENOSYS: return 78
    case EIDRM: return 82
    case ENOMSG: return 83
    case EOVERFLOW: return 84
    case EILSEQ: return 85
    case ECANCELED: return 87
    case EBADMSG: return 88
    case ENODATA: return 89
    case ENOSR: return 90
    case ENOSTR: return 91
    case ETIME: return 92
    case EMULTIHOP: return 94
    case ENOLINK: return 95
    case EPROTO: return 96
    case EOWNERDEAD: return 97
    case ENOTRECOVERABLE: return 98
    default: return 22  // EINVAL, as NetBSD's rumpuser_errtrans.c does
    }
}

/// NetBSD signal number → host signal number, or -1 where the host has none
/// (SIGEMT, SIGINFO).
@inline(never)
func hostSignal(fromNetBSD signal: Int32) -> Int32 {
    switch signal {
    case 1: return SIGHUP
    case 2: return SIGINT
    case 3: return SIGQUIT
    case 4: return SIGILL
    case 5: return SIGTRAP
    case 6: return SIGABRT
    case 8: return SIGFPE
    case 9: return SIGKILL
    case 10: return SIGBUS
    case 11: return SIGSEGV
    case 12: return SIGSYS
    case 13: return SIGPIPE
    case 14: return SIGALRM
    case 15: return SIGTERM
    case 16: return SIGURG
    case 17: return SIGSTOP
    case 18: return SIGTSTP
    case 19: return SIGCONT
    case 20: return SIGCHLD
    case 21: return SIGTTIN
    case 22: return SIGTTOU
    case 23: return SIGIO
    case 24: return SIGXCPU
    case 25: return SIGXFSZ
    case 26: return SIGVTALRM
    case 27: return SIGPROF
    case 28: return SIGWINCH
    case 30: return SIGUSR1
    case 31: return SIGUSR2
    case 32: return SIGPWR
    default: return -1
    }
}
