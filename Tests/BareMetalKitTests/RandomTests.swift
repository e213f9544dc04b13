// Tests of the randomness subsystem: ChaCha20 against RFC 8439's test
// vectors, and the entropy pool (fast key erasure, reseed policy, RDSEED /
// RDRAND retry limits and plausibility checks, jitter credit, output
// statistics) over a scripted entropy source.
import Testing
@testable import BareMetalKit

func bytes(_ hex: String) -> [UInt8] {
    var result: [UInt8] = []
    var characters = Array(hex.filter { !$0.isWhitespace && $0 != ":" })
    while characters.count >= 2 {
        result.append(UInt8(String(characters[0..<2]), radix: 16)!)
        characters.removeFirst(2)
    }
    return result
}

func chachaBlock(key: [UInt8], counter: UInt32, nonce: [UInt8]) -> [UInt8] {
    var output = [UInt8](repeating: 0, count: 64)
    key.withUnsafeBytes { k in
        nonce.withUnsafeBytes { n in
            output.withUnsafeMutableBytes { ChaCha20.block(key: k, counter: counter, nonce: n, into: $0) }
        }
    }
    return output
}

struct ChaCha20Tests {
    /// RFC 8439 §2.1.1.
    @Test func quarterRoundVector() {
        var a: UInt32 = 0x1111_1111, b: UInt32 = 0x0102_0304, c: UInt32 = 0x9B8D_6F43, d: UInt32 = 0x0123_4567
        ChaCha20.quarterRound(&a, &b, &c, &d)
        #expect([a, b, c, d] == [0xEA2A_92F4, 0xCB1C_F8CE, 0x4581_472E, 0x5881_C4BB])
    }

