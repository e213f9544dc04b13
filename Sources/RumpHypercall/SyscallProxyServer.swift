// The syscall proxy server (NetBSD rumpuser_sp.c's role): remote clients
// connect over a unix or tcp socket, get a process of their own in the rump
// kernel, and send system calls that run on worker threads; while a system
// call runs, the kernel reaches the client's memory through reverse
// requests (copyin, copyout, anonmmap, raise).
//
// Threads: one server thread polls the listening socket and every client,
// reads frames, answers handshakes and hands system calls to a pool of
// worker threads (grown on demand up to 128, at most 16 kept idle). Only the
// server thread reads from a client and only it disconnects one; any thread
// may send (one frame at a time per client). Every host wait happens with no
// virtual CPU held; every upcall runs between hyp_schedule/hyp_unschedule.

import CRumpUser

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: - Upcalls, each with a CPU of its own (the server's threads hold none)

enum ProxyKernel {
    static func switchLWP(_ lwp: OpaquePointer?) {
        crumpuser_hyp_schedule()
        crumpuser_hyp_switch(lwp)
        crumpuser_hyp_unschedule()
    }

    static func releaseLWP() {
        crumpuser_hyp_schedule()
        crumpuser_hyp_release()
        crumpuser_hyp_unschedule()
    }

    static func rfork(_ client: UnsafeMutableRawPointer, flags: Int32, name: UnsafePointer<CChar>?) -> Int32 {
        crumpuser_hyp_schedule()
        let rv = crumpuser_hyp_rfork(client, flags, name)
        crumpuser_hyp_unschedule()
        return rv
    }

    static func newLWP(_ pid: pid_t) -> Int32 {
        crumpuser_hyp_schedule()
        let rv = crumpuser_hyp_newlwp(pid)
        crumpuser_hyp_unschedule()
        return rv
    }

    static func currentLWP() -> OpaquePointer? {
        crumpuser_hyp_schedule()
        let lwp = crumpuser_hyp_curlwp()
        crumpuser_hyp_unschedule()
        return lwp
    }

    static func processID() -> pid_t {
        crumpuser_hyp_schedule()
        let pid = crumpuser_hyp_getpid()
        crumpuser_hyp_unschedule()
        return pid
    }

    static func lwpExit() {
        crumpuser_hyp_schedule()
        crumpuser_hyp_lwpexit()
        crumpuser_hyp_unschedule()
    }

    static func execNotify(_ name: UnsafePointer<CChar>) {
        crumpuser_hyp_schedule()
        crumpuser_hyp_execnotify(name)
        crumpuser_hyp_unschedule()
    }

    static func syscall(_ number: Int32, _ arguments: UnsafeMutableRawPointer?, _ retval: UnsafeMutablePointer<Int>) -> Int32 {
        crumpuser_hyp_schedule()
        let rv = crumpuser_hyp_syscall(number, arguments, retval)
        crumpuser_hyp_unschedule()
        return rv
    }
}

// MARK: - One connected client

/// A reverse request waiting for the client's response.
final class ResponseWait {
    /// Largest response body accepted (a longer one is a protocol error).
    let limit: Int
    var done = false
    var error: Int32 = 0
    var data: UnsafeMutableRawPointer?
    var length = 0

    init(limit: Int) { self.limit = limit }
}

final class ProxyClient: @unchecked Sendable {
    enum State { case new, running, dying }

    let fd: Int32
    let mutex = HostMutex()
    let changed = HostCondition()
    private let sendLock = HostMutex()

    /// Most jobs (system calls) one client may have queued or running; more
    /// are refused with ERROR TRYAGAIN, which rumpclient answers by sending
    /// the request again. NetBSD has no bound.
    static let maximumJobs = 64

    // Under `mutex`.
    var state = State.new
    /// The connection's own reference plus one per queued or running job.
    var references = 1
    var nextRequest: UInt64 = 1
    var waits: [UInt64: ResponseWait] = [:]
    var inExec = false
    /// Client request numbers of system calls running, by host thread.
    var syscallsInFlight: [UInt: UInt64] = [:]
    /// System calls answered early by rumpuser_sp_fini.
    var answered: Set<UInt64> = []

    // Written by the server thread before the client runs.
    var mainLWP: OpaquePointer?
    var pid: pid_t = 0

    // Reader state: server thread only.
    let headerBytes = UnsafeMutableRawPointer.allocate(byteCount: ProxyWire.headerSize, alignment: 8)
    var headerFilled = 0
    var header = ProxyHeader(length: 0, request: 0, frameClass: .request, type: 0)
    var body: UnsafeMutableRawPointer?
    var bodyLength = 0
    var bodyFilled = 0
    var connected = true

    init(fd: Int32) { self.fd = fd }

    deinit {
        headerBytes.deallocate()
        free(body)
        for lock in [mutex, sendLock] {
            pthread_mutex_destroy(lock.raw)
            lock.raw.deallocate()
        }
        pthread_cond_destroy(changed.raw)
        changed.raw.deallocate()
    }

    /// The `void *` the kernel is given for this client (rfork's first
    /// argument, and the first argument of every rumpuser_sp_* call).
    var cookie: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }

    static func from(cookie: UnsafeMutableRawPointer) -> ProxyClient {
        Unmanaged<ProxyClient>.fromOpaque(cookie).takeUnretainedValue()
    }

    // MARK: Sending

    /// Sends one frame (header then `parts`) whole. Waits at most 30 s for
    /// room in the socket; a client that does not read for that long is shut
    /// down. Returns 0 or a NetBSD errno.
    func send(_ header: ProxyHeader, _ parts: [UnsafeRawBufferPointer] = [], patience: Int32 = 30_000) -> Int32 {
        var headerStorage = (UInt64(0), UInt64(0), UInt64(0))
        return withUnsafeMutableBytes(of: &headerStorage) { headerBuffer in
            header.encode(into: headerBuffer.baseAddress!)
            var vectors = [iovec(iov_base: headerBuffer.baseAddress, iov_len: ProxyWire.headerSize)]
            for part in parts where part.count > 0 {
                vectors.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: part.baseAddress), iov_len: part.count))
            }
            sendLock.lock()
            defer { sendLock.unlock() }
            return vectors.withUnsafeMutableBufferPointer { sendAll($0, patience: patience) }
        }
    }

    /// Sends raw bytes (the banner).
    func sendRaw(_ bytes: UnsafeRawBufferPointer) -> Int32 {
        var vector = [iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)]
        sendLock.lock()
        defer { sendLock.unlock() }
        return vector.withUnsafeMutableBufferPointer { sendAll($0, patience: ProxyClient.serverPatience) }
    }

    /// How long the server thread waits for room in a client's socket: it
    /// serves everyone, so a client that does not read is dropped sooner.
    static let serverPatience: Int32 = 5_000

    private func sendAll(_ vectors: UnsafeMutableBufferPointer<iovec>, patience: Int32) -> Int32 {
        var first = 0
        while first < vectors.count {
            var message = msghdr()
            message.msg_iov = vectors.baseAddress! + first
            message.msg_iovlen = vectors.count - first
            let sent = sendmsg(fd, &message, Int32(MSG_NOSIGNAL))
            if sent < 0 {
                let error = crumpuser_errno()
                if error == EINTR { continue }
                if error == EAGAIN {
                    var waiting = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                    let ready = poll(&waiting, 1, patience)
                    if ready == 0 {
                        shutdown(fd, Int32(SHUT_RDWR))
                        return NetBSDErrno.ETIMEDOUT.rawValue
                    }
                    continue
                }
                if error == EPIPE || error == ECONNRESET || error == ENOTCONN { return NetBSDErrno.ENOTCONN.rawValue }
                return netbsdErrno(fromHost: error)
            }
            var remaining = sent
            while first < vectors.count, remaining >= vectors[first].iov_len {
                remaining -= vectors[first].iov_len
                first += 1
            }
            if remaining > 0 {
                vectors[first].iov_base += remaining
                vectors[first].iov_len -= remaining
            }
        }
        return 0
    }

    /// An ERROR frame (sent by the server thread).
    func sendError(_ request: UInt64, _ code: ProxyWire.ErrorCode) {
        _ = send(ProxyHeader(length: ProxyWire.headerSize, request: request, frameClass: .error, type: 0, argument: code.rawValue),
                 patience: ProxyClient.serverPatience)
    }

    func sendHandshakeResponse(_ request: UInt64, error: Int32) {
        var value = error
        withUnsafeBytes(of: &value) {
            _ = send(ProxyHeader(length: ProxyWire.headerSize + 4, request: request, frameClass: .response,
                                 type: ProxyWire.FrameType.handshake.rawValue), [$0], patience: ProxyClient.serverPatience)
        }
    }

    func sendSyscallResponse(_ request: UInt64, error: Int32, retval: (Int, Int)) {
        var response = (Int64(UInt32(bitPattern: error)), Int64(retval.0), Int64(retval.1))
        withUnsafeBytes(of: &response) {
            _ = send(ProxyHeader(length: ProxyWire.headerSize + ProxyWire.syscallResponseSize, request: request,
                                 frameClass: .response, type: ProxyWire.FrameType.syscall.rawValue), [$0])
        }
    }

    // MARK: Reverse requests (called on worker threads, CPU released)

    /// Sends a request and waits for its response. The returned data (if
    /// any) is the caller's to free.
    func call(_ type: ProxyWire.FrameType, payload: UnsafeRawBufferPointer, limit: Int)
        -> (error: Int32, data: UnsafeMutableRawPointer?, length: Int)
    {
        let wait = ResponseWait(limit: limit)
        mutex.lock()
        guard state != .dying else {
            mutex.unlock()
            return (NetBSDErrno.ENOTCONN.rawValue, nil, 0)
        }
        let request = nextRequest
        nextRequest &+= 1
        waits[request] = wait
        mutex.unlock()

        let sent = send(ProxyHeader(length: ProxyWire.headerSize + payload.count, request: request,
                                    frameClass: .request, type: type.rawValue), [payload])
        mutex.lock()
        if sent == 0 {
            while !wait.done && state != .dying { changed.wait(mutex) }
        }
        waits.removeValue(forKey: request)
        mutex.unlock()
        if !wait.done {
            return (sent != 0 ? sent : NetBSDErrno.ENOTCONN.rawValue, nil, 0)
        }
        return (wait.error, wait.data, wait.length)
    }

    /// A request the client does not answer (copyout, raise).
    func post(_ type: ProxyWire.FrameType, argument: UInt32 = 0, _ parts: [UnsafeRawBufferPointer]) -> Int32 {
        mutex.lock()
        let dying = state == .dying
        let request = nextRequest
        nextRequest &+= 1
        mutex.unlock()
        if dying { return NetBSDErrno.ENOTCONN.rawValue }
        let length = parts.reduce(ProxyWire.headerSize) { $0 + $1.count }
        return send(ProxyHeader(length: length, request: request, frameClass: .request, type: type.rawValue, argument: argument), parts)
    }

    // MARK: Lifetime

    func retain() {
        mutex.lock()
        references += 1
        mutex.unlock()
    }

    /// Drops a reference; the last one releases the client's process in the
    /// kernel, closes the socket and frees the client.
    func release() {
        mutex.lock()
        references -= 1
        let remaining = references
        if inExec && remaining <= 2 { changed.broadcast() }
        mutex.unlock()
        guard remaining == 0 else { return }
        if let mainLWP {
            ProxyKernel.switchLWP(mainLWP)
            ProxyKernel.releaseLWP()
            self.mainLWP = nil
        }
        close(fd)
        Unmanaged.passUnretained(self).release()
    }
}

