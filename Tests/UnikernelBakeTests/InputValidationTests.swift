// bake's input checks: everything that is not an x86-64 relocatable object
// (or an archive of them) is refused with an error naming the problem.
import Foundation
import Testing

@testable import UnikernelBake

@Suite struct InputValidationTests {
    let directory = Fixtures.temporaryDirectory()

    func write(_ bytes: [UInt8], _ name: String) throws -> String {
        let path = directory + "/" + name
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    @Test func x86ObjectsAndArchivesAreAccepted() throws {
        let object = try Fixtures.compile("int answer(void) { return 42; }", name: "good", language: "c", in: directory)
        try InputValidator.validateObject(at: object)
        let archive = directory + "/libgood.a"
        try Toolchain.run(Fixtures.toolchain.binDirectory + "/llvm-ar", ["rcs", archive, object])
        try InputValidator.validateObject(at: archive)
    }

    @Test func randomBytesAreNotELF() throws {
        let path = try write(Array("this is not an object file".utf8), "text.o")
        #expect(throws: BakeError.notELF(path: path)) { try InputValidator.validateObject(at: path) }
    }

    @Test func truncatedObjectsAreMalformed() throws {
        let object = try Fixtures.compile("int x;", name: "whole", language: "c", in: directory)
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: object)))
        let path = try write(Array(bytes.prefix(40)), "truncated.o")
        #expect {
            try InputValidator.validateObject(at: path)
        } throws: { error in
            guard case .malformedELF(let where_, _) = error as? BakeError else { return false }
            return where_ == path
        }
    }

    @Test func otherArchitecturesAreNamed() throws {
        let arm = try Fixtures.compile("int x;", name: "arm", target: "aarch64-none-elf", language: "c", in: directory)
        #expect(throws: BakeError.wrongArchitecture(path: arm, machine: 183)) { try InputValidator.validateObject(at: arm) }
        #expect(BakeError.wrongArchitecture(path: arm, machine: 183).description.contains("AArch64"))
        let i386 = try Fixtures.compile("int x;", name: "i386", target: "i386-none-elf", language: "c", in: directory)
        #expect(throws: BakeError.wrongClass(path: i386, found: "ELF32")) { try InputValidator.validateObject(at: i386) }
    }

    @Test func linkedExecutablesAreNotObjects() throws {
        let image = try Fixtures.linkedImage(in: directory)
        #expect(throws: BakeError.wrongObjectType(path: image.path, expected: "relocatable object (.o)", found: "executable")) {
            try InputValidator.validateObject(at: image.path)
        }
    }

    @Test func archivesWithForeignMembersNameTheMember() throws {
        let good = try Fixtures.compile("int a;", name: "a", language: "c", in: directory)
        let arm = try Fixtures.compile("int b;", name: "b", target: "aarch64-none-elf", language: "c", in: directory)
        let archive = directory + "/libmixed.a"
        try Toolchain.run(Fixtures.toolchain.binDirectory + "/llvm-ar", ["rcs", archive, good, arm])
        #expect(throws: BakeError.wrongArchitecture(path: archive + "(b.o)", machine: 183)) { try InputValidator.validateObject(at: archive) }
    }

    @Test func missingInputsAreReported() {
        #expect(throws: BakeError.inputNotFound(directory + "/nothing.o")) { try InputValidator.validateObject(at: directory + "/nothing.o") }
    }
}
