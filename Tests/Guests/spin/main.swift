// spin: a guest that never ends (integration tests of --timeout).
import Rumprun

print("spinning forever")
var counter: UInt64 = 0
while true {
    counter &+= 1
}