// MARK: - Worker threads

final class ProxyWorkers: @unchecked Sendable {
    enum Kind { case syscall, exec }
    struct Job {
        let client: ProxyClient
        let header: ProxyHeader
        let body: UnsafeMutableRawPointer?
        let bodyLength: Int
        let kind: Kind
    }

    static let shared = ProxyWorkers()
    static let maximum = 128
    static let keptIdle = 16

    private let mutex = HostMutex()
    private let available = HostCondition()
    private var queue: [Job] = []
    private var idle = 0
    private var count = 0

    /// Queues a job (the caller took a client reference for it). False if
    /// no worker exists and none can be created.
    func submit(_ job: Job) -> Bool {
        mutex.lock()
        defer { mutex.unlock() }
        queue.append(job)
        if idle >= queue.count {
            available.signal()
            return true
        }
        if count < ProxyWorkers.maximum {
            var attributes = pthread_attr_t()
            pthread_attr_init(&attributes)
            pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
            var thread = pthread_t()
            let rv = pthread_create(&thread, &attributes, { _ in
                ProxyWorkers.shared.work()
                return nil
            }, nil)
            pthread_attr_destroy(&attributes)
            if rv == 0 {
                count += 1
                return true
            }
        }
        if count == 0 {
            queue.removeLast()
            return false
        }
        return true
    }

