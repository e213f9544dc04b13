// Files and block I/O hypercalls on the guest (rumpuser(3) "Files and I/O"):
// there is no file system under the hypervisor layer, so the names that open
// are the block devices of the guest configuration (`blk` tags: "blk0",
// "blk1", ... for rumprun-cli -b), mapped in order to the virtio-blk PCI
// functions found at the first open (QEMU places -device entries in order).
// Transfers are whole 512-byte sectors at sector offsets and run through the
// BareMetalKit virtio-blk driver (which polls) without a virtual CPU; bio
// goes through a worker thread that calls biodone holding a CPU.
import BareMetalKit
import CRumpUserGuest
import DeviceInterfaces
import Rumprun

enum GuestBlockDevices {
    typealias Disk = VirtioBlock<VirtioPCIModernTransport<MMIORegisters>, HeapDMAMemory>

    struct OpenDevice {
        var disk: Int
        var writable: Bool
        /// The position RUMPUSER_IOV_NOSEEK transfers use and advance.
        var position: UInt64 = 0
    }

    nonisolated(unsafe) static var disks: [Disk?] = []
    nonisolated(unsafe) static var probed = false
    nonisolated(unsafe) static var open: [OpenDevice?] = []
    nonisolated(unsafe) static var nextTag: UInt64 = 1
    /// Descriptors start here (0-2 look like stdio to C code).
    static var firstDescriptor: Int32 { 3 }
    static var sectorSize: UInt64 { 512 }

    /// Finds and starts the virtio-blk PCI functions (once).
    static func probe() {
        guard !probed else { return }
        probed = true
        let access = PortConfigurationAccess(ports: PortRegisters(base: 0xCF8))
        for function in PCIEnumerator.enumerate(access) where VirtioPCI.deviceType(of: function) == VirtioPCI.blockType {
            do throws(VirtioError) {
                let transport = try VirtioPCIModernTransport(function: function.address, access: access, mapper: IdentityMappedIO())
                disks.append(try VirtioBlock(transport: transport, dma: HeapDMAMemory()))
            } catch {
                Platform.write("rumpuser: a virtio-blk device did not start\n")
                disks.append(nil)
            }
        }
    }

    /// The disk index a configuration tag names, if that disk started.
    static func disk(named name: UnsafePointer<CChar>) -> Int? {
        let key = bytes(of: name)
        let devices = Rumprun.blockDevices
        for index in 0..<devices.count where Array(devices[index].tag.utf8) == key {
            probe()
            return index < disks.count && disks[index] != nil ? index : nil
        }
        return nil
    }

    static func device(_ descriptor: Int32) -> OpenDevice? {
        let index = Int(descriptor - firstDescriptor)
        guard descriptor >= firstDescriptor, index < open.count else { return nil }
        return open[index]
    }

    /// One transfer of whole sectors: (bytes, NetBSD errno). Called with
    /// the virtual CPU released.
    static func transfer(_ descriptor: Int32, write: Bool, buffer: UnsafeMutableRawBufferPointer, offset: UInt64) -> (Int, Int32) {
        guard let file = device(descriptor) else { return (0, NetBSDError.EBADF) }
        if write && !file.writable { return (0, NetBSDError.EBADF) }
        guard offset % sectorSize == 0, UInt64(buffer.count) % sectorSize == 0 else { return (0, NetBSDError.EINVAL) }
        guard buffer.count > 0 else { return (0, 0) }
        nextTag &+= 1
        let request = BlockRequest(operation: write ? .write : .read, sector: offset / sectorSize, buffer: buffer, tag: nextTag)
        do throws(BlockDeviceError) {
            _ = try disks[file.disk]!.perform(request)
            return (buffer.count, 0)
        } catch {
            return (0, errno(of: error))
        }
    }

    static func flush(_ descriptor: Int32) -> Int32 {
        guard let file = device(descriptor) else { return NetBSDError.EBADF }
        nextTag &+= 1
        let request = BlockRequest(operation: .flush, sector: 0, buffer: UnsafeMutableRawBufferPointer(start: nil, count: 0), tag: nextTag)
        do throws(BlockDeviceError) {
            _ = try disks[file.disk]!.perform(request)
            return 0
        } catch {
            return errno(of: error)
        }
    }

    static func errno(of error: BlockDeviceError) -> Int32 {
        switch error {
        case .outOfRange, .misaligned: return NetBSDError.EINVAL
        case .readOnly: return NetBSDError.EROFS
        case .unsupported: return NetBSDError.EOPNOTSUPP
        case .queueFull: return NetBSDError.EAGAIN
        case .deviceError: return NetBSDError.EIO
        }
    }
}

