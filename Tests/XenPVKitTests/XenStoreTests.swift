// xenstore client tests: Xen public/io/xs_wire.h against the daemon model,
// including chunked transfers across the ring wrap, watches and conflicts.
import CXen
import Testing
@testable import XenPVKit

func makeStore(chunkLimit: Int = Int.max) -> (XenStoreDaemonModel, XenStore<SimulatedHypervisor>) {
    let hypervisor = SimulatedHypervisor(memory: SimulatedMemory())
    let daemon = XenStoreDaemonModel(hypervisor: hypervisor)
    daemon.chunkLimit = chunkLimit
    return (daemon, daemon.client())
}

@Suite struct XenStoreTests {
    @Test func basicOperationsRoundTrip() throws {
        var (daemon, store) = makeStore()
        try store.write("/local/domain/5/name", "guest")
        #expect(try store.readString("/local/domain/5/name") == "guest")
        try store.makeDirectory("/local/domain/5/data")
        #expect(try store.directory("/local/domain/5") == ["data", "name"])
        try store.remove("/local/domain/5/data")
        #expect(try store.directory("/local/domain/5") == ["name"])
        #expect(daemon.nodes["/local/domain/5/data"] == nil)
        #expect(daemon.requestsSeen.map(\.type) == [XS_WRITE, XS_READ, XS_MKDIR, XS_DIRECTORY, XS_RM, XS_DIRECTORY].map { UInt32($0.rawValue) })
        #expect(Set(daemon.requestsSeen.map(\.req_id)).count == 6, "request ids are unique")
    }

