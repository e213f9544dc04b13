// Image writing and checking: a known-good fixture image in both formats,
// and deliberately broken images that each produce one named problem.
import Foundation
import Testing

@testable import UnikernelBake

@Suite struct ImageTests {
    let directory = Fixtures.temporaryDirectory()

    @Test func linkerScriptLaysOutTheImage() {
        let text = LinkerScript().text
        #expect(text.contains("ENTRY(_start_multiboot)"))
        #expect(text.contains(". = 0x100000;"))
        #expect(text.contains("text   PT_LOAD FLAGS(5)"))
        #expect(text.contains("rodata PT_LOAD FLAGS(4)"))
        #expect(text.contains("data   PT_LOAD FLAGS(6)"))
        #expect(text.contains("PT_NOTE"))
        // The multiboot slot comes first in .text.
        let slot = text.range(of: "KEEP(*(.multiboot))")!
        let code = text.range(of: "*(.text .text.*)")!
        #expect(slot.lowerBound < code.lowerBound)
        var moved = LinkerScript()
        moved.loadAddress = 0x20_0000
        #expect(moved.text.contains(". = 0x200000;"))
    }

    @Test func multibootHeaderChecksumCancels() {
        let header = MultibootHeader()
        #expect(MultibootHeader.magic &+ header.flags &+ header.checksum == 0)
        #expect(MultibootHeader.find(in: [0, 0, 0, 0] + header.bytes) == 4)
        #expect(MultibootHeader.find(in: [UInt8](repeating: 0, count: 8192) + header.bytes) == nil)
        var corrupt = header.bytes
        corrupt[8] ^= 1
        #expect(MultibootHeader.find(in: corrupt) == nil)
    }

    @Test func pvhImagePassesEveryCheck() throws {
        let linked = try Fixtures.linkedImage(in: directory)
        let image = try ELFFile(bytes: try ImageWriter.pvhImage(from: linked), path: "pvh.img")
        let report = try ImageChecker.check(image)
        #expect(report.format == .pvh)
        #expect(report.pvhEntry == linked.symbol(named: "_start_pvh")?.value)
        #expect(report.multibootHeaderOffset == nil)
        let loads = image.segments.filter { $0.type == ELFSegment.load }
        #expect(loads.map(\.permissions) == ["R-X", "R--", "RW-"])
        #expect(loads.first?.virtualAddress == 0x10_0000)
    }

    @Test func multibootImageCarriesTheHeaderAndTheSameSegments() throws {
        let linked = try Fixtures.linkedImage(in: directory)
        let bytes = try ImageWriter.multibootImage(from: linked)
        let image = try ELFFile(bytes: bytes, path: "mb.img")
        let report = try ImageChecker.check(image)
        #expect(report.format == .multiboot)
        #expect(image.fileClass == .elf32 && image.machine == 3)
        #expect(report.multibootHeaderOffset == 4096)
        #expect(image.entry == linked.entry)
        let original = linked.segments.filter { $0.type == ELFSegment.load }
        let converted = image.segments.filter { $0.type == ELFSegment.load }
        #expect(original.map(\.virtualAddress) == converted.map(\.virtualAddress))
        #expect(original.map(\.memorySize) == converted.map(\.memorySize))
        #expect(original.map(\.flags) == converted.map(\.flags))
        // Segment bytes are identical apart from the header slot.
        for (from, to) in zip(original, converted) {
            var expected = Array(linked.bytes[Int(from.offset)..<Int(from.offset + from.fileSize)])
            if from.isExecutable { expected.replaceSubrange(0..<12, with: MultibootHeader().bytes) }
            #expect(Array(bytes[Int(to.offset)..<Int(to.offset + to.fileSize)]) == expected)
        }
    }

    @Test func writableExecutableSegmentsAreRefused() throws {
        let object = try Fixtures.compile(Fixtures.imageAssembly, name: "rwx", in: directory)
        let script = LinkerScript().text.replacingOccurrences(of: "text   PT_LOAD FLAGS(5)", with: "text   PT_LOAD FLAGS(7)")
        let image = try ELFFile(path: try Fixtures.link([object], script: script, in: directory))
        let report = ImageChecker.inspect(try ELFFile(bytes: try ImageWriter.pvhImage(from: image), path: "rwx.img"))
        #expect(report.problems == ["segment 0x100000-0x\(String(0x100000 + image.segments[0].memorySize, radix: 16)) is both writable and executable"])
    }

    @Test func missingPVHNoteIsRefused() throws {
        let assembly = Fixtures.imageAssembly.replacingOccurrences(of: ".long 4, 4, 18", with: ".long 4, 4, 17")
        let linked = try Fixtures.linkedImage(in: directory, assembly: assembly)
        let report = ImageChecker.inspect(try ELFFile(bytes: try ImageWriter.pvhImage(from: linked), path: "nonote.img"))
        #expect(report.problems == ["no Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"])
    }

