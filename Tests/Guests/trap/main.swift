// trap: a guest whose array access is out of bounds; the Swift runtime
// traps (ud2) and the platform must report the exception (integration tests).
import Rumprun

print("about to index out of bounds")
let values = [1, 2, 3]
let index = Rumprun.arguments.count + 5
print(values[index])