/// Opens a configured block device by its tag; others → ENXIO. CREATE and
/// EXCL cannot make a device: CREATE|EXCL on one → EEXIST.
@_cdecl("rumpuser_open")
public func rumpuserOpen(_ path: UnsafePointer<CChar>?, _ mode: Int32, _ descriptor: UnsafeMutablePointer<Int32>?) -> Int32 {
    guard let path, let descriptor else { return NetBSDError.EINVAL }
    let access = mode & RUMPUSER_OPEN_ACCMODE
    guard access != RUMPUSER_OPEN_ACCMODE else { return NetBSDError.EINVAL }
    return Upcalls.blocking {
        guard let disk = GuestBlockDevices.disk(named: path) else { return NetBSDError.ENXIO }
        if mode & (RUMPUSER_OPEN_CREATE | RUMPUSER_OPEN_EXCL) == RUMPUSER_OPEN_CREATE | RUMPUSER_OPEN_EXCL { return NetBSDError.EEXIST }
        let writable = access != RUMPUSER_OPEN_RDONLY
        if writable && GuestBlockDevices.disks[disk]!.isReadOnly { return NetBSDError.EROFS }
        let file = GuestBlockDevices.OpenDevice(disk: disk, writable: writable)
        if let free = GuestBlockDevices.open.firstIndex(where: { $0 == nil }) {
            GuestBlockDevices.open[free] = file
            descriptor.pointee = Int32(free) + GuestBlockDevices.firstDescriptor
        } else {
            GuestBlockDevices.open.append(file)
            descriptor.pointee = Int32(GuestBlockDevices.open.count - 1) + GuestBlockDevices.firstDescriptor
        }
        return 0
    }
}

/// Flushes a device opened for writing, then forgets the descriptor.
@_cdecl("rumpuser_close")
public func rumpuserClose(_ descriptor: Int32) -> Int32 {
    guard let file = GuestBlockDevices.device(descriptor) else { return NetBSDError.EBADF }
    let error = file.writable ? Upcalls.blocking { GuestBlockDevices.flush(descriptor) } : 0
    GuestBlockDevices.open[Int(descriptor - GuestBlockDevices.firstDescriptor)] = nil
    return error
}

@_cdecl("rumpuser_getfileinfo")
public func rumpuserGetfileinfo(_ path: UnsafePointer<CChar>?, _ size: UnsafeMutablePointer<UInt64>?, _ type: UnsafeMutablePointer<Int32>?) -> Int32 {
    guard let path else { return NetBSDError.EINVAL }
    return Upcalls.blocking {
        guard let disk = GuestBlockDevices.disk(named: path) else { return NetBSDError.ENXIO }
        size?.pointee = GuestBlockDevices.disks[disk]!.sectorCount * GuestBlockDevices.sectorSize
        type?.pointee = RUMPUSER_FT_BLK
        return 0
    }
}

/// Asynchronous block I/O as in NetBSD: `rumpuser_bio` queues the request
/// (never waiting, never releasing the CPU) for one worker thread, which
/// performs transfers without a CPU and then takes one (`hyp_schedule`)
/// once per batch of up to 16 requests to call their `biodone`s. The worker
/// gets its own lwp at start (`hyp_lwproc_newlwp`). Both through the
/// component helpers (`Component`), as any platform thread in the kernel.
enum BlockIOWorker {
    struct Request {
        var descriptor: Int32
        var operation: Int32
        var data: UnsafeMutableRawPointer?
        var length: Int
        var offset: Int64
        var done: rump_biodone_fn?
        var argument: UnsafeMutableRawPointer?
    }

    /// The worker thread: none yet, being created by one submitter (others
    /// only queue), or running.
    enum WorkerState {
        case none
        case starting
        case running(ThreadID)
    }

    nonisolated(unsafe) static var queue: [Request] = []
    nonisolated(unsafe) static var worker = WorkerState.none
    static var batchSize: Int { 16 }

    static func submit(_ request: Request) {
        // Decided under the lock, so two CPUs submitting the first requests
        // at once start one worker between them.
        enum Next {
            case wake(ThreadID)
            case nothing
            case start
        }
        let next: Next = critical {
            queue.append(request)
            switch worker {
            case .running(let id): return .wake(id)
            case .starting: return .nothing
            case .none:
                worker = .starting
                return .start
            }
        }
        switch next {
        case .wake(let id): ThreadRuntime.wake(id)
        case .nothing: break
        case .start:
            do throws(ThreadError) {
                let control = try ThreadRuntime.spawn(name: bytes(of: "rumpuser-bio"), stackSize: GuestThreads.stackSize) { run() }
                ThreadRuntime.detach(control)
                critical { worker = .running(control.id) }
                // Requests queued while it was starting may have found it
                // blocked already: one wake-up covers them (it is kept if
                // the worker is not blocked yet).
                ThreadRuntime.wake(control.id)
            } catch {
                // No thread: complete the queue here, in the caller; the
                // next submitter tries again.
                let batch = critical {
                    worker = .none
                    return takeAll()
                }
                for request in batch {
                    let result = Upcalls.blocking { perform(request) }
                    request.done?(request.argument, result.0, result.1)
                }
            }
        }
    }

    static func takeAll() -> [Request] {
        let all = queue
        queue.removeAll()
        return all
    }

