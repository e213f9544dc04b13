// ImageChecker: verifies a baked image before anyone boots it: machine and
// class, entry point in executable memory, the PVH note, the multiboot
// header's placement, no undefined symbols, no writable+executable segment.

/// What `ImageChecker` found in an image.
public struct ImageReport: Sendable {
    public var format: ImageFormat?
    public var entry: UInt64
    public var pvhEntry: UInt64?
    public var multibootHeaderOffset: Int?
    public var segments: [ELFSegment]
    public var fileSize: Int
    public var problems: [String]

    public var isValid: Bool { problems.isEmpty }
}

public enum ImageChecker {
    /// `XEN_ELFNOTE_PHYS32_ENTRY` (Xen public/elfnote.h).
    public static let pvhNoteType: UInt32 = 18

    /// Inspects an image of either format and lists every problem found.
    public static func inspect(_ image: ELFFile) -> ImageReport {
        var problems: [String] = []
        var report = ImageReport(
            format: nil, entry: image.entry, pvhEntry: nil, multibootHeaderOffset: MultibootHeader.find(in: image.bytes),
            segments: image.segments, fileSize: image.bytes.count, problems: [])

        switch (image.fileClass, image.machine) {
        case (.elf64, 62): report.format = .pvh
        case (.elf32, 3): report.format = .multiboot
        default:
            problems.append("ELF machine \(image.machine) (\(ELFMachine.name(image.machine))) in an \(image.fileClass == .elf64 ? "ELF64" : "ELF32") file: expected x86-64 ELF64 (PVH) or i386 ELF32 (multiboot)")
        }
        if image.type != ELFFile.typeExecutable {
            problems.append("file is a \(image.typeName), not an executable")
        }

        let loads = image.segments.filter { $0.type == ELFSegment.load }
        if loads.isEmpty { problems.append("no loadable segments") }
        for segment in loads {
            let range = "0x\(String(segment.virtualAddress, radix: 16))-0x\(String(segment.virtualAddress + segment.memorySize, radix: 16))"
            if segment.isWritable && segment.isExecutable {
                problems.append("segment \(range) is both writable and executable")
            }
            if segment.virtualAddress < 0x10_0000 && segment.memorySize > 0 {
                problems.append("segment \(range) loads below 1 MiB")
            }
            if segment.fileSize > segment.memorySize {
                problems.append("segment \(range) has more file bytes than memory bytes")
            }
            if segment.offset + segment.fileSize > UInt64(image.bytes.count) {
                problems.append("segment \(range) runs past the end of the file")
            }
        }
        func executable(_ address: UInt64) -> Bool {
            loads.contains { $0.isExecutable && address >= $0.virtualAddress && address < $0.virtualAddress + $0.memorySize }
        }
        if !executable(image.entry) {
            problems.append("entry point 0x\(String(image.entry, radix: 16)) is not in an executable segment")
        }

        let undefined = image.symbols.filter { $0.isUndefined && !$0.name.isEmpty && !$0.isWeak }
        if !undefined.isEmpty {
            let names = undefined.prefix(10).map(\.name).joined(separator: ", ")
            problems.append("undefined symbols: \(names)\(undefined.count > 10 ? " and \(undefined.count - 10) more" : "")")
        }

        switch report.format {
        case .pvh:
            let notes = image.notes().filter { $0.owner == "Xen" && $0.type == pvhNoteType }
            if let note = notes.first, note.descriptor.count >= 4 {
                let entry = note.descriptor.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
                let pvhEntry = note.descriptor.count >= 8 ? entry : entry & 0xFFFF_FFFF
                report.pvhEntry = pvhEntry
                if !executable(pvhEntry) {
                    problems.append("PVH entry 0x\(String(pvhEntry, radix: 16)) is not in an executable segment")
                }
            } else {
                problems.append("no Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")
            }
            if !image.segments.contains(where: { $0.type == ELFSegment.note }) {
                problems.append("no PT_NOTE segment: PVH loaders read notes through program headers")
            }
            if report.multibootHeaderOffset != nil {
                problems.append("a multiboot header in the first 8 KiB: QEMU would try multiboot and refuse this ELF64 file")
            }
        case .multiboot:
            if let offset = report.multibootHeaderOffset {
                if !executable(image.entry) || offset % 4 != 0 {
                    problems.append("multiboot header at file offset \(offset) is misaligned")
                }
            } else {
                problems.append("no multiboot header in the first 8 KiB of the file")
            }
        case nil:
            break
        }
        report.problems = problems
        return report
    }

    /// Throws the problems of an image, if it has any.
    public static func check(_ image: ELFFile) throws(BakeError) -> ImageReport {
        let report = inspect(image)
        guard report.isValid else { throw .imageCheckFailed(path: image.path, problems: report.problems) }
        return report
    }
}
