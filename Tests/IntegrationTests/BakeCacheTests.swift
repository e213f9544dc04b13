// BakeCacheTests: two bakes of the same, not yet cached application at the
// same time (what parallel test suites do) both succeed and leave one
// complete object in the cache. Before the fix they shared one partial
// file and the second rename failed with "already exists".
import Foundation
import Testing
import UnikernelBake

@Suite struct BakeCacheTests {
    @Test func concurrentBakesOfOneApplicationShareTheCache() throws {
        // A fresh application (unique source, so nothing is cached yet).
        let directory = Integration.imageDirectory + "/cache-race-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let marker = UInt64.random(in: 0...UInt64.max)
        try "import Rumprun\nprint(\"cache race \(marker)\")\n".write(toFile: directory + "/main.swift", atomically: true, encoding: .utf8)

        let outputs = (0..<2).map { directory + "/image-\($0).img" }
        let failures = Failures()
        DispatchQueue.concurrentPerform(iterations: outputs.count) { index in
            do {
                let baker = try Baker(sourceRoot: Integration.sourceRoot)
                _ = try baker.bake(BakeRequest(configuration: "hw_generic", output: outputs[index], inputs: [directory]))
            } catch {
                failures.add("\(error)")
            }
        }
        #expect(failures.all.isEmpty, "\(failures.all)")
        for output in outputs { #expect(FileManager.default.fileExists(atPath: output)) }

        // One object for the application, no partial files left behind.
        let cacheDirectory = Integration.sourceRoot + "/.build-guest/bake-cache"
        let cache = try FileManager.default.contentsOfDirectory(atPath: cacheDirectory)
        let module = URL(fileURLWithPath: directory).lastPathComponent.replacingOccurrences(of: "-", with: "_")
        defer {
            for name in cache where name.hasPrefix(module + "-") { try? FileManager.default.removeItem(atPath: cacheDirectory + "/" + name) }
        }
        #expect(cache.filter { $0.hasPrefix(module + "-") && $0.hasSuffix(".o") }.count == 1, "\(cache)")
        #expect(!cache.contains { $0.hasPrefix(module + "-") && $0.contains(".partial") }, "\(cache)")

        let run = try Integration.run(["run", "qemu", "-i", "--timeout", "120", outputs[1]])
        #expect(run.stdout.contains("cache race \(marker)\n"), "\(run.stdout)")
        #expect(run.status == 0)
    }
}

/// Errors collected from concurrent closures.
final class Failures: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [String] = []
    func add(_ item: String) { lock.withLock { items.append(item) } }
    var all: [String] { lock.withLock { items } }
}
