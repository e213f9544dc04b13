// Xen PV images: the code a PV domain can reach must hold no instruction a
// ring-3 PV kernel may not execute. Bakes Examples/hello and the threads
// guest for xen_pv, disassembles them with objdump and walks the direct
// call graph from the PV entry (_start_xen_pv), the event, failsafe and
// trap entries and the PV implementations xen_pv_main installs in the
// privileged-operation table; the same walk from the hw entry must find
// such instructions, so the check can fail. The PV domain itself cannot
// run here (no Xen host; Docs/xen.md); the same images do boot on QEMU as
// hw images, with the table's hw defaults.
import Foundation
import Testing
import UnikernelBake

/// An image's code from `objdump -d`: functions, the privileged
/// instructions each contains, and a call graph over every direct branch
/// (calls, jumps and conditional jumps that leave a function).
///
/// Swift emits some functions with private linkage and no symbol, and
/// objdump then shows their code under the preceding symbol; so a
/// `push %rbp` right after an unconditional end (ret, ud2, jmp, int3) also
/// starts a function, named "<symbol>@<address>", and branch targets are
/// resolved by address. A shrink-wrapped function split that way stays
/// connected through its own branch, so the graph only grows.
struct DisassembledImage {
    var names: [String] = []
    var starts: [UInt64] = []
    var calls: [String: Set<String>] = [:]
    var privileged: [String: Set<String>] = [:]
    var indirectJumps: Set<String> = []

    /// Mnemonics only ring 0 may execute (Intel SDM vol. 2; a PV kernel runs in ring 3).
    static let privilegedMnemonics: Set<String> = [
        "cli", "sti", "hlt", "lgdt", "lidt", "ltr", "wrmsr", "rdmsr", "invlpg", "in", "out", "ins", "outs",
        "insb", "insw", "insl", "outsb", "outsw", "outsl", "inb", "inw", "inl", "outb", "outw", "outl",
    ]

    /// Functions of the LAPIC and I/O APIC drivers (their register windows
    /// are MMIO a PV domain has no mapping of): Swift's mangled names of
    /// BareMetalKit's LocalAPIC, LocalAPICTimer and IOAPIC members.
    static func isAPICDriver(_ name: String) -> Bool {
        for type in ["9LocalAPICV", "14LocalAPICTimerO", "6IOAPICV"] where name.hasPrefix("$e12BareMetalKit" + type) { return true }
        return false
    }

    init(path: String) throws {
        let (status, data) = try Integration.toolOutput("/usr/bin/objdump", ["-d", "--no-show-raw-insn", path])
        #expect(status == 0)
        var instructions: [(address: UInt64, text: String)] = []
        var symbol: String?
        var afterEnd = false
        var functions: [(UInt64, String)] = []
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            // "0000000000129000 <_start_xen_pv>:"
            if line.hasSuffix(">:"), let open = line.firstIndex(of: "<"), let address = UInt64(line[..<open].trimmingCharacters(in: .whitespaces), radix: 16) {
                symbol = String(line[line.index(after: open)..<line.index(line.endIndex, offsetBy: -2)])
                functions.append((address, symbol!))
                afterEnd = false
                continue
            }
            // "  129004:\tmov    %rsi,%r12"
            let fields = line.split(separator: "\t", maxSplits: 1)
            guard let current = symbol, fields.count == 2, fields[0].hasSuffix(":"),
                let address = UInt64(fields[0].dropLast().trimmingCharacters(in: .whitespaces), radix: 16)
            else { continue }
            let text = fields[1].trimmingCharacters(in: .whitespaces)
            let mnemonic = text.split(separator: " ").first.map(String.init) ?? ""
            if afterEnd && mnemonic == "push" && text.hasSuffix("%rbp") {
                functions.append((address, current + "@" + String(address, radix: 16)))
            }
            afterEnd = ["ret", "ud2", "jmp", "int3"].contains(mnemonic)
            instructions.append((address, text))
        }
        functions.sort { $0.0 < $1.0 }
        starts = functions.map(\.0)
        names = functions.map(\.1)
        for name in names {
            calls[name] = []
            if Self.isAPICDriver(name) { privileged[name, default: []].insert("LAPIC/IOAPIC MMIO") }
        }
        for (address, text) in instructions {
            guard let function = owner(of: address) else { continue }
            let mnemonic = text.split(separator: " ").first.map(String.init) ?? ""
            if Self.privilegedMnemonics.contains(mnemonic) {
                privileged[function, default: []].insert(mnemonic)
            } else if mnemonic == "mov", text.range(of: #",%cr[0-9]\s*$"#, options: .regularExpression) != nil {
                privileged[function, default: []].insert("mov to %cr")
            }
            guard mnemonic.hasPrefix("j") || mnemonic.hasPrefix("call") else { continue }
            let operand = text.dropFirst(mnemonic.count).trimmingCharacters(in: .whitespaces)
            if operand.hasPrefix("*") {
                indirectJumps.insert(function)
            } else if let target = operand.split(separator: " ").first.flatMap({ UInt64($0, radix: 16) }),
                let callee = owner(of: target), callee != function
            {
                calls[function, default: []].insert(callee)
            }
        }
    }

    /// The function whose code holds `address`.
    func owner(of address: UInt64) -> String? {
        var low = 0, high = starts.count
        while low < high {
            let middle = (low + high) / 2
            if starts[middle] <= address { low = middle + 1 } else { high = middle }
        }
        return low == 0 ? nil : names[low - 1]
    }

    /// Every function reachable from `roots`, with the call path to it;
    /// `cut` functions are not entered.
    func reach(from roots: [String], cut: Set<String> = []) -> [String: [String]] {
        var reached: [String: [String]] = [:]
        var work = roots.map { ($0, [$0]) }
        while let (function, path) = work.popLast() {
            guard reached[function] == nil, !cut.contains(function) else { continue }
            reached[function] = path
            for callee in calls[function] ?? [] { work.append((callee, path + [callee])) }
        }
        return reached
    }

    /// Reached functions holding privileged instructions, each with its path.
    func offenders(from roots: [String]) -> [String] {
        reach(from: roots).compactMap { function, path in
            guard let found = privileged[function] else { return nil }
            return "\(found.sorted()) in \(function) via \(path.joined(separator: " -> "))"
        }.sorted()
    }
}

