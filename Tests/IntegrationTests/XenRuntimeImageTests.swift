// Xen run-time images: what can be checked of the PVH device glue without a
// Xen host. A xen_pv image links the strong `bmk_xen_start_devices` (the
// event upcall, xenbus discovery, the xenbus thread) while hw images keep
// CPUPrimitives' weak no-op; and off Xen that hook returns at once, so the
// appio guest baked for xen_pv runs its storage and network checks on
// QEMU's virtio devices exactly as the hw image does (Rumprun consults the
// empty platform device registry, then PCI). The device logic itself is
// tested on the host against the Xen models (Tests/XenPVKitTests).
import Foundation
import Testing
import UnikernelBake

enum XenRuntimeImages {
    static func bake(_ application: String, configuration: String, name: String) throws -> String {
        let output = Integration.imageDirectory + "/" + name
        let baker = try Baker(sourceRoot: Integration.sourceRoot)
        _ = try baker.bake(BakeRequest(
            configuration: configuration, output: output, inputs: [Integration.sourceRoot + "/" + application], keepSymbols: true))
        return output
    }

    static let xenAppIO: Result<String, Error> = Result { try bake("Tests/Guests/appio", configuration: "xen_pv", name: "appio-xen.img") }
    static let hwAppIO: Result<String, Error> = Result {
        try bake("Tests/Guests/appio", configuration: "hw_generic", name: "appio-hw-symbols.img")
    }

    /// The symbols a function's code names in objdump's comments: call and
    /// jump targets and `lea` operands (a closure handed to a helper that
    /// the optimizer merged with another, e.g. `ThreadSemaphore.up`'s body
    /// passed to a `…Tm` thunk shared with `ThreadMutex.unlock`).
    static func referencedSymbols(_ image: String, in function: String) throws -> Set<String> {
        let (status, data) = try Integration.toolOutput("/usr/bin/objdump", ["-d", "--no-show-raw-insn", "--disassemble=" + function, image])
        #expect(status == 0, "objdump failed on \(image)")
        var symbols: Set<String> = []
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") where line.hasPrefix(" ") {
            guard let open = line.lastIndex(of: "<"), let close = line.lastIndex(of: ">"), open < close else { continue }
            symbols.insert(String(line[line.index(after: open)..<close]).split(separator: "+").first.map(String.init) ?? "")
        }
        return symbols
    }

    /// `nm` lines for `symbol`: its type letter (T strong, W weak), or nil.
    static func symbolType(_ image: String, _ symbol: String) throws -> Character? {
        let (status, data) = try Integration.toolOutput("/usr/bin/nm", [image])
        #expect(status == 0, "nm failed on \(image)")
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            let fields = line.split(separator: " ")
            if fields.count == 3 && fields[2] == symbol { return fields[1].first }
        }
        return nil
    }
}

@Suite(.serialized) struct XenRuntimeImageTests {
    @Test func xenImagesLinkTheDeviceStartAndHwImagesKeepTheWeakHook() throws {
        let xen = try XenRuntimeImages.xenAppIO.get()
        let hw = try XenRuntimeImages.hwAppIO.get()
        #expect(try XenRuntimeImages.symbolType(xen, "bmk_xen_start_devices") == "T")
        #expect(try XenRuntimeImages.symbolType(hw, "bmk_xen_start_devices") == "W")
        // The hw image carries no Xen frontend code: its registry stays empty.
        #expect(try XenRuntimeImages.symbolType(hw, "bmk_xen_attach") == "W")
    }

