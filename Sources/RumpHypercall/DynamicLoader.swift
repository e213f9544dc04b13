// rumpuser_dl_bootstrap: walk the objects the dynamic linker loaded and hand
// the rump kernel (1) the rump symbols of the main program and of every
// librump* object, (2) each object's link_set_modules, link_set_rump_components
// and link_set_evcnts entries. ELF-64 gABI: dynamic section, DT_HASH and
// DT_GNU_HASH, section headers.

import CRumpUser

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The in-memory dynamic symbol table of one loaded object.
struct DynamicSymbols {
    let base: UInt
    let symbols: UnsafePointer<Elf64_Sym>
    let count: Int
    let strings: UnsafePointer<CChar>

    init?(_ object: crumpuser_object) {
        guard let phdr = object.phdr else { return nil }
        var dynamic: UnsafePointer<Elf64_Dyn>?
        for index in 0..<Int(object.phnum) where phdr[index].p_type == UInt32(PT_DYNAMIC) {
            dynamic = UnsafePointer(bitPattern: object.base &+ UInt(phdr[index].p_vaddr))
        }
        guard var entry = dynamic else { return nil }
        base = object.base
        // glibc relocates d_ptr values in place; other loaders leave them
        // relative to the load base. A value below the base is relative.
        func address(_ value: UInt64) -> UnsafeRawPointer? {
            let raw = UInt(value)
            return UnsafeRawPointer(bitPattern: raw < object.base ? object.base &+ raw : raw)
        }
        var symbolTable: UnsafeRawPointer?
        var stringTable: UnsafeRawPointer?
        var symbolCount = 0
        while entry.pointee.d_tag != Int64(DT_NULL) {
            let value = entry.pointee.d_un.d_val
            switch entry.pointee.d_tag {
            case Int64(DT_SYMTAB): symbolTable = address(value)
            case Int64(DT_STRTAB): stringTable = address(value)
            case Int64(DT_HASH):
                if let hash = address(value) { symbolCount = max(symbolCount, Int(hash.load(fromByteOffset: 4, as: UInt32.self))) }
            case Int64(DT_GNU_HASH):
                if let hash = address(value) { symbolCount = max(symbolCount, gnuHashSymbolCount(hash)) }
            default: break
            }
            entry += 1
        }
        guard let symbolTable, let stringTable, symbolCount > 0 else { return nil }
        symbols = symbolTable.assumingMemoryBound(to: Elf64_Sym.self)
        count = symbolCount
        strings = stringTable.assumingMemoryBound(to: CChar.self)
    }

    /// The run-time address of a symbol this object defines, if any.
    func definition(of name: String) -> UInt? {
        for index in 0..<count {
            let symbol = symbols[index]
            guard symbol.st_shndx != UInt16(SHN_UNDEF), symbol.st_value != 0 else { continue }
            if strcmp(strings + Int(symbol.st_name), name) == 0 { return base &+ UInt(symbol.st_value) }
        }
        return nil
    }
}

/// DT_GNU_HASH keeps no symbol count: it is one past the last symbol of the
/// longest-indexed chain (chains end with an entry whose low bit is set).
func gnuHashSymbolCount(_ table: UnsafeRawPointer) -> Int {
    let words = table.assumingMemoryBound(to: UInt32.self)
    let bucketCount = Int(words[0])
    let firstHashed = Int(words[1])
    let bloomWords = Int(words[2])  // 64-bit words
    let buckets = words + 4 + bloomWords * 2
    let chains = buckets + bucketCount
    var last = 0
    for index in 0..<bucketCount { last = max(last, Int(buckets[index])) }
    if last < firstHashed { return firstHashed }
    while chains[last - firstHashed] & 1 == 0 { last += 1 }
    return last + 1
}

/// A link set (array of pointers between __start_X and __stop_X) of one object.
struct LinkSet {
    let start: UnsafePointer<UnsafeRawPointer?>
    let count: Int
}

