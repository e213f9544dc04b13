// ChaCha20: the quarter round (RFC 8439 §2.1), the block function (§2.3)
// and the keystream XOR (§2.4). Host-tested against the RFC's test vectors
// (§2.1.1, §2.3.2, §2.4.2, Appendix A.1/A.2).

/// The ChaCha20 primitive of RFC 8439: 256-bit key, 32-bit block counter,
/// 96-bit nonce, 64-byte blocks.
public enum ChaCha20 {
    /// Bytes in a key.
    public static var keyByteCount: Int { 32 }
    /// Bytes in a nonce.
    public static var nonceByteCount: Int { 12 }
    /// Bytes in a block of keystream.
    public static var blockByteCount: Int { 64 }

    /// "expand 32-byte k" as four little-endian words (§2.3).
    static var constant0: UInt32 { 0x6170_7865 }
    static var constant1: UInt32 { 0x3320_646E }
    static var constant2: UInt32 { 0x7962_2D32 }
    static var constant3: UInt32 { 0x6B20_6574 }

    /// The quarter round on four words (§2.1).
    @inline(__always)
    public static func quarterRound(_ a: inout UInt32, _ b: inout UInt32, _ c: inout UInt32, _ d: inout UInt32) {
        a &+= b; d ^= a; d = d.rotatedLeft(16)
        c &+= d; b ^= c; b = b.rotatedLeft(12)
        a &+= b; d ^= a; d = d.rotatedLeft(8)
        c &+= d; b ^= c; b = b.rotatedLeft(7)
    }

    /// One 64-byte block of keystream for `key` (8 words), `counter` and
    /// `nonce` (3 words), written to `output` (16 words), words in host
    /// order (serialize little-endian for the byte stream). The working
    /// state lives in sixteen locals (registers), so no copy of it is left
    /// in memory.
    @inline(__always)
    static func block(key: UnsafePointer<UInt32>, counter: UInt32, nonce: (UInt32, UInt32, UInt32), output: UnsafeMutablePointer<UInt32>) {
        var x0 = constant0, x1 = constant1, x2 = constant2, x3 = constant3
        var x4 = key[0], x5 = key[1], x6 = key[2], x7 = key[3]
        var x8 = key[4], x9 = key[5], x10 = key[6], x11 = key[7]
        var x12 = counter, x13 = nonce.0, x14 = nonce.1, x15 = nonce.2
        for _ in 0..<10 {
            // Column rounds, then diagonal rounds (§2.3).
            quarterRound(&x0, &x4, &x8, &x12)
            quarterRound(&x1, &x5, &x9, &x13)
            quarterRound(&x2, &x6, &x10, &x14)
            quarterRound(&x3, &x7, &x11, &x15)
            quarterRound(&x0, &x5, &x10, &x15)
            quarterRound(&x1, &x6, &x11, &x12)
            quarterRound(&x2, &x7, &x8, &x13)
            quarterRound(&x3, &x4, &x9, &x14)
        }
        output[0] = x0 &+ constant0
        output[1] = x1 &+ constant1
        output[2] = x2 &+ constant2
        output[3] = x3 &+ constant3
        output[4] = x4 &+ key[0]
        output[5] = x5 &+ key[1]
        output[6] = x6 &+ key[2]
        output[7] = x7 &+ key[3]
        output[8] = x8 &+ key[4]
        output[9] = x9 &+ key[5]
        output[10] = x10 &+ key[6]
        output[11] = x11 &+ key[7]
        output[12] = x12 &+ counter
        output[13] = x13 &+ nonce.0
        output[14] = x14 &+ nonce.1
        output[15] = x15 &+ nonce.2
    }

    /// Writes the 64-byte keystream block of `key` (32 bytes), `counter` and
    /// `nonce` (12 bytes) to `output` (64 bytes), as §2.3 serializes it.
    public static func block(
        key: UnsafeRawBufferPointer, counter: UInt32, nonce: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer
    ) {
        precondition(key.count == 32 && nonce.count == 12 && output.count >= 64, "ChaCha20.block: key 32, nonce 12, output 64 bytes")
        var words = KeyWords()
        words.load(from: key)
        let nonceWords = (loadWord(nonce, 0), loadWord(nonce, 4), loadWord(nonce, 8))
        words.withWords { keyPointer in
            let out = output.baseAddress!.assumingMemoryBound(to: UInt32.self)
            block(key: keyPointer, counter: counter, nonce: nonceWords, output: out)
            for index in 0..<16 { out[index] = out[index].littleEndian }
        }
        words.erase()
    }

    /// XORs `data` in place with the keystream starting at block `counter`
    /// (§2.4: encryption and decryption are the same operation).
    public static func apply(key: UnsafeRawBufferPointer, counter: UInt32, nonce: UnsafeRawBufferPointer, to data: UnsafeMutableRawBufferPointer) {
        var keystream: BlockBytes = (0, 0, 0, 0, 0, 0, 0, 0)
        var offset = 0
        var blockCounter = counter
        withUnsafeMutableBytes(of: &keystream) { scratch in
            while offset < data.count {
                block(key: key, counter: blockCounter, nonce: nonce, into: scratch)
                let chunk = min(64, data.count - offset)
                for index in 0..<chunk { data[offset + index] ^= scratch[index] }
                offset += chunk
                blockCounter &+= 1
            }
            scratch.initializeMemory(as: UInt8.self, repeating: 0)
        }
    }

    @inline(__always)
    static func loadWord(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> UInt32 {
        UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }
}

extension UInt32 {
    @inline(__always)
    func rotatedLeft(_ count: UInt32) -> UInt32 { (self << count) | (self >> (32 - count)) }
}

/// 64 bytes of scratch on the stack.
typealias BlockBytes = (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)

/// A 256-bit key as eight 32-bit words (host order).
struct KeyWords {
    var words: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32) = (0, 0, 0, 0, 0, 0, 0, 0)

    /// Reads 32 bytes, little-endian words.
    mutating func load(from bytes: UnsafeRawBufferPointer) {
        withUnsafeMutableBytes(of: &words) { target in
            for index in 0..<8 {
                target.storeBytes(of: ChaCha20.loadWord(bytes, 4 * index), toByteOffset: 4 * index, as: UInt32.self)
            }
        }
    }

    /// Reads eight words from `pointer`.
    mutating func load(words source: UnsafePointer<UInt32>) {
        withUnsafeMutableBytes(of: &words) { target in
            for index in 0..<8 { target.storeBytes(of: source[index], toByteOffset: 4 * index, as: UInt32.self) }
        }
    }

    mutating func withWords<Result>(_ body: (UnsafePointer<UInt32>) -> Result) -> Result {
        withUnsafeMutableBytes(of: &words) { body(UnsafePointer($0.baseAddress!.assumingMemoryBound(to: UInt32.self))) }
    }

    mutating func erase() { words = (0, 0, 0, 0, 0, 0, 0, 0) }
}