    private func work() {
        _ = crumpuser_set_thread_name(pthread_self(), "rumpsp_worker")
        while true {
            mutex.lock()
            while queue.isEmpty {
                if idle >= ProxyWorkers.keptIdle {
                    count -= 1
                    mutex.unlock()
                    return
                }
                idle += 1
                available.wait(mutex)
                idle -= 1
            }
            let job = queue.removeFirst()
            mutex.unlock()
            switch job.kind {
            case .syscall: runSyscall(job)
            case .exec: runExec(job)
            }
            free(job.body)
            job.client.release()
        }
    }

    private func runSyscall(_ job: Job) {
        let client = job.client
        let request = job.header.request
        var retval = (0, 0)
        var error = ProxyKernel.newLWP(client.pid)
        if error != 0 {
            retval.0 = -1
        } else {
            let me = UInt(bitPattern: Int(bitPattern: UInt(pthread_self())))
            client.mutex.lock()
            client.syscallsInFlight[me] = request
            client.mutex.unlock()
            withUnsafeMutableBytes(of: &retval) {
                error = ProxyKernel.syscall(Int32(bitPattern: job.header.argument), job.body,
                                            $0.baseAddress!.assumingMemoryBound(to: Int.self))
            }
            client.mutex.lock()
            client.syscallsInFlight.removeValue(forKey: me)
            let alreadyAnswered = client.answered.remove(request) != nil
            client.mutex.unlock()
            ProxyKernel.releaseLWP()
            if alreadyAnswered { return }
        }
        client.sendSyscallResponse(request, error: error, retval: retval)
    }

