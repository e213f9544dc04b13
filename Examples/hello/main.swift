// hello: the first swift-rumprun application. Prints a greeting, its
// arguments and $GREETING, then exits with the status given as the first
// argument (0 when there is none).
import Rumprun

print("Hello from swift-rumprun!")
let arguments = Rumprun.arguments
for (index, argument) in arguments.enumerated() {
    print("argv[\(index)] = \(argument)")
}
if let greeting = Rumprun.environment("GREETING") {
    print("GREETING = \(greeting)")
} else {
    print("GREETING is not set")
}
print("hostname = \(Rumprun.hostname)")

var status: Int32 = 0
if arguments.count > 1 {
    guard let requested = Int32(arguments[1]) else {
        print("hello: exit status must be a number, not \(arguments[1])")
        Rumprun.exit(2)
    }
    status = requested
}
print("exiting with status \(status)")
Rumprun.exit(status)
