// The syscall proxy in the Swift API: a Swift host of a rump kernel starts
// and stops the server that rump_init_server() would start.

/// A syscall proxy URL: `unix://path` or `tcp://a.b.c.d:port`.
public struct SyscallProxyURL: Sendable, Hashable, CustomStringConvertible {
    public let description: String

    /// The URL as NetBSD's librumpuser parses it; the parse errors are the
    /// ones `start` would report.
    public init(_ text: String) throws(NetBSDErrno) {
        let parsed = text.withCString { ProxyAddress.parse($0) }
        if case .failure(let error) = parsed { throw error }
        description = text
    }

    public static func unix(path: String) throws(NetBSDErrno) -> SyscallProxyURL { try SyscallProxyURL("unix://" + path) }
    public static func tcp(address: String, port: UInt16) throws(NetBSDErrno) -> SyscallProxyURL {
        try SyscallProxyURL("tcp://\(address):\(port)")
    }
}

extension POSIXHypercalls {
    /// Starts the syscall proxy server on `url`, announcing the kernel as
    /// `ostype`/`osrelease`/`machine` in its banner (what the kernel's
    /// rump_init_server passes). EBUSY if one already runs; socket errors
    /// as NetBSD numbers (EADDRINUSE = 48). The corresponding C function is
    /// `rumpuser_sp_init`. Call it from outside the kernel (no virtual CPU
    /// held), as a host starting a server does.
    public func startSyscallProxy(
        _ url: SyscallProxyURL, ostype: String = "NetBSD", osrelease: String = "10.0", machine: String = "amd64"
    ) throws(NetBSDErrno) {
        let rv = url.description.withCString { u in
            ostype.withCString { o in
                osrelease.withCString { r in machine.withCString { m in startProxyServer(u, o, r, m, holdingCPU: false) } }
            }
        }
        if rv != 0 { throw NetBSDErrno(rawValue: rv) }
    }

    /// Stops the server: closes the listening socket (removing a unix
    /// socket's file) and disconnects every client. The corresponding C
    /// function is `rumpuser_sp_fini`.
    public func stopSyscallProxy() {
        rumpuserSpFini(nil)
    }
}
