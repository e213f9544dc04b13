// The syscall proxy: the harness suites (test clients speaking the wire
// protocol to the server, against the harness kernel) and the wire helpers.

import Foundation
import RumpUserConformance
import Testing

@testable @_spi(RumpUserABI) import RumpHypercall

/// In the serialized conformance suite: the harness kernel is shared.
extension RumpuserConformanceTests {
    @Test("syscall proxy: handshakes, data both ways, hostile frames, disconnects, concurrency, fini")
    func syscallProxy() { expectSuite(rumpconf_test_syscall_proxy(), "syscall proxy") }

    @Test("rumpuser_component_schedule_intr gives interrupt context and takes it back")
    func componentInterruptContext() { expectSuite(rumpconf_test_component_intr(), "component intr") }
}

@Suite("syscall proxy wire format")
struct SyscallProxyWireTests {
    @Test func headerRoundTrip() {
        let header = ProxyHeader(length: 24 + 16, request: 0x1122_3344_5566_7788, frameClass: .error,
                                 type: ProxyWire.FrameType.copyinstr.rawValue, argument: 0xdead_beef)
        var bytes = [UInt8](repeating: 0, count: 24)
        bytes.withUnsafeMutableBytes { header.encode(into: $0.baseAddress!) }
        // NetBSD's struct rsp_hdr on x86_64: u64 len, u64 reqno, u16 class, u16 type, u32 union.
        #expect(bytes[0] == 40 && bytes[8] == 0x88 && bytes[15] == 0x11)
        #expect(bytes[16] == 2 && bytes[18] == 3 && bytes[20] == 0xef && bytes[23] == 0xde)
        let decoded = bytes.withUnsafeBytes { ProxyHeader(decoding: $0.baseAddress!) }
        #expect(decoded.length == 40 && decoded.request == header.request)
        #expect(decoded.frameClass == 2 && decoded.type == 3 && decoded.argument == 0xdead_beef)
    }

    @Test func errorCodesMapAsNetBSDClientsDo() {
        #expect(ProxyWire.ErrorCode.tryAgain.netbsdErrno == 35)
        #expect(ProxyWire.ErrorCode.auth.netbsdErrno == 1)
        #expect(ProxyWire.ErrorCode.invalidPrefork.netbsdErrno == 3)
        #expect(ProxyWire.ErrorCode.rforkFailed.netbsdErrno == 5)
        #expect(ProxyWire.ErrorCode.inExec.netbsdErrno == 16)
        #expect(ProxyWire.ErrorCode.noMemory.netbsdErrno == 12)
        #expect(ProxyWire.ErrorCode.malformedRequest.netbsdErrno == 22)
    }

    @Test func bannerKeepsItsNewlineWhenCut() {
        #expect(ProxyServer.makeBanner("NetBSD", "10.0", "amd64") == Array("RUMPSP-0.4-NetBSD-10.0/amd64\n".utf8))
        let long = ProxyServer.makeBanner(String(repeating: "x", count: 200), "1", "m")
        #expect(long.count == 95 && long.last == UInt8(ascii: "\n"))
    }

    private func parse(_ url: String) -> Result<ProxyAddress, NetBSDErrno> {
        url.withCString { ProxyAddress.parse($0) }
    }

    @Test func urls() throws {
        if case .inet(let address, let port) = try parse("tcp://127.0.0.1:4711").get() {
            #expect(address.s_addr == UInt32(0x7f00_0001).bigEndian && port == 4711)
        } else {
            Issue.record("tcp URL not parsed as inet")
        }
        if case .inet(let address, let port) = try parse("tcp://*:80/").get() {
            #expect(address.s_addr == 0 && port == 80)
        } else {
            Issue.record("wildcard tcp URL")
        }
        if case .local(let path) = try parse("unix://relative.sock").get() {
            let text = String(cString: path)
            #expect(text.hasPrefix("/") && text.hasSuffix("/relative.sock"))
        } else {
            Issue.record("unix URL not parsed as local")
        }
        #expect(parse("tcp://127.0.0.1:65536").failureValue == .ERANGE)
        #expect(parse("tcp://127.0.0.1:80x").failureValue == .EINVAL)
        #expect(parse("tcp://host.example:80").failureValue == .EINVAL)
        #expect(parse("tcp6://[::1]:80").failureValue == .EOPNOTSUPP)
        #expect(parse("udp://1.2.3.4:5").failureValue == .EINVAL)
        #expect(parse("no-scheme").failureValue == .EINVAL)
        #expect(parse("unix:///" + String(repeating: "p", count: 120)).failureValue == .ENAMETOOLONG)
    }
}

/// The Swift API, without a kernel (no-op upcalls): start, the banner on a
/// real socket, errors, stop. In the serialized suite: one server at a time.
extension RumpuserConformanceTests {
    @Test("Swift API: start and stop the syscall proxy")
    func swiftAPISyscallProxy() throws {
        let hypercalls = POSIXHypercalls()
        let path = NSTemporaryDirectory() + "rumpsp-swift-\(getpid()).sock"
        let url = try SyscallProxyURL.unix(path: path)
        #expect(throws: NetBSDErrno.ERANGE) { _ = try SyscallProxyURL("tcp://1.2.3.4:70000") }
        try hypercalls.startSyscallProxy(url, ostype: "Swift", osrelease: "6", machine: "x86_64")
        #expect(throws: NetBSDErrno.EBUSY) { try hypercalls.startSyscallProxy(url) }

        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            path.utf8CString.withUnsafeBytes { buffer.copyMemory(from: $0) }
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(connected == 0)
        var banner = [UInt8](repeating: 0, count: 96)
        var length = 0
        while length < banner.count, read(fd, &banner[length], 1) == 1 {
            length += 1
            if banner[length - 1] == UInt8(ascii: "\n") { break }
        }
        #expect(String(decoding: banner[..<length], as: UTF8.self) == "RUMPSP-0.4-Swift-6/x86_64\n")
        close(fd)

        hypercalls.stopSyscallProxy()
        // Started again once the stopped server has finished.
        try hypercalls.startSyscallProxy(url)
        hypercalls.stopSyscallProxy()
        var gone = false
        for _ in 0..<200 where !gone {
            gone = access(path, F_OK) != 0
            if !gone { usleep(10_000) }
        }
        #expect(gone, "socket file removed by stop")
    }
}

extension Result {
    var failureValue: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}
