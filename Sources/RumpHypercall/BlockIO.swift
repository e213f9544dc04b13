// rumpuser(3) "Files and I/O": rumpuser_bio, asynchronous block I/O whose
// completion (biodone) runs on a worker thread holding a rump kernel CPU.

import CRumpUser

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

struct BioRequest {
    var fd: Int32
    var op: Int32
    var data: UnsafeMutableRawPointer?
    var length: Int
    var offset: Int64
    var done: rump_biodone_fn
    var argument: UnsafeMutableRawPointer?
    // Filled in by the worker.
    var transferred: Int = 0
    var error: Int32 = 0
}

/// Performs the transfer of `request` (CPU already released by the caller),
/// retrying short transfers; records bytes moved and the NetBSD error.
func performBio(_ request: inout BioRequest) {
    var done = 0
    var error: Int32 = 0
    let isRead = request.op & RUMPUSER_BIO_READ != 0
    while done < request.length {
        let chunk = isRead
            ? pread(request.fd, request.data! + done, request.length - done, off_t(request.offset) + off_t(done))
            : pwrite(request.fd, request.data! + done, request.length - done, off_t(request.offset) + off_t(done))
        if chunk < 0 {
            if crumpuser_errno() == EINTR { continue }
            error = crumpuser_errno()
            break
        }
        if chunk == 0 { break }  // end of file
        done += chunk
    }
    if error == 0, !isRead, request.op & RUMPUSER_BIO_SYNC != 0, fdatasync(request.fd) != 0 {
        error = crumpuser_errno()
    }
    request.transferred = done
    request.error = netbsdErrno(fromHost: error)
}

/// The queue between rumpuser_bio and the worker. Submitters never wait for
/// room (the queue grows), so submitting releases the CPU only when the
/// queue's mutex is momentarily busy.
final class BioQueue: @unchecked Sendable {
    static let shared = BioQueue()

    /// Requests completed per schedule of the worker's CPU.
    static let completionBatch = 16

    private let mutex = HostMutex()
    private let workAvailable = HostCondition()
    private var pending: [BioRequest] = []
    private var started = false
    /// RUMP_THREADS=0 asks for synchronous I/O in the caller's thread.
    let threaded: Bool

    private init() {
        if let value = getenv("RUMP_THREADS") {
            threaded = value.pointee != 0x30  // "0"
        } else {
            threaded = true
        }
        pending.reserveCapacity(256)
    }

    func submit(_ request: BioRequest) {
        mutex.lockReleasingCPUIfBusy()
        if !started {
            started = true
            startWorker()
        }
        pending.append(request)
        workAvailable.signal()
        mutex.unlock()
    }

    private func startWorker() {
        var thread = pthread_t()
        let rv = pthread_create(&thread, nil, { _ in
            BioQueue.shared.workerLoop()
        }, nil)
        noFail(rv, "cannot create the bio worker thread")
        _ = crumpuser_set_thread_name(thread, "rumpuser_bio")
        pthread_detach(thread)
    }

    private func workerLoop() -> Never {
        // Give this host thread its own lwp so that biodone runs in one.
        crumpuser_hyp_schedule()
        _ = crumpuser_hyp_newlwp(0)
        crumpuser_hyp_unschedule()

        var batch: [BioRequest] = []
        batch.reserveCapacity(256)
        while true {
            mutex.lock()
            while pending.isEmpty { workAvailable.wait(mutex) }
            swap(&batch, &pending)
            mutex.unlock()

            var first = 0
            while first < batch.count {
                let end = min(first + BioQueue.completionBatch, batch.count)
                for index in first..<end { performBio(&batch[index]) }
                crumpuser_schedule(0, nil)
                for index in first..<end {
                    let request = batch[index]
                    request.done(request.argument, request.transferred, request.error)
                }
                _ = crumpuser_unschedule(nil)
                first = end
            }
            batch.removeAll(keepingCapacity: true)
        }
    }
}

/// Starts a block transfer and returns; `biodone(donearg, bytes, error)` is
/// called later on the bio worker thread, scheduled on a virtual CPU.
@_spi(RumpUserABI) @_cdecl("rumpuser_bio")
public func rumpuserBio(
    _ fd: Int32, _ op: Int32, _ data: UnsafeMutableRawPointer?, _ length: Int, _ offset: Int64,
    _ biodone: rump_biodone_fn?, _ donearg: UnsafeMutableRawPointer?
) {
    guard let biodone else { hypervisorPanic("rumpuser_bio without biodone") }
    var request = BioRequest(fd: fd, op: op, data: data, length: length, offset: offset, done: biodone, argument: donearg)
    let queue = BioQueue.shared
    if queue.threaded {
        queue.submit(request)
    } else {
        withCPUReleased { performBio(&request) }
        biodone(donearg, request.transferred, request.error)
    }
}
