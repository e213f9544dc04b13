// XenImageNotes: the Xen ELF notes of a baked image (Xen public/elfnote.h,
// owner "Xen"), read with the ELF reader and checked against what Xen's
// domain builder needs: the PV notes (guest OS, "xen-3.0", the "generic"
// loader, virtual base, entry, hypercall page) and the PVH entry. Note
// numbers come from the libxen-dev header through CXen.
import CXen

/// The Xen notes of an image, decoded.
public struct XenImageNotes: Equatable, Sendable {
    public var guestOS: String?
    public var guestVersion: String?
    public var xenVersion: String?
    public var loader: String?
    public var features: String?
    public var paeMode: String?
    public var virtualBase: UInt64?
    public var physicalAddressOffset: UInt64?
    public var entry: UInt64?
    public var hypercallPage: UInt64?
    public var phys32Entry: UInt64?

    /// The version string Xen's libelf expects of a PV kernel.
    public static let expectedXenVersion = "xen-3.0"
    /// The only loader name Xen accepts for non-Linux PV kernels.
    public static let expectedLoader = "generic"

    public init(_ image: ELFFile) {
        for note in image.notes() where note.owner == "Xen" {
            func string() -> String { String(decoding: note.descriptor.prefix { $0 != 0 }, as: UTF8.self) }
            func number() -> UInt64 {
                note.descriptor.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
            }
            switch Int32(note.type) {
            case XEN_ELFNOTE_GUEST_OS: guestOS = string()
            case XEN_ELFNOTE_GUEST_VERSION: guestVersion = string()
            case XEN_ELFNOTE_XEN_VERSION: xenVersion = string()
            case XEN_ELFNOTE_LOADER: loader = string()
            case XEN_ELFNOTE_FEATURES: features = string()
            case XEN_ELFNOTE_PAE_MODE: paeMode = string()
            case XEN_ELFNOTE_VIRT_BASE: virtualBase = number()
            case XEN_ELFNOTE_PADDR_OFFSET: physicalAddressOffset = number()
            case XEN_ELFNOTE_ENTRY: entry = number()
            case XEN_ELFNOTE_HYPERCALL_PAGE: hypercallPage = number()
            case XEN_ELFNOTE_PHYS32_ENTRY: phys32Entry = note.descriptor.count >= 8 ? number() : number() & 0xFFFF_FFFF
            default: break
            }
        }
    }

    /// Everything a Xen image lacks or gets wrong; empty when Xen's
    /// domain builder can load it as PV and as PVH.
    public func problems(in image: ELFFile) -> [String] {
        var problems: [String] = []
        let loads = image.segments.filter { $0.type == ELFSegment.load }
        func executable(_ address: UInt64, length: UInt64 = 1) -> Bool {
            loads.contains { $0.isExecutable && address >= $0.virtualAddress && address + length <= $0.virtualAddress + $0.memorySize }
        }
        func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
        if guestOS == nil { problems.append("no XEN_ELFNOTE_GUEST_OS note") }
        if xenVersion != Self.expectedXenVersion {
            problems.append("XEN_ELFNOTE_XEN_VERSION is \(xenVersion.map { "'\($0)'" } ?? "missing"), expected '\(Self.expectedXenVersion)'")
        }
        if loader != Self.expectedLoader {
            problems.append("XEN_ELFNOTE_LOADER is \(loader.map { "'\($0)'" } ?? "missing"), expected '\(Self.expectedLoader)'")
        }
        if let entry {
            if !executable(entry) { problems.append("PV entry \(hex(entry)) (XEN_ELFNOTE_ENTRY) is not in an executable segment") }
        } else {
            problems.append("no XEN_ELFNOTE_ENTRY note (PV entry)")
        }
        if let page = hypercallPage {
            let size = UInt64(Self.xenPageSizeForImages)
            if page % size != 0 { problems.append("hypercall page \(hex(page)) is not page aligned") }
            if !executable(page, length: size) { problems.append("hypercall page \(hex(page)) is not a whole page of an executable segment") }
        } else {
            problems.append("no XEN_ELFNOTE_HYPERCALL_PAGE note")
        }
        if let phys32Entry {
            if !executable(phys32Entry) { problems.append("PVH entry \(hex(phys32Entry)) is not in an executable segment") }
        } else {
            problems.append("no XEN_ELFNOTE_PHYS32_ENTRY note (PVH entry)")
        }
        // Xen places segment p_paddr at virtual address
        // p_paddr + VIRT_BASE - PADDR_OFFSET; it must be where the image
        // was linked, and below the hypervisor's reserved range.
        let base = virtualBase ?? 0
        let offset = physicalAddressOffset ?? base
        if virtualBase == nil { problems.append("no XEN_ELFNOTE_VIRT_BASE note") }
        for segment in loads where segment.memorySize > 0 {
            let placed = segment.physicalAddress &+ base &- offset
            if placed != segment.virtualAddress {
                problems.append("segment \(hex(segment.virtualAddress)) would be mapped at \(hex(placed)) by Xen (VIRT_BASE \(hex(base)), PADDR_OFFSET \(hex(offset)))")
            }
            if segment.virtualAddress + segment.memorySize > UInt64(__HYPERVISOR_VIRT_START) {
                problems.append("segment \(hex(segment.virtualAddress)) reaches Xen's reserved range at \(hex(UInt64(__HYPERVISOR_VIRT_START)))")
            }
        }
        if !image.segments.contains(where: { $0.type == ELFSegment.note }) {
            problems.append("no PT_NOTE segment: Xen reads the notes through program headers")
        }
        return problems
    }

    /// The page size of the hypercall page (Xen's x86 page, 4 KiB).
    static let xenPageSizeForImages = 4096
}
