// The Swift API (RumpHypercalls / POSIXHypercalls), driven from a harness
// kernel thread so that the upcall checks apply to it as well.

import Foundation
import RumpUserConformance
import Synchronization
import Testing

import RumpHypercall

/// Runs `body` as a harness kernel thread; upcall contract violations fail.
func asKernelThread(_ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) rethrows {
    rumpconf_enter()
    defer {
        let failures = rumpconf_leave()
        #expect(failures == 0, "\(String(cString: rumpconf_failure_log()))", sourceLocation: sourceLocation)
    }
    try body()
}

/// Generic code written against the protocol, as a guest tool would be.
func roundTrip<H: RumpHypercalls>(_ host: H, path: String) throws -> [UInt8] {
    let fd = try host.open(path, mode: [.readWrite, .create])
    let text: [UInt8] = Array("hypercall".utf8)
    _ = try text.withUnsafeBytes { try host.write(fd, from: $0, at: .at(10)) }
    var back = [UInt8](repeating: 0, count: text.count)
    _ = try back.withUnsafeMutableBytes { try host.read(fd, into: $0, at: .at(10)) }
    try host.sync(fd, flags: .write, start: 0, length: 0)
    try host.close(fd)
    return back
}

extension RumpuserConformanceTests {
    @Test("Swift API: files through the protocol, errors as NetBSDErrno")
    func swiftFiles() throws {
        let host = POSIXHypercalls()
        try asKernelThread {
            let path = scratchDirectory + "/swift-api.img"
            unlink(path)
            #expect(try roundTrip(host, path: path) == Array("hypercall".utf8))
            let info = try host.fileInfo(path)
            #expect(info.type == .regular && info.size == 19)
            #expect(throws: NetBSDErrno.ENOENT) { try host.open(scratchDirectory + "/missing", mode: .readOnly) }
            #expect(throws: NetBSDErrno.EEXIST) { try host.open(path, mode: [.readWrite, .create, .exclusive]) }
            #expect(throws: NetBSDErrno.ENOENT) { try host.parameter("RUMPHYPERCALL_NO_SUCH_VARIABLE") }
            #expect(try host.parameter("_RUMPUSER_NCPU").isEmpty == false)
            unlink(path)
        }
    }

    @Test("Swift API: memory, clocks, entropy")
    func swiftMemoryClocks() throws {
        let host = POSIXHypercalls()
        #expect(host.version == 17)
        try asKernelThread {
            let memory = try host.allocate(byteCount: 100, alignment: 4096)
            #expect(UInt(bitPattern: memory) % 4096 == 0)
            host.deallocate(memory, byteCount: 100)
            let mapped = try host.mapAnonymous(byteCount: 8192, alignmentBits: 16, executable: false)
            #expect(UInt(bitPattern: mapped) % 65536 == 0)
            host.unmap(mapped, byteCount: 8192)
            #expect(throws: NetBSDErrno.EINVAL) { try host.allocate(byteCount: 8, alignment: 24) }

            let start = try host.time(.absoluteMonotonic)
            try host.sleep(.relativeWall, RumpTime(seconds: 0, nanoseconds: 5_000_000))
            #expect(try host.time(.absoluteMonotonic) > start)
            var bytes = [UInt8](repeating: 0, count: 64)
            #expect(try bytes.withUnsafeMutableBytes { try host.randomBytes(into: $0, flags: []) } == 64)
        }
    }

    @Test("Swift API: block I/O completions")
    func swiftBlockIO() throws {
        let host = POSIXHypercalls()
        try asKernelThread {
            let path = scratchDirectory + "/swift-bio.img"
            unlink(path)
            let fd = try host.open(path, mode: [.readWrite, .create, .blockIO])
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
            defer { buffer.deallocate() }
            buffer.initializeMemory(as: UInt8.self, repeating: 0x5A)
            let done = host.makeCondition()
            let lock = host.makeMutex([.kernelMutex])
            let results = Mutex<[(Int, NetBSDErrno?)]>([])
            for block in 0..<8 {
                host.blockIO(fd, .write(synchronous: block == 0), buffer: buffer, offset: Int64(block) * 4096) { bytes, error in
                    results.withLock { $0.append((bytes, error)) }
                    lock.enter()
                    done.broadcast()
                    lock.exit()
                }
            }
            lock.enter()
            while results.withLock({ $0.count }) < 8 { done.wait(lock) }
            lock.exit()
            #expect(results.withLock { $0.allSatisfy { $0.0 == 4096 && $0.1 == nil } })
            try host.close(fd)
            #expect(try host.fileInfo(path).size == 8 * 4096)
            unlink(path)
        }
    }

    @Test("Swift API: threads, lwps and locks")
    func swiftThreadsAndLocks() throws {
        let host = POSIXHypercalls()
        try asKernelThread {
            let lock = host.makeMutex([.kernelMutex])
            #expect(!lock.isSpin)
            let counter = Mutex(0)
            var cookies: [UnsafeMutableRawPointer] = []
            for _ in 0..<4 {
                let cookie = try host.spawnThread(name: "swift-api", joinable: true) {
                    for _ in 0..<1000 { counter.withLock { $0 += 1 } }
                }
                if let cookie { cookies.append(cookie) }
            }
            for cookie in cookies { try host.join(cookie) }
            #expect(counter.withLock { $0 } == 4000)

            lock.enter()
            #expect(lock.owner == host.currentLWP)
            #expect(host.currentLWP != nil)
            lock.exit()
            #expect(lock.owner == nil)

            let rw = host.makeRWLock()
            rw.enter(.reader)
            #expect(rw.isHeld(.reader))
            #expect(rw.tryUpgrade())
            #expect(rw.isHeld(.writer))
            rw.downgrade()
            #expect(!rw.tryEnter(.writer))
            rw.exit()

            let condition = host.makeCondition()
            lock.enter()
            #expect(condition.wait(lock, seconds: 0, nanoseconds: 1_000_000) == false)
            #expect(condition.waiterCount == 0)
            lock.exit()
        }
    }
}