/// Finds link set `name` of `object`: first through its exported
/// __start_/__stop_ symbols, else through the section headers of its file
/// (linkers may give those symbols hidden visibility).
func linkSet(named name: String, in object: crumpuser_object, symbols: DynamicSymbols?, sections: [String: (UInt, UInt)]?) -> LinkSet? {
    if let symbols, let start = symbols.definition(of: "__start_" + name), let stop = symbols.definition(of: "__stop_" + name),
        stop >= start
    {
        return LinkSet(start: UnsafePointer(bitPattern: start)!, count: Int(stop - start) / MemoryLayout<UnsafeRawPointer>.size)
    }
    if let (address, size) = sections?[name], size > 0 {
        return LinkSet(start: UnsafePointer(bitPattern: object.base &+ address)!, count: Int(size) / MemoryLayout<UnsafeRawPointer>.size)
    }
    return nil
}

/// Reads the allocated sections named link_set_* from an ELF file: name →
/// (link-time address, size).
func linkSetSections(ofFile path: UnsafePointer<CChar>) -> [String: (UInt, UInt)] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return [:] }
    defer { close(fd) }
    var header = Elf64_Ehdr()
    guard pread(fd, &header, MemoryLayout<Elf64_Ehdr>.size, 0) == MemoryLayout<Elf64_Ehdr>.size,
        header.e_ident.0 == 0x7F, header.e_ident.1 == 0x45, header.e_ident.2 == 0x4C, header.e_ident.3 == 0x46,
        header.e_ident.4 == UInt8(ELFCLASS64), header.e_shentsize == UInt16(MemoryLayout<Elf64_Shdr>.size),
        header.e_shnum > 0, header.e_shstrndx < header.e_shnum
    else { return [:] }
    var sections = [Elf64_Shdr](repeating: Elf64_Shdr(), count: Int(header.e_shnum))
    let tableSize = Int(header.e_shnum) * MemoryLayout<Elf64_Shdr>.size
    guard sections.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, tableSize, off_t(header.e_shoff)) }) == tableSize else {
        return [:]
    }
    let names = sections[Int(header.e_shstrndx)]
    guard names.sh_size > 0, names.sh_size < 1 << 24 else { return [:] }
    var nameBytes = [CChar](repeating: 0, count: Int(names.sh_size) + 1)
    guard nameBytes.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, Int(names.sh_size), off_t(names.sh_offset)) }) == Int(names.sh_size)
    else { return [:] }
    var result: [String: (UInt, UInt)] = [:]
    for section in sections where section.sh_flags & UInt64(SHF_ALLOC) != 0 && UInt64(section.sh_name) < names.sh_size {
        let name = nameBytes.withUnsafeBufferPointer { String(cString: $0.baseAddress! + Int(section.sh_name)) }
        if name.hasPrefix("link_set_") { result[name] = (UInt(section.sh_addr), UInt(section.sh_size)) }
    }
    return result
}

/// Copies the rump-namespace symbols (names starting with "rump", "RUMP" or
/// "__") of `table` into the growing tables, with addresses made absolute.
func collectRumpSymbols(_ table: DynamicSymbols, symbols: inout [Elf64_Sym], strings: inout [CChar]) {
    for index in 0..<table.count {
        var symbol = table.symbols[index]
        guard symbol.st_shndx != UInt16(SHN_UNDEF), symbol.st_value != 0 else { continue }
        let name = table.strings + Int(symbol.st_name)
        guard strncmp(name, "rump", 4) == 0 || strncmp(name, "RUMP", 4) == 0 || strncmp(name, "__", 2) == 0 else { continue }
        symbol.st_name = UInt32(strings.count)
        symbol.st_value = UInt64(table.base &+ UInt(symbol.st_value))
        symbols.append(symbol)
        strings.append(contentsOf: UnsafeBufferPointer(start: name, count: strlen(name) + 1))
    }
}

