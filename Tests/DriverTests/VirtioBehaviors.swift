// VirtioBehaviors: block, network and entropy device behaviour for the
// virtio device model (virtio 1.2 §5.2, §5.1, §5.4).
import BareMetalKit

/// A virtio-blk device over an in-memory disk.
final class BlockBehavior: VirtioBehavior {
    var disk: [UInt8]
    let segMax: Int
    let sizeMax: Int
    var readOnly = false
    var flushSupported = true
    var holdCompletions = false
    var held: [(head: UInt16, length: Int)] = []
    var flushes = 0
    var requests = 0
    var largestRequestSegments = 0
    var violations: [String] = []
    var failSector: UInt64? = nil
    var offersIndirect = true
    let serial = Array("swift-rumprun-disk0".utf8)

    init(sectors: Int, segMax: Int = 8, sizeMax: Int = 4096) {
        disk = [UInt8](repeating: 0, count: sectors * 512)
        self.segMax = segMax
        self.sizeMax = sizeMax
    }

    var deviceType: Int { 2 }
    var queueCount: Int { 1 }
    var features: UInt64 {
        VirtioBlock<VirtioPCILegacyTransport<BusWindow>, TestDMA>.Feature.sizeMax
            | VirtioBlock<VirtioPCILegacyTransport<BusWindow>, TestDMA>.Feature.segMax
            | (readOnly ? 1 << 5 : 0) | (flushSupported ? 1 << 9 : 0)
            | (offersIndirect ? VirtioFeature.indirectDescriptors : 0) | VirtioFeature.eventIndex
    }

    func configuration(_ model: VirtioDeviceModel) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 0x40)
        func put(_ offset: Int, _ value: UInt64, _ width: Int) {
            for index in 0..<width { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(index))) }
        }
        put(0, UInt64(disk.count / 512), 8)
        put(8, UInt64(sizeMax), 4)
        put(12, UInt64(segMax), 4)
        put(0x14, 512, 4)
        return bytes
    }

    func notified(_ model: VirtioDeviceModel, queue: Int) {
        while let chain = model.popAvailable(queue) {
            requests += 1
            let header = model.readAll(chain)
            guard header.count >= 16, let status = chain.writable.last, status.length == 1 else {
                violations.append("malformed request")
                continue
            }
            let type = UInt32(header[0]) | UInt32(header[1]) << 8
            var sector: UInt64 = 0
            for index in 0..<8 { sector |= UInt64(header[8 + index]) << (8 * UInt64(index)) }
            let dataSegments = chain.segments.count - 2
            largestRequestSegments = max(largestRequestSegments, dataSegments)
            if dataSegments > segMax { violations.append("more than seg_max segments") }
            for segment in chain.segments.dropFirst().dropLast() where segment.length > sizeMax {
                violations.append("segment larger than size_max")
            }
            var result: UInt8 = 0
            var written = 0
            switch type {
            case 0:  // IN
                let data = Array(chain.writable.dropLast())
                let total = data.reduce(0) { $0 + $1.length }
                let start = Int(sector) * 512
                if sector == failSector || start + total > disk.count {
                    result = 1
                } else {
                    written = model.write(Array(disk[start..<start + total]), into: ModelChain(head: chain.head, segments: data))
                }
            case 1:  // OUT
                let payload = Array(header.dropFirst(16))
                let start = Int(sector) * 512
                if readOnly || sector == failSector || start + payload.count > disk.count {
                    result = 1
                } else {
                    disk.replaceSubrange(start..<start + payload.count, with: payload)
                }
            case 4:
                if flushSupported { flushes += 1 } else { result = 2 }
            case 8:
                written = model.write(serial, into: ModelChain(head: chain.head, segments: Array(chain.writable.dropLast())))
            default:
                result = 2
            }
            model.memory(status.address, 1)?.storeBytes(of: result, as: UInt8.self)
            if holdCompletions {
                held.append((chain.head, written + 1))
            } else {
                model.pushUsed(queue, head: chain.head, length: written + 1)
            }
        }
    }

    /// Completes held requests, in reverse order of arrival.
    func releaseHeld(_ model: VirtioDeviceModel) {
        for request in held.reversed() { model.pushUsed(0, head: request.head, length: request.length) }
        held.removeAll()
    }
}

