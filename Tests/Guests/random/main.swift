// random: the platform's CSPRNG seen from an application (integration
// tests): what seeded it, a sample the host compares across boots, output
// statistics, arc4random_uniform, getrandom, the stack protector guard,
// and virtio-rng feeding the pool when the device is present. Exits with
// the number of failures.
import BareMetalKit
import Rumprun

var failures: Int32 = 0

func hex(_ bytes: UnsafeRawBufferPointer) -> String {
    let digits: [Character] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f"]
    var text = ""
    for byte in bytes {
        text.append(digits[Int(byte >> 4)])
        text.append(digits[Int(byte & 15)])
    }
    return text
}

let report = Rumprun.entropyReport
print("random: rdseed \(report.seedWords) words (\(report.seedFailures) failed attempts), rdrand \(report.randomWords) words (\(report.randomFailures) failed attempts), jitter \(report.jitterSamples) samples with \(report.distinctJitterDeltas) distinct deltas, \(report.creditedBits) bits credited, \(report.reseedCount) reseeds")

let sample = UnsafeMutableRawBufferPointer.allocate(byteCount: 32, alignment: 8)
Rumprun.randomBytes(sample)
print("random: sample \(hex(UnsafeRawBufferPointer(sample)))")
let second = UnsafeMutableRawBufferPointer.allocate(byteCount: 32, alignment: 8)
Rumprun.randomBytes(second)
var equal = true
for index in 0..<32 where sample[index] != second[index] { equal = false }
if equal { failures += 1 }

// 1 MiB: bit balance within 6 sigma, byte chi-square (255 degrees of freedom) below 400.
let size = 1 << 20
let data = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
let startTSC = PlatformCore.readTSC()
Rumprun.randomBytes(data)
let cycles = PlatformCore.readTSC() - startTSC
// A measurement for the log, not a check (TCG timing says little).
print("random: 1 MiB generated in \(cycles / UInt64(size)) TSC cycles per byte")
var counts = [Int](repeating: 0, count: 256)
var ones = 0
for byte in data {
    counts[Int(byte)] += 1
    ones += byte.nonzeroBitCount
}
let bits = size * 8
let deviation = ones > bits / 2 ? ones - bits / 2 : bits / 2 - ones
// sigma = sqrt(bits) / 2 = 1448 for 2^23 bits.
let expected = size / 256
var chiSquareTimesExpected = 0
for count in counts { chiSquareTimesExpected += (count - expected) * (count - expected) }
let chiSquare = chiSquareTimesExpected / expected
let statisticsGood = deviation < 6 * 1448 && chiSquare < 400
print("random: 1 MiB: ones off by \(deviation) (limit \(6 * 1448)), chi-square \(chiSquare) (limit 400): \(statisticsGood ? "ok" : "BAD")")
if !statisticsGood { failures += 1 }

// arc4random_uniform(6): 60000 draws, every face 9000...11000 times.
var faces = [Int](repeating: 0, count: 6)
var inRange = true
for _ in 0..<60_000 {
    let value = arc4random_uniform(6)
    if value >= 6 { inRange = false } else { faces[Int(value)] += 1 }
}
let uniform = inRange && faces.allSatisfy { $0 > 9000 && $0 < 11_000 }
print("random: arc4random_uniform(6) faces within 9000...11000: \(uniform ? "yes" : "NO")")
if !uniform { failures += 1 }

// getrandom and getentropy, as C code calls them.
let got = getrandom(data.baseAddress, 100, 0)
let entropyCall = getentropy(data.baseAddress, 256)
let tooMuch = getentropy(data.baseAddress, 257)
print("random: getrandom 100 -> \(got), getentropy 256 -> \(entropyCall), 257 -> \(tooMuch)")
if got != 100 || entropyCall != 0 || tooMuch != -1 { failures += 1 }

// The stack protector guard came from the generator, not from entry.S.
let guardValue = Platform.stackGuard
let replaced = guardValue != Platform.bootStackGuard && guardValue & 0xFF == 0 && guardValue != 0
print("random: stack guard from the CSPRNG: \(replaced ? "yes" : "NO")")
if !replaced { failures += 1 }

// Application-supplied entropy: 32 bytes credited 256 bits reseed at once.
let before = Rumprun.entropyReport.reseedCount
Rumprun.addEntropy(UnsafeRawBufferPointer(sample), creditBits: 256)
_ = Rumprun.random()
let reseeded = Rumprun.entropyReport.reseedCount == before + 1
print("random: added entropy reseeds: \(reseeded ? "yes" : "NO")")
if !reseeded { failures += 1 }

// virtio-rng, when attached: 64 bytes into the pool.
for function in PlatformPCI.functions where VirtioPCI.deviceType(of: function) == VirtioPCI.entropyType {
    guard let transport = try? VirtioPCIModernTransport(function: function.address, access: PlatformPCI.access, mapper: IdentityMappedIO()),
        var rng = try? VirtioEntropy(transport: transport, dma: HeapDMAMemory())
    else {
        print("random: virtio-rng init failed")
        failures += 1
        continue
    }
    let fedBefore = Rumprun.entropyReport
    do throws(VirtioError) {
        try Platform.addEntropy(from: &rng, byteCount: 64)
        _ = Rumprun.random()
        let fedAfter = Rumprun.entropyReport
        print("random: virtio-rng fed \(fedAfter.externalBytes - fedBefore.externalBytes) bytes, reseeded: \(fedAfter.reseedCount > fedBefore.reseedCount ? "yes" : "no")")
        if fedAfter.externalBytes - fedBefore.externalBytes != 64 || fedAfter.reseedCount <= fedBefore.reseedCount { failures += 1 }
    } catch {
        print("random: virtio-rng error \(error.code)")
        failures += 1
    }
    try? rng.shutdown()
}

print("random: \(failures) failures")
Rumprun.exit(failures)
