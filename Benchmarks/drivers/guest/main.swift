// drivers benchmark guest: drives QEMU's devices with the BareMetalKit
// drivers and times them with the Rumprun clock (the calibrated TSC). Run by
// Benchmarks/drivers/run.sh, which passes the mode after `--`:
//   blk SECONDS DEPTHS   4 KiB sequential and random writes and reads on the
//                        first virtio-blk disk, each pattern for SECONDS at
//                        every queue depth in DEPTHS (comma-separated);
//                        written blocks carry a stamp the script checks in
//                        the image file afterwards.
//   net                  raw frames on the first NIC (virtio-net or e1000,
//                        as named by -I) driven by the host peer
//                        (Benchmarks/drivers/peer.py) through a QEMU dgram
//                        backend; see the protocol below.
// Results are printed as `bench:` lines, which the script collects.
import BareMetalKit
import DeviceInterfaces
import Rumprun

// MARK: - Shared helpers

/// Parses a decimal number; nil when the text is not one.
func decimal(_ text: String) -> Int? {
    var value = 0
    var digits = 0
    for byte in text.utf8 {
        guard byte >= 48 && byte <= 57 else { return nil }
        value = value * 10 + Int(byte - 48)
        digits += 1
        if digits > 12 { return nil }
    }
    return digits > 0 ? value : nil
}

/// `value / 1000` with three decimals: "12.345".
func thousandths(_ value: UInt64) -> String {
    let fraction = value % 1000
    let padding = fraction < 10 ? "00" : fraction < 100 ? "0" : ""
    return "\(value / 1000).\(padding)\(fraction)"
}

/// Items per second for `count` items in `nanoseconds`, in thousandths.
func ratePerSecondMilli(_ count: UInt64, _ nanoseconds: UInt64) -> UInt64 {
    // count × 10^9 / microseconds: no overflow below ~1.8 × 10^10 items.
    count &* 1_000_000_000 / max(1, nanoseconds / 1000)
}

/// xorshift64* (Vigna): a fast, reproducible random block sequence.
struct BlockRandom {
    var state: UInt64
    mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 2_685_821_657_736_338_717
    }
}

// MARK: - virtio-blk

/// Stamp in the first 16 bytes of every block the benchmark writes:
/// "SWDB" magic, pass number, then the block index; the script checks it.
let stampMagic: UInt32 = 0x4244_5753  // "SWDB" little-endian

enum BlockPattern {
    case sequential
    case random

    var name: StaticString {
        switch self {
        case .sequential: return "sequential"
        case .random: return "random"
        }
    }
}