enum XenPVImages {
    static func bake(_ application: String) throws -> String {
        let output = Integration.imageDirectory + "/\(URL(fileURLWithPath: application).lastPathComponent)-xen-pv-symbols.img"
        let baker = try Baker(sourceRoot: Integration.sourceRoot)
        _ = try baker.bake(BakeRequest(
            configuration: "xen_pv", output: output, inputs: [Integration.sourceRoot + "/" + application], keepSymbols: true))
        return output
    }

    // Each application is compiled once per run by whichever suite bakes
    // it first (Baker's cache of application objects is not safe against
    // two bakes compiling the same application at once), so these wait
    // for the other suites' bakes of the same applications.
    static let hello: Result<String, Error> = XenImages.withSymbols
    static let threads: Result<String, Error> = Result {
        _ = try? Integration.threads.get()
        return try bake("Tests/Guests/threads")
    }
    static let hwHello: Result<String, Error> = Result {
        _ = try? XenImages.withSymbols.get()
        let output = Integration.imageDirectory + "/hello-hw-symbols.img"
        let baker = try Baker(sourceRoot: Integration.sourceRoot)
        _ = try baker.bake(BakeRequest(
            configuration: "hw_generic", output: output, inputs: [Integration.sourceRoot + "/Examples/hello"], keepSymbols: true))
        return output
    }

    /// The PV entry points and the PV implementations of the privileged
    /// operations (reached at run time only through xen_pv_entry.S's table).
    static func pvRoots(_ image: DisassembledImage) -> [String] {
        let implementations = image.names.filter { $0.hasPrefix("$e8XenPVKit") && $0.contains("xenPV") && !$0.contains("@") }
        let traps = image.names.filter { $0.hasPrefix("cxen_pv_trap_") && $0.dropFirst("cxen_pv_trap_".count).allSatisfy(\.isNumber) }
        // What the runtime starts through pointers: the application's main
        // (from the main thread's closure), every thread's first
        // instructions, and the closures of the application and Rumprun.
        let started = image.names.filter {
            ($0.hasPrefix("$e7Rumprun") || $0.hasPrefix("$e5hello") || $0.hasPrefix("$e7threads")) && !$0.contains("@")
        }
        return ["_start_xen_pv", "cxen_pv_event_callback", "cxen_pv_failsafe_callback", "bmk_call_main", "bmk_thread_trampoline"]
            + traps + implementations.sorted() + started.sorted()
    }
}

