// Integration: the platform services seen from guest applications, booted
// under QEMU (TCG) through rumprun-cli: memory (most of RAM allocated and
// freed, clean failure past the end), randomness (ChaCha20 pool seeded from
// RDSEED/RDRAND/jitter, fed by virtio-rng), PCI on microvm,pcie=on (BARs
// assigned by the guest, the same drivers as on pc), a legacy virtio disk,
// and the rumpcomp_pci_* hypercalls.
import Foundation
import Testing
import UnikernelBake

extension Integration {
    static let memory: Result<String, Error> = Result { try bake("Tests/Guests/memory").path }
    static let random: Result<String, Error> = Result { try bake("Tests/Guests/random").path }
}

@Suite(.serialized) struct PlatformServiceTests {
    @Test(arguments: [("microvm", 128), ("pc", 64)])
    func mostOfMemoryIsAllocatedAndFreedCleanly(machine: String, megabytes: Int) throws {
        let image = try Integration.memory.get()
        let run = try Integration.run(["run", "qemu", "-i", "--timeout", "300", "--machine", machine, "-M", String(megabytes), image])
        #expect(run.stdout.contains("memory: posix_memalign 8...65536: aligned, bad alignments refused: yes\n"))
        #expect(run.stdout.contains("memory: realloc 40 -> 2000000 bytes keeps data: yes\n"))
        #expect(run.stdout.contains("touched and intact: yes\n"))
        #expect(run.stdout.contains("memory: allocation past the end refused: yes, failed allocations counted: yes\n"))
        #expect(run.stdout.contains("memory: same free count after freeing: yes\n"))
        // At least 90 % of the free memory went out in 1 MiB chunks.
        let line = run.stdout.split(separator: "\n").first { $0.hasPrefix("memory: allocated ") }.map(String.init) ?? ""
        let chunks = Int(line.dropFirst("memory: allocated ".count).prefix { $0.isNumber }) ?? 0
        #expect(chunks >= megabytes * 8 / 10, "\(line)")
        #expect(run.stdout.contains("memory: 0 failures\n"))
        #expect(run.status == 0, "stdout: \(run.stdout) stderr: \(run.stderr)")
    }

    /// Without RDRAND (QEMU's default CPU model) the pool seeds from TSC
    /// jitter: two boots still give different output.
    @Test func randomnessDiffersAcrossBootsWithoutHardwareGenerators() throws {
        let image = try Integration.random.get()
        var samples: [String] = []
        for _ in 0..<2 {
            let run = try Integration.run(["run", "qemu", "-i", "--timeout", "300", image])
            #expect(run.stdout.contains("random: rdseed 0 words (0 failed attempts), rdrand 0 words (0 failed attempts), jitter 256 samples"))
            #expect(run.stdout.contains("random: stack guard from the CSPRNG: yes\n"))
            #expect(run.stdout.contains("random: 0 failures\n"))
            #expect(run.status == 0, "stdout: \(run.stdout) stderr: \(run.stderr)")
            let sample = run.stdout.split(separator: "\n").first { $0.hasPrefix("random: sample ") }.map { String($0.dropFirst(15)) }
            samples.append(sample ?? "")
        }
        #expect(samples[0].count == 64)
        #expect(samples[0] != samples[1])
    }

    /// `--pcie` gives microvm a PCI bus for a device passed with `-g`.
    @Test func virtioRNGFeedsThePoolOnMicrovm() throws {
        let image = try Integration.random.get()
        let run = try Integration.run(["run", "qemu", "-i", "--timeout", "300", "--pcie", "-g", "-device virtio-rng-pci", image])
        #expect(run.stdout.contains("random: virtio-rng fed 64 bytes, reseeded: yes\n"))
        #expect(run.stdout.contains("random: 0 failures\n"))
        #expect(run.status == 0, "stdout: \(run.stdout) stderr: \(run.stderr)")
    }

    /// `-cpu max` under TCG (QEMU 7.2) offers RDRAND but not RDSEED;
    /// virtio-rng feeds the pool.
    @Test func hardwareGeneratorsAndVirtioRNGFeedThePool() throws {
        let image = try Integration.random.get()
        let run = try Integration.run(["run", "qemu", "-i", "--timeout", "300", "--machine", "pc", "-g", "-cpu max -device virtio-rng-pci", image])
        #expect(run.stdout.contains("random: rdseed 0 words (0 failed attempts), rdrand 4 words (0 failed attempts)"))
        #expect(run.stdout.contains("random: virtio-rng fed 64 bytes, reseeded: yes\n"))
        #expect(run.stdout.contains("random: 1 MiB: "))
        #expect(run.stdout.contains("random: arc4random_uniform(6) faces within 9000...11000: yes\n"))
        #expect(run.stdout.contains("random: getrandom 100 -> 100, getentropy 256 -> 0, 257 -> -1\n"))
        #expect(run.stdout.contains("random: 0 failures\n"))
        #expect(run.status == 0, "stdout: \(run.stdout) stderr: \(run.stderr)")
    }