    @Test func storeErrorsAreTyped() throws {
        var (daemon, store) = makeStore()
        #expect(throws: XenStoreError.store(.noEntry, request: UInt32(XS_READ.rawValue))) {
            _ = try store.read("/nowhere")
        }
        #expect(throws: XenStoreError.store(.invalidArgument, request: UInt32(XS_WRITE.rawValue))) {
            try store.write("relative", "x")
        }
        #expect(throws: XenStoreError.store(.notImplemented, request: UInt32(XS_GET_PERMS.rawValue))) {
            _ = try store.request(UInt32(XS_GET_PERMS.rawValue), .none, path: "/")
        }
        _ = daemon
        #expect(XenStoreErrorCode(wire: Array("EAGAIN".utf8) + [0]) == .tryAgain)
        #expect(XenStoreErrorCode(wire: Array("EBOGUS".utf8)) == nil)
        #expect(XenStoreErrorCode.exists.name.description == "EEXIST")
    }

    @Test(arguments: [1, 7, 100, 1024])
    func messagesLargerThanTheRingCrossTheWrapInPieces(chunkLimit: Int) throws {
        var (daemon, store) = makeStore(chunkLimit: chunkLimit)
        store.maximumWaits = 100_000
        let value = String((0..<3000).map { Character(UnicodeScalar(UInt8(65 + $0 % 26))) })
        try store.write("/data/big", value)
        #expect(daemon.nodes["/data/big"] == value)
        #expect(try store.readString("/data/big") == value)
        for index in 0..<20 {
            try store.write("/data/small\(index)", "v\(index)")
        }
        #expect(try store.directory("/data").count == 21)
        #expect(daemon.received.isEmpty && daemon.outgoing.isEmpty)
    }

    @Test func watchesFireWithTheirTokens() throws {
        var (daemon, store) = makeStore()
        try store.watch("/backend/vbd", token: "vbd-token")
        #expect(try store.nextWatchEvent() == XenStoreWatchEvent(path: "/backend/vbd", token: "vbd-token"))
        #expect(try store.nextWatchEvent() == nil)
        daemon.set("/backend/vbd/5/768/state", "4")
        daemon.set("/elsewhere", "1")
        daemon.step()
        #expect(try store.nextWatchEvent() == XenStoreWatchEvent(path: "/backend/vbd/5/768/state", token: "vbd-token"))
        #expect(try store.nextWatchEvent() == nil)
        try store.unwatch("/backend/vbd", token: "vbd-token")
        daemon.set("/backend/vbd/5/768/state", "5")
        daemon.step()
        #expect(try store.nextWatchEvent() == nil)
        #expect(throws: XenStoreError.store(.noEntry, request: UInt32(XS_UNWATCH.rawValue))) {
            try store.unwatch("/backend/vbd", token: "vbd-token")
        }
    }

    @Test func watchEventsInterleavedWithRepliesAreKept() throws {
        var (daemon, store) = makeStore(chunkLimit: 5)
        store.maximumWaits = 10_000
        try store.watch("/a", token: "t")
        daemon.set("/a/b", "1")
        // The event is queued ahead of the read's reply on the ring.
        #expect(try store.readString("/a/b") == "1")
        #expect(try store.nextWatchEvent()?.path == "/a")
        #expect(try store.nextWatchEvent()?.path == "/a/b")
    }

    @Test func transactionsRetryAfterAConflict() throws {
        var (daemon, store) = makeStore()
        try store.write("/counter", "0")
        var attempts = 0
        try store.withTransaction { store, transaction throws(XenStoreError) in
            attempts += 1
            let value = Int(try store.readString("/counter", in: transaction))!
            if attempts == 1 { daemon.set("/counter", "10") }  // another domain commits first
            try store.write("/counter", String(value + 1), in: transaction)
        }
        #expect(attempts == 2)
        #expect(daemon.conflictsReported == 1)
        #expect(daemon.nodes["/counter"] == "11")
        #expect(daemon.transactions.isEmpty)
    }

    @Test func endlessConflictsGiveUp() throws {
        var (daemon, store) = makeStore()
        daemon.forcedConflicts = 100
        var attempts = 0
        #expect(throws: XenStoreError.transactionConflict(attempts: 3)) {
            try store.withTransaction(maximumAttempts: 3) { store, transaction throws(XenStoreError) in
                attempts += 1
                try store.write("/x", "1", in: transaction)
            }
        }
        #expect(attempts == 3)
        #expect(daemon.nodes["/x"] == nil)
    }

    @Test func anAbortedTransactionLeavesTheStoreAlone() throws {
        var (daemon, store) = makeStore()
        let transaction = try store.startTransaction()
        try store.write("/t", "1", in: transaction)
        #expect(daemon.nodes["/t"] == nil)
        try store.endTransaction(transaction, commit: false)
        #expect(daemon.nodes["/t"] == nil)
        #expect(throws: XenStoreError.store(.noEntry, request: UInt32(XS_TRANSACTION_END.rawValue))) {
            try store.endTransaction(transaction, commit: true)
        }
    }

    @Test func aSilentStoreIsReportedNotWaitedOnForever() throws {
        var (daemon, store) = makeStore()
        daemon.answers = false
        store.maximumWaits = 5
        #expect(throws: XenStoreError.noResponse(request: UInt32(XS_READ.rawValue), waits: 5)) {
            _ = try store.read("/x")
        }
    }

    @Test func aLateReplyToAnAbandonedRequestIsDropped() throws {
        var (daemon, store) = makeStore()
        try store.write("/x", "1")
        daemon.answers = false
        store.maximumWaits = 3
        #expect(throws: XenStoreError.noResponse(request: UInt32(XS_READ.rawValue), waits: 3)) { _ = try store.read("/x") }
        // The store catches up and answers the abandoned read first.
        let abandoned = daemon.requestsSeen.last!
        daemon.answers = true
        daemon.handle(abandoned, Array("/x".utf8) + [0])
        try store.write("/x", "2")
        #expect(try store.readString("/x") == "2")
        #expect(store.staleReplies == 1)
    }

    @Test func aReplyOfTheWrongTypeIsReported() throws {
        var (daemon, store) = makeStore()
        daemon.answers = false
        store.maximumWaits = 2
        _ = try? store.read("/x")
        daemon.answers = true
        let request = daemon.requestsSeen[0]
        daemon.reply(UInt32(XS_DIRECTORY.rawValue), xsd_sockmsg(type: 0, req_id: request.req_id + 1, tx_id: 0, len: 0), [0])
        daemon.pushResponses()
        daemon.answers = false
        #expect(throws: XenStoreError.unexpectedReply(type: UInt32(XS_DIRECTORY.rawValue), requestID: request.req_id + 1, expectedID: request.req_id + 1)) {
            _ = try store.read("/y")
        }
    }

    @Test func malformedTrafficIsRejected() throws {
        var (daemon, store) = makeStore()
        let tooBig = String(repeating: "x", count: Int(XENSTORE_PAYLOAD_MAX))
        #expect(throws: XenStoreError.payloadTooLarge(length: Int(XENSTORE_PAYLOAD_MAX) + 5)) {
            try store.write("/big", tooBig)
        }
        #expect(daemon.requestsSeen.isEmpty)
        cxen_store32(daemon.page + XenStore<SimulatedHypervisor>.responseProducerOffset, 5000)
        #expect(throws: XenStoreError.ringIndexCorrupt(consumer: 0, producer: 5000)) { _ = try store.nextWatchEvent() }
    }

    @Test func anUnknownErrorStringIsKeptVerbatim() throws {
        var (daemon, store) = makeStore()
        daemon.answers = false
        store.maximumWaits = 3
        _ = try? store.read("/x")
        let request = daemon.requestsSeen[0]
        daemon.answers = true
        // Answer the next request (id 2) with an error name xs_wire.h lacks.
        daemon.reply(UInt32(XS_ERROR.rawValue), xsd_sockmsg(type: 0, req_id: request.req_id + 1, tx_id: 0, len: 0), Array("EWEIRD".utf8) + [0])
        daemon.pushResponses()
        daemon.answers = false
        #expect(throws: XenStoreError.unrecognisedError(bytes: Array("EWEIRD".utf8), request: UInt32(XS_READ.rawValue))) {
            _ = try store.read("/y")
        }
    }
}