    static func takeBatch() -> [Request] {
        let count = min(queue.count, batchSize)
        let batch = Array(queue[0..<count])
        queue.removeFirst(count)
        return batch
    }

    static func run() -> Int {
        Component.makeKernelThread()
        while true {
            let batch = critical { takeBatch() }
            if batch.isEmpty {
                ThreadRuntime.block(deadline: nil)
                continue
            }
            var results: [(Int, Int32)] = []
            for request in batch { results.append(perform(request)) }
            Component.enter()
            for index in 0..<batch.count {
                batch[index].done?(batch[index].argument, results[index].0, results[index].1)
            }
            Component.leave()
        }
    }

    /// One request, without a CPU: (bytes, NetBSD errno).
    static func perform(_ request: Request) -> (Int, Int32) {
        let write = request.operation & RUMPUSER_BIO_WRITE != 0
        guard write != (request.operation & RUMPUSER_BIO_READ != 0), request.offset >= 0, request.length >= 0,
            request.data != nil || request.length == 0
        else { return (0, NetBSDError.EINVAL) }
        var outcome = GuestBlockDevices.transfer(
            request.descriptor, write: write, buffer: UnsafeMutableRawBufferPointer(start: request.data, count: request.length),
            offset: UInt64(request.offset))
        if outcome.1 == 0 && write && request.operation & RUMPUSER_BIO_SYNC != 0 {
            outcome.1 = GuestBlockDevices.flush(request.descriptor)
        }
        return outcome
    }
}

@_cdecl("rumpuser_bio")
public func rumpuserBio(
    _ descriptor: Int32, _ operation: Int32, _ data: UnsafeMutableRawPointer?, _ length: Int, _ offset: Int64,
    _ done: rump_biodone_fn?, _ argument: UnsafeMutableRawPointer?
) {
    BlockIOWorker.submit(
        BlockIOWorker.Request(descriptor: descriptor, operation: operation, data: data, length: length, offset: offset, done: done, argument: argument))
}

/// Vectored transfer at `offset`, or at the descriptor's position (which
/// it advances) for RUMPUSER_IOV_NOSEEK. Every piece is whole sectors.
func vectoredTransfer(_ descriptor: Int32, _ vectors: UnsafePointer<rumpuser_iovec>?, _ count: Int, _ offset: Int64, write: Bool, _ transferred: UnsafeMutablePointer<Int>?) -> Int32 {
    transferred?.pointee = 0
    guard let file = GuestBlockDevices.device(descriptor) else { return NetBSDError.EBADF }
    guard count >= 0, vectors != nil || count == 0 else { return NetBSDError.EINVAL }
    let noSeek = offset == Int64(RUMPUSER_IOV_NOSEEK)
    guard noSeek || offset >= 0 else { return NetBSDError.EINVAL }
    var position = noSeek ? file.position : UInt64(offset)
    var total = 0
    let error: Int32 = Upcalls.blocking {
        for index in 0..<count {
            let vector = vectors![index]
            let (moved, error) = GuestBlockDevices.transfer(
                descriptor, write: write, buffer: UnsafeMutableRawBufferPointer(start: vector.iov_base, count: vector.iov_len), offset: position)
            total += moved
            position += UInt64(moved)
            if error != 0 { return error }
        }
        return 0
    }
    if noSeek { GuestBlockDevices.open[Int(descriptor - GuestBlockDevices.firstDescriptor)]?.position = position }
    transferred?.pointee = total
    return error
}

@_cdecl("rumpuser_iovread")
public func rumpuserIovread(
    _ descriptor: Int32, _ vectors: UnsafeMutablePointer<rumpuser_iovec>?, _ count: Int, _ offset: Int64, _ transferred: UnsafeMutablePointer<Int>?
) -> Int32 {
    vectoredTransfer(descriptor, vectors.map { UnsafePointer($0) }, count, offset, write: false, transferred)
}

@_cdecl("rumpuser_iovwrite")
public func rumpuserIovwrite(
    _ descriptor: Int32, _ vectors: UnsafePointer<rumpuser_iovec>?, _ count: Int, _ offset: Int64, _ transferred: UnsafeMutablePointer<Int>?
) -> Int32 {
    vectoredTransfer(descriptor, vectors, count, offset, write: true, transferred)
}

/// READ only: nothing to do. WRITE (with or without BARRIER/SYNC): a
/// virtio-blk flush, which is both a barrier and a sync for the device.
@_cdecl("rumpuser_syncfd")
public func rumpuserSyncfd(_ descriptor: Int32, _ flags: Int32, _ start: UInt64, _ length: UInt64) -> Int32 {
    guard GuestBlockDevices.device(descriptor) != nil else { return NetBSDError.EBADF }
    guard flags & RUMPUSER_SYNCFD_BOTH != 0 else { return NetBSDError.EINVAL }
    guard flags & RUMPUSER_SYNCFD_WRITE != 0 else { return 0 }
    return Upcalls.blocking { GuestBlockDevices.flush(descriptor) }
}
