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
            PLATFORM is qemu (software emulation, always works) or kvm (needs a usable /dev/kvm).
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

    @Argument(help: "qemu or kvm.")
    var platform: LaunchOptions.Accelerator

    @Flag(name: .customShort("i"), help: "Attach the console and wait for the guest to end.")
    var interactive = false

    @Option(name: .customShort("M"), help: ArgumentHelp("Guest memory in MiB (default 64).", valueName: "MB"))
    var memory: Int = 64

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

    @Option(name: .long, help: "microvm (PVH, default) or pc (SeaBIOS and multiboot).")
    var machine: LaunchOptions.Machine = .microvm

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

    var options: LaunchOptions {
        var options = LaunchOptions(image: image)
        options.accelerator = platform
        options.machine = machine
        options.memoryMegabytes = memory
        options.environment = environment
        options.extraQEMUArguments = qemuArguments.flatMap { $0.split(separator: " ").map(String.init) }
        options.startPaused = paused
        options.gdbPort = gdbPort
        options.name = name
        options.applicationArguments = applicationArguments
        options.timeout = timeout
        return options
    }

    func validate() throws {
        do {
            try Launcher.validate(options)
        } catch {
            throw ValidationError(error.description)
        }
        if timeout != nil && !interactive { throw ValidationError("--timeout needs -i") }
    }

    func run() throws {
        let options = self.options
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
        discussion: "GUEST is what `rumprun-cli run` printed, e.g. qemu:12345.")

    @Argument(help: "qemu:<pid>")
    var guest: String

    func run() throws {
        do {
            try Launcher.stop(guest)
        } catch {
            throw fail(error.description, status: 1)
        }
    }
}