/// A virtio-net device: records transmitted frames, delivers injected ones
/// into the driver's receive buffers.
final class NetworkBehavior: VirtioBehavior {
    var mac: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]
    var linkUp = true
    var mergeable: Bool
    var transmitted: [[UInt8]] = []
    var dropped = 0
    var holdTransmitCompletions = false
    var heldTransmits: [UInt16] = []
    var offersEventIndex = true

    init(mergeable: Bool) { self.mergeable = mergeable }

    var deviceType: Int { 1 }
    var queueCount: Int { 2 }
    var features: UInt64 {
        (1 << 5) | (1 << 16) | (mergeable ? 1 << 15 : 0) | VirtioFeature.indirectDescriptors
            | (offersEventIndex ? VirtioFeature.eventIndex : 0)
    }

    func headerLength(_ model: VirtioDeviceModel) -> Int {
        model.driverFeatures & (VirtioFeature.version1 | 1 << 15) != 0 ? 12 : 10
    }

    func configuration(_ model: VirtioDeviceModel) -> [UInt8] {
        mac + [linkUp ? 1 : 0, 0, 1, 0, 0xDC, 0x05]
    }

    func notified(_ model: VirtioDeviceModel, queue: Int) {
        guard queue == 1 else { return }  // receive buffers wait for frames
        while let chain = model.popAvailable(1) {
            let bytes = model.readAll(chain)
            if !chain.writable.isEmpty { model.violations.append("writable transmit buffer") }
            transmitted.append(Array(bytes.dropFirst(headerLength(model))))
            if holdTransmitCompletions { heldTransmits.append(chain.head) } else { model.pushUsed(1, head: chain.head, length: 0) }
        }
    }

    /// Delivers one frame through receive queue 0; false when the driver
    /// left too few buffers.
    @discardableResult
    func inject(_ frame: [UInt8], into model: VirtioDeviceModel) -> Bool {
        let header = headerLength(model)
        var packet = [UInt8](repeating: 0, count: header) + frame
        var chains: [ModelChain] = []
        var room = 0
        while room < packet.count {
            guard let chain = model.popAvailable(0) else {
                // Buffers already taken are given back as used with length 0
                // only in the mergeable case; a real device would wait.
                dropped += 1
                for taken in chains { model.pushUsed(0, head: taken.head, length: 0) }
                return false
            }
            chains.append(chain)
            room += chain.writable.reduce(0) { $0 + $1.length }
            if !mergeable && room < packet.count {
                dropped += 1
                model.pushUsed(0, head: chain.head, length: 0)
                return false
            }
        }
        if header == 12 {
            packet[10] = UInt8(chains.count & 0xFF)
            packet[11] = UInt8(chains.count >> 8)
        }
        var offset = 0
        for chain in chains {
            let capacity = chain.writable.reduce(0) { $0 + $1.length }
            let piece = Array(packet[offset..<min(packet.count, offset + capacity)])
            let written = model.write(piece, into: chain)
            model.pushUsed(0, head: chain.head, length: written)
            offset += written
        }
        return true
    }
}

/// A virtio-rng device producing a seeded stream.
final class EntropyBehavior: VirtioBehavior {
    var generator = SeededGenerator(seed: 42)
    var produced: [UInt8] = []
    var answerLength: Int? = nil
    var silent = false
    var deviceType: Int { 4 }
    var queueCount: Int { 1 }
    var features: UInt64 { 0 }
    func configuration(_ model: VirtioDeviceModel) -> [UInt8] { [] }
    func notified(_ model: VirtioDeviceModel, queue: Int) {
        guard !silent else { return }
        while let chain = model.popAvailable(queue) {
            let capacity = chain.writable.reduce(0) { $0 + $1.length }
            let bytes = (0..<min(capacity, answerLength ?? capacity)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            produced += bytes
            model.pushUsed(queue, head: chain.head, length: model.write(bytes, into: chain))
        }
    }
}
