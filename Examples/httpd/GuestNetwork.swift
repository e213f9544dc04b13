// GuestNetwork: what a single-interface NetStack unikernel does before its
// poll loop: a clock (the platform's, calibrated at boot), the NIC the
// launcher attached (Rumprun.NetworkDevice, polled), and its IPv4 address
// from the launcher's JSON configuration (-W tag,inet,static,... or dhcp;
// DHCP when absent). Shared by Examples/httpd and Examples/udp-echo (a
// symbolic link there).
import BareMetalKit
import DeviceInterfaces
import NetStack
import Rumprun

/// Prints `message` prefixed with the application name and exits with 1.
func fail(_ application: StaticString, _ message: String) -> Never {
    print("\(application): \(message)")
    Rumprun.exit(1)
}

/// Monotonic nanoseconds since the clock was made: Rumprun.Clock, the TSC
/// the platform calibrated at boot (kvmclock, CPUID, PIT or HPET). Nil when
/// the platform found no way to calibrate it.
struct GuestClock {
    let start: UInt64

    init?() {
        guard Clock.tscFrequency > 0 else { return nil }
        start = Clock.monotonic
    }

    func now() -> UInt64 { Clock.monotonic &- start }
}

/// The addressing of the launcher's first interface; DHCP when none is given.
func configuredSpecification() -> NetworkSpecification? {
    guard let interface = Rumprun.networkInterfaces.first else { return .dhcp }
    switch interface.addressing {
    case .none, .dhcp:
        return .dhcp
    case let .staticAddress(address, prefixLength, gateway):
        let text = "inet,static,\(address)/\(prefixLength)" + (gateway.map { ",\($0)" } ?? "")
        return try? NetworkSpecification(parsing: text)
    }
}

/// A stack on the configured NIC with its address in place (waits up to 30 s
/// for a DHCP lease). Prints the driver and, with DHCP, the lease; exits
/// with status 1 on failure.
func startNetwork(_ application: StaticString, clock: GuestClock) -> (stack: NetworkStack<NetworkDevice>, interface: Int) {
    guard let nic = NetworkDevice.probeConfigured() else {
        fail(application, "no usable NIC (run with --machine pc -I net0,virtio-net|e1000,...)")
    }
    print("\(application): \(nic.driverName) driver")
    guard let specification = configuredSpecification() else { fail(application, "bad address configuration") }
    var configuration = NetworkStackConfiguration()
    configuration.seed = PlatformCore.readTSC()
    let stack = NetworkStack<NetworkDevice>(configuration: configuration)
    let interface: Int
    switch specification {
    case .static(let address):
        interface = stack.attach(nic, configuration: address)
    case .dhcp:
        interface = stack.attach(nic)
        do { try stack.startDHCP(interface: interface, hostName: Rumprun.hostname) } catch { fail(application, "DHCP did not start") }
        let deadline = clock.now() + 30_000_000_000
        while stack.dhcpLease(interface: interface) == nil {
            stack.poll(now: clock.now())
            if clock.now() > deadline { fail(application, "no DHCP lease within 30 s") }
        }
        if let lease = stack.dhcpLease(interface: interface) {
            print("\(application): DHCP lease \(lease.configuration.address.description)/\(lease.configuration.prefixLength)")
        }
    }
    return (stack, interface)
}
