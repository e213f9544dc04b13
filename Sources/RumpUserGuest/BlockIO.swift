// Files and block I/O hypercalls on the guest: there is no file system
// under the hypervisor layer, and block devices are not yet mapped to names,
// so open/getfileinfo report ENXIO ("device not configured") and calls on a
// descriptor report EBADF (no descriptor was ever handed out). bio reports
// the error through its biodone callback, in the caller (holding its CPU).
import CRumpUserGuest

@_cdecl("rumpuser_open")
public func rumpuserOpen(_ path: UnsafePointer<CChar>?, _ mode: Int32, _ descriptor: UnsafeMutablePointer<Int32>?) -> Int32 {
    guard path != nil, descriptor != nil else { return NetBSDError.EINVAL }
    guard mode & RUMPUSER_OPEN_ACCMODE != RUMPUSER_OPEN_ACCMODE else { return NetBSDError.EINVAL }
    return NetBSDError.ENXIO
}

@_cdecl("rumpuser_close")
public func rumpuserClose(_ descriptor: Int32) -> Int32 { NetBSDError.EBADF }

@_cdecl("rumpuser_getfileinfo")
public func rumpuserGetfileinfo(_ path: UnsafePointer<CChar>?, _ size: UnsafeMutablePointer<UInt64>?, _ type: UnsafeMutablePointer<Int32>?) -> Int32 {
    guard path != nil else { return NetBSDError.EINVAL }
    return NetBSDError.ENXIO
}

@_cdecl("rumpuser_bio")
public func rumpuserBio(
    _ descriptor: Int32, _ operation: Int32, _ data: UnsafeMutableRawPointer?, _ length: Int, _ offset: Int64,
    _ done: rump_biodone_fn?, _ argument: UnsafeMutableRawPointer?
) {
    done?(argument, 0, NetBSDError.EBADF)
}

@_cdecl("rumpuser_iovread")
public func rumpuserIovread(
    _ descriptor: Int32, _ vectors: UnsafeMutablePointer<rumpuser_iovec>?, _ count: Int, _ offset: Int64, _ transferred: UnsafeMutablePointer<Int>?
) -> Int32 {
    transferred?.pointee = 0
    return NetBSDError.EBADF
}

@_cdecl("rumpuser_iovwrite")
public func rumpuserIovwrite(
    _ descriptor: Int32, _ vectors: UnsafePointer<rumpuser_iovec>?, _ count: Int, _ offset: Int64, _ transferred: UnsafeMutablePointer<Int>?
) -> Int32 {
    transferred?.pointee = 0
    return NetBSDError.EBADF
}

@_cdecl("rumpuser_syncfd")
public func rumpuserSyncfd(_ descriptor: Int32, _ flags: Int32, _ start: UInt64, _ length: UInt64) -> Int32 {
    NetBSDError.EBADF
}
