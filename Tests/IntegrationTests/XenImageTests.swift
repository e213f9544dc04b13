// Xen images: bake Examples/hello for xen_pv and read its Xen ELF notes
// twice, with UnikernelBake's libelf reader and with binutils' `readelf -n`,
// comparing every note's type and value with the libxen-dev header
// constants (through CXen) and with the image's own symbols. No Xen host
// runs here, so this is what can be checked of a Xen image (Docs/xen.md).
import CXen
import Foundation
import Testing
import UnikernelBake

enum XenImages {
    static func bake(keepSymbols: Bool) throws -> String {
        let output = Integration.imageDirectory + "/hello-xen\(keepSymbols ? "-symbols" : "").img"
        let baker = try Baker(sourceRoot: Integration.sourceRoot)
        let result = try baker.bake(BakeRequest(
            configuration: "xen_pv", output: output, inputs: [Integration.sourceRoot + "/Examples/hello"], keepSymbols: keepSymbols))
        #expect(result.format == .pvh)
        return output
    }

    static let withSymbols: Result<String, Error> = Result { try bake(keepSymbols: true) }
    static let stripped: Result<String, Error> = Result { try bake(keepSymbols: false) }

    /// `readelf -n` output for the Xen owner: (type, descriptor bytes) per
    /// note, in file order. readelf does not know Xen's note names; it prints
    /// unknown types as "Unknown note type: (0x...)" and a few numbers with
    /// generic names (1 NT_VERSION, 2 NT_ARCH, 4 GO BUILDID), mapped back here.
    static func readelfNotes(_ path: String) throws -> [(type: UInt32, descriptor: [UInt8])] {
        let (status, data) = try Integration.toolOutput("/usr/bin/readelf", ["-n", "-W", path])
        #expect(status == 0)
        let genericNames: [String: UInt32] = ["NT_VERSION (version)": 1, "NT_ARCH (architecture)": 2, "GO BUILDID": 4]
        var notes: [(type: UInt32, descriptor: [UInt8])] = []
        // With -W each note is one line: "Xen  0x00000008<TAB>Unknown note
        // type: (0x00000005)<TAB>description data: 78 65 6e ...".
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            let fields = line.split(separator: "\t").map { $0.trimmingCharacters(in: .whitespaces) }
            guard fields.count == 3, fields[0].hasPrefix("Xen ") else { continue }
            let type: UInt32?
            if fields[1].hasPrefix("Unknown note type"), let open = fields[1].range(of: "(0x") {
                type = UInt32(fields[1][open.upperBound...].prefix { $0.isHexDigit }, radix: 16)
            } else {
                type = genericNames[fields[1]]
            }
            let size = Int(fields[0].split(separator: " ").last.map { $0.dropFirst(2) } ?? "", radix: 16)
            let bytes = fields[2].dropFirst("description data:".count).split(separator: " ").compactMap { UInt8($0, radix: 16) }
            #expect(type != nil && size == bytes.count, "unparsed readelf line: \(line)")
            if let type { notes.append((type, bytes)) }
        }
        return notes
    }

    /// Direct call graph of an image's code from `objdump -d`: function ->
    /// functions it calls or jumps to (tail calls); "<indirect>" for `call *...`.
    static func callGraph(_ path: String) throws -> [String: Set<String>] {
        let (status, data) = try Integration.toolOutput("/usr/bin/objdump", ["-d", "--no-show-raw-insn", path])
        #expect(status == 0, "objdump failed on \(path)")
        var graph: [String: Set<String>] = [:]
        var current: String?
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            // "0000000000129000 <_start_xen_pv>:"
            if line.hasSuffix(">:"), let open = line.firstIndex(of: "<") {
                current = String(line[line.index(after: open)..<line.index(line.endIndex, offsetBy: -2)])
                graph[current!] = []
                continue
            }
            guard let function = current else { continue }
            let text = line.split(separator: "\t").last.map(String.init) ?? ""
            guard text.hasPrefix("call") || text.hasPrefix("jmp") else { continue }
            if text.contains("*") {
                // A jmp through memory is a switch's jump table inside the
                // function; only a call through a register or memory leaves it.
                if text.hasPrefix("call") { graph[function, default: []].insert("<indirect>") }
            } else if let open = text.firstIndex(of: "<"), let close = text.firstIndex(of: ">") {
                let target = text[text.index(after: open)..<close].split(separator: "+").first.map(String.init) ?? ""
                if target != function { graph[function, default: []].insert(target) }
            }
        }
        return graph
    }

    static func littleEndian(_ value: UInt64, count: Int = 8) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) } }
    static func string(_ text: String) -> [UInt8] { Array(text.utf8) + [0] }
}