    /// The upcall runs on the interrupt stack with interrupts off: nothing
    /// it reaches may allocate; so does the PV event callback, on the
    /// current stack with events masked. Roots: the handler registered on
    /// vector 0xF3, the PV callback's Swift half, `XenEvents.dispatch`, the 2-level `EventChannels.dispatch`,
    /// the interrupt-masking lock, and the xenstore port's handler (which
    /// raises two semaphores). The walk follows direct calls (the calls
    /// through the lock's and the handlers' existentials are those roots)
    /// and stops at BareMetalKit's functions: the ticket lock and the
    /// semaphore's `up` are documented as callable from interrupt
    /// handlers, and objdump's graph through their merged helpers has
    /// edges that do not exist (a tail of `cpu_gs_load64`).
    @Test func theUpcallPathReachesNoAllocator() throws {
        let graph = try XenImages.callGraph(try XenRuntimeImages.xenAppIO.get())
        let runtimeStart =
            "$e8XenPVKit0A7RuntimeO5start8channels10sharedInfo14storeInterface4kindyAA0A12BootChannelsV_S2vAA0A13DomainDevicesOtFZ"
        let patterns = [
            "$e8XenPVKit0A7RuntimeO14registerUpcallyyFZSbs5UInt8VcfU_",  // the (UInt8) -> Bool handler on 0xF3 (PVH)
            "xen_pv_event_upcall",  // the PV event callback's Swift half (events masked, current stack)
            runtimeStart + "ys6UInt32VcfU_",  // the store port's handler
            "0A6EventsC8dispatch4vcpu", "13EventChannelsV8dispatch4vcpu", "0A10UpcallLockC4lockyyF", "0A10UpcallLockC6unlockyyF",
        ]
        var roots: [String] = []
        for pattern in patterns {
            let matches = graph.keys.filter { $0.contains(pattern) }
            #expect(!matches.isEmpty, "no function matching \(pattern)")
            roots += matches
        }
        let allocators: Set = ["swift_allocObject", "swift_slowAlloc", "swift_allocBox", "posix_memalign", "malloc", "bmk_heap_allocate"]
        #expect(allocators.contains { graph[$0] != nil }, "the allocators are in the image, so the check can fail")
        var reached: Set<String> = []
        var paths: [String] = []
        var work = roots.map { ($0, [$0]) }
        while let (function, path) = work.popLast() {
            guard reached.insert(function).inserted else { continue }
            if allocators.contains(function) { paths.append(path.joined(separator: " -> ")) }
            if function.hasPrefix("$e12BareMetalKit") { continue }
            for callee in graph[function] ?? [] { work.append((callee, path + [callee])) }
        }
        #expect(paths == [])
        // The store handler wakes threads: it reaches the semaphore's `up`,
        // directly or as the body it hands to a merged thunk.
        let storeHandler = try #require(graph.keys.first { $0.hasSuffix(runtimeStart + "ys6UInt32VcfU_") })
        let named = reached.union(try XenRuntimeImages.referencedSymbols(try XenRuntimeImages.xenAppIO.get(), in: storeHandler))
        #expect(named.contains { $0.contains("SemaphoreC2up") }, "the store handler wakes threads: \(named.sorted())")
        #expect(reached.contains("$e12BareMetalKit10TicketLockV4lockSbyF"), "the upcall takes the ticket lock")
        #expect(reached.count > 8)
    }

    /// The appio guest's checks (disk through StorageDevice, sockets through
    /// Network) on QEMU's virtio-blk and virtio-net, from a xen_pv image.
    @Test func theXenImageRunsTheApplicationIOChecksOnVirtioOffXen() throws {
        let image = try XenRuntimeImages.xenAppIO.get()
        let disk = try Integration.blankDisk(megabytes: 2)
        defer { try? FileManager.default.removeItem(atPath: disk) }
        let tcpPort = Integration.port(8)
        let udpPort = Integration.port(9)
        let closedPort = Integration.port(10)
        let server = try TCPEchoServer(port: tcpPort)
        defer { server.stop() }
        let answering = try UDPAnswerer(port: udpPort)
        defer { answering.stop() }

        let run = try Integration.run([
            "run", "qemu", "-i", "--timeout", "600", "--machine", "pc", "-b", disk,
            "-I", "net0,virtio-net,user", "-W", "net0,inet,dhcp",
            "-e", "APPIO_TCP_PORT=\(tcpPort)", "-e", "APPIO_UDP_PORT=\(udpPort)", "-e", "APPIO_CLOSED_PORT=\(closedPort)",
            "-e", "APPIO_POLLED=0", image,
        ])
        #expect(run.status == 0, "console: \(run.stdout)\nstderr: \(run.stderr)")
        let lines = run.stdout.split(separator: "\n").map(String.init)
        let checks = lines.filter { $0.hasSuffix(": ok") || $0.hasSuffix(": FAILED") }
        #expect(checks.count == 13, "console: \(run.stdout)")
        #expect(checks.allSatisfy { $0.hasSuffix(": ok") }, "console: \(run.stdout)")
        #expect(lines.contains("appio: network MSI-X, interrupts counted"), "console: \(run.stdout)")
        #expect(!run.stdout.contains("xen:"), "the Xen run time stayed off")
        #expect(lines.contains("appio: 0 failures"))
    }
}