    /// RFC 8439 §2.3.2: key 00..1f, nonce 00:00:00:09:00:00:00:4a:00:00:00:00, counter 1.
    @Test func blockFunctionVector() {
        let output = chachaBlock(key: Array(0...31), counter: 1, nonce: bytes("000000090000004a00000000"))
        #expect(output == bytes("""
            10 f1 e7 e4 d1 3b 59 15 50 0f dd 1f a3 20 71 c4 c7 d1 f4 c7 33 c0 68 03 04 22 aa 9a c3 d4 6c 4e
            d2 82 64 46 07 9f aa 09 14 c2 d7 05 d9 8b 02 a2 b5 12 9c d1 de 16 4e b9 cb d0 83 e8 a2 50 3c 4e
            """))
    }

    /// RFC 8439 §2.4.2: the "sunscreen" plaintext, counter 1; two blocks
    /// and a partial one. Applying the keystream twice gives the plaintext.
    @Test func encryptionVector() {
        let plaintext = Array("Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".utf8)
        var data = plaintext
        let key: [UInt8] = Array(0...31)
        let nonce = bytes("000000000000004a00000000")
        key.withUnsafeBytes { k in nonce.withUnsafeBytes { n in data.withUnsafeMutableBytes { ChaCha20.apply(key: k, counter: 1, nonce: n, to: $0) } } }
        #expect(data == bytes("""
            6e 2e 35 9a 25 68 f9 80 41 ba 07 28 dd 0d 69 81 e9 7e 7a ec 1d 43 60 c2 0a 27 af cc fd 9f ae 0b
            f9 1b 65 c5 52 47 33 ab 8f 59 3d ab cd 62 b3 57 16 39 d6 24 e6 51 52 ab 8f 53 0c 35 9f 08 61 d8
            07 ca 0d bf 50 0d 6a 61 56 a3 8e 08 8a 22 b6 5e 52 bc 51 4d 16 cc f8 06 81 8c e9 1a b7 79 37 36
            5a f9 0b bf 74 a3 5b e6 b4 0b 8e ed f2 78 5e 42 87 4d
            """))
        key.withUnsafeBytes { k in nonce.withUnsafeBytes { n in data.withUnsafeMutableBytes { ChaCha20.apply(key: k, counter: 1, nonce: n, to: $0) } } }
        #expect(data == plaintext)
    }

    /// RFC 8439 Appendix A.1, test vectors #1, #2 and #3.
    @Test(arguments: [
        (String(repeating: "00", count: 32), UInt32(0),
         "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"),
        (String(repeating: "00", count: 32), UInt32(1),
         "9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed29b721769ce64e43d57133b074d839d531ed1f28510afb45ace10a1f4b794d6f"),
        (String(repeating: "00", count: 31) + "01", UInt32(1),
         "3aeb5224ecf849929b9d828db1ced4dd832025e8018b8160b82284f3c949aa5a8eca00bbb4a73bdad192b5c42f73f2fd4e273644c8b36125a64addeb006c13a0"),
    ])
    func appendixVectors(key: String, counter: UInt32, expected: String) {
        #expect(chachaBlock(key: bytes(key), counter: counter, nonce: [UInt8](repeating: 0, count: 12)) == bytes(expected))
    }
}

/// An entropy source whose every answer is scripted; it counts the calls.
struct ScriptedSource: EntropySource {
    var hasSeedInstruction = true
    var hasRandomInstruction = true
    /// Answers in order; when exhausted, `seedDefault` gives a fresh value.
    var seedAnswers: [UInt64?] = []
    var randomAnswers: [UInt64?] = []
    var seedDefault: ((Int) -> UInt64?) = { UInt64($0) &* 0x9E37_79B9_7F4A_7C15 | 1 }
    var randomDefault: ((Int) -> UInt64?) = { UInt64($0) &* 0xBF58_476D_1CE4_E5B9 | 1 }
    var tick: (Int) -> UInt64 = { UInt64($0) * 97 + UInt64(($0 * 7919) % 13) }
    var seedCalls = 0
    var randomCalls = 0
    var timestampCalls = 0

    mutating func readSeed() -> UInt64? {
        defer { seedCalls += 1 }
        if seedCalls < seedAnswers.count { return seedAnswers[seedCalls] }
        return seedDefault(seedCalls)
    }
    mutating func readRandom() -> UInt64? {
        defer { randomCalls += 1 }
        if randomCalls < randomAnswers.count { return randomAnswers[randomCalls] }
        return randomDefault(randomCalls)
    }
    mutating func readTimestamp() -> UInt64 {
        defer { timestampCalls += 1 }
        return tick(timestampCalls)
    }
}

struct EntropyPoolTests {
    func output(_ pool: EntropyPool<ScriptedSource>, _ count: Int) -> [UInt8] {
        var result = [UInt8](repeating: 0, count: count)
        result.withUnsafeMutableBytes { pool.fill($0) }
        return result
    }

    func keyBytes(_ pool: EntropyPool<ScriptedSource>) -> [UInt8] {
        withUnsafeBytes(of: pool.key.words) { Array($0) }
    }

    /// Fast key erasure: each refill produces 16 ChaCha20 blocks under the
    /// current key (counter 0..15, nonce 0); bytes 0..<32 become the next
    /// key, the rest is output; handed-out bytes are zeroed in the buffer.
    @Test func outputIsTheKeystreamAndTheKeyIsErasedAtEachRefill() {
        let pool = EntropyPool(source: ScriptedSource())
        pool.seed()
        let firstKey = keyBytes(pool)
        var stream: [UInt8] = []
        for counter in 0..<16 {
            stream += chachaBlock(key: firstKey, counter: UInt32(counter), nonce: [UInt8](repeating: 0, count: 12))
        }
        let produced = output(pool, 100)
        #expect(produced == Array(stream[32..<132]))
        #expect(keyBytes(pool) == Array(stream[0..<32]))
        #expect(keyBytes(pool) != firstKey)
        // Everything before the read position is zero: the old key's output
        // and the bytes handed out are gone from memory.
        let consumed = UnsafeRawBufferPointer(start: pool.buffer, count: pool.position)
        #expect(consumed.allSatisfy { $0 == 0 })
        #expect(pool.position == 132)
        // Crossing into the next refill uses the new key.
        let secondKey = keyBytes(pool)
        let rest = output(pool, 1024 - 132 + 10)
        #expect(Array(rest[0..<(1024 - 132)]) == Array(stream[132..<1024]))
        let next = chachaBlock(key: secondKey, counter: 0, nonce: [UInt8](repeating: 0, count: 12))
        #expect(Array(rest[(1024 - 132)...]) == Array(next[32..<42]))
    }

    @Test func sameInputsGiveSameOutputAndOneBitChangesIt() {
        let a = EntropyPool(source: ScriptedSource())
        let b = EntropyPool(source: ScriptedSource())
        var changed = ScriptedSource()
        changed.seedAnswers = [0x1234_5678_9ABC_DEF1]
        let c = EntropyPool(source: changed)
        var changedAgain = ScriptedSource()
        changedAgain.seedAnswers = [0x1234_5678_9ABC_DEF0 | 0x1_0000]
        let d = EntropyPool(source: changedAgain)
        let outputs = [output(a, 64), output(b, 64), output(c, 64), output(d, 64)]
        #expect(outputs[0] == outputs[1])
        #expect(outputs[0] != outputs[2])
        #expect(outputs[2] != outputs[3])
        // The jitter timestamps matter too.
        var otherClock = ScriptedSource()
        otherClock.tick = { UInt64($0) * 97 + UInt64(($0 * 7919) % 13) + ($0 == 100 ? 1 : 0) }
        #expect(output(EntropyPool(source: otherClock), 64) != outputs[0])
    }

    @Test func seedingUsesBothInstructionsAndJitter() {
        let pool = EntropyPool(source: ScriptedSource())
        pool.seed()
        #expect(pool.isSeeded)
        #expect(pool.report.seedWords == 4)
        #expect(pool.report.randomWords == 4)
        #expect(pool.report.jitterSamples == EntropyPool<ScriptedSource>.seedJitterSamples)
        #expect(pool.report.distinctJitterDeltas > 1)
        #expect(pool.report.reseedCount == 1)
        // 4 x 64 (RDSEED) + 4 x 16 (RDRAND) + jitter credit (at most samples / 8).
        #expect(pool.report.creditedBits > 320 && pool.report.creditedBits <= 320 + 32)
    }

    @Test func withoutHardwareInstructionsOnlyJitterSeeds() {
        var source = ScriptedSource()
        source.hasSeedInstruction = false
        source.hasRandomInstruction = false
        let pool = EntropyPool(source: source)
        _ = output(pool, 16)
        #expect(pool.source.seedCalls == 0 && pool.source.randomCalls == 0)
        #expect(pool.report.seedWords == 0 && pool.report.randomWords == 0)
        #expect(pool.report.jitterSamples == 256)
    }

    @Test func aClockWithoutJitterEarnsNoCredit() {
        var source = ScriptedSource()
        source.hasSeedInstruction = false
        source.hasRandomInstruction = false
        source.tick = { UInt64($0) * 1000 }
        let pool = EntropyPool(source: source)
        pool.seed()
        #expect(pool.report.distinctJitterDeltas == 1)
        #expect(pool.report.creditedBits == 0)
    }

    @Test func rdseedIsRetriedWithinItsLimit() {
        var source = ScriptedSource()
        source.seedAnswers = [nil, nil, nil, nil, nil]
        let pool = EntropyPool(source: source)
        pool.gatherHardware(words: 4)
        #expect(pool.report.seedFailures == 5)
        #expect(pool.report.seedWords == 4)
        #expect(pool.source.seedCalls == 9)
    }

    @Test func aDeadRdseedOrRdrandEndsAfterTheRetryLimit() {
        var source = ScriptedSource()
        source.seedDefault = { _ in nil }
        source.randomDefault = { _ in nil }
        let pool = EntropyPool(source: source)
        pool.seed()
        #expect(pool.report.seedWords == 0 && pool.report.randomWords == 0)
        #expect(pool.source.seedCalls == EntropyPool<ScriptedSource>.seedRetryLimit)
        #expect(pool.source.randomCalls == EntropyPool<ScriptedSource>.randomRetryLimit)
        #expect(pool.report.seedFailures == 128 && pool.report.randomFailures == 10)
        #expect(output(pool, 32) != [UInt8](repeating: 0, count: 32))
    }

    /// The AMD RDRAND erratum returned all ones with the carry set; a stuck
    /// generator repeats itself. Neither is absorbed or credited.
    @Test func implausibleHardwareWordsAreRejected() {
        var allOnes = ScriptedSource()
        allOnes.hasSeedInstruction = false
        allOnes.randomDefault = { _ in UInt64.max }
        let pool = EntropyPool(source: allOnes)
        pool.gatherHardware(words: 4)
        #expect(pool.report.randomWords == 0)
        #expect(pool.report.rejectedWords == 10)
        #expect(pool.report.creditedBits == 0)

        var stuck = ScriptedSource()
        stuck.hasSeedInstruction = false
        stuck.randomDefault = { _ in 0x1234_5678 }
        let other = EntropyPool(source: stuck)
        other.gatherHardware(words: 4)
        #expect(other.report.randomWords == 1)
        #expect(other.report.rejectedWords == 10)
    }

    @Test func creditedEntropyReseedsAtTheNextRequest() {
        let pool = EntropyPool(source: ScriptedSource())
        _ = output(pool, 16)
        #expect(pool.report.reseedCount == 1)
        let before = keyBytes(pool)
        let device = [UInt8](repeating: 0xA5, count: 16)
        device.withUnsafeBytes { pool.add(entropy: $0, creditBits: 128) }
        _ = output(pool, 16)
        #expect(pool.report.reseedCount == 1)  // 128 < 256 bits
        device.withUnsafeBytes { pool.add(entropy: $0, creditBits: 128) }
        let afterPosition = pool.position
        _ = output(pool, 16)
        #expect(pool.report.reseedCount == 2)
        #expect(afterPosition == 64)
        #expect(pool.position == 48)  // buffered output was discarded
        #expect(keyBytes(pool) != before)
        #expect(pool.report.externalBytes == 32)
        // Credit is capped at 8 bits per byte.
        device.withUnsafeBytes { pool.add(entropy: $0, creditBits: 100_000) }
        #expect(pool.pendingBits == 128)
    }

    @Test func longOutputReseedsWithFreshHardwareWords() {
        let pool = EntropyPool(source: ScriptedSource())
        pool.reseedIntervalBytes = 4096
        pool.seed()
        let seedCalls = pool.source.seedCalls
        _ = output(pool, 20_000)
        #expect(pool.report.reseedCount >= 1 + 4)
        #expect(pool.source.seedCalls >= seedCalls + 4)
        #expect(pool.report.bytesGenerated == 20_000)
    }

    @Test func outputLooksUniform() {
        let pool = EntropyPool(source: ScriptedSource())
        let data = output(pool, 1 << 20)
        var counts = [Int](repeating: 0, count: 256)
        var ones = 0
        for byte in data {
            counts[Int(byte)] += 1
            ones += byte.nonzeroBitCount
        }
        let bits = Double(data.count * 8)
        #expect(abs(Double(ones) - bits / 2) < 6 * (bits.squareRoot() / 2))
        let expected = Double(data.count) / 256
        let chiSquare = counts.reduce(0.0) { $0 + (Double($1) - expected) * (Double($1) - expected) / expected }
        #expect(chiSquare < 400, "chi-square \(chiSquare) over 255 degrees of freedom")
    }

    @Test func uniformHasNoBiasAndStaysInRange() {
        let pool = EntropyPool(source: ScriptedSource())
        var counts = [Int](repeating: 0, count: 10)
        for _ in 0..<20_000 { counts[Int(pool.uniform(below: 10))] += 1 }
        #expect(counts.allSatisfy { $0 > 1700 && $0 < 2300 })
        #expect(pool.uniform(below: 0) == 0 && pool.uniform(below: 1) == 0)
        for _ in 0..<1000 { #expect(pool.uniform(below: 3_000_000_000) < 3_000_000_000) }
    }
}
