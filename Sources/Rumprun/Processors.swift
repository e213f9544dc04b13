// Processors: how many CPUs the guest runs on and which one is running.
#if hasFeature(Embedded)
import BareMetalKit

extension Rumprun {
    /// CPUs online (the boot processor and every application processor
    /// that answered at boot; `rumprun-cli run --smp N`). Threads run on
    /// all of them.
    public static var processorCount: Int { Processors.count }

    /// The running CPU's index, 0 for the boot processor.
    public static var currentProcessor: Int { Processors.currentIndex }
}
#endif
