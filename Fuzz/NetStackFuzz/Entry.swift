// The libFuzzer entry point for NetStack's packet input path (see
// FuzzHarness.swift). Built only by Scripts/fuzz-netstack:
//   NETSTACK_FUZZ=1 swift build --product NetStackFuzz -Xswiftc -sanitize=fuzzer -Xswiftc -parse-as-library
// SwiftPM links an executable's entry point as `<module>_main` (main is
// defined as that symbol), so the entry hands control to libFuzzer's driver
// (LLVMFuzzerRunDriver) instead of relying on libFuzzer's own main.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzNetStack(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let input = data.map { Array(UnsafeBufferPointer(start: $0, count: count)) } ?? []
    // A fresh stack per input keeps runs reproducible from the input alone.
    guard var harness = try? FuzzHarness() else { fatalError("fuzz harness setup failed") }
    harness.run(input)
    return 0
}

typealias FuzzCallback = @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt

@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: FuzzCallback
) -> CInt

@_cdecl("NetStackFuzz_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var arguments = argv
    return runFuzzerDriver(&count, &arguments) { data, size in fuzzNetStack(data, size) }
}
