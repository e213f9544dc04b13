// Memory hypercalls: rumpuser_malloc/free (aligned heap blocks) and
// rumpuser_anonmmap/unmap (zeroed, page-aligned runs) from the hw
// platform's size-class heap. None of them releases the virtual CPU.
import BareMetalKit
import CRumpUserGuest

@_cdecl("rumpuser_malloc")
public func rumpuserMalloc(_ size: Int, _ alignment: Int32, _ result: UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int32 {
    guard let result else { return NetBSDError.EINVAL }
    // 0 means "pointer alignment"; otherwise a power of two.
    guard alignment >= 0, alignment & (alignment &- 1) == 0 else { return NetBSDError.EINVAL }
    let align = max(Int(alignment), 16)
    guard let block = heapAllocate(max(size, 1), align) else {
        result.pointee = nil
        return NetBSDError.ENOMEM
    }
    result.pointee = block
    return 0
}

@_cdecl("rumpuser_free")
public func rumpuserFree(_ pointer: UnsafeMutableRawPointer?, _ size: Int) {
    heapFree(pointer)
}

/// Page-aligned (or `1 << alignbit`-aligned) zeroed memory. The hint
/// address is ignored (one address space, identity mapped); executable
/// memory is refused: the heap is mapped no-execute.
@_cdecl("rumpuser_anonmmap")
public func rumpuserAnonmmap(
    _ hint: UnsafeMutableRawPointer?, _ size: Int, _ alignBit: Int32, _ executable: Int32,
    _ result: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
    guard let result else { return NetBSDError.EINVAL }
    result.pointee = nil
    guard size > 0, alignBit >= 0, alignBit < 40 else { return NetBSDError.EINVAL }
    guard executable == 0 else { return NetBSDError.EOPNOTSUPP }
    let alignment = max(4096, 1 << Int(alignBit))
    let length = (size + 4095) & ~4095
    guard let block = heapAllocate(length, alignment) else { return NetBSDError.ENOMEM }
    block.initializeMemory(as: UInt8.self, repeating: 0, count: length)
    result.pointee = block
    return 0
}

@_cdecl("rumpuser_unmap")
public func rumpuserUnmap(_ address: UnsafeMutableRawPointer?, _ size: Int) {
    heapFree(address)
}