/// Runs one pattern (4 KiB requests) for `seconds` with `depth` requests in
/// flight; prints one `bench: blk` line. Writes end with a flush whose time
/// is included. Returns false when a request failed.
func runBlockPattern<Disk: BlockDevice>(
    _ disk: inout Disk, write: Bool, pattern: BlockPattern, depth: Int, seconds: Int, pass: UInt32,
    buffers: UnsafeMutableRawPointer, blocks: UInt64
) -> Bool {
    let blockSize = 4096
    var random = BlockRandom(state: 0x9E37_79B9_7F4A_7C15 &+ UInt64(pass))
    var nextSequential: UInt64 = 0
    var completed: UInt64 = 0
    var failed = 0
    var inFlight = 0
    let duration = UInt64(seconds) * 1_000_000_000

    func chooseBlock() -> UInt64 {
        switch pattern {
        case .sequential:
            let block = nextSequential
            nextSequential = (nextSequential + 1) % blocks
            return block
        case .random:
            return random.next() % blocks
        }
    }

    func submit(_ slot: Int) -> Bool {
        let block = chooseBlock()
        let buffer = UnsafeMutableRawBufferPointer(start: buffers + slot * blockSize, count: blockSize)
        if write {
            buffer.storeBytes(of: stampMagic.littleEndian, toByteOffset: 0, as: UInt32.self)
            buffer.storeBytes(of: pass.littleEndian, toByteOffset: 4, as: UInt32.self)
            buffer.storeBytes(of: block.littleEndian, toByteOffset: 8, as: UInt64.self)
        }
        do throws(BlockDeviceError) {
            try disk.submit(
                BlockRequest(operation: write ? .write : .read, sector: block * 8, buffer: buffer, tag: UInt64(slot)))
            return true
        } catch {
            print("bench: blk: submit failed")
            return false
        }
    }

    let start = Clock.monotonic
    var stopping = false
    for slot in 0..<depth {
        if submit(slot) { inFlight += 1 } else { failed += 1 }
    }
    while inFlight > 0 {
        var finishedSlots: [Int] = []
        _ = disk.pollCompletions { completion in
            switch completion.result {
            case .success(let bytes) where bytes == blockSize: completed += 1
            default: failed += 1
            }
            finishedSlots.append(Int(completion.tag))
        }
        if finishedSlots.isEmpty { continue }
        inFlight -= finishedSlots.count
        if !stopping && Clock.monotonic &- start >= duration { stopping = true }
        if stopping || failed > 0 { continue }
        for slot in finishedSlots {
            if submit(slot) { inFlight += 1 } else { failed += 1 }
        }
    }
    if write {
        do throws(BlockDeviceError) {
            _ = try disk.perform(
                BlockRequest(operation: .flush, sector: 0, buffer: UnsafeMutableRawBufferPointer(start: nil, count: 0), tag: 1 << 40))
        } catch {
            failed += 1
        }
    }
    let elapsed = Clock.monotonic &- start
    let iops = ratePerSecondMilli(completed, elapsed)
    // MiB/s = IOPS × 4096 / 2^20 = IOPS / 256.
    let mibPerSecond = iops / 256
    print(
        "bench: blk \(pattern.name) \(write ? "write" : "read") depth \(depth): \(completed) requests in \(thousandths(elapsed / 1000)) ms, \(thousandths(iops)) IOPS, \(thousandths(mibPerSecond)) MiB/s, \(failed) failed"
    )
    // For the host's check: how far the sequential writes got.
    if write && pattern == .sequential {
        print("bench: blk stamped sequential blocks 0..<\(min(completed, blocks)) pass \(pass)")
    }
    return failed == 0
}

func runBlockBenchmark(seconds: Int, depths: [Int]) -> Int32 {
    let access = PlatformPCI.access
    for function in PlatformPCI.functions where VirtioPCI.deviceType(of: function) == VirtioPCI.blockType {
        guard let transport = try? VirtioPCIModernTransport(function: function.address, access: access, mapper: IdentityMappedIO())
        else {
            print("bench: blk: no modern virtio transport")
            return 2
        }
        var disk: VirtioBlock<VirtioPCIModernTransport<MMIORegisters>, HeapDMAMemory>
        do throws(VirtioError) {
            disk = try VirtioBlock(transport: transport, dma: HeapDMAMemory())
        } catch {
            print("bench: blk: driver failed to start, code \(error.code)")
            return 2
        }
        let blocks = disk.sectorCount / 8
        let maxDepth = depths.reduce(1) { max($0, $1) }
        print(
            "bench: blk disk \(disk.sectorCount) sectors (\(blocks) blocks of 4 KiB), seg_max \(disk.maximumSegments), size_max \(disk.maximumSegmentSize), clock \(Clock.sourceName) \(Clock.tscFrequency / 1_000_000) MHz"
        )
        guard blocks > 0 else { return 2 }
        let buffers = UnsafeMutableRawPointer.allocate(byteCount: maxDepth * 4096, alignment: 4096)
        // A fixed fill for the rest of each written block.
        for index in 0..<(maxDepth * 4096) { buffers.storeBytes(of: UInt8(truncatingIfNeeded: index &* 13 &+ 7), toByteOffset: index, as: UInt8.self) }
        var ok = true
        var pass: UInt32 = 1
        // Sequential writes first, so that the reads after them read data
        // the guest wrote (and the stamps cover the disk's start).
        for (write, pattern) in [(true, BlockPattern.sequential), (true, .random), (false, .sequential), (false, .random)] {
            for depth in depths {
                if !runBlockPattern(
                    &disk, write: write, pattern: pattern, depth: depth, seconds: seconds, pass: pass, buffers: buffers, blocks: blocks)
                {
                    ok = false
                }
                if write { pass += 1 }
            }
        }
        print("bench: blk virtio requests issued \(disk.virtioRequestsIssued)")
        try? disk.shutdown()
        return ok ? 0 : 1
    }
    print("bench: blk: no virtio-blk disk (attach one with -b)")
    return 2
}