/// The objects mapped in this process, in dl_iterate_phdr order.
func loadedObjects() -> [crumpuser_object] {
    var objects = [crumpuser_object](repeating: crumpuser_object(), count: 64)
    while true {
        let capacity = objects.count
        let count = objects.withUnsafeMutableBufferPointer { crumpuser_loaded_objects($0.baseAddress, capacity) }
        if count <= capacity { return Array(objects.prefix(count)) }
        objects = [crumpuser_object](repeating: crumpuser_object(), count: count + 16)
    }
}

public typealias RumpModinitFunction = @convention(c) (UnsafePointer<OpaquePointer?>?, Int) -> Void
public typealias RumpSymloadFunction = @convention(c) (UnsafeMutableRawPointer?, UInt64, UnsafeMutablePointer<CChar>?, UInt64) -> Int32
public typealias RumpComponentLoadFunction = @convention(c) (OpaquePointer?) -> Void
public typealias RumpEvcntAttachFunction = @convention(c) (OpaquePointer?) -> Void

/// Hands the linked-in kernel pieces to the rump kernel. Symbols first (one
/// symload call with the tables of the main program and every librump*
/// object; the tables are never freed because the kernel keeps them), then,
/// object by object from the last loaded to the first, modules, components
/// and event counters. `evcntattach` is only called for objects that have a
/// link_set_evcnts section (see rumpuser.h).
@_spi(RumpUserABI) @_cdecl("rumpuser_dl_bootstrap")
public func rumpuserDlBootstrap(
    _ modinit: RumpModinitFunction?, _ symload: RumpSymloadFunction?, _ compload: RumpComponentLoadFunction?,
    _ evcntattach: RumpEvcntAttachFunction?
) {
    let objects = loadedObjects()
    guard !objects.isEmpty else { return }
    let tables = objects.map { DynamicSymbols($0) }

    var symbols: [Elf64_Sym] = []
    var strings: [CChar] = []
    for index in objects.indices.reversed() {
        let object = objects[index]
        let isMain = object.name.pointee == 0
        guard isMain || strstr(object.name, "librump") != nil, let table = tables[index] else { continue }
        collectRumpSymbols(table, symbols: &symbols, strings: &strings)
    }
    if let symload, !symbols.isEmpty {
        let symbolBytes = symbols.count * MemoryLayout<Elf64_Sym>.size
        let symbolCopy = malloc(symbolBytes)!
        symbols.withUnsafeBytes { symbolCopy.copyMemory(from: $0.baseAddress!, byteCount: symbolBytes) }
        let stringCopy = malloc(strings.count)!.assumingMemoryBound(to: CChar.self)
        strings.withUnsafeBufferPointer { stringCopy.initialize(from: $0.baseAddress!, count: $0.count) }
        _ = symload(symbolCopy, UInt64(symbolBytes), stringCopy, UInt64(strings.count))
    }

    for index in objects.indices.reversed() {
        let object = objects[index]
        let table = tables[index]
        var sections: [String: (UInt, UInt)]?
        func find(_ name: String) -> LinkSet? {
            if let set = linkSet(named: name, in: object, symbols: table, sections: nil) { return set }
            if sections == nil {
                // The main program has no name; the vDSO's has no slash and
                // no file behind it.
                if object.name.pointee == 0 {
                    sections = linkSetSections(ofFile: "/proc/self/exe")
                } else if strchr(object.name, 0x2F) != nil {
                    sections = linkSetSections(ofFile: object.name)
                } else {
                    sections = [:]
                }
            }
            return linkSet(named: name, in: object, symbols: nil, sections: sections)
        }
        if let modinit, let modules = find("link_set_modules"), modules.count > 0 {
            modules.start.withMemoryRebound(to: OpaquePointer?.self, capacity: modules.count) { modinit($0, modules.count) }
        }
        if let compload, let components = find("link_set_rump_components") {
            for entry in 0..<components.count { compload(OpaquePointer(components.start[entry])) }
        }
        if let evcntattach, let counters = find("link_set_evcnts") {
            for entry in 0..<counters.count { evcntattach(OpaquePointer(counters.start[entry])) }
        }
    }
}
