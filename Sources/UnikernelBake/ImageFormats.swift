// ImageFormats: writes linked images in the forms loaders take. PVH loaders
// (QEMU microvm, Xen) read the ELF64 file and its XEN_ELFNOTE_PHYS32_ENTRY
// note. Multiboot 1 loaders (QEMU -M pc -kernel, GRUB) get an ELF32 file
// whose header slot carries the multiboot header (Multiboot Specification
// 0.6.96 §3.1.1); QEMU refuses ELF64 multiboot files.
import CLibELF
import Foundation

/// The multiboot 1 header bake writes into the `.multiboot` slot.
public struct MultibootHeader: Equatable, Sendable {
    public static let magic: UInt32 = 0x1BAD_B002
    /// Bit 0: page-align modules; bit 1: provide the memory map.
    public var flags: UInt32 = 0x0000_0003

    public init() {}

    public var checksum: UInt32 { 0 &- (Self.magic &+ flags) }

    public var bytes: [UInt8] {
        [Self.magic, flags, checksum].flatMap { word in (0..<4).map { UInt8(truncatingIfNeeded: word >> ($0 * 8)) } }
    }

    /// Finds a valid header in the first 8 KiB of a file, as loaders do;
    /// returns its file offset.
    public static func find(in file: [UInt8]) -> Int? {
        var offset = 0
        while offset + 12 <= min(file.count, 8192) {
            func word(_ at: Int) -> UInt32 {
                UInt32(file[at]) | UInt32(file[at + 1]) << 8 | UInt32(file[at + 2]) << 16 | UInt32(file[at + 3]) << 24
            }
            if word(offset) == magic && word(offset) &+ word(offset + 4) &+ word(offset + 8) == 0 {
                return offset
            }
            offset += 4
        }
        return nil
    }
}

/// The boot format of an image file.
public enum ImageFormat: String, CaseIterable, Sendable {
    /// ELF64 with a PVH entry note: QEMU microvm, Xen PVH.
    case pvh
    /// ELF32 with a multiboot header: QEMU pc (SeaBIOS), GRUB.
    case multiboot

    public var summary: String {
        switch self {
        case .pvh: return "ELF64 image with a Xen PVH entry note (QEMU -M microvm, Xen PVH)"
        case .multiboot: return "ELF32 image with a multiboot 1 header (QEMU -M pc, GRUB)"
        }
    }
}

/// Writes image files from a linked ELF64 image.
public enum ImageWriter {
    /// The symbol entry.S puts at the 12-byte multiboot header slot.
    public static let multibootSlotSymbol = "multiboot_header"

    /// The ELF64 image for PVH loaders: the linked file with an empty
    /// multiboot slot, so loaders that try multiboot first fall through to PVH.
    public static func pvhImage(from linked: ELFFile) throws(BakeError) -> [UInt8] {
        var bytes = linked.bytes
        let slot = try multibootSlot(in: linked)
        let offset = Int(linked.fileOffset(ofAddress: slot)!)
        for index in 0..<12 { bytes[offset + index] = 0 }
        return bytes
    }

    /// The address of the 12-byte multiboot header slot: the
    /// `multiboot_header` symbol, or, in a stripped image, the start of the
    /// first executable segment, where the linker script puts it.
    static func multibootSlot(in image: ELFFile) throws(BakeError) -> UInt64 {
        let address: UInt64
        if let symbol = image.symbol(named: multibootSlotSymbol) {
            address = symbol.value
        } else if let text = image.segments.first(where: { $0.type == ELFSegment.load && $0.isExecutable }) {
            address = text.virtualAddress
        } else {
            throw .imageCheckFailed(path: image.path, problems: ["no executable segment to hold the multiboot header"])
        }
        guard let offset = image.fileOffset(ofAddress: address), offset + 12 <= UInt64(image.bytes.count) else {
            throw .imageCheckFailed(path: image.path, problems: ["multiboot header slot 0x\(String(address, radix: 16)) is not in the file"])
        }
        let current = Array(image.bytes[Int(offset)..<Int(offset) + 12])
        guard current == [UInt8](repeating: 0, count: 12) || MultibootHeader.find(in: current) == 0 else {
            throw .imageCheckFailed(path: image.path, problems: ["no multiboot header slot at 0x\(String(address, radix: 16)) (not a swift-rumprun image?)"])
        }
        return address
    }