// MARK: - Network

// Protocol on EtherType 0x88B5: byte 14 is the command. Host → guest:
//   1 hello            → 0x81 hello reply
//   Commands 2 and 3 carry a u16 test number at 21: a repeated command (the
//   peer repeats until it sees an answer) is answered again, not re-run.
//   2 transmit (u16 size at 15, u32 milliseconds at 17)
//                      → 0x82 ack, then DATA frames of `size` bytes for that
//                        long, then the report is kept for 4
//   3 receive (u16 size at 15)
//                      → counters reset, 0x82 ack; DATA frames counted
//   4 report           → 0x84: u64 frames at 15, u64 ns at 23 (first to
//                        last frame for receive; the sending time for
//                        transmit), u64 wrong-size frames at 31,
//                        u64 transmit-full retries at 39
//   5 quit             → the guest exits 0
//   0x10 DATA (u32 sequence at 15), both directions.
let etherType: (UInt8, UInt8) = (0x88, 0xB5)

struct NetworkBench {
    var peer: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) = (0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF)
    var own: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8)
    let outgoing = UnsafeMutableRawPointer.allocate(byteCount: 1514, alignment: 64)
    // The last report's values.
    var reportFrames: UInt64 = 0
    var reportNanoseconds: UInt64 = 0
    var reportWrongSize: UInt64 = 0
    var reportRetries: UInt64 = 0
    // Receive test state.
    var receiving = false
    var expectedSize = 0
    var firstReceive: UInt64 = 0
    var lastReceive: UInt64 = 0
    // A command to run after the receive call returns.
    var pendingCommand: UInt8 = 0
    var pendingSize = 0
    var pendingMilliseconds = 0
    var pendingTest = -1
    var lastTest = -1
    var quit = false

    init(mac: MACAddress) { own = mac.bytes }

    /// Writes the Ethernet header and command byte into `outgoing`.
    func header(_ command: UInt8) {
        let o = outgoing
        o.storeBytes(of: peer.0, toByteOffset: 0, as: UInt8.self); o.storeBytes(of: peer.1, toByteOffset: 1, as: UInt8.self)
        o.storeBytes(of: peer.2, toByteOffset: 2, as: UInt8.self); o.storeBytes(of: peer.3, toByteOffset: 3, as: UInt8.self)
        o.storeBytes(of: peer.4, toByteOffset: 4, as: UInt8.self); o.storeBytes(of: peer.5, toByteOffset: 5, as: UInt8.self)
        o.storeBytes(of: own.0, toByteOffset: 6, as: UInt8.self); o.storeBytes(of: own.1, toByteOffset: 7, as: UInt8.self)
        o.storeBytes(of: own.2, toByteOffset: 8, as: UInt8.self); o.storeBytes(of: own.3, toByteOffset: 9, as: UInt8.self)
        o.storeBytes(of: own.4, toByteOffset: 10, as: UInt8.self); o.storeBytes(of: own.5, toByteOffset: 11, as: UInt8.self)
        o.storeBytes(of: etherType.0, toByteOffset: 12, as: UInt8.self)
        o.storeBytes(of: etherType.1, toByteOffset: 13, as: UInt8.self)
        o.storeBytes(of: command, toByteOffset: 14, as: UInt8.self)
    }

    /// Handles one received frame (no sending here: the driver still owns
    /// the receive buffer).
    mutating func handle(_ frame: UnsafeRawBufferPointer) {
        guard frame.count >= 15, frame[12] == etherType.0, frame[13] == etherType.1 else { return }
        let command = frame[14]
        if command == 0x10 {
            guard receiving else { return }
            let now = Clock.monotonic
            if reportFrames == 0 && reportWrongSize == 0 { firstReceive = now }
            lastReceive = now
            if frame.count == expectedSize { reportFrames += 1 } else { reportWrongSize += 1 }
            return
        }
        peer = (frame[6], frame[7], frame[8], frame[9], frame[10], frame[11])
        pendingCommand = command
        if frame.count >= 21 {
            pendingSize = Int(frame[15]) << 8 | Int(frame[16])
            pendingMilliseconds = Int(frame[17]) << 24 | Int(frame[18]) << 16 | Int(frame[19]) << 8 | Int(frame[20])
        }
        pendingTest = frame.count >= 23 ? Int(frame[21]) << 8 | Int(frame[22]) : -1
    }
}

