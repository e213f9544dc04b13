// rumpuser(3) "Files and I/O" (synchronous part): rumpuser_open, close,
// getfileinfo, iovread, iovwrite, syncfd. Every call that touches the host
// file system runs with the virtual CPU released.

import CRumpUser

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Opens `path`. RUMPUSER_OPEN_BIO is advisory and ignored; created files
/// get mode 0644, as in NetBSD's implementation.
@_spi(RumpUserABI) @_cdecl("rumpuser_open")
public func rumpuserOpen(_ path: UnsafePointer<CChar>, _ mode: Int32, _ fdp: UnsafeMutablePointer<Int32>) -> Int32 {
    var flags: Int32
    switch mode & RUMPUSER_OPEN_ACCMODE {
    case RUMPUSER_OPEN_RDONLY: flags = O_RDONLY
    case RUMPUSER_OPEN_WRONLY: flags = O_WRONLY
    case RUMPUSER_OPEN_RDWR: flags = O_RDWR
    default: return NetBSDErrno.EINVAL.rawValue
    }
    if mode & RUMPUSER_OPEN_CREATE != 0 { flags |= O_CREAT }
    if mode & RUMPUSER_OPEN_EXCL != 0 { flags |= O_EXCL }

    let (fd, error) = withCPUReleased { () -> (Int32, Int32) in
        let fd = open(path, flags, 0o644)
        return (fd, fd < 0 ? crumpuser_errno() : 0)
    }
    if fd < 0 { return netbsdErrno(fromHost: error) }
    fdp.pointee = fd
    return 0
}

/// Closes `fd` after flushing it to stable storage (NetBSD does the same:
/// the kernel treats close as the end of a disk's life).
@_spi(RumpUserABI) @_cdecl("rumpuser_close")
public func rumpuserClose(_ fd: Int32) -> Int32 {
    let error = withCPUReleased { () -> Int32 in
        fsync(fd)
        return close(fd) == 0 ? 0 : crumpuser_errno()
    }
    return netbsdErrno(fromHost: error == EINTR ? 0 : error)
}

/// Size and type of `path`. Devices report their size (BLKGETSIZE64).
@_spi(RumpUserABI) @_cdecl("rumpuser_getfileinfo")
public func rumpuserGetfileinfo(_ path: UnsafePointer<CChar>, _ sizep: UnsafeMutablePointer<UInt64>?, _ typep: UnsafeMutablePointer<Int32>?) -> Int32 {
    let (error, size, type) = withCPUReleased { () -> (Int32, UInt64, Int32) in
        var status = stat()
        if stat(path, &status) != 0 { return (crumpuser_errno(), 0, 0) }
        let type: Int32
        switch status.st_mode & S_IFMT {
        case S_IFDIR: type = RUMPUSER_FT_DIR
        case S_IFREG: type = RUMPUSER_FT_REG
        case S_IFBLK: type = RUMPUSER_FT_BLK
        case S_IFCHR: type = RUMPUSER_FT_CHR
        default: type = RUMPUSER_FT_OTHER
        }
        guard type == RUMPUSER_FT_BLK || type == RUMPUSER_FT_CHR, sizep != nil else {
            return (0, UInt64(status.st_size), type)
        }
        let fd = open(path, O_RDONLY)
        if fd < 0 { return (crumpuser_errno(), 0, 0) }
        defer { close(fd) }
        var size: UInt64 = 0
        if crumpuser_device_size(fd, &size) != 0 { return (crumpuser_errno(), 0, 0) }
        return (0, size, type)
    }
    if error != 0 { return netbsdErrno(fromHost: error) }
    sizep?.pointee = size
    typep?.pointee = type
    return 0
}

/// Scatter read at `offset`, or at the file position for
/// RUMPUSER_IOV_NOSEEK (the position then advances).
@_spi(RumpUserABI) @_cdecl("rumpuser_iovread")
public func rumpuserIovread(
    _ fd: Int32, _ iov: UnsafeMutablePointer<rumpuser_iovec>?, _ count: Int, _ offset: Int64,
    _ retp: UnsafeMutablePointer<Int>
) -> Int32 {
    let vectors = UnsafeRawPointer(iov)?.assumingMemoryBound(to: iovec.self)
    let (transferred, error) = withCPUReleased { () -> (Int, Int32) in
        let n = offset == Int64(RUMPUSER_IOV_NOSEEK)
            ? readv(fd, vectors, Int32(clamping: count))
            : preadv(fd, vectors, Int32(clamping: count), off_t(offset))
        return (n, n < 0 ? crumpuser_errno() : 0)
    }
    if transferred < 0 { return netbsdErrno(fromHost: error) }
    retp.pointee = transferred
    return 0
}

/// Gather write; see ``rumpuserIovread(_:_:_:_:_:)`` for `offset`.
@_spi(RumpUserABI) @_cdecl("rumpuser_iovwrite")
public func rumpuserIovwrite(
    _ fd: Int32, _ iov: UnsafePointer<rumpuser_iovec>?, _ count: Int, _ offset: Int64,
    _ retp: UnsafeMutablePointer<Int>
) -> Int32 {
    let vectors = UnsafeRawPointer(iov)?.assumingMemoryBound(to: iovec.self)
    let (transferred, error) = withCPUReleased { () -> (Int, Int32) in
        let n = offset == Int64(RUMPUSER_IOV_NOSEEK)
            ? writev(fd, vectors, Int32(clamping: count))
            : pwritev(fd, vectors, Int32(clamping: count), off_t(offset))
        return (n, n < 0 ? crumpuser_errno() : 0)
    }
    if transferred < 0 { return netbsdErrno(fromHost: error) }
    retp.pointee = transferred
    return 0
}

/// Flushes writes of `fd` (the range is a hint; the whole file's data is
/// synced). Read syncing is a no-op; neither READ nor WRITE is EINVAL.
@_spi(RumpUserABI) @_cdecl("rumpuser_syncfd")
public func rumpuserSyncfd(_ fd: Int32, _ flags: Int32, _ start: UInt64, _ length: UInt64) -> Int32 {
    if flags & RUMPUSER_SYNCFD_BOTH == 0 { return NetBSDErrno.EINVAL.rawValue }
    if flags & RUMPUSER_SYNCFD_WRITE == 0 { return 0 }
    let error = withCPUReleased { () -> Int32 in
        let rv = flags & RUMPUSER_SYNCFD_SYNC != 0 ? fsync(fd) : fdatasync(fd)
        return rv == 0 ? 0 : crumpuser_errno()
    }
    return netbsdErrno(fromHost: error)
}
