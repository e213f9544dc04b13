// A FIFO of bytes for TCP send and receive buffers (RFC 9293 §3.3.1 buffers).

/// Bytes appended at the back and consumed from the front without shifting
/// the storage on every read.
struct ByteQueue {
    private var storage: [UInt8] = []
    private var head = 0

    var count: Int { storage.count - head }
    var isEmpty: Bool { count == 0 }

    mutating func append(_ bytes: ArraySlice<UInt8>) {
        compactIfWorthwhile(adding: bytes.count)
        storage.append(contentsOf: bytes)
    }

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        compactIfWorthwhile(adding: bytes.count)
        storage.append(contentsOf: bytes)
    }

    /// Drops `n` bytes from the front.
    mutating func removeFirst(_ n: Int) {
        precondition(n <= count, "removing more bytes than queued")
        head += n
        if head == storage.count {
            storage.removeAll(keepingCapacity: true)
            head = 0
        }
    }

    /// The bytes at `offset..<offset+length` from the front.
    func slice(from offset: Int, length: Int) -> ArraySlice<UInt8> {
        storage[(head + offset)..<(head + offset + length)]
    }

    /// Copies up to `buffer.count` bytes from the front and consumes them.
    mutating func read(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let n = Swift.min(buffer.count, count)
        if n > 0 {
            storage.withUnsafeBytes { source in
                buffer.baseAddress!.copyMemory(from: source.baseAddress! + head, byteCount: n)
            }
            removeFirst(n)
        }
        return n
    }

    private mutating func compactIfWorthwhile(adding: Int) {
        // Shift only when the dead prefix is large, so each byte moves O(1) times.
        if head > 4096 && head >= storage.count / 2 {
            storage.removeFirst(head)
            head = 0
        }
    }
}
