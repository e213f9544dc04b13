// The sysproxy wire protocol (NetBSD lib/librumpuser/sp_common.c,
// rumpuser_sp.c, lib/librumpclient/rumpclient.c): frame header, classes,
// types, handshake kinds, error codes, and the server URL syntax.
//
// Client and server share the ABI (NetBSD's own limitation): every field is
// in host byte order and host layout (x86_64 here).

import CRumpUser

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

enum ProxyWire {
    /// `struct rsp_hdr`: u64 length (header included), u64 request number,
    /// u16 class, u16 type, u32 argument (syscall number, handshake kind,
    /// error code or signal, by type).
    static let headerSize = 24
    static let protocolMajor = 0
    static let protocolMinor = 4
    /// The banner buffer of both sides, NUL included.
    static let maxBanner = 96
    /// Largest request body the server accepts (syscall arguments and
    /// handshake names are a few hundred bytes; NetBSD has no limit).
    static let maxRequestBody = 1 << 20
    /// NetBSD's MAXCLI: poll slots, the listening socket included.
    static let maxClients = 255

    enum FrameClass: UInt16 {
        case request = 0, response = 1, error = 2
    }

    enum FrameType: UInt16 {
        case handshake = 0, syscall, copyin, copyinstr, copyout, copyoutstr, anonmmap, prefork, raise
    }

    enum Handshake: UInt32 {
        case guest = 0, auth, fork, exec
    }

    /// `enum rumpsp_err`, sent in the argument of an ERROR frame.
    enum ErrorCode: UInt32 {
        case none = 0, tryAgain, auth, invalidPrefork, rforkFailed, inExec, noMemory, malformedRequest

        /// The errno a client reports for it (NetBSD's errmap).
        var netbsdErrno: Int32 {
            switch self {
            case .none: return 0
            case .auth: return NetBSDErrno.EPERM.rawValue
            case .tryAgain: return NetBSDErrno.EAGAIN.rawValue
            case .invalidPrefork: return NetBSDErrno.ESRCH.rawValue
            case .rforkFailed: return NetBSDErrno.EIO.rawValue
            case .inExec: return NetBSDErrno.EBUSY.rawValue
            case .noMemory: return NetBSDErrno.ENOMEM.rawValue
            case .malformedRequest: return NetBSDErrno.EINVAL.rawValue
            }
        }
    }

    /// `struct handshake_fork`: u32 auth[4], int cancel.
    static let authLength = 16
    static let handshakeForkSize = 20
    /// `struct rsp_copydata` before its data: size_t length, void *address.
    static let copyDataSize = 16
    /// `struct rsp_sysresp`: int error, (padding), register_t retval[2].
    static let syscallResponseSize = 24

    /// rump_lwproc_rfork flags (rump.h): RUMP_RFFD_SHARE, _COPY, _CLEAR.
    static let rforkShareFiles: Int32 = 0
    static let rforkCopyFiles: Int32 = 1
    static let rforkClearFiles: Int32 = 2
}

struct ProxyHeader {
    var length: UInt64
    var request: UInt64
    var frameClass: UInt16
    var type: UInt16
    var argument: UInt32

    init(length: Int, request: UInt64, frameClass: ProxyWire.FrameClass, type: UInt16, argument: UInt32 = 0) {
        self.length = UInt64(length)
        self.request = request
        self.frameClass = frameClass.rawValue
        self.type = type
        self.argument = argument
    }

    init(decoding bytes: UnsafeRawPointer) {
        length = bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
        request = bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
        frameClass = bytes.loadUnaligned(fromByteOffset: 16, as: UInt16.self)
        type = bytes.loadUnaligned(fromByteOffset: 18, as: UInt16.self)
        argument = bytes.loadUnaligned(fromByteOffset: 20, as: UInt32.self)
    }

    func encode(into bytes: UnsafeMutableRawPointer) {
        bytes.storeBytes(of: length, toByteOffset: 0, as: UInt64.self)
        bytes.storeBytes(of: request, toByteOffset: 8, as: UInt64.self)
        bytes.storeBytes(of: frameClass, toByteOffset: 16, as: UInt16.self)
        bytes.storeBytes(of: type, toByteOffset: 18, as: UInt16.self)
        bytes.storeBytes(of: argument, toByteOffset: 20, as: UInt32.self)
    }
}

/// A parsed server URL: `unix://path` (relative paths are made absolute,
/// so the socket can be removed at fini) or `tcp://a.b.c.d:port` (`*` or
/// `0` for any address). Errors are NetBSD's: no `://`, an unknown scheme,
/// a missing or malformed port → EINVAL; port ≥ 65536 → ERANGE; a path
/// longer than sun_path → ENAMETOOLONG; `tcp6` → EOPNOTSUPP.
enum ProxyAddress {
    case local(path: [CChar])
    case inet(address: in_addr, port: UInt16)