func sendControl<NIC: NetworkInterface>(_ nic: inout NIC, _ bench: inout NetworkBench, length: Int) {
    for _ in 0..<1000 {
        do throws(NetworkInterfaceError) {
            try nic.send(frame: UnsafeRawBufferPointer(start: bench.outgoing, count: length))
            return
        } catch {
            _ = try? nic.receive(limit: 0) { _ in }
        }
    }
    print("bench: net: could not send a control frame")
}

func runNetworkBenchmark<NIC: NetworkInterface>(_ nic: inout NIC, name: StaticString) -> Int32 {
    var bench = NetworkBench(mac: nic.macAddress)
    print("bench: net \(name), clock \(Clock.sourceName) \(Clock.tscFrequency / 1_000_000) MHz, waiting for the peer")
    while !bench.quit {
        do throws(NetworkInterfaceError) {
            _ = try nic.receive(limit: 64) { frame in bench.handle(frame) }
        } catch {
            print("bench: net: receive failed")
            return 1
        }
        let command = bench.pendingCommand
        if command == 0 { continue }
        bench.pendingCommand = 0
        if (command == 2 || command == 3) && bench.pendingTest == bench.lastTest {
            bench.header(0x82)  // a repeat of the running or finished test
            sendControl(&nic, &bench, length: 60)
            continue
        }
        if command == 2 || command == 3 { bench.lastTest = bench.pendingTest }
        switch command {
        case 1:
            bench.header(0x81)
            sendControl(&nic, &bench, length: 60)
        case 2:
            bench.receiving = false
            let size = min(1514, max(60, bench.pendingSize))
            bench.header(0x82)
            sendControl(&nic, &bench, length: 60)
            for index in 19..<size { bench.outgoing.storeBytes(of: UInt8(truncatingIfNeeded: index), toByteOffset: index, as: UInt8.self) }
            bench.header(0x10)
            let duration = UInt64(bench.pendingMilliseconds) * 1_000_000
            var sent: UInt64 = 0
            var retries: UInt64 = 0
            let frame = UnsafeRawBufferPointer(start: bench.outgoing, count: size)
            let start = Clock.monotonic
            var now = start
            while now &- start < duration {
                bench.outgoing.storeBytes(of: UInt32(truncatingIfNeeded: sent).bigEndian, toByteOffset: 15, as: UInt32.self)
                do throws(NetworkInterfaceError) {
                    try nic.send(frame: frame)
                    sent += 1
                } catch {
                    if case .transmitQueueFull = error {
                        retries += 1
                        // Reclaims finished transmit slots (virtio-net does
                        // it in receive, e1000 in send); frames arriving now
                        // are dropped by the test.
                        _ = try? nic.receive(limit: 64) { _ in }
                    } else {
                        print("bench: net: send failed")
                        return 1
                    }
                }
                now = Clock.monotonic
            }
            bench.reportFrames = sent
            bench.reportNanoseconds = now &- start
            bench.reportWrongSize = 0
            bench.reportRetries = retries
            print("bench: net \(name) transmit \(size) B: \(sent) frames in \(thousandths((now &- start) / 1000)) ms, \(thousandths(ratePerSecondMilli(sent, now &- start))) frames/s, \(retries) ring-full retries")
        case 3:
            bench.receiving = true
            bench.expectedSize = bench.pendingSize
            bench.reportFrames = 0
            bench.reportWrongSize = 0
            bench.reportRetries = 0
            bench.firstReceive = 0
            bench.lastReceive = 0
            bench.header(0x82)
            sendControl(&nic, &bench, length: 60)
        case 4:
            if bench.receiving {
                bench.reportNanoseconds = bench.lastReceive &- bench.firstReceive
                print("bench: net \(name) receive \(bench.expectedSize) B: \(bench.reportFrames) frames in \(thousandths(bench.reportNanoseconds / 1000)) ms, \(thousandths(ratePerSecondMilli(bench.reportFrames, bench.reportNanoseconds))) frames/s, \(bench.reportWrongSize) of another size")
                bench.receiving = false
            }
            bench.header(0x84)
            let o = bench.outgoing
            o.storeBytes(of: bench.reportFrames.bigEndian, toByteOffset: 15, as: UInt64.self)
            o.storeBytes(of: bench.reportNanoseconds.bigEndian, toByteOffset: 23, as: UInt64.self)
            o.storeBytes(of: bench.reportWrongSize.bigEndian, toByteOffset: 31, as: UInt64.self)
            o.storeBytes(of: bench.reportRetries.bigEndian, toByteOffset: 39, as: UInt64.self)
            sendControl(&nic, &bench, length: 60)
        case 5:
            bench.quit = true
        default:
            break
        }
    }
    let s = nic.statistics
    print("bench: net \(name) driver counted \(s.framesReceived) received, \(s.framesSent) sent, \(s.receiveErrors) receive errors, \(s.receiveDropped) dropped, \(s.transmitErrors) transmit errors")
    return 0
}

