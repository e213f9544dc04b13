// rumprun-cli: launches baked swift-rumprun images (run) and stops
// background guests (stop), after rumprun's launcher.
import ArgumentParser
import Foundation
import UnikernelBake

extension LaunchOptions.Accelerator: ExpressibleByArgument {}
extension LaunchOptions.Machine: ExpressibleByArgument {}

@main
struct RumprunCLI: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rumprun-cli",
        abstract: "Run swift-rumprun unikernel images.",
        subcommands: [Run.self, Stop.self])
}

func fail(_ message: String, status: Int32 = 125) -> ExitCode {
    FileHandle.standardError.write(Data("rumprun-cli: error: \(message)\n".utf8))
    return ExitCode(status)
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Launch an image under QEMU.",
        discussion: """
            PLATFORM is qemu (software emulation, always works), kvm (needs a usable /dev/kvm)
            or xen (writes NAME.xl.cfg and runs xl create -p, xenstore-write, xl unpause;
            with --dry-run it only prints them).
            The guest gets its arguments (after --), environment (-e) and host name (-N) as a
            JSON object on its command line.

            With -i the console is attached and rumprun-cli exits with the guest's status:
              0-119  the status the application exited with
              120    the guest panicked (the panic line is repeated on stderr)
              121    the guest took an unhandled CPU exception
              122    QEMU ended without a guest status (reset, triple fault, killed)
              124    --timeout expired and the guest was killed
              125    the launch failed (QEMU missing, bad image); 64 for bad options
            Without -i the guest runs in the background, its console goes to a log file,
            and rumprun-cli prints qemu:<pid> for `rumprun-cli stop`.

            Examples:
              rumprun-cli run qemu -i hello.img -- 7
              rumprun-cli run qemu -i -e GREETING=hi -M 128 --machine pc hello.img
            """)

    @Argument(help: "qemu, kvm or xen.")
    var platform: LaunchOptions.Accelerator

    @Flag(name: .customShort("i"), help: "Attach the console and wait for the guest to end.")
    var interactive = false

    @Option(name: .customShort("M"), help: ArgumentHelp("Guest memory in MiB (default 64).", valueName: "MB"))
    var memory: Int = 64

    @Option(name: .long, help: ArgumentHelp("Virtual CPUs (QEMU -smp, 1 to 64); the guest starts all of them.", valueName: "N"))
    var smp: Int = 1

    @Option(name: .customShort("e"), help: ArgumentHelp("Set a guest environment variable (repeatable).", valueName: "VAR=VALUE"))
    var environment: [String] = []

    @Option(name: .customShort("g"), parsing: .unconditionalSingleValue, help: ArgumentHelp("Extra QEMU arguments, split at spaces.", valueName: "ARGS"))
    var qemuArguments: [String] = []

    @Flag(name: .customShort("p"), help: "Create the guest paused (QEMU -S).")
    var paused = false

    @Option(name: .customShort("D"), help: ArgumentHelp("Open a gdb stub on 127.0.0.1:PORT; implies -p.", valueName: "PORT"))
    var gdbPort: Int?

    @Option(name: .customShort("N"), help: ArgumentHelp("Guest name, also its host name.", valueName: "NAME"))
    var name: String?

    @Option(name: .customShort("I"), help: ArgumentHelp("Network interface: tag,driver,backend[,options] (drivers: virtio-net, e1000, xen-netfront; backend: a QEMU netdev such as user or tap,ifname=tap0,script=no,downscript=no, or Xen vif options).", valueName: "tag,driver,backend"))
    var interfaces: [String] = []

    @Option(name: .customShort("W"), help: ArgumentHelp("Interface address: tag,inet,dhcp or tag,inet,static,ADDRESS/PREFIX[,GATEWAY].", valueName: "tag,inet,..."))
    var addresses: [String] = []

    @Option(name: .customShort("b"), help: ArgumentHelp("Block device from a host file, optionally mounted at a path in the guest.", valueName: "hostpath[,mountpoint]"))
    var disks: [String] = []

    @Option(name: .long, help: "microvm (PVH, default) or pc (SeaBIOS and multiboot).")
    var machine: LaunchOptions.Machine = .microvm

    @Flag(name: .long, help: "microvm: add the PCIe host bridge even without -I/-b (for PCI devices given with -g).")
    var pcie = false

    @Option(name: .long, help: ArgumentHelp("With -i: kill the guest after this many seconds.", valueName: "seconds"))
    var timeout: Double?

    @Option(name: .long, help: ArgumentHelp("Without -i: the console log file (default: $TMPDIR/rumprun-NAME-<time>.log).", valueName: "path"))
    var consoleLog: String?

    @Flag(name: .long, help: "Print the QEMU command instead of running it.")
    var dryRun = false

    @Argument(help: "The image to run (from bake).")
    var image: String

    @Argument(parsing: .postTerminator, help: "Arguments for the application.")
    var applicationArguments: [String] = []

    func deviceOptions() throws(LaunchError) -> (network: [NetworkInterfaceOption], block: [BlockDeviceOption]) {
        var network: [NetworkInterfaceOption] = []
        for (index, text) in interfaces.enumerated() { network.append(try NetworkInterfaceOption.parse(text, index: index)) }
        try applyAddressOptions(addresses, to: &network)
        var block: [BlockDeviceOption] = []
        for (index, text) in disks.enumerated() { block.append(try BlockDeviceOption.parse(text, index: index)) }
        return (network, block)
    }

    var options: LaunchOptions {
        var options = LaunchOptions(image: image)
        if let devices = try? deviceOptions() {
            options.networkInterfaces = devices.network
            options.blockDevices = devices.block
        }
        options.accelerator = platform
        options.machine = machine
        options.memoryMegabytes = memory
        options.processorCount = smp
        options.environment = environment
        options.extraQEMUArguments = qemuArguments.flatMap { $0.split(separator: " ").map(String.init) }
        options.startPaused = paused
        options.gdbPort = gdbPort
        options.name = name
        options.applicationArguments = applicationArguments
        options.timeout = timeout
        options.pcie = pcie
        return options
    }

    func validate() throws {
        do {
            _ = try deviceOptions()
            try Launcher.validate(options)
        } catch {
            throw ValidationError(error.description)
        }
        if timeout != nil && !interactive { throw ValidationError("--timeout needs -i") }
    }

    func run() throws {
        let options = self.options
        if platform == .xen {
            let configurationPath = FileManager.default.currentDirectoryPath + "/\(options.guestName).xl.cfg"
            do {
                if dryRun {
                    print(try XenLauncher.dryRun(options, configurationPath: configurationPath), terminator: "")
                    return
                }
                let domainID = try XenLauncher.start(options, configurationPath: configurationPath)
                print("xen:\(domainID)")
            } catch {
                throw fail(error.description)
            }
            return
        }
        if dryRun {
            let kernel = machine == .pc ? "\(options.guestName)-multiboot.img" : image
            let console = interactive ? "stdio" : "file:\(consoleLog ?? "LOG")"
            let words = [Launcher.qemuName] + Launcher.qemuArguments(options, kernel: kernel, console: console)
            print(words.map { $0.contains(where: { " \"{}".contains($0) }) ? "'\($0)'" : $0 }.joined(separator: " "))
            return
        }
        if interactive {
            let outcome: LaunchOutcome
            do {
                outcome = try Launcher.runForeground(options, input: FileHandle.standardInput)
            } catch {
                throw fail(error.description)
            }
            switch outcome {
            case .exited:
                break
            case .panicked(let message):
                FileHandle.standardError.write(Data("rumprun-cli: guest panicked: \(message ?? "(no panic text on the console)")\n".utf8))
            case .exception(let message):
                FileHandle.standardError.write(Data("rumprun-cli: guest stopped on a CPU exception: \(message ?? "(no report on the console)")\n".utf8))
            case .stoppedWithoutStatus(let status) where status == 1:
                FileHandle.standardError.write(Data("rumprun-cli: QEMU failed (status 1) before the guest reported a status; see its message above\n".utf8))
            case .stoppedWithoutStatus(let status):
                FileHandle.standardError.write(Data("rumprun-cli: QEMU ended (status \(status)) without a guest exit status: reset, triple fault or killed\n".utf8))
            case .timedOut(let seconds):
                FileHandle.standardError.write(Data("rumprun-cli: guest killed after the \(seconds) s timeout\n".utf8))
            }
            throw ExitCode(outcome.launcherStatus)
        }
        let stamp = Int(Date().timeIntervalSince1970)
        let log = consoleLog ?? FileManager.default.temporaryDirectory.appendingPathComponent("rumprun-\(options.guestName)-\(stamp).log").path
        do {
            let pid = try Launcher.startBackground(options, consoleLog: log)
            FileHandle.standardError.write(Data("rumprun-cli: console output goes to \(log)\n".utf8))
            print("qemu:\(pid)")
        } catch {
            throw fail(error.description)
        }
    }
}

struct Stop: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop a guest started in the background.",
        discussion: "GUEST is what `rumprun-cli run` printed: qemu:<pid> or xen:<domid>.")

    @Argument(help: "qemu:<pid> or xen:<domid>")
    var guest: String

    func run() throws {
        do {
            if guest.hasPrefix("xen:") {
                try XenLauncher.stop(guest)
            } else {
                try Launcher.stop(guest)
            }
        } catch {
            throw fail(error.description, status: 1)
        }
    }
}
