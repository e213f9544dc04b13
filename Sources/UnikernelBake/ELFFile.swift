// ELFFile: read-only access to ELF files and archives through elfutils'
// libelf (gelf interface), with every failure turned into a BakeError.
// Field meanings: System V ABI, ELF-64 object file format.
import CLibELF
import Foundation

/// A program header, class-independent.
public struct ELFSegment: Equatable, Sendable {
    public var type: UInt32
    public var flags: UInt32
    public var offset: UInt64
    public var virtualAddress: UInt64
    public var physicalAddress: UInt64
    public var fileSize: UInt64
    public var memorySize: UInt64
    public var alignment: UInt64

    public static let load: UInt32 = 1  // PT_LOAD
    public static let note: UInt32 = 4  // PT_NOTE
    public var isReadable: Bool { flags & 4 != 0 }
    public var isWritable: Bool { flags & 2 != 0 }
    public var isExecutable: Bool { flags & 1 != 0 }

    public var permissions: String {
        (isReadable ? "R" : "-") + (isWritable ? "W" : "-") + (isExecutable ? "X" : "-")
    }
}

/// A section header with its name resolved.
public struct ELFSection: Equatable, Sendable {
    public var name: String
    public var type: UInt32
    public var flags: UInt64
    public var address: UInt64
    public var offset: UInt64
    public var size: UInt64
}

/// A symbol table entry.
public struct ELFSymbol: Equatable, Sendable {
    public var name: String
    public var value: UInt64
    public var size: UInt64
    public var binding: UInt8  // STB_*
    public var type: UInt8  // STT_*
    public var sectionIndex: UInt16

    public var isUndefined: Bool { sectionIndex == 0 }  // SHN_UNDEF
    public var isWeak: Bool { binding == 2 }  // STB_WEAK
}

/// An ELF note.
public struct ELFNote: Equatable, Sendable {
    public var owner: String
    public var type: UInt32
    public var descriptor: [UInt8]
}

/// One parsed ELF file held in memory.
public struct ELFFile: Sendable {
    public enum FileClass: Equatable, Sendable { case elf32, elf64 }

    public let path: String
    public let bytes: [UInt8]
    public let fileClass: FileClass
    public let machine: Int
    public let type: Int  // ET_REL 1, ET_EXEC 2, ET_DYN 3
    public let entry: UInt64
    public let segments: [ELFSegment]
    public let sections: [ELFSection]
    public let symbols: [ELFSymbol]

    public static let typeRelocatable = 1
    public static let typeExecutable = 2

    public var typeName: String {
        switch type {
        case 1: return "relocatable object"
        case 2: return "executable"
        case 3: return "shared object"
        case 4: return "core file"
        default: return "ELF file of type \(type)"
        }
    }

    static let versionOnce: Void = { _ = elf_version(UInt32(EV_CURRENT)) }()

    static var lastError: String {
        String(cString: elf_errmsg(-1))
    }

    /// Reads and parses `path`.
    public init(path: String) throws(BakeError) {
        guard let data = FileManager.default.contents(atPath: path) else { throw .inputNotFound(path) }
        try self.init(bytes: [UInt8](data), path: path)
    }

    /// Parses an ELF image held in memory; `path` names it in errors.
    public init(bytes: [UInt8], path: String) throws(BakeError) {
        _ = Self.versionOnce
        self.path = path
        self.bytes = bytes
        guard bytes.count >= 16, bytes[0] == 0x7F, bytes[1] == 0x45, bytes[2] == 0x4C, bytes[3] == 0x46 else {
            throw .notELF(path: path)
        }
        var copy = bytes
        let parsed: Result<(FileClass, Int, Int, UInt64, [ELFSegment], [ELFSection], [ELFSymbol]), BakeError> =
            copy.withUnsafeMutableBytes { buffer in
                guard let elf = elf_memory(buffer.baseAddress!.assumingMemoryBound(to: CChar.self), buffer.count) else {
                    return .failure(.malformedELF(path: path, detail: Self.lastError))
                }
                defer { elf_end(elf) }
                return Result { () throws(BakeError) in try Self.parse(elf, path: path) }
            }
        let (fileClass, machine, type, entry, segments, sections, symbols) = try parsed.get()
        self.fileClass = fileClass
        self.machine = machine
        self.type = type
        self.entry = entry
        self.segments = segments
        self.sections = sections
        self.symbols = symbols
    }

