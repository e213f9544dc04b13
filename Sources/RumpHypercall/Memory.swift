// rumpuser(3) "Initialization" and "Memory allocation": rumpuser_init,
// rumpuser_malloc/free, rumpuser_anonmmap/unmap.

import CRumpUser

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The interface version this library implements.
public let rumpuserVersion: Int32 = RUMPUSER_VERSION

/// Checks the version and saves the upcall table. A version other than 17
/// fails with EINVAL (NetBSD aborts; failing lets the kernel report it).
@_spi(RumpUserABI) @_cdecl("rumpuser_init")
public func rumpuserInit(_ version: Int32, _ hyp: UnsafePointer<rumpuser_hyperup>?) -> Int32 {
    guard version == RUMPUSER_VERSION else {
        var message = "rumpuser: version mismatch: kernel \(version), hypervisor \(RUMPUSER_VERSION)\n"
        message.withUTF8 { consoleWrite(2, UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: CChar.self), $0.count) }
        return NetBSDErrno.EINVAL.rawValue
    }
    guard let hyp else { return NetBSDErrno.EINVAL.rawValue }
    crumpuser_set_hyperup(hyp)
    return 0
}

/// Memory aligned to `alignment` (0: pointer alignment). Never blocks.
@_spi(RumpUserABI) @_cdecl("rumpuser_malloc")
public func rumpuserMalloc(_ length: Int, _ alignment: Int32, _ memp: UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> Int32 {
    let align = Int(alignment)
    guard align >= 0, align & (align &- 1) == 0 else { return NetBSDErrno.EINVAL.rawValue }
    var memory: UnsafeMutableRawPointer?
    if align <= 16 {
        // glibc's malloc already aligns to 16 and is faster than memalign.
        memory = malloc(length == 0 ? 1 : length)
        if memory == nil { return NetBSDErrno.ENOMEM.rawValue }
    } else {
        let rv = posix_memalign(&memory, align, length)
        if rv != 0 { return netbsdErrno(fromHost: rv) }
    }
    memp.pointee = memory
    return 0
}

@_spi(RumpUserABI) @_cdecl("rumpuser_free")
public func rumpuserFree(_ memory: UnsafeMutableRawPointer?, _ length: Int) {
    free(memory)
}

/// Anonymous read-write (and executable if asked) memory, aligned to
/// 2^`alignbit` bytes when `alignbit` is nonzero; `preferred` is a hint.
@_spi(RumpUserABI) @_cdecl("rumpuser_anonmmap")
public func rumpuserAnonmmap(
    _ preferred: UnsafeMutableRawPointer?, _ length: Int, _ alignbit: Int32, _ exec: Int32,
    _ memp: UnsafeMutablePointer<UnsafeMutableRawPointer?>
) -> Int32 {
    var protection = PROT_READ | PROT_WRITE
    if exec != 0 { protection |= PROT_EXEC }
    let flags = MAP_PRIVATE | MAP_ANONYMOUS
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    let alignment = alignbit > 0 && alignbit < 48 ? 1 << Int(alignbit) : 0

    if alignment <= page {
        let memory = mmap(preferred, length, protection, flags, -1, 0)
        if memory == MAP_FAILED { return netbsdErrnoFromCurrentHostErrno() }
        memp.pointee = memory
        return 0
    }

    // Over-map by the alignment, then return the unaligned head and tail.
    let mapped = length + alignment
    guard let raw = mmap(preferred, mapped, protection, flags, -1, 0), raw != MAP_FAILED else {
        return netbsdErrnoFromCurrentHostErrno()
    }
    let start = UInt(bitPattern: raw)
    let aligned = (start + UInt(alignment) - 1) & ~(UInt(alignment) - 1)
    let head = Int(aligned - start)
    if head > 0 { munmap(raw, head) }
    let tailStart = head + ((length + page - 1) & ~(page - 1))
    if mapped - tailStart > 0 { munmap(raw + tailStart, mapped - tailStart) }
    memp.pointee = UnsafeMutableRawPointer(bitPattern: aligned)
    return 0
}

@_spi(RumpUserABI) @_cdecl("rumpuser_unmap")
public func rumpuserUnmap(_ address: UnsafeMutableRawPointer?, _ length: Int) {
    munmap(address, length)
}
