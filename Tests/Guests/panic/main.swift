// panic: a guest that panics after printing one line (integration tests).
import Rumprun

print("about to panic")
Rumprun.panic("integration test panic")