func runNetwork() -> Int32 {
    let wanted = Rumprun.networkInterfaces.first?.driver
    let wantE1000 = wanted.map { $0.utf8.elementsEqual("e1000".utf8) } ?? false
    let access = PlatformPCI.access
    for function in PlatformPCI.functions {
        if wantE1000 {
            guard function.vendorID == 0x8086 && function.deviceID == 0x100E else { continue }
            do throws(E1000Error) {
                var nic = try E1000(function: function.address, access: access, mapper: IdentityMappedIO(), dma: HeapDMAMemory())
                let status = runNetworkBenchmark(&nic, name: "e1000")
                nic.shutdown()
                return status
            } catch {
                print("bench: net: e1000 failed to start")
                return 2
            }
        }
        guard VirtioPCI.deviceType(of: function) == VirtioPCI.networkType,
            let transport = try? VirtioPCIModernTransport(function: function.address, access: access, mapper: IdentityMappedIO())
        else { continue }
        do throws(VirtioError) {
            var nic = try VirtioNetwork(transport: transport, dma: HeapDMAMemory())
            let status = runNetworkBenchmark(&nic, name: "virtio-net")
            try? nic.shutdown()
            return status
        } catch {
            print("bench: net: virtio-net failed to start, code \(error.code)")
            return 2
        }
    }
    print("bench: net: no NIC (attach one with -I)")
    return 2
}

// MARK: - Main

let arguments = Rumprun.arguments
let mode = arguments.count > 1 ? arguments[1] : ""
if mode.utf8.elementsEqual("blk".utf8) {
    let seconds = arguments.count > 2 ? decimal(arguments[2]) ?? 3 : 3
    var depths: [Int] = []
    if arguments.count > 3 {
        for part in arguments[3].utf8.split(separator: 44) {
            if let depth = decimal(String(decoding: part, as: UTF8.self)), depth >= 1, depth <= 64 { depths.append(depth) }
        }
    }
    if depths.isEmpty { depths = [1] }
    Rumprun.exit(runBlockBenchmark(seconds: seconds, depths: depths))
} else if mode.utf8.elementsEqual("net".utf8) {
    Rumprun.exit(runNetwork())
}
print("bench: usage: blk SECONDS DEPTHS | net")
Rumprun.exit(64)