@Suite(.serialized) struct XenPVImageTests {
    @Test(arguments: ["hello", "threads"])
    func nothingAPVDomainReachesIsPrivileged(guest: String) throws {
        let path = try (guest == "hello" ? XenPVImages.hello : XenPVImages.threads).get()
        let image = try DisassembledImage(path: path)
        let roots = XenPVImages.pvRoots(image)
        // 18 trap entries, and a PV implementation for each of the table's 18 operations.
        #expect(roots.filter { $0.hasPrefix("cxen_pv_trap_") }.count == 18)
        #expect(roots.filter { $0.hasPrefix("$e8XenPVKit") }.count >= 18, "\(roots)")
        for root in roots { #expect(image.calls[root] != nil, "\(root) not in the image") }
        let reached = image.reach(from: roots)
        // The walk covers the runtime: the PV start, the scheduler, the
        // application's main and the Swift halves of the entries.
        for function in ["xen_pv_main", "xen_pv_event_upcall", "xen_pv_trap", "xen_pv_failsafe", "main"] {
            #expect(reached[function] != nil, "\(function) not reached")
        }
        #expect(reached.keys.contains { $0.contains("ThreadRuntimeO7runMain") })
        #expect(reached.keys.contains { $0.contains("ThreadRuntimeO8idleLoop") })
        #expect(reached.count > 300, "only \(reached.count) functions reached")
        #expect(image.offenders(from: roots) == [])
        // The shared runtime's privileged operations are the dispatchers
        // (an indirect jump), not the hw functions.
        for operation in ["bmk_interrupts_save_disable", "bmk_interrupts_restore", "bmk_idle_wait", "bmk_console_device_write", "bmk_stack_allocate"] {
            #expect(image.indirectJumps.contains(operation) && image.privileged[operation] == nil, "\(operation)")
        }
        #expect(image.privileged["bmk_hw_interrupts_save_disable"] == ["cli"])
    }

    /// The PV start of day allocates nothing before it has made its heap:
    /// xen_pv_main up to startPVRuntime, the page-table builder included.
    @Test func thePVStartOfDayAllocatesNothingBeforeItsHeap() throws {
        let image = try DisassembledImage(path: try XenPVImages.hello.get())
        let allocators: Set = ["swift_allocObject", "swift_slowAlloc", "swift_allocBox", "posix_memalign", "malloc", "bmk_heap_allocate"]
        #expect(allocators.contains { image.calls[$0] != nil }, "the allocators are in the image, so the check can fail")
        let runtime = try #require(image.names.first { $0.hasPrefix("$e8XenPVKit14startPVRuntime") && !$0.contains("@") })
        let reached = image.reach(from: ["_start_xen_pv"], cut: [runtime])
        #expect(reached.keys.filter { allocators.contains($0) }.map { reached[$0]!.joined(separator: " -> ") } == [])
        // The memory mapping (page-table builder, mmu_update) is part of it.
        #expect(reached.keys.contains { $0.hasPrefix("$e8XenPVKit11mapPVMemory") })
        #expect(reached["xen_pv_main"] != nil && reached.count > 20)
        // From startPVRuntime on, the heap exists and allocation is expected.
        #expect(image.reach(from: [runtime]).keys.contains { allocators.contains($0) })
    }

    /// The check can fail: from the hw entry the same walk finds the
    /// instructions, in the hw image and in the Xen image's hw path.
    @Test func theHwEntryReachesPrivilegedInstructions() throws {
        // In the Xen image CLI, STI and HLT sit behind the table (an indirect
        // jump the walk does not follow), so only the rest is expected there.
        let behindTheTable: Set = ["cli", "sti", "hlt"]
        for (path, isXen) in [(try XenPVImages.hwHello.get(), false), (try XenPVImages.hello.get(), true)] {
            let image = try DisassembledImage(path: path)
            let found = image.reach(from: ["bmk_boot_main"]).keys.reduce(into: Set<String>()) { $0.formUnion(image.privileged[$1] ?? []) }
            for expected in ["cli", "sti", "hlt", "lidt", "lgdt", "ltr", "wrmsr", "out", "in", "invlpg", "mov to %cr", "LAPIC/IOAPIC MMIO"]
            where !(isXen && behindTheTable.contains(expected)) {
                #expect(found.contains(expected), "\(expected) not found from the hw entry of \(path)")
            }
        }
        // In a hw image the operations are the instructions' functions themselves.
        let hw = try DisassembledImage(path: try XenPVImages.hwHello.get())
        #expect(!hw.names.contains("bmk_interrupts_save_disable"), "the weak alias shares bmk_hw_interrupts_save_disable's address")
        #expect(hw.privileged["bmk_hw_interrupts_save_disable"] == ["cli"])
    }

    /// The Xen image's hw path keeps the table's hw defaults: the threads
    /// guest (locks, scheduler, idle, TLS, guard pages, clock) runs on QEMU
    /// as it does baked for hw.
    @Test func theThreadedXenImageRunsOnQEMUAsAHwImage() throws {
        let image = try XenPVImages.threads.get()
        let run = try Integration.run(["run", "qemu", "-i", "--timeout", "300", "--machine", "microvm", image])
        let lines = run.stdout.split(separator: "\n").map(String.init)
        #expect(!lines.contains { $0.hasPrefix("FAIL") }, "console:\n\(run.stdout)")
        for expected in [
            "join: 200 threads created and joined, sum 19900",
            "tls: 10 threads x 1000 yields kept their values (mismatches 0)",
            "mutex: count 5000 of 5000",
            "sleep: wake order 1 2 3",
            "threads: 0 failures",
        ] {
            #expect(lines.contains { $0.hasPrefix(expected) }, "missing \"\(expected)\" in:\n\(run.stdout)")
        }
        #expect(!run.stdout.contains("Xen"))
        #expect(run.status == 0, "stderr: \(run.stderr)")
    }
}
