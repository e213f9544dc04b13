// Tests of the block-device contract's shared checks.
import DeviceInterfaces
import Testing

/// A RAM disk completing requests on the next poll.
struct MemoryDisk: BlockDevice {
    var storage: [UInt8]
    let sectorSize = 512
    var sectorCount: UInt64 { UInt64(storage.count / sectorSize) }
    var isReadOnly = false
    var pending: [BlockRequest] = []

    mutating func submit(_ request: BlockRequest) throws(BlockDeviceError) {
        try validate(request)
        pending.append(request)
    }

    mutating func pollCompletions(_ body: (BlockCompletion) -> Void) -> Int {
        let done = pending
        pending.removeAll()
        for request in done {
            let offset = Int(request.sector) * sectorSize
            switch request.operation {
            case .read:
                storage.withUnsafeBytes { request.buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset..<offset + request.buffer.count])) }
            case .write:
                for index in 0..<request.buffer.count { storage[offset + index] = request.buffer[index] }
            case .flush:
                break
            }
            body(BlockCompletion(tag: request.tag, result: .success(request.buffer.count)))
        }
        return done.count
    }
}

@Test func writeThenReadRoundTrips() throws {
    var disk = MemoryDisk(storage: [UInt8](repeating: 0, count: 4096))
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1024, alignment: 16)
    defer { buffer.deallocate() }
    for index in 0..<1024 { buffer[index] = UInt8(index & 0xFF) }
    #expect(try disk.perform(BlockRequest(operation: .write, sector: 2, buffer: buffer, tag: 1)) == 1024)
    buffer.initializeMemory(as: UInt8.self, repeating: 0)
    #expect(try disk.perform(BlockRequest(operation: .read, sector: 2, buffer: buffer, tag: 2)) == 1024)
    #expect(buffer[5] == 5 && buffer[1023] == 0xFF)
}

@Test func requestsOutsideTheDeviceAreRejected() {
    var disk = MemoryDisk(storage: [UInt8](repeating: 0, count: 4096))
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1024, alignment: 16)
    defer { buffer.deallocate() }
    #expect(throws: BlockDeviceError.outOfRange(sector: 7, count: 2, capacity: 8)) {
        try disk.submit(BlockRequest(operation: .read, sector: 7, buffer: buffer, tag: 1))
    }
    let odd = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<100])
    #expect(throws: BlockDeviceError.misaligned(length: 100, sectorSize: 512)) {
        try disk.submit(BlockRequest(operation: .write, sector: 0, buffer: odd, tag: 2))
    }
    disk.isReadOnly = true
    #expect(throws: BlockDeviceError.readOnly) {
        try disk.submit(BlockRequest(operation: .write, sector: 0, buffer: buffer, tag: 3))
    }
}

@Test func macAddressEqualityAndMulticast() {
    #expect(MACAddress(0x52, 0x54, 0, 0x12, 0x34, 0x56) == MACAddress(0x52, 0x54, 0, 0x12, 0x34, 0x56))
    #expect(MACAddress(0x52, 0x54, 0, 0x12, 0x34, 0x56) != MACAddress.broadcast)
    #expect(MACAddress.broadcast.isMulticast)
}