    @Test func undefinedSymbolsAreRefused() throws {
        let assembly = Fixtures.imageAssembly + "\n    .text\n    call missing_function\n"
        let object = try Fixtures.compile(assembly, name: "undefined", in: directory)
        let linked = try ELFFile(path: try Fixtures.link([object], extraFlags: ["--unresolved-symbols=ignore-all"], in: directory))
        let report = ImageChecker.inspect(try ELFFile(bytes: try ImageWriter.pvhImage(from: linked), path: "undefined.img"))
        #expect(report.problems == ["undefined symbols: missing_function"])
    }

    @Test func multibootHeaderInAnELF64ImageIsRefused() throws {
        let linked = try Fixtures.linkedImage(in: directory)
        var bytes = linked.bytes
        let offset = Int(linked.fileOffset(ofAddress: linked.symbol(named: "multiboot_header")!.value)!)
        bytes.replaceSubrange(offset..<offset + 12, with: MultibootHeader().bytes)
        let report = ImageChecker.inspect(try ELFFile(bytes: bytes, path: "both.img"))
        #expect(report.problems == ["a multiboot header in the first 8 KiB: QEMU would try multiboot and refuse this ELF64 file"])
    }

    @Test func entryOutsideTextIsRefused() throws {
        let object = try Fixtures.compile(Fixtures.imageAssembly, name: "entry", in: directory)
        let script = LinkerScript().text.replacingOccurrences(of: "ENTRY(_start_multiboot)", with: "ENTRY(counter)")
        let linked = try ELFFile(path: try Fixtures.link([object], script: script, in: directory))
        let report = ImageChecker.inspect(try ELFFile(bytes: try ImageWriter.pvhImage(from: linked), path: "entry.img"))
        #expect(report.problems.count == 1)
        #expect(report.problems.first?.hasPrefix("entry point 0x") == true)
    }

    @Test func foreignFilesAreNotImages() throws {
        let arm = try Fixtures.compile("int main(void) { return 0; }", name: "armexe", target: "aarch64-none-elf", language: "c", in: directory)
        let report = ImageChecker.inspect(try ELFFile(path: arm))
        #expect(report.format == nil)
        #expect(report.problems.contains { $0.contains("AArch64") })
        #expect(report.problems.contains("file is a relocatable object, not an executable"))
    }
}

@Suite struct ConfigurationTests {
    @Test func configurationsAreListedAndDescribed() throws {
        #expect(PlatformConfiguration.names == ["hw_generic", "hw_virtio", "xen_pv"])
        let generic = try PlatformConfiguration.named("hw_generic")
        #expect(generic.modules == ["CPUPrimitives", "DeviceInterfaces", "BareMetalKit", "NetStack", "Rumprun"])
        #expect(generic.unavailableReason == nil)
        let xen = try PlatformConfiguration.named("xen_pv")
        #expect(xen.unavailableReason == nil)
        #expect(xen.platform == .xen && xen.defaultFormat == .pvh)
        #expect(xen.modules == ["CPUPrimitives", "DeviceInterfaces", "BareMetalKit", "CXen", "XenPVKit", "NetStack", "Rumprun"])
        #expect(throws: BakeError.unknownConfiguration("hw_nope", known: ["hw_generic", "hw_virtio", "xen_pv"])) {
            try PlatformConfiguration.named("hw_nope")
        }
    }

    @Test func unbakeableConfigurationsFailBeforeAnyWork() throws {
        let baker = try Baker()
        // Xen loads ELF64 only: a multiboot Xen image is refused before any build.
        #expect(throws: BakeError.imageCheckFailed(path: "/nonexistent/x.img", problems: ["Xen loads ELF64 images: configuration xen_pv takes --format pvh, not multiboot"])) {
            try baker.bake(BakeRequest(configuration: "xen_pv", output: "/nonexistent/x.img", inputs: ["Examples/hello"], format: .multiboot))
        }
        #expect(throws: BakeError.noInputs) {
            try baker.bake(BakeRequest(configuration: "hw_generic", output: "/nonexistent/x.img", inputs: []))
        }
        #expect(throws: BakeError.inputNotFound("/nonexistent/app")) {
            try baker.bake(BakeRequest(configuration: "hw_generic", output: "/nonexistent/x.img", inputs: ["/nonexistent/app"]))
        }
    }

    @Test func moduleNamesAreSanitized() {
        #expect(GuestBuilder.moduleName(for: "/x/udp-echo") == "udp_echo")
        #expect(GuestBuilder.moduleName(for: "/x/hello/") == "hello")
        #expect(GuestBuilder.moduleName(for: "/x/9lives") == "app_9lives")
    }
}
