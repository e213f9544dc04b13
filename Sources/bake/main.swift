// bake: links an application and a platform configuration into a bootable
// unikernel image (rumprun-bake's shape: bake CONFIG OUTPUT INPUT...).
import ArgumentParser
import Foundation
import UnikernelBake

extension ImageFormat: ExpressibleByArgument {}

@main
struct Bake: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "bake",
    abstract: "Bake an application into a bootable swift-rumprun unikernel image.",
    discussion: """
      INPUT is a directory of Embedded Swift sources (the application; it imports
      the Rumprun module) and/or x86-64 ELF relocatable objects (.o) and archives (.a).
      The platform modules are built for x86_64-unknown-none-elf on first use and
      cached; an unchanged application is not recompiled either.

      Formats: pvh (ELF64, QEMU -M microvm and Xen PVH; the default) and multiboot
      (ELF32, QEMU -M pc and GRUB). rumprun-cli converts a pvh image for -M pc itself.

      Examples:
        bake hw_generic hello.img Examples/hello
        bake --format multiboot hw_generic hello-mb.img Examples/hello
        bake --list
      """)

  @Flag(name: .long, help: "List the platform configurations.")
  var list = false

  @Option(name: .long, help: ArgumentHelp("Explain one platform configuration.", valueName: "name"))
  var describe: String?

  @Option(name: .long, help: "Image format: pvh or multiboot (default: the configuration's).")
  var format: ImageFormat?

  @Option(
    name: .long,
    help: ArgumentHelp(
      "swift-rumprun source checkout (default: $SWIFT_RUMPRUN_ROOT or the one bake was built from).",
      valueName: "dir"))
  var sourceRoot: String?

  @Flag(name: .long, help: "Keep the symbol table in a pvh image (for gdb and llvm-symbolizer).")
  var keepSymbols = false

  @Flag(name: .shortAndLong, help: "Print only errors.")
  var quiet = false

  @Argument(help: "Platform configuration (see --list).")
  var config: String?

  @Argument(help: "Image file to write.")
  var output: String?

  @Argument(help: "Application sources directory, .o and .a files.")
  var inputs: [String] = []

  func validate() throws {
    if list || describe != nil { return }
    guard config != nil, output != nil, !inputs.isEmpty else {
      throw ValidationError("expected CONFIG OUTPUT INPUT... (or --list / --describe NAME)")
    }
  }

  func run() throws {
    if list {
      for configuration in PlatformConfiguration.all {
        let note = configuration.unavailableReason == nil ? "" : " (not bakeable yet)"
        print(
          configuration.name.padding(toLength: 12, withPad: " ", startingAt: 0)
            + configuration.summary + note)
      }
      return
    }
    do {
      try perform()
    } catch {
      FileHandle.standardError.write(Data("bake: error: \(error)\n".utf8))
      throw ExitCode.failure
    }
  }

  func perform() throws(BakeError) {
    if let name = describe {
      let configuration = try PlatformConfiguration.named(name)
      print("\(configuration.name): \(configuration.summary)")
      print(
        "platform: \(configuration.platform.rawValue), default format: \(configuration.defaultFormat.rawValue) (\(configuration.defaultFormat.summary))"
      )
      print(configuration.details)
      if let reason = configuration.unavailableReason {
        print("status: not bakeable yet: \(reason)")
      }
      return
    }
    let quiet = self.quiet
    let baker = try Baker(sourceRoot: sourceRoot) { line in
      if !quiet { print(line) }
    }
    let result = try baker.bake(
      BakeRequest(configuration: config!, output: output!, inputs: inputs, format: format, keepSymbols: keepSymbols))
    if !quiet {
      let segments = result.report.segments.filter { $0.type == ELFSegment.load }
        .map { "\($0.permissions) 0x\(String($0.virtualAddress, radix: 16))+\($0.memorySize)" }
      print(
        "bake: wrote \(result.output): \(result.format.rawValue), \(result.report.fileSize) bytes, entry 0x\(String(result.report.entry, radix: 16)), segments \(segments.joined(separator: ", "))"
      )
    }
  }
}