    private static func parse(_ elf: OpaquePointer, path: String) throws(BakeError) -> (FileClass, Int, Int, UInt64, [ELFSegment], [ELFSection], [ELFSymbol]) {
        guard elf_kind(elf) == ELF_K_ELF else { throw .notELF(path: path) }
        let elfClass = gelf_getclass(elf)
        let fileClass: FileClass
        switch elfClass {
        case ELFCLASS32: fileClass = .elf32
        case ELFCLASS64: fileClass = .elf64
        default: throw .malformedELF(path: path, detail: "invalid ELF class \(elfClass)")
        }
        var header = GElf_Ehdr()
        guard gelf_getehdr(elf, &header) != nil else {
            throw .malformedELF(path: path, detail: "unreadable ELF header: \(lastError)")
        }

        var segmentCount = 0
        guard elf_getphdrnum(elf, &segmentCount) == 0 else {
            throw .malformedELF(path: path, detail: "unreadable program header count: \(lastError)")
        }
        var segments: [ELFSegment] = []
        for index in 0..<segmentCount {
            var program = GElf_Phdr()
            guard gelf_getphdr(elf, Int32(index), &program) != nil else {
                throw .malformedELF(path: path, detail: "unreadable program header \(index): \(lastError)")
            }
            segments.append(
                ELFSegment(
                    type: program.p_type, flags: program.p_flags, offset: program.p_offset,
                    virtualAddress: program.p_vaddr, physicalAddress: program.p_paddr,
                    fileSize: program.p_filesz, memorySize: program.p_memsz, alignment: program.p_align))
        }

        var stringIndex = 0
        guard elf_getshdrstrndx(elf, &stringIndex) == 0 else {
            throw .malformedELF(path: path, detail: "unreadable section name table index: \(lastError)")
        }
        var sections: [ELFSection] = []
        var symbols: [ELFSymbol] = []
        var section: OpaquePointer? = nil
        while true {
            section = elf_nextscn(elf, section)
            guard let current = section else { break }
            var sectionHeader = GElf_Shdr()
            guard gelf_getshdr(current, &sectionHeader) != nil else {
                throw .malformedELF(path: path, detail: "unreadable section header: \(lastError)")
            }
            let name = elf_strptr(elf, stringIndex, Int(sectionHeader.sh_name)).map { String(cString: $0) } ?? ""
            sections.append(
                ELFSection(
                    name: name, type: sectionHeader.sh_type, flags: sectionHeader.sh_flags,
                    address: sectionHeader.sh_addr, offset: sectionHeader.sh_offset, size: sectionHeader.sh_size))
            if sectionHeader.sh_type == UInt32(SHT_SYMTAB) {
                guard let data = elf_getdata(current, nil) else {
                    throw .malformedELF(path: path, detail: "unreadable symbol table: \(lastError)")
                }
                let entrySize = sectionHeader.sh_entsize
                let count = entrySize == 0 ? 0 : Int(sectionHeader.sh_size / entrySize)
                for index in 0..<count {
                    var symbol = GElf_Sym()
                    guard gelf_getsym(data, Int32(index), &symbol) != nil else {
                        throw .malformedELF(path: path, detail: "unreadable symbol \(index): \(lastError)")
                    }
                    let symbolName = elf_strptr(elf, Int(sectionHeader.sh_link), Int(symbol.st_name)).map { String(cString: $0) } ?? ""
                    symbols.append(
                        ELFSymbol(
                            name: symbolName, value: symbol.st_value, size: symbol.st_size,
                            binding: symbol.st_info >> 4, type: symbol.st_info & 0xF, sectionIndex: symbol.st_shndx))
                }
            }
        }
        return (fileClass, Int(header.e_machine), Int(header.e_type), header.e_entry, segments, sections, symbols)
    }

    /// The bytes a section occupies in the file (empty for SHT_NOBITS).
    public func contents(of section: ELFSection) -> ArraySlice<UInt8> {
        guard section.type != 8 /* SHT_NOBITS */, section.offset <= UInt64(bytes.count),
            section.size <= UInt64(bytes.count) - section.offset
        else { return [] }
        return bytes[Int(section.offset)..<Int(section.offset + section.size)]
    }