@Suite(.serialized) struct XenImageTests {
    @Test func aBakedXenImageCarriesEveryNoteXenNeeds() throws {
        let path = try XenImages.withSymbols.get()
        let image = try ELFFile(path: path)
        // (Values are taken out of `image` first: an expectation that
        // mentions the ELFFile would print the whole file when it fails.)
        let isX86_64ELF64 = image.fileClass == .elf64 && image.machine == 62
        #expect(isX86_64ELF64)
        let notes = XenImageNotes(image)
        let problems = notes.problems(in: image)
        #expect(problems == [])
        let symbols = ["_start_xen_pv", "cxen_hypercall_page", "_start_pvh", "cxen_configuration_buffer"].map { image.symbol(named: $0) }
        let entry = try #require(symbols[0]?.value)
        let hypercallPage = try #require(symbols[1]?.value)
        let pvhEntry = try #require(symbols[2]?.value)
        #expect(notes.entry == entry)
        #expect(notes.hypercallPage == hypercallPage)
        #expect(hypercallPage % 4096 == 0)
        #expect(symbols[1]?.size == 4096)
        // xen_boot.S's buffer for a PVH domain's xenstore configuration.
        #expect(symbols[3]?.size == UInt64(XENSTORE_PAYLOAD_MAX) + 1)
        #expect(notes.phys32Entry == pvhEntry)
        #expect(notes.virtualBase == 0 && notes.physicalAddressOffset == 0)
        #expect(notes.xenVersion == "xen-3.0" && notes.loader == "generic" && notes.guestOS == "swift-rumprun")
        #expect(notes.features == "!writable_page_tables" && notes.paeMode == "yes")

        // Each note by its header number, from the raw notes libelf read.
        let expected: [(Int32, [UInt8])] = [
            (XEN_ELFNOTE_PHYS32_ENTRY, XenImages.littleEndian(pvhEntry, count: 4)),
            (XEN_ELFNOTE_GUEST_OS, XenImages.string("swift-rumprun")),
            (XEN_ELFNOTE_GUEST_VERSION, XenImages.string("0.1")),
            (XEN_ELFNOTE_XEN_VERSION, XenImages.string("xen-3.0")),
            (XEN_ELFNOTE_LOADER, XenImages.string("generic")),
            (XEN_ELFNOTE_VIRT_BASE, XenImages.littleEndian(0)),
            (XEN_ELFNOTE_PADDR_OFFSET, XenImages.littleEndian(0)),
            (XEN_ELFNOTE_ENTRY, XenImages.littleEndian(entry)),
            (XEN_ELFNOTE_HYPERCALL_PAGE, XenImages.littleEndian(hypercallPage)),
            (XEN_ELFNOTE_FEATURES, XenImages.string("!writable_page_tables")),
            (XEN_ELFNOTE_PAE_MODE, XenImages.string("yes")),
        ]
        let raw = image.notes().filter { $0.owner == "Xen" }
        #expect(raw.map(\.type) == expected.map { UInt32($0.0) })
        #expect(raw.map(\.descriptor) == expected.map(\.1))

        // The same notes as binutils reads them through the PT_NOTE segment.
        let readelf = try XenImages.readelfNotes(path)
        #expect(readelf.map(\.type) == expected.map { UInt32($0.0) })
        #expect(readelf.map(\.descriptor) == expected.map(\.1))

        // The entry is 64-bit code in the text segment; the hypercall page
        // is filled with int3 until Xen writes the stubs.
        let offset = image.fileOffset(ofAddress: hypercallPage).map(Int.init) ?? image.bytes.count
        let pageBytes = Array(image.bytes[min(offset, image.bytes.count)..<min(offset + 4096, image.bytes.count)])
        #expect(pageBytes.count == 4096 && pageBytes.allSatisfy { $0 == 0xCC })
        // The PV notes' types are what elfnote.h says (no hand numbers above).
        #expect([XEN_ELFNOTE_ENTRY, XEN_ELFNOTE_HYPERCALL_PAGE, XEN_ELFNOTE_VIRT_BASE, XEN_ELFNOTE_PADDR_OFFSET,
                 XEN_ELFNOTE_XEN_VERSION, XEN_ELFNOTE_GUEST_OS, XEN_ELFNOTE_LOADER, XEN_ELFNOTE_PHYS32_ENTRY] == [1, 2, 3, 4, 5, 6, 8, 18])
    }

    @Test func theDefaultStrippedImageKeepsTheNotesAndLinksTheXenPlatform() throws {
        let symbols = try ELFFile(path: try XenImages.withSymbols.get())
        let stripped = try ELFFile(path: try XenImages.stripped.get())
        let strippedEntry = stripped.symbol(named: "_start_xen_pv")
        #expect(strippedEntry == nil, "bake strips by default")
        let notes = XenImageNotes(stripped)
        let problems = notes.problems(in: stripped)
        #expect(problems == [])
        let unstrippedNotes = XenImageNotes(symbols)
        #expect(notes == unstrippedNotes, "stripping moves nothing")
        let strippedPath = stripped.path
        #expect(try XenImages.readelfNotes(strippedPath).count == 11)
        // The image links XenPVKit's strong hooks, which replace
        // CPUPrimitives' weak "not on Xen" ones.
        // (bmk_xen_wall_clock is linked only by applications that read the
        // wall clock; hello does not, so --gc-sections drops it.)
        for name in ["bmk_xen_attach", "bmk_xen_console_putc", "bmk_xen_exit", "bmk_xen_tsc_scale", "xen_pv_main"] {
            let symbol = symbols.symbol(named: name)
            #expect(symbol != nil, "\(name) missing")
            #expect(symbol?.isWeak == false && symbol?.isUndefined == false, "\(name)")
        }
    }

    /// Off Xen, the Xen image is a hw image: the PVH entry's CPUID scan
    /// (every 0x100 step from 0x40000000) finds no Xen leaves under QEMU
    /// TCG, the hooks do nothing, and hello runs and exits as on hw.
    @Test(arguments: ["microvm", "pc"])
    func theXenImageBootsOnQEMUAsAHwImage(machine: String) throws {
        let image = try XenImages.stripped.get()
        let run = try Integration.run(["run", "qemu", "-i", "--timeout", "120", "--machine", machine, "-N", "box", image, "--", "5"])
        #expect(run.stdout.split(separator: "\n").map(String.init) == [
            "Hello from swift-rumprun!",
            "argv[0] = box",
            "argv[1] = 5",
            "GREETING is not set",
            "hostname = box",
            "exiting with status 5",
        ])
        #expect(!run.stdout.contains("Xen"))
        #expect(run.status == 5, "stderr: \(run.stderr)")
    }

    /// The PVH hook runs before the hw platform has a heap: no code
    /// reachable from the PVH hooks may allocate. (The PV entry makes its
    /// own heap first; XenPVImageTests checks its start of day.)
    @Test func theXenStartOfDayCodeReachesNoAllocator() throws {
        let graph = try XenImages.callGraph(try XenImages.withSymbols.get())
        var roots = ["bmk_xen_attach", "bmk_xen_exit", "bmk_xen_console_putc", "bmk_xen_tsc_scale"]
        for root in roots { #expect(graph[root] != nil, "\(root) not in the image") }
        // Linked only when the application reads the wall clock.
        if graph["bmk_xen_wall_clock"] != nil { roots.append("bmk_xen_wall_clock") }
        let allocators: Set = ["swift_allocObject", "swift_slowAlloc", "swift_allocBox", "posix_memalign", "malloc", "bmk_heap_allocate"]
        #expect(allocators.contains { graph[$0] != nil }, "the allocators are in the image, so the check can fail")
        var reached: Set<String> = []
        var paths: [String] = []
        var work = roots.map { ($0, [$0]) }
        while let (function, path) = work.popLast() {
            guard reached.insert(function).inserted else { continue }
            if allocators.contains(function) { paths.append(path.joined(separator: " -> ")) }
            for callee in graph[function] ?? [] { work.append((callee, path + [callee])) }
        }
        #expect(paths == [])
        #expect(reached.contains("bmk_xen_attach") && reached.count > 20)
        // Indirect calls are only the hypercall page's stubs (and the
        // runtime's object destroy, reached through a release of nothing).
        let indirect = reached.filter { graph[$0]?.contains("<indirect>") == true }
        #expect(indirect.isSubset(of: ["cxen_hypercall", "_swift_embedded_invoke_heap_object_destroy"]), "\(indirect)")
    }

    /// The launcher takes the baked image as it is: a PVH domain whose
    /// kernel is the image, and a configuration the guest's xenstore read
    /// (XenPVHConfiguration) can hand to the hw boot whole.
    @Test func theLauncherDryRunStartsTheBakedImageAsAPVHDomain() throws {
        let image = try XenImages.stripped.get()
        let run = try Integration.run(["run", "xen", "--dry-run", "-N", "web", "-e", "GREETING=hi", image, "--", "3"])
        #expect(run.status == 0, "stderr: \(run.stderr)")
        let lines = run.stdout.split(separator: "\n").map(String.init)
        #expect(lines.contains("type = \"pvh\""))
        #expect(lines.contains("kernel = \"\(image)\""))
        #expect(lines.contains("on_crash = \"preserve\""))
        let write = try #require(lines.first { $0.hasPrefix("xenstore-write /local/domain/DOMID/rumprun/cfg ") })
        let json = String(write.dropFirst("xenstore-write /local/domain/DOMID/rumprun/cfg ".count)).trimmingCharacters(in: CharacterSet(charactersIn: "'"))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        #expect(object["argv"] as? [String] == ["web", "3"])
        #expect(object["hostname"] as? String == "web")
        // XenPVHConfiguration hands over at most 4095 bytes (and a NUL).
        #expect(json.utf8.count < 4096 && json.utf8.count < Int(XENSTORE_PAYLOAD_MAX))
    }

    @Test func hwImagesStayFreeOfXen() throws {
        let image = try ELFFile(path: try Integration.hello.get())
        let notes = XenImageNotes(image)
        #expect(notes.entry == nil && notes.hypercallPage == nil)
        #expect(notes.phys32Entry != nil)
    }

    @Test func theCheckerNamesWhatAXenImageLacks() throws {
        // A hw image is a valid PVH image but not a Xen PV one.
        let image = try ELFFile(path: try Integration.hello.get())
        let problems = XenImageNotes(image).problems(in: image)
        #expect(problems.contains("no XEN_ELFNOTE_ENTRY note (PV entry)"))
        #expect(problems.contains("no XEN_ELFNOTE_HYPERCALL_PAGE note"))
        #expect(problems.contains("XEN_ELFNOTE_XEN_VERSION is missing, expected 'xen-3.0'"))
        #expect(!problems.contains { $0.contains("PHYS32") })
    }
}