    static func parse(_ url: UnsafePointer<CChar>) -> Result<ProxyAddress, NetBSDErrno> {
        guard let separator = strstr(url, "://") else { return .failure(.EINVAL) }
        let schemeLength = url.distance(to: UnsafePointer(separator))
        guard schemeLength < 16 else { return .failure(.EINVAL) }
        let address = UnsafePointer(separator) + 3
        if schemeLength == 3, strncmp(url, "tcp", 3) == 0 { return parseTCP(address) }
        if schemeLength == 4, strncmp(url, "unix", 4) == 0 { return parseUnix(address) }
        if schemeLength == 4, strncmp(url, "tcp6", 4) == 0 { return .failure(.EOPNOTSUPP) }
        return .failure(.EINVAL)
    }

    private static func parseUnix(_ path: UnsafePointer<CChar>) -> Result<ProxyAddress, NetBSDErrno> {
        let capacity = MemoryLayout.size(ofValue: sockaddr_un().sun_path)
        let length = strlen(path)
        guard length > 0 else { return .failure(.EINVAL) }
        guard length < capacity else { return .failure(.ENAMETOOLONG) }
        var full: [CChar] = []
        if path.pointee != CChar(UInt8(ascii: "/")) {
            var directory = [CChar](repeating: 0, count: Int(PATH_MAX))
            if getcwd(&directory, directory.count) != nil {
                full.append(contentsOf: directory.prefix(strlen(directory)))
                full.append(CChar(UInt8(ascii: "/")))
            }
        }
        full.append(contentsOf: UnsafeBufferPointer(start: path, count: length))
        guard full.count < capacity else { return .failure(.ENAMETOOLONG) }
        full.append(0)
        return .success(.local(path: full))
    }

    private static func parseTCP(_ text: UnsafePointer<CChar>) -> Result<ProxyAddress, NetBSDErrno> {
        guard let colon = strchr(text, Int32(UInt8(ascii: ":"))) else { return .failure(.EINVAL) }
        let hostLength = text.distance(to: UnsafePointer(colon))
        guard hostLength < 64 else { return .failure(.EINVAL) }
        var host = [CChar](repeating: 0, count: 64)
        memcpy(&host, text, hostLength)
        var address = in_addr(s_addr: 0)
        if !(strcmp(host, "*") == 0 || strcmp(host, "0") == 0) {
            guard inet_pton(AF_INET, host, &address) == 1 else { return .failure(.EINVAL) }
        }
        let portText = UnsafePointer(colon) + 1
        let digits = strspn(portText, "0123456789")
        guard digits > 0, digits < 10 else { return digits == 0 ? .failure(.EINVAL) : .failure(.ERANGE) }
        let end = portText[digits]
        guard end == 0 || end == CChar(UInt8(ascii: "/")) else { return .failure(.EINVAL) }
        var port = 0
        for index in 0..<digits { port = port * 10 + Int(portText[index]) - Int(UInt8(ascii: "0")) }
        guard port < 65536 else { return .failure(.ERANGE) }
        return .success(.inet(address: address, port: UInt16(port)))
    }

    /// A listening socket bound to the address: 0 or the NetBSD errno.
    func listen(backlog: Int32) -> Result<Int32, NetBSDErrno> {
        let domain = { if case .local = self { return AF_UNIX } else { return AF_INET } }()
        let fd = socket(domain, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(NetBSDErrno(rawValue: netbsdErrnoFromCurrentHostErrno())) }
        var rv: Int32
        switch self {
        case .local(let path):
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { buffer in
                path.withUnsafeBytes { buffer.copyMemory(from: $0) }
            }
            rv = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
        case .inet(let host, let port):
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            address.sin_addr = host
            rv = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        if rv == 0 { rv = Glibc.listen(fd, backlog) }
        if rv != 0 {
            let error = netbsdErrnoFromCurrentHostErrno()
            close(fd)
            return .failure(NetBSDErrno(rawValue: error))
        }
        return .success(fd)
    }

    var isTCP: Bool { if case .inet = self { return true } else { return false } }

    /// Removes a unix socket's file (fini, or a failed init).
    func removeSocketFile() {
        if case .local(let path) = self { _ = unlink(path) }
    }
}

extension NetBSDErrno {
    /// Socket is not connected (NetBSD 57): a reverse request to a client
    /// that has gone.
    static let ENOTCONN = NetBSDErrno(rawValue: 57)
}
