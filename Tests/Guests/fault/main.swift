// fault: a guest that touches memory the page tables forbid, chosen by its
// first argument: "null" reads address 8, "text" writes into its own code
// (integration tests of the page tables and the exception report).
import CPUPrimitives
import Rumprun

let arguments = Rumprun.arguments
let mode = arguments.count > 1 ? arguments[1] : "null"
print("fault: \(mode)")
if mode == "text" {
    let code = UnsafeMutablePointer<UInt8>(bitPattern: UInt(bmk_image_start()) + 0x100)!
    code.pointee = 0x90
} else {
    let nullPage = UnsafePointer<UInt64>(bitPattern: 8)!
    print("read \(nullPage.pointee)")
}
print("fault: survived")
Rumprun.exit(0)
