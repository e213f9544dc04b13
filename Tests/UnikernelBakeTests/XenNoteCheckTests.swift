// XenImageNotes against small images: the real xen_boot.S (CXen) linked
// with the image skeleton, then deliberately broken copies of it, each
// producing one named problem. Fast; the full bake is in IntegrationTests.
import Foundation
import Testing

@testable import UnikernelBake

@Suite struct XenNoteCheckTests {
    let directory = Fixtures.temporaryDirectory()
    static let sourceRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static var xenBoot: String { (try? String(contentsOfFile: sourceRoot + "/Sources/CXen/xen_boot.S", encoding: .utf8)) ?? "" }

    /// The skeleton image plus `xenBoot` (assembled against CXen's include
    /// directory, so <xen/elfnote.h> is libxen-dev's) and stand-ins for the
    /// Swift and C symbols it calls.
    func image(_ xenBoot: String = XenNoteCheckTests.xenBoot) throws -> ELFFile {
        let skeleton = try Fixtures.compile(LinkerScript.skeletonAssembly(entryCode: "    hlt", extraSections: """
                .text
                .globl xen_pv_main
            xen_pv_main: ud2
                .data
                .globl __stack_chk_guard
            __stack_chk_guard: .quad 0
                .globl bmk_boot_tsc
            bmk_boot_tsc: .quad 0
            """), name: "skeleton", in: directory)
        let input = directory + "/xen_boot.S"
        try xenBoot.write(toFile: input, atomically: true, encoding: .utf8)
        let object = directory + "/xen_boot.o"
        try Toolchain.run(Fixtures.clang, ["--target=x86_64-unknown-none-elf", "-ffreestanding", "-I", Self.sourceRoot + "/Sources/CXen/include", "-c", input, "-o", object])
        return try ELFFile(path: try Fixtures.link([skeleton, object], in: directory))
    }

    @Test func theRealNotesPassEveryCheck() throws {
        #expect(!Self.xenBoot.isEmpty)
        let image = try image()
        let notes = XenImageNotes(image)
        let problems = notes.problems(in: image)
        let symbols = ["_start_xen_pv", "cxen_hypercall_page", "_start_pvh"].map { image.symbol(named: $0)?.value }
        #expect(problems == [])
        #expect(notes.entry == symbols[0] && symbols[0] != nil)
        #expect(notes.hypercallPage == symbols[1] && symbols[1] != nil)
        #expect(notes.phys32Entry == symbols[2] && symbols[2] != nil)
    }

    @Test func brokenNotesAreNamed() throws {
        func problems(replacing old: String, with new: String) throws -> [String] {
            #expect(Self.xenBoot.contains(old), "fixture text moved: \(old)")
            let image = try image(Self.xenBoot.replacingOccurrences(of: old, with: new))
            return XenImageNotes(image).problems(in: image)
        }
        #expect(try problems(replacing: "\"xen-3.0\"", with: "\"xen-2.0\"") == ["XEN_ELFNOTE_XEN_VERSION is 'xen-2.0', expected 'xen-3.0'"])
        #expect(try problems(replacing: "\"generic\"", with: "\"linux\"") == ["XEN_ELFNOTE_LOADER is 'linux', expected 'generic'"])
        let moved = try problems(replacing: "XEN_ELFNOTE_VIRT_BASE,      0", with: "XEN_ELFNOTE_VIRT_BASE,      0x200000")
        #expect(moved.count == 3 && moved.allSatisfy { $0.contains("would be mapped at") && $0.contains("VIRT_BASE 0x200000, PADDR_OFFSET 0x0") })
        let misaligned = try problems(replacing: "    .globl cxen_hypercall_page\n", with: "    .byte 0\n    .globl cxen_hypercall_page\n")
        // Still a whole page of text (the PV entry follows it), but not aligned.
        #expect(misaligned.count == 1 && misaligned[0].hasSuffix("is not page aligned"))
        let noEntry = try problems(replacing: "xen_note_quad   XEN_ELFNOTE_ENTRY,          _start_xen_pv", with: "")
        #expect(noEntry == ["no XEN_ELFNOTE_ENTRY note (PV entry)"])
        let dataEntry = try problems(replacing: "XEN_ELFNOTE_ENTRY,          _start_xen_pv", with: "XEN_ELFNOTE_ENTRY,          cxen_shared_info_page")
        #expect(dataEntry.count == 1 && dataEntry[0].hasSuffix("(XEN_ELFNOTE_ENTRY) is not in an executable segment"))
    }
}