    /// HANDSHAKE EXEC, second half: waits until the client's other jobs
    /// are done, then tells the kernel the new program name.
    private func runExec(_ job: Job) {
        let client = job.client
        client.mutex.lock()
        while client.references > 2 { client.changed.wait(client.mutex) }
        client.mutex.unlock()
        let name = job.body?.assumingMemoryBound(to: CChar.self)
        if let mainLWP = client.mainLWP {
            ProxyKernel.switchLWP(mainLWP)
            if let name { ProxyKernel.execNotify(name) } else { "".withCString { ProxyKernel.execNotify($0) } }
            ProxyKernel.switchLWP(nil)
        }
        client.mutex.lock()
        client.inExec = false
        client.mutex.unlock()
        client.sendHandshakeResponse(job.header.request, error: 0)
    }
}

// MARK: - The server

/// An lwp forked ahead for a client about to fork (RUMPSP_PREFORK), claimed
/// by the child's HANDSHAKE FORK with the same 128-bit key.
struct Prefork {
    var key: (UInt64, UInt64)
    var lwp: OpaquePointer
    var owner: ObjectIdentifier
}

final class ProxyServer: @unchecked Sendable {
    let address: ProxyAddress
    let listenFD: Int32
    let wakeRead: Int32
    let wakeWrite: Int32
    let banner: [UInt8]