@Suite struct ConsoleRingTests {
    final class ConsoleDaemon: BackendModel {
        let page: UnsafeMutableRawPointer
        var output: [UInt8] = []
        var perStep = 100
        init(page: UnsafeMutableRawPointer) { self.page = page }
        func step() {
            let base = MemoryLayout<xencons_interface>.offset(of: \xencons_interface.out)!
            var consumer = cxen_load32(page + MemoryLayout<xencons_interface>.offset(of: \xencons_interface.out_cons)!)
            let producer = cxen_load32(page + MemoryLayout<xencons_interface>.offset(of: \xencons_interface.out_prod)!)
            var moved = 0
            while consumer != producer && moved < perStep {
                output.append((page + base + Int(consumer & 2047)).load(as: UInt8.self))
                consumer &+= 1
                moved += 1
            }
            cxen_store32(page + MemoryLayout<xencons_interface>.offset(of: \xencons_interface.out_cons)!, consumer)
        }
        func type(_ text: String) {
            let base = MemoryLayout<xencons_interface>.offset(of: \xencons_interface.in)!
            let producerOffset = MemoryLayout<xencons_interface>.offset(of: \xencons_interface.in_prod)!
            var producer = cxen_load32(page + producerOffset)
            for byte in text.utf8 {
                (page + base + Int(producer & 1023)).storeBytes(of: byte, as: UInt8.self)
                producer &+= 1
            }
            cxen_store32(page + producerOffset, producer)
        }
    }

    @Test func outputLongerThanTheRingGoesOutWhole() throws {
        let hypervisor = SimulatedHypervisor(memory: SimulatedMemory())
        let daemon = ConsoleDaemon(page: hypervisor.memory.allocate()!)
        hypervisor.backends.append(daemon)
        let port = hypervisor.preconnectedPort(domain: 0) {}
        var console = ConsoleRing(interface: daemon.page, port: port, hypervisor: hypervisor, maximumWaits: 1000)
        let text = Array((0..<5000).map { UInt8(32 + $0 % 90) })
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: text.count, alignment: 1)
        defer { buffer.deallocate() }
        buffer.copyBytes(from: text)
        try console.write(UnsafeRawBufferPointer(buffer))
        hypervisor.runBackends()
        while daemon.output.count < text.count { daemon.step() }
        #expect(daemon.output == text)
        #expect(hypervisor.blockCount > 0, "the 2 KiB ring filled and the writer waited")

        daemon.type("ls\n")
        let input = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 1)
        defer { input.deallocate() }
        #expect(try console.read(into: input) == 3)
        #expect(Array(input.prefix(3)) == Array("ls\n".utf8))
        #expect(try console.read(into: input) == 0)
    }

    @Test func aStuckConsoleIsReported() throws {
        let hypervisor = SimulatedHypervisor(memory: SimulatedMemory())
        let page = hypervisor.memory.allocate()!
        let port = hypervisor.preconnectedPort(domain: 0) {}
        var console = ConsoleRing(interface: page, port: port, hypervisor: hypervisor, maximumWaits: 2)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 3000, alignment: 1)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 65)
        #expect(throws: ConsoleError.stalled(written: 2048, waits: 2)) { try console.write(UnsafeRawBufferPointer(buffer)) }
    }
}
