// swift-tools-version: 6.1
// swift-rumprun: one package, two worlds.
//
// Host world (default): every library, the `bake` and `rumprun-cli` tools and
// the tests, built with `swift build` / `swift test`.
//
// Guest world (`GUEST=1`): only the modules that run inside a unikernel, built
// as Embedded Swift for `x86_64-unknown-none-elf`; see Docs/architecture.md.

import PackageDescription

let guest = Context.environment["GUEST"] == "1"

/// Swift settings shared by the modules that also compile for the guest.
let guestSwiftSettings: [SwiftSetting] =
    guest
    ? [
        .enableExperimentalFeature("Embedded"),
        .unsafeFlags(["-wmo", "-Osize", "-Xfrontend", "-function-sections"]),
    ]
    : []

/// C settings of the guest world: freestanding, no red zone (interrupts run
/// on the current stack until the IST work lands), no SSE in C code.
let guestCSettings: [CSetting] =
    guest
    ? [.unsafeFlags(["-ffreestanding", "-mno-red-zone", "-fno-pic", "-ffunction-sections", "-fno-asynchronous-unwind-tables"])]
    : []

var targets: [Target] = [
    .target(
        name: "CPUPrimitives",
        exclude: guest ? [] : ["entry.S", "isr.S", "libc.c", "ap_trampoline.S", "switch.S", "xen_hooks.c", "privileged.c"],
        cSettings: guestCSettings
    ),
    .target(
        name: "BareMetalKit",
        dependencies: ["CPUPrimitives", "DeviceInterfaces"],
        swiftSettings: guestSwiftSettings
    ),
    .target(
        name: "Rumprun",
        dependencies: ["BareMetalKit", "DeviceInterfaces", "NetStack"],
        swiftSettings: guestSwiftSettings
    ),
    // Driver-facing contracts shared by hw drivers, Xen frontends and users.
    .target(
        name: "DeviceInterfaces",
        swiftSettings: guestSwiftSettings
    ),
    // The Xen ABI from libxen-dev's headers (include/xen links to them); no
    // system include directories in the guest world, so glibc stays out.
    .target(
        name: "CXen",
        exclude: guest ? [] : ["xen_boot.S", "xen_pv_entry.S"],
        cSettings: guestCSettings + (guest ? [.unsafeFlags(["-Xclang", "-nostdsysteminc"])] : [])
    ),
    // The Xen platform: hypercalls, event channels, grants, xenstore, frontends.
    .target(
        name: "XenPVKit",
        dependencies: ["CXen", "DeviceInterfaces", "BareMetalKit"],
        swiftSettings: guestSwiftSettings
    ),
    // The TCP/IP stack (issue: networking). Embedded-clean.
    .target(
        name: "NetStack",
        dependencies: ["DeviceInterfaces"],
        swiftSettings: guestSwiftSettings
    ),
]

if guest {
    targets += [
        // rumpuser v17 on the hw platform (opt-in: not in the bake
        // configurations; see Docs/rumphypercall.md "Guest implementation").
        // The C part: the shared rumpuser.h, curlwp/errno TLS, dprintf.
        .target(name: "CRumpUserGuest", cSettings: guestCSettings),
        .target(
            name: "RumpUserGuest",
            dependencies: ["CRumpUserGuest", "BareMetalKit", "DeviceInterfaces", "Rumprun", "CPUPrimitives"],
            swiftSettings: guestSwiftSettings
        ),
    ]
}

var products: [Product] = [
    .library(name: "BareMetalKit", targets: ["BareMetalKit"]),
    .library(name: "Rumprun", targets: ["Rumprun"]),
    .library(name: "DeviceInterfaces", targets: ["DeviceInterfaces"]),
    .library(name: "NetStack", targets: ["NetStack"]),
    .library(name: "XenPVKit", targets: ["XenPVKit"]),
]

if !guest {
    targets += [
        .systemLibrary(
            name: "CLibELF",
            pkgConfig: "libelf",
            providers: [.apt(["libelf-dev"])]
        ),
        // --- RumpHypercall (rumpuser v17) ---
        // The C ABI (rumpuser.h) and the C-only pieces (varargs dprintf, TLS).
        .target(name: "CRumpUser"),
        // The POSIX host implementation, exported as the rumpuser_* symbols.
        .target(name: "RumpHypercall", dependencies: ["CRumpUser"]),
        // A C harness that behaves like a rump kernel (driver/ is the C
        // program linked against librumpuser.so; see Docs/rumphypercall.md).
        .target(name: "RumpUserConformance", dependencies: ["CRumpUser"], exclude: ["driver"]),
        // C benchmark: each hypercall beside a plain pthread baseline.
        .executableTarget(
            name: "hypercall-bench",
            dependencies: ["RumpHypercall"],
            path: "Benchmarks/hypercall",
            exclude: ["README.md"]
        ),
        // --- XenPVKit: declared with the guest-world targets above ---
        .target(
            name: "UnikernelBake",
            dependencies: ["CLibELF", "BareMetalKit", "CXen"]
        ),
        .executableTarget(
            name: "bake",
            dependencies: [
                "UnikernelBake",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "rumprun-cli",
            dependencies: [
                "UnikernelBake",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "boot-benchmark",
            dependencies: ["UnikernelBake"],
            path: "Benchmarks/boot"
        ),
        .testTarget(name: "BareMetalKitTests", dependencies: ["BareMetalKit"], exclude: ["Fixtures"]),
        // Drivers (PCI, virtio, e1000) against device models.
        .testTarget(name: "DriverTests", dependencies: ["BareMetalKit", "DeviceInterfaces"]),
        .testTarget(name: "UnikernelBakeTests", dependencies: ["UnikernelBake", "CLibELF"]),
        .testTarget(name: "RumpHypercallTests", dependencies: ["RumpHypercall", "RumpUserConformance"]),
        .testTarget(name: "XenPVKitTests", dependencies: ["XenPVKit", "CXen"]),
        .testTarget(name: "NetStackTests", dependencies: ["NetStack"]),
        .testTarget(name: "DeviceInterfacesTests", dependencies: ["DeviceInterfaces"]),
        // Examples/kvstore's record log and HTTP parsing (symbolic links).
        .testTarget(name: "KVStoreTests"),
        .testTarget(name: "IntegrationTests", dependencies: ["UnikernelBake", "bake", "rumprun-cli"]),
    ]
    products += [
        .library(name: "RumpHypercall", targets: ["RumpHypercall"]),
        .library(name: "rumpuser", type: .dynamic, targets: ["RumpHypercall"]),
        .library(name: "rumpuser-static", type: .static, targets: ["RumpHypercall"]),
        .library(name: "UnikernelBake", targets: ["UnikernelBake"]),
        .executable(name: "bake", targets: ["bake"]),
        .executable(name: "rumprun-cli", targets: ["rumprun-cli"]),
    ]
}

// libFuzzer target for NetStack's packet input path: declared only with
// NETSTACK_FUZZ=1 (Scripts/fuzz-netstack), because it links with
// -sanitize=fuzzer and has no main of its own.
if !guest && Context.environment["NETSTACK_FUZZ"] == "1" {
    targets.append(.executableTarget(name: "NetStackFuzz", dependencies: ["NetStack", "DeviceInterfaces"], path: "Fuzz/NetStackFuzz"))
    products.append(.executable(name: "NetStackFuzz", targets: ["NetStackFuzz"]))
}

let package = Package(
    name: "swift-rumprun",
    products: products,
    dependencies: guest
        ? []
        : [
            .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2")
        ],
    targets: targets
)