    // Server thread only.
    private var clients: [ProxyClient] = []

    // Under `ProxyServer.lock`.
    var stopping = false
    /// The server thread has closed everything (it is detached).
    var finished = false
    static let lock = HostMutex()
    static let finishedCondition = HostCondition()
    nonisolated(unsafe) static var current: ProxyServer?
    nonisolated(unsafe) static var preforks: [Prefork] = []

    init(address: ProxyAddress, listenFD: Int32, wakeRead: Int32, wakeWrite: Int32, banner: [UInt8]) {
        self.address = address
        self.listenFD = listenFD
        self.wakeRead = wakeRead
        self.wakeWrite = wakeWrite
        self.banner = banner
    }

    /// "RUMPSP-0.4-ostype-osrelease/machine\n", at most 95 bytes.
    static func makeBanner(_ ostype: String, _ osrelease: String, _ machine: String) -> [UInt8] {
        var bytes = Array("RUMPSP-\(ProxyWire.protocolMajor).\(ProxyWire.protocolMinor)-\(ostype)-\(osrelease)/\(machine)".utf8)
        if bytes.count > ProxyWire.maxBanner - 2 { bytes.removeLast(bytes.count - (ProxyWire.maxBanner - 2)) }
        bytes.append(UInt8(ascii: "\n"))
        return bytes
    }

    func wake() {
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
    }

    // MARK: Main loop