    /// microvm,pcie=on: no firmware assigns BARs; the guest finds the GPEX
    /// ECAM, numbers the bus behind a PCIe root port, assigns the BARs and
    /// the port's window, and the drivers work as on pc (virtio-net, e1000,
    /// virtio-rng, one disk on bus 0 and one behind the root port).
    @Test func driversWorkOnMicrovmWithPCIe() throws {
        let image = try Integration.devices.get()
        let disk = Integration.imageDirectory + "/microvm-disk-\(UUID().uuidString).img"
        let behindPort = Integration.imageDirectory + "/microvm-port-disk-\(UUID().uuidString).img"
        try Data(count: 1 << 20).write(to: URL(fileURLWithPath: disk))
        try Data(count: 3 << 20).write(to: URL(fileURLWithPath: behindPort))
        defer {
            try? FileManager.default.removeItem(atPath: disk)
            try? FileManager.default.removeItem(atPath: behindPort)
        }
        let run = try Integration.run([
            "run", "qemu", "-i", "--timeout", "300", "--machine", "microvm",
            "-I", "net0,virtio-net,user", "-I", "net1,e1000,user", "-b", disk,
            "-g", "-device virtio-rng-pci -device pcie-root-port,id=rp0,chassis=1 -drive file=\(behindPort),if=none,id=rpdisk,format=raw -device virtio-blk-pci,drive=rpdisk,bus=rp0",
            image,
        ])
        // e1000's I/O BAR stays unassigned: microvm's bridge forwards no I/O.
        #expect(run.stdout.contains("pci: ecam 0xe0000000, 9 BARs assigned by the guest\n"))
        #expect(run.stdout.contains("virtio-net: mac 525400123456, ARP reply from 10.0.2.2: yes\n"))
        #expect(run.stdout.contains("e1000: mac 525400123457, ARP reply from 10.0.2.2: yes\n"))
        #expect(run.stdout.contains("virtio-blk: 2048 sectors, wrote, flushed and read back 66048 bytes: match\n"))
        #expect(run.stdout.contains("virtio-blk: 6144 sectors, wrote, flushed and read back 66048 bytes: match\n"))
        #expect(run.stdout.contains("virtio-rng: 16 bytes\n"))
        #expect(run.stdout.contains("virtio-rng: fed 64 bytes to the entropy pool, reseeded: yes\n"))
        #expect(run.stdout.contains("rumpcomp: 7 functions, config reads match, dmalloc aligned and contiguous, irq_establish refuses NULL, 0 problems\n"))
        #expect(run.stdout.contains("devices: 0 failures\n"))
        #expect(run.status == 0, "stdout: \(run.stdout) stderr: \(run.stderr)")
        for path in [disk, behindPort] {
            let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
            #expect(bytes[(8 * 512)..<(8 * 512 + 66048)].enumerated().allSatisfy { $0.element == UInt8(truncatingIfNeeded: $0.offset &* 7 &+ 3) }, "\(path)")
        }
    }

    /// A disk with the legacy virtio transport (disable-modern=on) beside a
    /// modern one on pc; both get the pattern, checked in the host files.
    @Test func aLegacyVirtioDiskWorks() throws {
        let image = try Integration.devices.get()
        let modern = Integration.imageDirectory + "/modern-\(UUID().uuidString).img"
        let legacy = Integration.imageDirectory + "/legacy-\(UUID().uuidString).img"
        try Data(count: 1 << 20).write(to: URL(fileURLWithPath: modern))
        try Data(count: 2 << 20).write(to: URL(fileURLWithPath: legacy))
        defer {
            try? FileManager.default.removeItem(atPath: modern)
            try? FileManager.default.removeItem(atPath: legacy)
        }
        let run = try Integration.run([
            "run", "qemu", "-i", "--timeout", "300", "--machine", "pc", "-b", modern,
            "-g", "-drive file=\(legacy),if=none,id=legacy0,format=raw -device virtio-blk-pci,drive=legacy0,disable-modern=on",
            image,
        ])
        #expect(run.stdout.contains("virtio-blk: 2048 sectors, wrote, flushed and read back 66048 bytes: match\n"))
        #expect(run.stdout.contains("virtio-blk (legacy): 4096 sectors, wrote, flushed and read back 66048 bytes: match\n"))
        #expect(run.stdout.contains("pci: ports 0xcf8\n"))
        #expect(run.stdout.contains("irq_establish refuses NULL, 0 problems\n"))
        #expect(run.status == 0, "stdout: \(run.stdout) stderr: \(run.stderr)")
        for path in [modern, legacy] {
            let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
            #expect(bytes[(8 * 512)..<(8 * 512 + 66048)].enumerated().allSatisfy { $0.element == UInt8(truncatingIfNeeded: $0.offset &* 7 &+ 3) }, "\(path)")
        }
    }
}

@Suite struct PCIeLaunchOptionTests {
    @Test func pcieOptionAddsTheHostBridgeOnMicrovmOnly() {
        var options = LaunchOptions(image: "/x.img")
        #expect(Launcher.qemuArguments(options, kernel: "/x.img", console: "stdio").starts(with: ["-M", "microvm"]))
        options.pcie = true
        #expect(Launcher.qemuArguments(options, kernel: "/x.img", console: "stdio").starts(with: ["-M", "microvm,pcie=on"]))
        options.machine = .pc
        #expect(Launcher.qemuArguments(options, kernel: "/x.img", console: "stdio").starts(with: ["-M", "pc"]))
    }
}
