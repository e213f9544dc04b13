// Rumprun: the API guest applications program against. In the guest it is
// backed by the hw platform; on a host it maps to the process's own
// arguments, environment and exit, so applications can also run as tests.
#if hasFeature(Embedded)
import BareMetalKit
#else
#if canImport(Glibc)
import Glibc
#endif
#endif

/// Services of the unikernel the application runs in.
public enum Rumprun {
    /// Program arguments; the first is the program name.
    public static var arguments: [String] {
        #if hasFeature(Embedded)
        Platform.configuration.arguments
        #else
        CommandLine.arguments
        #endif
    }

    /// The value of an environment variable set by the launcher (`-e`).
    public static func environment(_ name: String) -> String? {
        #if hasFeature(Embedded)
        Platform.configuration.environmentValue(name)
        #else
        getenv(name).map { String(cString: $0) }
        #endif
    }

    /// The guest's host name (`-N` / configuration `hostname`).
    public static var hostname: String {
        #if hasFeature(Embedded)
        Platform.configuration.hostname
        #else
        var buffer = [CChar](repeating: 0, count: 256)
        gethostname(&buffer, buffer.count - 1)
        return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        #endif
    }

    /// Ends the guest; the launcher exits with `status` (0...119).
    public static func exit(_ status: Int32) -> Never {
        #if hasFeature(Embedded)
        Platform.exit(status)
        #else
        Glibc.exit(status)
        #endif
    }

    /// Stops the guest with a panic report.
    public static func panic(_ message: StaticString) -> Never {
        #if hasFeature(Embedded)
        Platform.panic(message)
        #else
        fatalError("\(message)")
        #endif
    }

    #if hasFeature(Embedded)
    /// Network interfaces the launcher attached (`-I`, `-W`).
    public static var networkInterfaces: [GuestNetworkInterface] { Platform.configuration.networkInterfaces }

    /// Block devices the launcher attached (`-b`).
    public static var blockDevices: [GuestBlockDevice] { Platform.configuration.blockDevices }

    /// Heap counters of the guest.
    public static var heapStatistics: SizeClassHeapStatistics? { Platform.heapStatistics }
    #endif
}
