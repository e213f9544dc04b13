// ProcessWait: waiting for a child process without Foundation's 50 ms step.
// On Linux, corelibs Foundation's `Process.waitUntilExit()` runs the run loop
// in 50 ms slices until `isRunning` turns false, so every wait ended on a
// 50 ms boundary: that was the step in the boot benchmark's figures (a
// /bin/sleep 0.01 measured 52-60 ms through waitUntilExit, 12-25 ms here).
import Foundation

extension Process {
    /// Blocks until the process has ended, checking every millisecond.
    /// Foundation's own child monitor reaps the process and clears
    /// `isRunning`, so termination status and reason are valid afterwards.
    public func waitForExit() {
        while isRunning { usleep(1000) }
    }
}
