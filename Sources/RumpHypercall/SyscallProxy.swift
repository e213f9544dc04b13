// rumpuser_sp_*: the syscall proxy (remote clients over unix/tcp sockets) is
// not implemented yet. The symbols exist so that kernels linking
// librumpkern_sysproxy still link; rump_init_server() then fails with
// EOPNOTSUPP instead of the program failing to load.

@_spi(RumpUserABI) @_cdecl("rumpuser_sp_init")
public func rumpuserSpInit(
    _ url: UnsafePointer<CChar>?, _ ostype: UnsafePointer<CChar>?, _ osrelease: UnsafePointer<CChar>?,
    _ machine: UnsafePointer<CChar>?
) -> Int32 {
    NetBSDErrno.EOPNOTSUPP.rawValue
}

@_spi(RumpUserABI) @_cdecl("rumpuser_sp_copyin")
public func rumpuserSpCopyin(_ client: UnsafeMutableRawPointer?, _ from: UnsafeRawPointer?, _ to: UnsafeMutableRawPointer?, _ length: Int) -> Int32 {
    NetBSDErrno.EOPNOTSUPP.rawValue
}

@_spi(RumpUserABI) @_cdecl("rumpuser_sp_copyinstr")
public func rumpuserSpCopyinstr(
    _ client: UnsafeMutableRawPointer?, _ from: UnsafeRawPointer?, _ to: UnsafeMutableRawPointer?, _ length: UnsafeMutablePointer<Int>?
) -> Int32 {
    NetBSDErrno.EOPNOTSUPP.rawValue
}

@_spi(RumpUserABI) @_cdecl("rumpuser_sp_copyout")
public func rumpuserSpCopyout(_ client: UnsafeMutableRawPointer?, _ from: UnsafeRawPointer?, _ to: UnsafeMutableRawPointer?, _ length: Int) -> Int32 {
    NetBSDErrno.EOPNOTSUPP.rawValue
}

@_spi(RumpUserABI) @_cdecl("rumpuser_sp_copyoutstr")
public func rumpuserSpCopyoutstr(
    _ client: UnsafeMutableRawPointer?, _ from: UnsafeRawPointer?, _ to: UnsafeMutableRawPointer?, _ length: UnsafeMutablePointer<Int>?
) -> Int32 {
    NetBSDErrno.EOPNOTSUPP.rawValue
}

@_spi(RumpUserABI) @_cdecl("rumpuser_sp_anonmmap")
public func rumpuserSpAnonmmap(_ client: UnsafeMutableRawPointer?, _ length: Int, _ address: UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int32 {
    NetBSDErrno.EOPNOTSUPP.rawValue
}

@_spi(RumpUserABI) @_cdecl("rumpuser_sp_raise")
public func rumpuserSpRaise(_ client: UnsafeMutableRawPointer?, _ signal: Int32) -> Int32 {
    NetBSDErrno.EOPNOTSUPP.rawValue
}

@_spi(RumpUserABI) @_cdecl("rumpuser_sp_fini")
public func rumpuserSpFini(_ argument: UnsafeMutableRawPointer?) {}
