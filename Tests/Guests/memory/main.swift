// memory: the guest's memory services under load (integration tests):
// posix_memalign alignments, realloc growth keeping data, then most of RAM
// allocated in 1 MiB chunks and touched, an allocation past the end that
// fails cleanly, everything freed with the free page count restored, and the
// statistics. Exits with the number of failures.
import Rumprun

var failures: Int32 = 0

func pattern(_ index: Int) -> UInt8 { UInt8(truncatingIfNeeded: index &* 13 &+ 7) }

guard let start = Rumprun.memoryStatistics else {
    print("memory: no statistics")
    Rumprun.exit(1)
}
print("memory: \(start.totalPages) pages, \(start.freePages) free, heap \(start.heapBytesInUse) bytes in use")

// posix_memalign: every power-of-two alignment from 8 to 64 KiB.
var alignmentFailures = 0
for shift in 3...16 {
    let alignment = 1 << shift
    for size in [1, 24, 100, 5000, 70_000] {
        guard let block = Rumprun.allocateMemory(byteCount: size, alignment: alignment) else {
            alignmentFailures += 1
            continue
        }
        if Int(bitPattern: block) % alignment != 0 { alignmentFailures += 1 }
        for index in 0..<size { block.storeBytes(of: pattern(index), toByteOffset: index, as: UInt8.self) }
        for index in 0..<size where block.load(fromByteOffset: index, as: UInt8.self) != pattern(index) { alignmentFailures += 1 }
        Rumprun.freeMemory(block)
    }
}
let badAlignmentRefused = Rumprun.allocateMemory(byteCount: 16, alignment: 3) == nil
    && Rumprun.allocateMemory(byteCount: 16, alignment: 4) == nil
print("memory: posix_memalign 8...65536: \(alignmentFailures == 0 ? "aligned" : "MISALIGNED"), bad alignments refused: \(badAlignmentRefused ? "yes" : "no")")
if alignmentFailures != 0 || !badAlignmentRefused { failures += 1 }

// realloc: growth from 40 bytes to 2 MB keeps what was written.
var block = Rumprun.allocateMemory(byteCount: 40)!
for index in 0..<40 { block.storeBytes(of: pattern(index), toByteOffset: index, as: UInt8.self) }
var size = 40
var reallocIntact = true
for newSize in [100, 3000, 20_000, 300_000, 2_000_000] {
    guard let grown = Rumprun.reallocateMemory(block, byteCount: newSize) else {
        reallocIntact = false
        break
    }
    for index in 0..<size where grown.load(fromByteOffset: index, as: UInt8.self) != pattern(index) { reallocIntact = false }
    for index in size..<newSize { grown.storeBytes(of: pattern(index), toByteOffset: index, as: UInt8.self) }
    block = grown
    size = newSize
}
Rumprun.freeMemory(block)
print("memory: realloc 40 -> 2000000 bytes keeps data: \(reallocIntact ? "yes" : "NO")")
if !reallocIntact { failures += 1 }

// Most of RAM in 1 MiB chunks. Nothing below allocates or prints until
// everything is freed again (the heap is empty by then).
let chunkSize = 1 << 20
let tableCapacity = Int(start.totalPages) * 4096 / chunkSize + 16
let table = UnsafeMutablePointer<UnsafeMutableRawPointer>.allocate(capacity: tableCapacity)
let before = Rumprun.memoryStatistics!
var count = 0
while count < tableCapacity, let chunk = Rumprun.allocateMemory(byteCount: chunkSize, alignment: 4096) {
    // Touch every page with its own value.
    var offset = 0
    while offset < chunkSize {
        chunk.storeBytes(of: UInt64(count) << 32 | UInt64(offset), toByteOffset: offset, as: UInt64.self)
        offset += 4096
    }
    table[count] = chunk
    count += 1
}
let exhausted = Rumprun.memoryStatistics!
// Past the end: more chunks, and one huge request, fail with nil.
let pastEndRefused = Rumprun.allocateMemory(byteCount: chunkSize) == nil
    && Rumprun.allocateMemory(byteCount: 1 << 40) == nil
    && Rumprun.reallocateMemory(table[0], byteCount: 1 << 40) == nil
var touchedIntact = true
for index in 0..<count {
    var offset = 0
    while offset < chunkSize {
        if table[index].load(fromByteOffset: offset, as: UInt64.self) != UInt64(index) << 32 | UInt64(offset) { touchedIntact = false }
        offset += 4096
    }
}
for index in 0..<count { Rumprun.freeMemory(table[index]) }
let after = Rumprun.memoryStatistics!

let allocatedBytes = UInt64(count) * UInt64(chunkSize)
print("memory: allocated \(count) chunks of 1 MiB (\(allocatedBytes * 100 / before.freeBytes)% of free memory), touched and intact: \(touchedIntact ? "yes" : "NO")")
print("memory: allocation past the end refused: \(pastEndRefused ? "yes" : "NO"), failed allocations counted: \(exhausted.heapFailedAllocationCount > before.heapFailedAllocationCount ? "yes" : "no")")
print("memory: free pages before \(before.freePages), exhausted \(exhausted.freePages), after freeing \(after.freePages)")
print("memory: peak pages in use \(after.peakPagesInUse), heap peak \(after.heapPeakBytesInUse) bytes")
let sameFree = after.freePages == before.freePages && after.heapBytesInUse == before.heapBytesInUse
let mostOfRAM = allocatedBytes * 10 >= before.freeBytes * 9
let peakSeen = after.peakPagesInUse >= exhausted.pagesInUse && after.heapPeakBytesInUse >= Int(allocatedBytes)
print("memory: same free count after freeing: \(sameFree ? "yes" : "NO")")
if !sameFree || !mostOfRAM || !touchedIntact || !pastEndRefused || !peakSeen { failures += 1 }

// The memory is usable again: the same number of chunks fits.
var again = 0
while again < count, let chunk = Rumprun.allocateMemory(byteCount: chunkSize, alignment: 4096) {
    table[again] = chunk
    again += 1
}
for index in 0..<again { Rumprun.freeMemory(table[index]) }
print("memory: reallocated \(again) of \(count) chunks after freeing")
if again != count { failures += 1 }
table.deallocate()

print("memory: \(failures) failures")
Rumprun.exit(failures)
