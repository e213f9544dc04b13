// XenStoreDaemonModel: a xenstored for tests, speaking Xen public/io/xs_wire.h
// on the shared xenstore_domain_interface page: a node tree, watches with
// tokens, transactions that conflict (EAGAIN) and chunked ring transfers.
import CXen
import XenPVKit

final class XenStoreDaemonModel: BackendModel {
    let hypervisor: SimulatedHypervisor
    let page: UnsafeMutableRawPointer
    private(set) var port: EventChannelPort = 0
    /// Bytes moved per step in each direction, so messages cross steps and
    /// the ring's wrap point.
    var chunkLimit = Int.max
    /// When false, requests are read but never answered.
    var answers = true
    var nodes: [String: String] = ["/": ""]
    /// The connection's home ("/local/domain/<domid>"): as xenstored does,
    /// reads of relative paths resolve below it. Nil: relative reads miss.
    var home: String? = nil
    var watches: [(path: String, token: String)] = []
    var transactions: [UInt32: (nodes: [String: String], generation: Int, changed: Set<String>)] = [:]
    var nextTransaction: UInt32 = 1
    var generation = 0
    /// Commits to fail with EAGAIN regardless of conflicts.
    var forcedConflicts = 0
    var conflictsReported = 0
    var received: [UInt8] = []
    var outgoing: [UInt8] = []
    var requestsSeen: [xsd_sockmsg] = []
    /// Every XS_WRITE a client made, in order: path, value, transaction.
    var writeLog: [(path: String, value: String, transaction: UInt32)] = []

    let size = UInt32(XENSTORE_RING_SIZE)
    func offset(_ path: PartialKeyPath<xenstore_domain_interface>) -> Int { MemoryLayout<xenstore_domain_interface>.offset(of: path)! }

    init(hypervisor: SimulatedHypervisor) {
        self.hypervisor = hypervisor
        page = hypervisor.memory.allocate()!
        port = hypervisor.preconnectedPort(domain: 0) {}
        hypervisor.backends.append(self)
    }

    func step() {
        pullRequests()
        pushResponses()
    }

    func pullRequests() {
        let consumer = cxen_load32(page + offset(\.req_cons))
        let producer = cxen_load32(page + offset(\.req_prod))
        var available = Int(producer &- consumer)
        available = min(available, chunkLimit)
        var index = consumer
        for _ in 0..<available {
            received.append((page + offset(\.req) + Int(index & (size - 1))).load(as: UInt8.self))
            index &+= 1
        }
        if available > 0 {
            cxen_store32(page + offset(\.req_cons), index)
            hypervisor.raise(port)
        }
        let headerSize = MemoryLayout<xsd_sockmsg>.size
        while received.count >= headerSize {
            let header = received.withUnsafeBytes { $0.loadUnaligned(as: xsd_sockmsg.self) }
            guard received.count >= headerSize + Int(header.len) else { break }
            let payload = Array(received[headerSize..<headerSize + Int(header.len)])
            received.removeFirst(headerSize + Int(header.len))
            requestsSeen.append(header)
            if answers { handle(header, payload) }
        }
    }

    func pushResponses() {
        let consumer = cxen_load32(page + offset(\.rsp_cons))
        var producer = cxen_load32(page + offset(\.rsp_prod))
        let room = Int(size - (producer &- consumer))
        let count = min(room, outgoing.count, chunkLimit)
        guard count > 0 else { return }
        for byte in outgoing.prefix(count) {
            (page + offset(\.rsp) + Int(producer & (size - 1))).storeBytes(of: byte, as: UInt8.self)
            producer &+= 1
        }
        outgoing.removeFirst(count)
        cxen_store32(page + offset(\.rsp_prod), producer)
        hypervisor.raise(port)
    }

    func reply(_ type: UInt32, _ request: xsd_sockmsg, _ payload: [UInt8]) {
        var header = xsd_sockmsg(type: type, req_id: request.req_id, tx_id: request.tx_id, len: UInt32(payload.count))
        withUnsafeBytes(of: &header) { outgoing.append(contentsOf: $0) }
        outgoing.append(contentsOf: payload)
    }

    func error(_ name: String, _ request: xsd_sockmsg) { reply(UInt32(XS_ERROR.rawValue), request, Array(name.utf8) + [0]) }
    func ok(_ request: xsd_sockmsg) { reply(request.type, request, Array("OK".utf8) + [0]) }

    func fields(_ payload: [UInt8]) -> [String] {
        payload.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    }

