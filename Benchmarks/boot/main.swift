// boot-benchmark: wall time of `rumprun-cli run -i` for the hello image
// beside a baseline image that exits at its first instruction, same QEMU
// machine and accelerator, interleaved runs; plus image sizes.
//
//   swift run -c release boot-benchmark [--runs N] [--accel qemu|kvm] [--machine microvm|pc]
import Foundation
import UnikernelBake

struct Options {
    var runs = 20
    var accelerator = "qemu"
    var machine = "microvm"

    init(arguments: [String]) {
        var iterator = arguments.dropFirst().makeIterator()
        while let argument = iterator.next() {
            switch argument {
            case "--runs": runs = Int(iterator.next() ?? "") ?? runs
            case "--accel": accelerator = iterator.next() ?? accelerator
            case "--machine": machine = iterator.next() ?? machine
            default:
                FileHandle.standardError.write(Data("usage: boot-benchmark [--runs N] [--accel qemu|kvm] [--machine microvm|pc]\n".utf8))
                exit(64)
            }
        }
        if runs < 10 { runs = 10 }
    }
}

/// The baseline: both entry points write "exit status 0" (value 1) to the
/// debug-exit port as their first instruction.
let minimalAssembly = LinkerScript.skeletonAssembly(
    entryCode: """
            movw $0xf4, %dx
            movl $1, %eax
            outl %eax, %dx
        1:  hlt
            jmp 1b
        """)

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("boot-benchmark: \(message)\n".utf8))
    exit(1)
}

func makeMinimalImage(in directory: String, toolchain: Toolchain) throws -> String {
    let source = directory + "/minimal.S"
    try minimalAssembly.write(toFile: source, atomically: true, encoding: .utf8)
    try Toolchain.run(toolchain.binDirectory + "/clang", ["--target=x86_64-unknown-none-elf", "-c", source, "-o", directory + "/minimal.o"])
    try LinkerScript().text.write(toFile: directory + "/minimal.ld", atomically: true, encoding: .utf8)
    try Toolchain.run(toolchain.linker, ["-T", directory + "/minimal.ld", "-nostdlib", "-static", "-z", "max-page-size=4096", "--strip-all", "-o", directory + "/minimal.elf", directory + "/minimal.o"])
    let image = directory + "/minimal.img"
    let linked = try ELFFile(path: directory + "/minimal.elf")
    try ImageWriter.write(try ImageWriter.pvhImage(from: linked), to: image)
    return image
}

/// One `rumprun-cli run -i` of `image`; returns seconds.
func timeRun(cli: String, image: String, options: Options) -> Double {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: cli)
    process.arguments = ["run", options.accelerator, "-i", "--timeout", "60", "--machine", options.machine, image]
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    process.standardInput = FileHandle.nullDevice
    let start = DispatchTime.now().uptimeNanoseconds
    do { try process.run() } catch { fail("cannot start \(cli): \(error)") }
    process.waitForExit()
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    if process.terminationStatus != 0 { fail("\(image) exited with \(process.terminationStatus)") }
    return seconds
}

func summary(_ samples: [Double]) -> (min: Double, median: Double) {
    let sorted = samples.sorted()
    let middle = sorted.count / 2
    let median = sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    return (sorted[0], median)
}

let options = Options(arguments: CommandLine.arguments)
let directory = FileManager.default.temporaryDirectory.appendingPathComponent("boot-benchmark-\(getpid())").path
try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(atPath: directory) }

let cli = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("rumprun-cli").path
guard FileManager.default.isExecutableFile(atPath: cli) else { fail("rumprun-cli not built beside this benchmark (swift build -c release)") }

let hello: String
let minimal: String
do {
    let baker = try Baker { print("  bake: \($0)") }
    hello = directory + "/hello.img"
    _ = try baker.bake(BakeRequest(configuration: "hw_generic", output: hello, inputs: [Baker.defaultSourceRoot() + "/Examples/hello"]))
    minimal = try makeMinimalImage(in: directory, toolchain: baker.builder.toolchain)
} catch {
    fail("\(error)")
}

print("boot benchmark: \(options.runs) interleaved runs each, machine \(options.machine), accelerator \(options.accelerator)")
var helloTimes: [Double] = []
var minimalTimes: [Double] = []
_ = timeRun(cli: cli, image: minimal, options: options)  // warm the page cache
for _ in 0..<options.runs {
    minimalTimes.append(timeRun(cli: cli, image: minimal, options: options))
    helloTimes.append(timeRun(cli: cli, image: hello, options: options))
}
let base = summary(minimalTimes)
let app = summary(helloTimes)
func ms(_ seconds: Double) -> String { String(format: "%8.1f ms", seconds * 1000) }
func size(_ path: String) -> Int { (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0 }
print("image                      min       median      bytes")
print("minimal (exits at once)  \(ms(base.min))  \(ms(base.median))  \(size(minimal))")
print("hello                    \(ms(app.min))  \(ms(app.median))  \(size(hello))")
print(String(format: "hello / minimal: median ratio %.3f (+%.1f%%), median difference %.1f ms", app.median / base.median, (app.median / base.median - 1) * 100, (app.median - base.median) * 1000))
