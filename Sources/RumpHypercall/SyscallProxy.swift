// rumpuser_sp_*: the syscall proxy hypercalls (NetBSD rumpuser(3), "SYSCALL
// PROXY"; the server is SyscallProxyServer.swift, the wire format
// SyscallProxyWire.swift).
//
// The rump kernel calls rumpuser_sp_init from rump_init_server(url). The
// copy and mmap calls come from a system call running on a proxy worker
// thread, with the client's cookie (the first argument the kernel got in
// hyp_lwproc_rfork); they release the CPU while the client answers.

import CRumpUser

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Starts the server: parses `url` (unix://path or tcp://addr:port), binds
/// and listens, and starts the server thread. Errors: the URL's (EINVAL,
/// ERANGE, ENAMETOOLONG, EOPNOTSUPP), the socket's (EADDRINUSE = 48, …), and
/// EBUSY when a server already runs.
@_spi(RumpUserABI) @_cdecl("rumpuser_sp_init")
public func rumpuserSpInit(
    _ url: UnsafePointer<CChar>?, _ ostype: UnsafePointer<CChar>?, _ osrelease: UnsafePointer<CChar>?,
    _ machine: UnsafePointer<CChar>?
) -> Int32 {
    startProxyServer(url, ostype, osrelease, machine, holdingCPU: true)
}

/// rumpuser_sp_init's body; `holdingCPU` is false for callers outside the
/// kernel (the Swift API), which have no CPU to release while they wait.
func startProxyServer(
    _ url: UnsafePointer<CChar>?, _ ostype: UnsafePointer<CChar>?, _ osrelease: UnsafePointer<CChar>?,
    _ machine: UnsafePointer<CChar>?, holdingCPU: Bool
) -> Int32 {
    guard let url else { return NetBSDErrno.EINVAL.rawValue }
    ProxyServer.lock.lock()
    defer { ProxyServer.lock.unlock() }
    if let previous = ProxyServer.current {
        guard previous.stopping || previous.finished else { return NetBSDErrno.EBUSY.rawValue }
        // A server stopped by rumpuser_sp_fini: wait until its thread has
        // closed its sockets and disconnected its clients.
        if !previous.finished {
            let nlocks = holdingCPU ? crumpuser_unschedule(nil) : 0
            while !previous.finished { ProxyServer.finishedCondition.wait(ProxyServer.lock) }
            if holdingCPU {
                // Retaken without the server lock held: the upcall may block.
                ProxyServer.lock.unlock()
                crumpuser_schedule(nlocks, nil)
                ProxyServer.lock.lock()
            }
        }
        // Another thread may have replaced it while the CPU was retaken.
        guard ProxyServer.current === previous else { return NetBSDErrno.EBUSY.rawValue }
        close(previous.wakeWrite)
        ProxyServer.current = nil
    }
    let address: ProxyAddress
    switch ProxyAddress.parse(url) {
    case .success(let parsed): address = parsed
    case .failure(let error): return error.rawValue
    }
    let listenFD: Int32
    switch address.listen(backlog: Int32(ProxyWire.maxClients)) {
    case .success(let fd): listenFD = fd
    case .failure(let error): return error.rawValue
    }
    var pipeEnds: [Int32] = [0, 0]
    guard pipe(&pipeEnds) == 0 else {
        let error = netbsdErrnoFromCurrentHostErrno()
        close(listenFD)
        address.removeSocketFile()
        return error
    }
    for end in pipeEnds {
        _ = fcntl(end, F_SETFD, FD_CLOEXEC)
        _ = fcntl(end, F_SETFL, O_NONBLOCK)
    }
    func text(_ pointer: UnsafePointer<CChar>?) -> String { pointer.map { String(cString: $0) } ?? "" }
    let server = ProxyServer(address: address, listenFD: listenFD, wakeRead: pipeEnds[0], wakeWrite: pipeEnds[1],
                             banner: ProxyServer.makeBanner(text(ostype), text(osrelease), text(machine)))
    let context = Unmanaged.passRetained(server).toOpaque()
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
    defer { pthread_attr_destroy(&attributes) }
    var thread = pthread_t()
    let rv = pthread_create(&thread, &attributes, { context in
        let server = Unmanaged<ProxyServer>.fromOpaque(context!).takeRetainedValue()
        server.run()
        return nil
    }, context)
    guard rv == 0 else {
        Unmanaged<ProxyServer>.fromOpaque(context).release()
        close(listenFD)
        close(pipeEnds[0])
        close(pipeEnds[1])
        address.removeSocketFile()
        return netbsdErrno(fromHost: rv)
    }
    ProxyServer.current = server
    return 0
}

private let copyFault = NetBSDErrno.EFAULT.rawValue

/// Asks the client for `length` bytes at its address `remote`. A string
/// copy takes what the client sends (up to `length`, its NUL included) and
/// stores the count in `length`. Any failure (the client gone, a malformed
/// or short response) is EFAULT, as in NetBSD.
private func proxyCopyin(
    _ cookie: UnsafeMutableRawPointer?, _ remote: UnsafeRawPointer?, _ local: UnsafeMutableRawPointer?,
    _ length: inout Int, string: Bool
) -> Int32 {
    guard let cookie else { return copyFault }
    guard length > 0 else { return 0 }
    guard let local else { return copyFault }
    let client = ProxyClient.from(cookie: cookie)
    var copyData = (UInt64(length), UInt64(UInt(bitPattern: remote)))
    let reply = withUnsafeBytes(of: &copyData) { payload in
        withCPUReleased { client.call(string ? .copyinstr : .copyin, payload: payload, limit: length) }
    }
    defer { free(reply.data) }
    guard reply.error == 0 else { return copyFault }
    guard string ? reply.length <= length : reply.length == length else { return copyFault }
    if reply.length > 0, let data = reply.data { memcpy(local, data, reply.length) }
    if string { length = reply.length }
    return 0
}

@_spi(RumpUserABI) @_cdecl("rumpuser_sp_copyin")
public func rumpuserSpCopyin(_ client: UnsafeMutableRawPointer?, _ from: UnsafeRawPointer?, _ to: UnsafeMutableRawPointer?, _ length: Int) -> Int32 {
    var count = length
    return proxyCopyin(client, from, to, &count, string: false)
}

@_spi(RumpUserABI) @_cdecl("rumpuser_sp_copyinstr")
public func rumpuserSpCopyinstr(
    _ client: UnsafeMutableRawPointer?, _ from: UnsafeRawPointer?, _ to: UnsafeMutableRawPointer?, _ length: UnsafeMutablePointer<Int>?
) -> Int32 {
    guard let length else { return copyFault }
    return proxyCopyin(client, from, to, &length.pointee, string: true)
}

/// Sends `length` bytes to the client's address `remote`; the client does
/// not answer. EFAULT when the client cannot be reached.
private func proxyCopyout(
    _ cookie: UnsafeMutableRawPointer?, _ local: UnsafeRawPointer?, _ remote: UnsafeMutableRawPointer?, _ length: Int,
    string: Bool
) -> Int32 {
    guard let cookie else { return copyFault }
    guard length > 0 else { return 0 }
    guard let local else { return copyFault }
    let client = ProxyClient.from(cookie: cookie)
    var copyData = (UInt64(length), UInt64(UInt(bitPattern: remote)))
    let rv = withUnsafeBytes(of: &copyData) { header in
        withCPUReleased {
            client.post(string ? .copyoutstr : .copyout, [header, UnsafeRawBufferPointer(start: local, count: length)])
        }
    }
    return rv == 0 ? 0 : copyFault
}

@_spi(RumpUserABI) @_cdecl("rumpuser_sp_copyout")
public func rumpuserSpCopyout(_ client: UnsafeMutableRawPointer?, _ from: UnsafeRawPointer?, _ to: UnsafeMutableRawPointer?, _ length: Int) -> Int32 {
    proxyCopyout(client, from, to, length, string: false)
}

@_spi(RumpUserABI) @_cdecl("rumpuser_sp_copyoutstr")
public func rumpuserSpCopyoutstr(
    _ client: UnsafeMutableRawPointer?, _ from: UnsafeRawPointer?, _ to: UnsafeMutableRawPointer?, _ length: UnsafeMutablePointer<Int>?
) -> Int32 {
    guard let length else { return copyFault }
    return proxyCopyout(client, from, to, length.pointee, string: true)
}

/// Has the client map `length` bytes of anonymous memory; its address in
/// the client goes to `address`. ENOMEM when the client could not map,
/// EFAULT when it cannot be reached.
@_spi(RumpUserABI) @_cdecl("rumpuser_sp_anonmmap")
public func rumpuserSpAnonmmap(_ client: UnsafeMutableRawPointer?, _ length: Int, _ address: UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int32 {
    guard let client, let address else { return copyFault }
    let proxyClient = ProxyClient.from(cookie: client)
    var size = UInt64(length)
    let reply = withUnsafeBytes(of: &size) { payload in
        withCPUReleased { proxyClient.call(.anonmmap, payload: payload, limit: 8) }
    }
    defer { free(reply.data) }
    guard reply.error == 0, reply.length == 8, let data = reply.data else { return copyFault }
    let mapped = data.loadUnaligned(as: UInt.self)
    guard mapped != 0 else { return NetBSDErrno.ENOMEM.rawValue }
    address.pointee = UnsafeMutableRawPointer(bitPattern: mapped)
    return 0
}

/// Has the client raise `signal` (a NetBSD number; the client translates).
@_spi(RumpUserABI) @_cdecl("rumpuser_sp_raise")
public func rumpuserSpRaise(_ client: UnsafeMutableRawPointer?, _ signal: Int32) -> Int32 {
    guard let client else { return NetBSDErrno.ENOTCONN.rawValue }
    let proxyClient = ProxyClient.from(cookie: client)
    return withCPUReleased { proxyClient.post(.raise, argument: UInt32(bitPattern: signal), []) }
}

/// The kernel is going down: answers the system call the calling thread
/// runs for `client` (if any) with success, since it will not return, and
/// stops the server (a unix socket's file is removed at once; the server
/// thread then closes the listening socket and disconnects the clients).
/// Does not wait for that; a later rumpuser_sp_init may start a new
/// server.
@_spi(RumpUserABI) @_cdecl("rumpuser_sp_fini")
public func rumpuserSpFini(_ argument: UnsafeMutableRawPointer?) {
    if let argument {
        let client = ProxyClient.from(cookie: argument)
        let me = UInt(bitPattern: Int(bitPattern: UInt(pthread_self())))
        client.mutex.lock()
        let request = client.syscallsInFlight[me]
        if let request { client.answered.insert(request) }
        client.mutex.unlock()
        if let request { client.sendSyscallResponse(request, error: 0, retval: (0, 0)) }
    }
    ProxyServer.lock.lock()
    let server = ProxyServer.current
    if let server, !server.stopping {
        server.stopping = true
        // Removed here too, as NetBSD does: the process may exit before
        // the server thread gets to it.
        server.address.removeSocketFile()
        server.wake()
    }
    ProxyServer.lock.unlock()
}