    /// The notes of every note section.
    public func notes() -> [ELFNote] {
        var notes: [ELFNote] = []
        for section in sections where section.type == 7 /* SHT_NOTE */ {
            let data = Array(contents(of: section))
            var offset = 0
            func word(_ at: Int) -> Int? {
                guard at + 4 <= data.count else { return nil }
                return Int(UInt32(data[at]) | UInt32(data[at + 1]) << 8 | UInt32(data[at + 2]) << 16 | UInt32(data[at + 3]) << 24)
            }
            while let nameSize = word(offset), let descriptorSize = word(offset + 4), let type = word(offset + 8) {
                let nameStart = offset + 12
                let descriptorStart = nameStart + (nameSize + 3) & ~3
                let end = descriptorStart + (descriptorSize + 3) & ~3
                guard nameSize >= 0, descriptorSize >= 0, descriptorStart + descriptorSize <= data.count else { break }
                let owner = String(decoding: data[nameStart..<nameStart + nameSize].prefix { $0 != 0 }, as: UTF8.self)
                notes.append(ELFNote(owner: owner, type: UInt32(type), descriptor: Array(data[descriptorStart..<descriptorStart + descriptorSize])))
                offset = end
            }
        }
        return notes
    }

    public func section(named name: String) -> ELFSection? {
        sections.first { $0.name == name }
    }

    public func symbol(named name: String) -> ELFSymbol? {
        symbols.first { $0.name == name && !$0.isUndefined }
    }

    /// The file offset holding virtual address `address`, if a segment maps it from the file.
    public func fileOffset(ofAddress address: UInt64) -> UInt64? {
        for segment in segments where segment.type == ELFSegment.load {
            if address >= segment.virtualAddress && address < segment.virtualAddress + segment.fileSize {
                return segment.offset + (address - segment.virtualAddress)
            }
        }
        return nil
    }
}

/// Checks that an application input is an x86-64 relocatable object or an
/// archive of them, using libelf's archive walk for `.a` files.
public enum InputValidator {
    public static func validateObject(at path: String) throws(BakeError) {
        guard FileManager.default.fileExists(atPath: path) else { throw .inputNotFound(path) }
        guard let data = FileManager.default.contents(atPath: path) else { throw .inputNotFound(path) }
        let bytes = [UInt8](data)
        if bytes.starts(with: Array("!<arch>\n".utf8)) {
            try validateArchive(bytes: bytes, path: path)
            return
        }
        let file = try ELFFile(bytes: bytes, path: path)
        try check(file)
    }

    static func check(_ file: ELFFile) throws(BakeError) {
        guard file.fileClass == .elf64 else { throw .wrongClass(path: file.path, found: "ELF32") }
        guard file.machine == 62 else { throw .wrongArchitecture(path: file.path, machine: file.machine) }
        guard file.type == ELFFile.typeRelocatable else {
            throw .wrongObjectType(path: file.path, expected: "relocatable object (.o)", found: file.typeName)
        }
    }

    static func validateArchive(bytes: [UInt8], path: String) throws(BakeError) {
        _ = ELFFile.versionOnce
        var copy = bytes
        let result: Result<Void, BakeError> = copy.withUnsafeMutableBytes { buffer in
            guard let archive = elf_memory(buffer.baseAddress!.assumingMemoryBound(to: CChar.self), buffer.count),
                elf_kind(archive) == ELF_K_AR
            else {
                return .failure(.malformedELF(path: path, detail: "unreadable archive: \(ELFFile.lastError)"))
            }
            defer { elf_end(archive) }
            var members = 0
            while let member = elf_begin(-1, ELF_C_READ_MMAP, archive) {  // elf_memory parents take READ_MMAP
                defer {
                    elf_next(member)
                    elf_end(member)
                }
                guard let header = elf_getarhdr(member) else {
                    return .failure(.malformedELF(path: path, detail: "unreadable archive member header"))
                }
                let name = String(cString: header.pointee.ar_name)
                if name.hasPrefix("/") { continue }  // symbol and name tables
                members += 1
                let memberPath = "\(path)(\(name))"
                guard elf_kind(member) == ELF_K_ELF else { return .failure(.notELF(path: memberPath)) }
                var memberSize = 0
                guard let raw = elf_rawfile(member, &memberSize) else {
                    return .failure(.malformedELF(path: memberPath, detail: ELFFile.lastError))
                }
                let memberBytes = Array(UnsafeBufferPointer(start: UnsafeRawPointer(raw).assumingMemoryBound(to: UInt8.self), count: memberSize))
                do throws(BakeError) {
                    try check(try ELFFile(bytes: memberBytes, path: memberPath))
                } catch {
                    return .failure(error)
                }
            }
            return members == 0 ? .failure(.malformedELF(path: path, detail: "archive has no object members")) : .success(())
        }
        try result.get()
    }
}