    /// The ELF32 image for multiboot loaders: the same PT_LOAD segments with
    /// the multiboot header filled in, laid out from file offset 4096 so the
    /// header lands inside the first 8 KiB.
    public static func multibootImage(from linked: ELFFile, header: MultibootHeader = MultibootHeader()) throws(BakeError) -> [UInt8] {
        guard linked.fileClass == .elf64 else { throw .wrongClass(path: linked.path, found: "ELF32") }
        let slot = try multibootSlot(in: linked)
        let loads = linked.segments.filter { $0.type == ELFSegment.load && $0.memorySize > 0 }
        for segment in loads where segment.virtualAddress + segment.memorySize > 0xFFFF_FFFF {
            throw .imageCheckFailed(path: linked.path, problems: ["segment at 0x\(String(segment.virtualAddress, radix: 16)) lies above 4 GiB; multiboot cannot load it"])
        }
        // The ELF entry is the multiboot entry (ENTRY in the linker script).
        let entry = linked.entry

        // Segment contents, multiboot header patched into the text segment.
        var payloads: [[UInt8]] = []
        for segment in loads {
            let start = Int(segment.offset)
            let end = start + Int(segment.fileSize)
            guard end <= linked.bytes.count else {
                throw .malformedELF(path: linked.path, detail: "segment data runs past the end of the file")
            }
            var payload = Array(linked.bytes[start..<end])
            if slot >= segment.virtualAddress && slot + 12 <= segment.virtualAddress + segment.fileSize {
                let at = Int(slot - segment.virtualAddress)
                payload.replaceSubrange(at..<at + 12, with: header.bytes)
            }
            payloads.append(payload)
        }

        // File layout: ELF header, program headers, then each segment at a
        // page-aligned offset congruent to its address, section headers last.
        var offsets: [UInt64] = []
        var cursor: UInt64 = 4096
        for (segment, payload) in zip(loads, payloads) {
            let misalignment = segment.virtualAddress % 4096
            if cursor % 4096 != misalignment { cursor = (cursor + 4095) / 4096 * 4096 + misalignment }
            offsets.append(cursor)
            cursor += UInt64(payload.count)
        }
        let sectionHeaderOffset = (cursor + 7) / 8 * 8

        let temporary = FileManager.default.temporaryDirectory.appendingPathComponent("rumprun-mb32-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: temporary) }
        _ = ELFFile.versionOnce
        let descriptor = open(temporary, O_RDWR | O_CREAT | O_TRUNC, 0o644)
        guard descriptor >= 0 else { throw .outputNotWritable(path: temporary, detail: String(cString: strerror(errno))) }
        defer { close(descriptor) }
        guard let elf = elf_begin(descriptor, ELF_C_WRITE, nil) else {
            throw .outputNotWritable(path: temporary, detail: ELFFile.lastError)
        }
        defer { elf_end(elf) }
        elf_flagelf(elf, ELF_C_SET, UInt32(ELF_F_LAYOUT))
        guard let elfHeader = elf32_newehdr(elf), let programHeaders = elf32_newphdr(elf, loads.count) else {
            throw .outputNotWritable(path: temporary, detail: ELFFile.lastError)
        }
        elfHeader.pointee.e_ident.5 = UInt8(ELFDATA2LSB)
        elfHeader.pointee.e_machine = UInt16(EM_386)
        elfHeader.pointee.e_type = UInt16(ET_EXEC)
        elfHeader.pointee.e_version = UInt32(EV_CURRENT)
        elfHeader.pointee.e_entry = UInt32(entry)
        elfHeader.pointee.e_phoff = UInt32(MemoryLayout<Elf32_Ehdr>.size)
        elfHeader.pointee.e_shoff = UInt32(sectionHeaderOffset)

        // libelf writes bytes through sections: one per segment.
        var buffers: [UnsafeMutableRawBufferPointer] = []
        defer { buffers.forEach { $0.deallocate() } }
        for (index, (segment, payload)) in zip(loads, payloads).enumerated() {
            guard let section = elf_newscn(elf), let data = elf_newdata(section), let sectionHeader = elf32_getshdr(section) else {
                throw .outputNotWritable(path: temporary, detail: ELFFile.lastError)
            }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(payload.count, 1), alignment: 16)
            buffers.append(buffer)
            buffer.copyBytes(from: payload)
            data.pointee.d_buf = buffer.baseAddress
            data.pointee.d_size = payload.count
            data.pointee.d_type = ELF_T_BYTE
            data.pointee.d_align = 1
            data.pointee.d_off = 0
            data.pointee.d_version = UInt32(EV_CURRENT)
            sectionHeader.pointee.sh_type = UInt32(SHT_PROGBITS)
            sectionHeader.pointee.sh_flags = UInt32(SHF_ALLOC) | (segment.isWritable ? UInt32(SHF_WRITE) : 0) | (segment.isExecutable ? UInt32(SHF_EXECINSTR) : 0)
            sectionHeader.pointee.sh_addr = UInt32(segment.virtualAddress)
            sectionHeader.pointee.sh_offset = UInt32(offsets[index])
            sectionHeader.pointee.sh_size = UInt32(payload.count)
            sectionHeader.pointee.sh_addralign = 1

            let program = programHeaders.advanced(by: index)
            program.pointee.p_type = UInt32(PT_LOAD)
            program.pointee.p_flags = segment.flags
            program.pointee.p_offset = UInt32(offsets[index])
            program.pointee.p_vaddr = UInt32(segment.virtualAddress)
            program.pointee.p_paddr = UInt32(segment.physicalAddress)
            program.pointee.p_filesz = UInt32(payload.count)
            program.pointee.p_memsz = UInt32(segment.memorySize)
            program.pointee.p_align = 4096
        }
        guard elf_update(elf, ELF_C_WRITE) >= 0 else {
            throw .outputNotWritable(path: temporary, detail: ELFFile.lastError)
        }
        guard let data = FileManager.default.contents(atPath: temporary) else {
            throw .outputNotWritable(path: temporary, detail: "written file vanished")
        }
        return [UInt8](data)
    }

    /// Writes `bytes` to `path` atomically (temporary file, then rename), so
    /// an interrupted bake never leaves a half-written image behind.
    public static func write(_ bytes: [UInt8], to path: String) throws(BakeError) {
        let url = URL(fileURLWithPath: path)
        do {
            try Data(bytes).write(to: url, options: .atomic)
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: path)
        } catch {
            throw .outputNotWritable(path: path, detail: error.localizedDescription)
        }
    }
}
