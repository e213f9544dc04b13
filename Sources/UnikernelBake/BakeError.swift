// BakeError: everything that can go wrong while baking or launching an
// image, each case carrying what a user needs to fix it.
import Foundation

/// An error from baking, checking or launching an image.
public enum BakeError: Error, Equatable, CustomStringConvertible {
    case unknownConfiguration(String, known: [String])
    case configurationNotBakeable(String, reason: String)
    case noInputs
    case inputNotFound(String)
    case notELF(path: String)
    case malformedELF(path: String, detail: String)
    case wrongClass(path: String, found: String)
    case wrongArchitecture(path: String, machine: Int)
    case wrongObjectType(path: String, expected: String, found: String)
    case emptyApplication(path: String)
    case toolNotFound(String, hint: String)
    case commandFailed(command: String, status: Int32, output: String)
    case imageCheckFailed(path: String, problems: [String])
    case outputNotWritable(path: String, detail: String)
    case sourceRootNotFound(String)

    public var description: String {
        switch self {
        case let .unknownConfiguration(name, known):
            return "unknown platform configuration '\(name)' (known: \(known.joined(separator: ", ")); see `bake --list`)"
        case let .configurationNotBakeable(name, reason):
            return "configuration '\(name)' cannot be baked yet: \(reason)"
        case .noInputs:
            return "no application inputs given (a directory with Swift sources, .o objects or .a archives)"
        case let .inputNotFound(path):
            return "input not found: \(path)"
        case let .notELF(path):
            return "\(path): not an ELF file or archive"
        case let .malformedELF(path, detail):
            return "\(path): malformed ELF: \(detail)"
        case let .wrongClass(path, found):
            return "\(path): is \(found), expected ELF64 for x86-64"
        case let .wrongArchitecture(path, machine):
            return "\(path): built for ELF machine \(machine) (\(ELFMachine.name(machine))), expected x86-64 (62)"
        case let .wrongObjectType(path, expected, found):
            return "\(path): is a \(found), expected a \(expected)"
        case let .emptyApplication(path):
            return "\(path): contains no .swift files"
        case let .toolNotFound(tool, hint):
            return "\(tool) not found: \(hint)"
        case let .commandFailed(command, status, output):
            let tail = output.split(separator: "\n").suffix(25).joined(separator: "\n")
            let shown = command.count > 300 ? String(command.prefix(300)) + " … (\(command.count) characters)" : command
            return "command failed with status \(status): \(shown)\n\(tail)"
        case let .imageCheckFailed(path, problems):
            return "\(path): image check failed:\n" + problems.map { "  - \($0)" }.joined(separator: "\n")
        case let .outputNotWritable(path, detail):
            return "cannot write \(path): \(detail)"
        case let .sourceRootNotFound(path):
            return "swift-rumprun sources not found at \(path) (set --source-root or SWIFT_RUMPRUN_ROOT)"
        }
    }
}

/// Names for ELF e_machine values that users are likely to feed in by mistake.
enum ELFMachine {
    static func name(_ machine: Int) -> String {
        switch machine {
        case 3: return "i386"
        case 40: return "ARM"
        case 62: return "x86-64"
        case 183: return "AArch64"
        case 243: return "RISC-V"
        default: return "unknown"
        }
    }
}