    static func parent(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return "/" }
        return String(path[..<slash])
    }

    static func children(of path: String, in tree: [String: String]) -> [String] {
        let prefix = path == "/" ? "/" : path + "/"
        return tree.keys.filter { $0.hasPrefix(prefix) && $0 != path && !$0.dropFirst(prefix.count).contains("/") }
            .map { String($0.dropFirst(prefix.count)) }.sorted()
    }

    /// Store write from another domain (a backend, the toolstack): fires watches.
    func set(_ path: String, _ value: String) {
        create(path, value, in: &nodes)
        generation += 1
        fire(path)
    }

    func create(_ path: String, _ value: String, in tree: inout [String: String]) {
        var ancestor = Self.parent(path)
        while tree[ancestor] == nil {
            tree[ancestor] = ""
            ancestor = Self.parent(ancestor)
        }
        tree[path] = value
    }

    /// Fires the watches on `path` and its ancestors; with `removed`, also
    /// those on nodes below it (xenstored does: a watch on a node that goes
    /// away with its parent fires, reporting the watched path).
    func fire(_ path: String, removed: Bool = false) {
        for watch in watches {
            let event: String
            if path == watch.path || path.hasPrefix(watch.path + "/") {
                event = path
            } else if removed && watch.path.hasPrefix(path + "/") {
                event = watch.path
            } else {
                continue
            }
            reply(UInt32(XS_WATCH_EVENT.rawValue), xsd_sockmsg(type: 0, req_id: 0, tx_id: 0, len: 0),
                  Array(event.utf8) + [0] + Array(watch.token.utf8) + [0])
        }
    }

    /// Store removal from another domain (the toolstack destroying a
    /// device): removes `path` and everything below, fires watches.
    func removeTree(_ path: String) {
        for key in nodes.keys where key == path || key.hasPrefix(path + "/") { nodes[key] = nil }
        generation += 1
        fire(path, removed: true)
    }

    func handle(_ request: xsd_sockmsg, _ payload: [UInt8]) {
        let type = xsd_sockmsg_type(rawValue: request.type)
        let parts = fields(payload)
        var tree = request.tx_id == 0 ? nodes : transactions[request.tx_id]?.nodes
        if request.tx_id != 0 && tree == nil { return error("ENOENT", request) }
        var changed: String? = nil
        var removedPath = false
        switch type {
        case XS_READ:
            let path = parts[0].hasPrefix("/") ? parts[0] : home.map { $0 + "/" + parts[0] } ?? parts[0]
            guard let value = tree![path] else { return error("ENOENT", request) }
            reply(request.type, request, Array(value.utf8))
        case XS_WRITE:
            guard parts.count >= 2, parts[0].hasPrefix("/") else { return error("EINVAL", request) }
            let value = String(decoding: payload[(parts[0].utf8.count + 1)...], as: UTF8.self)
            create(parts[0], value, in: &tree!)
            writeLog.append((parts[0], value, request.tx_id))
            changed = parts[0]
            ok(request)
        case XS_MKDIR:
            if tree![parts[0]] == nil { create(parts[0], "", in: &tree!); changed = parts[0] }
            ok(request)
        case XS_RM:
            guard tree![parts[0]] != nil else {
                // xenstored: removing a missing node is fine if its parent exists.
                return tree![Self.parent(parts[0])] != nil ? ok(request) : error("ENOENT", request)
            }
            for key in tree!.keys where key == parts[0] || key.hasPrefix(parts[0] + "/") { tree![key] = nil }
            changed = parts[0]
            removedPath = true
            ok(request)
        case XS_DIRECTORY:
            guard tree![parts[0]] != nil else { return error("ENOENT", request) }
            reply(request.type, request, Self.children(of: parts[0], in: tree!).flatMap { Array($0.utf8) + [0] })
        case XS_WATCH:
            // xenstored refuses a second watch with the same path and token.
            if watches.contains(where: { $0.path == parts[0] && $0.token == parts[1] }) { return error("EEXIST", request) }
            watches.append((parts[0], parts[1]))
            ok(request)
            // xenstored fires a new watch once straight away; events carry
            // no request or transaction id.
            reply(UInt32(XS_WATCH_EVENT.rawValue), xsd_sockmsg(type: 0, req_id: 0, tx_id: 0, len: 0),
                  Array(parts[0].utf8) + [0] + Array(parts[1].utf8) + [0])
        case XS_UNWATCH:
            guard let index = watches.firstIndex(where: { $0.path == parts[0] && $0.token == parts[1] }) else {
                return error("ENOENT", request)
            }
            watches.remove(at: index)
            ok(request)
        case XS_TRANSACTION_START:
            let id = nextTransaction
            nextTransaction += 1
            transactions[id] = (nodes, generation, [])
            reply(request.type, request, Array(String(id).utf8) + [0])
        case XS_TRANSACTION_END:
            guard let transaction = transactions.removeValue(forKey: request.tx_id) else { return error("ENOENT", request) }
            if parts[0] == "T" {
                if forcedConflicts > 0 || transaction.generation != generation {
                    forcedConflicts = max(0, forcedConflicts - 1)
                    conflictsReported += 1
                    return error("EAGAIN", request)
                }
                nodes = transaction.nodes
                generation += 1
                for path in transaction.changed.sorted() { fire(path) }
            }
            ok(request)
        default:
            error("ENOSYS", request)
        }
        if let changed {
            if request.tx_id == 0 {
                nodes = tree!
                generation += 1
                fire(changed, removed: removedPath)
            } else {
                transactions[request.tx_id]!.nodes = tree!
                transactions[request.tx_id]!.changed.insert(changed)
            }
        }
    }

    /// A client connected to this daemon.
    func client(maximumWaits: Int = 64) -> XenStore<SimulatedHypervisor> {
        XenStore(interface: page, port: port, hypervisor: hypervisor, maximumWaits: maximumWaits)
    }
}
