// Test fixtures built at test time with the toolchain's clang and ld.lld:
// tiny images and objects that exercise bake's checks without a full bake.
import Foundation
import Testing

@testable import UnikernelBake

enum Fixtures {
    static let toolchain: Toolchain = try! Toolchain.locate()
    static var clang: String { toolchain.binDirectory + "/clang" }

    /// A fresh temporary directory, removed by the caller.
    static func temporaryDirectory() -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("bake-tests-\(UUID().uuidString)").path
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// The smallest image with the shape entry.S gives: a multiboot slot,
    /// both entry points, a PVH note, rodata, data and bss.
    static let imageAssembly = LinkerScript.skeletonAssembly(
        entryCode: """
                hlt
                jmp _start_pvh
            """,
        extraSections: """
                .section .rodata
            message: .asciz "fixture"
                .data
                .globl counter
            counter: .long 1
                .bss
            buffer: .skip 8192
            """)

    /// Assembles or compiles `source` for `target` into `directory/name`.
    static func compile(_ source: String, name: String, target: String = "x86_64-unknown-none-elf", language: String = "assembler-with-cpp", in directory: String) throws -> String {
        let input = directory + "/" + name + (language == "c" ? ".c" : ".S")
        try source.write(toFile: input, atomically: true, encoding: .utf8)
        let output = directory + "/" + name + ".o"
        try Toolchain.run(clang, ["--target=\(target)", "-x", language, "-c", input, "-o", output, "-ffreestanding"])
        return output
    }

    /// Links objects with a linker script; returns the image path.
    static func link(_ objects: [String], script: String = LinkerScript().text, extraFlags: [String] = [], in directory: String) throws -> String {
        let scriptPath = directory + "/image-\(UUID().uuidString).ld"
        try script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
        let output = directory + "/image-\(UUID().uuidString).elf"
        try Toolchain.run(toolchain.linker, ["-T", scriptPath, "-nostdlib", "-static", "-z", "max-page-size=4096", "-o", output] + extraFlags + objects)
        return output
    }

    /// A linked, valid ELF64 image (multiboot slot still empty).
    static func linkedImage(in directory: String, assembly: String = imageAssembly) throws -> ELFFile {
        let object = try compile(assembly, name: "image", in: directory)
        return try ELFFile(path: try link([object], in: directory))
    }
}