    func run() {
        _ = crumpuser_set_thread_name(pthread_self(), "rumpsp_server")
        var descriptors: [pollfd] = []
        loop: while true {
            descriptors.removeAll(keepingCapacity: true)
            descriptors.append(pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0))
            descriptors.append(pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0))
            for client in clients { descriptors.append(pollfd(fd: client.fd, events: Int16(POLLIN), revents: 0)) }
            let ready = poll(&descriptors, nfds_t(descriptors.count), -1)
            if ready < 0 {
                if crumpuser_errno() == EINTR { continue }
                break
            }
            if descriptors[0].revents != 0 {
                var drain = [UInt8](repeating: 0, count: 64)
                _ = read(wakeRead, &drain, drain.count)
                ProxyServer.lock.lock()
                let stop = stopping
                ProxyServer.lock.unlock()
                if stop { break loop }
            }
            let polled = clients
            for (index, client) in polled.enumerated() where descriptors[index + 2].revents != 0 {
                service(client)
            }
            if descriptors[1].revents & Int16(POLLIN) != 0 { accept() }
        }
        close(listenFD)
        ProxyServer.lock.lock()
        let removed = stopping  // rumpuser_sp_fini removed the file already
        ProxyServer.lock.unlock()
        if !removed { address.removeSocketFile() }
        for client in clients { disconnect(client) }
        close(wakeRead)
        ProxyServer.lock.lock()
        finished = true
        ProxyServer.finishedCondition.broadcast()
        ProxyServer.lock.unlock()
    }

    private func accept() {
        let fd = Glibc.accept(listenFD, nil, nil)
        guard fd >= 0 else { return }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(fd, F_SETFL, O_NONBLOCK)
        guard clients.count < ProxyWire.maxClients - 1 else {
            close(fd)  // NetBSD: no slot, the connection is closed at once
            return
        }
        if address.isTCP {
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), 1 /* TCP_NODELAY */, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        let client = ProxyClient(fd: fd)
        _ = Unmanaged.passRetained(client)  // released by the last reference
        clients.append(client)
        let sent = banner.withUnsafeBytes { client.sendRaw($0) }
        if sent != 0 { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    // MARK: Reading frames

    /// Reads what the client has sent (at most 16 frames, so one client
    /// cannot starve the others) and handles each complete frame.
    private func service(_ client: ProxyClient) {
        var frames = 0
        while client.connected && frames < 16 {
            switch readFrame(client) {
            case .incomplete: return
            case .closed:
                disconnect(client)
                return
            case .frame:
                frames += 1
                let header = client.header
                let body = client.body
                let length = client.bodyLength
                client.body = nil
                client.headerFilled = 0
                client.bodyFilled = 0
                client.bodyLength = 0
                dispatch(client, header, body, length)
            }
        }
    }

    private enum ReadOutcome { case incomplete, frame, closed }

    private func readFrame(_ client: ProxyClient) -> ReadOutcome {
        while client.headerFilled < ProxyWire.headerSize {
            let n = read(client.fd, client.headerBytes + client.headerFilled, ProxyWire.headerSize - client.headerFilled)
            if n == 0 { return .closed }
            if n < 0 {
                let error = crumpuser_errno()
                if error == EINTR { continue }
                return error == EAGAIN ? .incomplete : .closed
            }
            client.headerFilled += n
            if client.headerFilled < ProxyWire.headerSize { continue }
            let header = ProxyHeader(decoding: client.headerBytes)
            client.header = header
            guard header.length >= UInt64(ProxyWire.headerSize) else {
                // A length shorter than the header: the stream cannot be
                // trusted from here on (NetBSD drops the client too).
                return .closed
            }
            let bodyLength = header.length - UInt64(ProxyWire.headerSize)
            guard bodyLength <= UInt64(bodyLimit(client, header)) else {
                client.sendError(header.request, .malformedRequest)
                return .closed
            }
            client.bodyLength = Int(bodyLength)
            client.bodyFilled = 0
            if bodyLength > 0 {
                // One spare byte so that names can be NUL-terminated in place.
                guard let body = malloc(Int(bodyLength) + 1) else {
                    client.sendError(header.request, .noMemory)
                    return .closed
                }
                client.body = body
            }
        }
        while client.bodyFilled < client.bodyLength {
            let n = read(client.fd, client.body! + client.bodyFilled, client.bodyLength - client.bodyFilled)
            if n == 0 { return .closed }
            if n < 0 {
                let error = crumpuser_errno()
                if error == EINTR { continue }
                return error == EAGAIN ? .incomplete : .closed
            }
            client.bodyFilled += n
        }
        return .frame
    }

    /// Requests are small; a response may carry what its request asked for.
    private func bodyLimit(_ client: ProxyClient, _ header: ProxyHeader) -> Int {
        guard header.frameClass != ProxyWire.FrameClass.request.rawValue else { return ProxyWire.maxRequestBody }
        client.mutex.lock()
        defer { client.mutex.unlock() }
        return client.waits[header.request]?.limit ?? ProxyWire.maxRequestBody
    }

    // MARK: Handling frames

    private func dispatch(_ client: ProxyClient, _ header: ProxyHeader, _ body: UnsafeMutableRawPointer?, _ length: Int) {
        switch ProxyWire.FrameClass(rawValue: header.frameClass) {
        case .response, .error:
            client.mutex.lock()
            if let wait = client.waits.removeValue(forKey: header.request) {
                wait.data = body
                wait.length = length
                if header.frameClass == ProxyWire.FrameClass.error.rawValue {
                    wait.error = ProxyWire.ErrorCode(rawValue: header.argument)?.netbsdErrno ?? NetBSDErrno.EINVAL.rawValue
                    if wait.error == 0 { wait.error = NetBSDErrno.EINVAL.rawValue }
                }
                wait.done = true
                client.changed.broadcast()
                client.mutex.unlock()
            } else {
                client.mutex.unlock()
                free(body)  // a response nobody waits for: dropped
            }
        case .request:
            handleRequest(client, header, body, length)
        case nil:
            client.sendError(header.request, .malformedRequest)
            free(body)
        }
    }

    private func handleRequest(_ client: ProxyClient, _ header: ProxyHeader, _ body: UnsafeMutableRawPointer?, _ length: Int) {
        let type = ProxyWire.FrameType(rawValue: header.type)
        if client.state == .new {
            defer { free(body) }
            guard type == .handshake else {
                refuse(client, header.request, .auth)
                return
            }
            switch ProxyWire.Handshake(rawValue: header.argument) {
            case .guest: handshakeGuest(client, header, body, length)
            case .fork: handshakeFork(client, header, body, length)
            default: refuse(client, header.request, .auth)
            }
            return
        }
        switch type {
        case .syscall:
            schedule(client, header, body, length, .syscall)
        case .prefork:
            free(body)
            prefork(client, header)
        case .handshake:
            guard header.argument == ProxyWire.Handshake.exec.rawValue else {
                free(body)
                refuse(client, header.request, .malformedRequest)
                return
            }
            client.mutex.lock()
            let busy = client.inExec
            if !busy { client.inExec = true }
            client.mutex.unlock()
            guard !busy else {
                free(body)
                refuse(client, header.request, .inExec)
                return
            }
            terminateName(body, length)
            if let mainLWP = client.mainLWP {
                // Tell the kernel the old image's lwps must go; the rest
                // waits for them on a worker.
                ProxyKernel.switchLWP(mainLWP)
                ProxyKernel.lwpExit()
                ProxyKernel.switchLWP(nil)
            }
            schedule(client, header, body, length, .exec)
        default:
            free(body)
            client.sendError(header.request, .malformedRequest)
        }
    }

    /// Sends an error and shuts the connection down (the server thread sees
    /// the end of the stream next and disconnects it).
    private func refuse(_ client: ProxyClient, _ request: UInt64, _ code: ProxyWire.ErrorCode) {
        client.sendError(request, code)
        shutdown(client.fd, Int32(SHUT_RDWR))
    }

    private func terminateName(_ body: UnsafeMutableRawPointer?, _ length: Int) {
        body?.storeBytes(of: 0, toByteOffset: length, as: UInt8.self)
    }

    private func handshakeGuest(_ client: ProxyClient, _ header: ProxyHeader, _ body: UnsafeMutableRawPointer?, _ length: Int) {
        terminateName(body, length)
        let name = body.map { UnsafePointer($0.assumingMemoryBound(to: CChar.self)) }
        let error = name.map { ProxyKernel.rfork(client.cookie, flags: ProxyWire.rforkClearFiles, name: $0) }
            ?? "".withCString { ProxyKernel.rfork(client.cookie, flags: ProxyWire.rforkClearFiles, name: $0) }
        guard error == 0 else {
            refuse(client, header.request, .rforkFailed)
            return
        }
        finishHandshake(client, header, mainLWP: ProxyKernel.currentLWP())
    }

    private func handshakeFork(_ client: ProxyClient, _ header: ProxyHeader, _ body: UnsafeMutableRawPointer?, _ length: Int) {
        guard length == ProxyWire.handshakeForkSize, let body else {
            refuse(client, header.request, .malformedRequest)
            return
        }
        let key = (body.loadUnaligned(fromByteOffset: 0, as: UInt64.self), body.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        let cancel = body.loadUnaligned(fromByteOffset: 16, as: Int32.self) != 0
        ProxyServer.lock.lock()
        let index = ProxyServer.preforks.firstIndex { $0.key == key }
        let claimed = index.map { ProxyServer.preforks.remove(at: $0) }
        ProxyServer.lock.unlock()
        guard let claimed else {
            refuse(client, header.request, .invalidPrefork)
            return
        }
        ProxyKernel.switchLWP(claimed.lwp)
        if cancel {
            ProxyKernel.releaseLWP()
            shutdown(client.fd, Int32(SHUT_RDWR))
            return
        }
        // The prefork process has the parent's files; a second rfork that
        // shares them gives the child a process bound to this connection.
        guard ProxyKernel.rfork(client.cookie, flags: ProxyWire.rforkShareFiles, name: nil) == 0 else {
            ProxyKernel.releaseLWP()
            refuse(client, header.request, .rforkFailed)
            return
        }
        let mainLWP = ProxyKernel.currentLWP()
        ProxyKernel.switchLWP(claimed.lwp)
        ProxyKernel.releaseLWP()
        ProxyKernel.switchLWP(mainLWP)
        finishHandshake(client, header, mainLWP: mainLWP)
    }

    /// With the client's main lwp current on this thread: records it and
    /// the process id, lets go of the lwp and answers the handshake.
    private func finishHandshake(_ client: ProxyClient, _ header: ProxyHeader, mainLWP: OpaquePointer?) {
        let pid = ProxyKernel.processID()
        ProxyKernel.switchLWP(nil)
        client.mutex.lock()
        client.mainLWP = mainLWP
        client.pid = pid
        client.state = .running
        client.mutex.unlock()
        client.sendHandshakeResponse(header.request, error: 0)
    }

    private func prefork(_ client: ProxyClient, _ header: ProxyHeader) {
        client.mutex.lock()
        let inExec = client.inExec
        client.mutex.unlock()
        guard !inExec else {
            refuse(client, header.request, .inExec)
            return
        }
        ProxyKernel.switchLWP(client.mainLWP)
        guard ProxyKernel.rfork(client.cookie, flags: ProxyWire.rforkCopyFiles, name: nil) == 0 else {
            ProxyKernel.switchLWP(nil)
            client.sendError(header.request, .rforkFailed)
            return
        }
        var key = (UInt64(0), UInt64(0))
        withUnsafeMutableBytes(of: &key) { _ = crumpuser_host_getrandom($0.baseAddress, 16, 0, 0) }
        guard let lwp = ProxyKernel.currentLWP() else {
            ProxyKernel.switchLWP(nil)
            client.sendError(header.request, .rforkFailed)
            return
        }
        ProxyKernel.switchLWP(nil)
        ProxyServer.lock.lock()
        ProxyServer.preforks.append(Prefork(key: key, lwp: lwp, owner: ObjectIdentifier(client)))
        ProxyServer.lock.unlock()
        withUnsafeBytes(of: &key) {
            _ = client.send(ProxyHeader(length: ProxyWire.headerSize + ProxyWire.authLength, request: header.request,
                                        frameClass: .response, type: ProxyWire.FrameType.prefork.rawValue), [$0],
                            patience: ProxyClient.serverPatience)
        }
    }

    private func schedule(_ client: ProxyClient, _ header: ProxyHeader, _ body: UnsafeMutableRawPointer?, _ length: Int,
                          _ kind: ProxyWorkers.Kind)
    {
        client.mutex.lock()
        let busy = kind == .syscall && client.references > ProxyClient.maximumJobs
        if !busy { client.references += 1 }
        client.mutex.unlock()
        if busy {
            client.sendError(header.request, .tryAgain)
            free(body)
            return
        }
        let job = ProxyWorkers.Job(client: client, header: header, body: body, bodyLength: length, kind: kind)
        if !ProxyWorkers.shared.submit(job) {
            client.sendError(header.request, .tryAgain)
            free(body)
            client.release()
        }
    }

    // MARK: Disconnecting

    /// The client has gone (or was shut down): wakes its waiting reverse
    /// requests (they fail), tells the kernel its lwps must exit, releases
    /// its unclaimed preforks and drops the connection's reference.
    private func disconnect(_ client: ProxyClient) {
        guard client.connected else { return }
        client.connected = false
        clients.removeAll { $0 === client }
        shutdown(client.fd, Int32(SHUT_RDWR))
        client.mutex.lock()
        client.state = .dying
        client.changed.broadcast()
        let exiting = !client.inExec
        let mainLWP = client.mainLWP
        client.mutex.unlock()
        free(client.body)
        client.body = nil
        if exiting, let mainLWP {
            ProxyKernel.switchLWP(mainLWP)
            ProxyKernel.lwpExit()
            ProxyKernel.switchLWP(nil)
        }
        ProxyServer.lock.lock()
        let owner = ObjectIdentifier(client)
        let abandoned = ProxyServer.preforks.filter { $0.owner == owner }
        ProxyServer.preforks.removeAll { $0.owner == owner }
        ProxyServer.lock.unlock()
        for prefork in abandoned {
            ProxyKernel.switchLWP(prefork.lwp)
            ProxyKernel.releaseLWP()
        }
        client.release()
    }
}
