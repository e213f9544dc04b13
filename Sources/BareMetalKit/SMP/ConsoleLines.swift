// ConsoleLines: whole lines on the console when several CPUs print. With
// more than one CPU, `putchar` (Swift's `print`) collects bytes in a
// buffer of the printing CPU and writes the line under one lock when the
// newline comes, when the buffer is full, or when a thread switch leaves the
// CPU (so a thread that moves on does not leave its text behind). With one
// CPU nothing is buffered: bytes go out at once, as before.
#if hasFeature(Embedded)
import CPUPrimitives

public enum ConsoleLines {
    /// Bytes a CPU collects before it writes them without a newline.
    public static var capacity: Int { 256 }

    static let lock = TicketLock()
    nonisolated(unsafe) static var buffers: UnsafeMutablePointer<UInt8>? = nil
    nonisolated(unsafe) static var lengths: UnsafeMutablePointer<Int>? = nil
    nonisolated(unsafe) static var processorCount = 0

    /// Turns line collection on for `processors` CPUs (more than one).
    static func start(processors: Int) {
        guard processors > 1, buffers == nil else { return }
        let bytes = MemoryLock.withLock { Platform.heap?.allocate(size: processors * capacity, alignment: 64) }
        let counts = MemoryLock.withLock { Platform.heap?.allocate(size: processors * MemoryLayout<Int>.stride, alignment: 64) }
        guard let bytes, let counts else { return }
        lengths = counts.bindMemory(to: Int.self, capacity: processors)
        lengths!.initialize(repeating: 0, count: processors)
        processorCount = processors
        cpu_memory_barrier()
        buffers = bytes.bindMemory(to: UInt8.self, capacity: processors * capacity)
    }

    /// Takes one byte from `putchar`: false when lines are not collected
    /// (one CPU), and the caller writes it itself.
    public static func put(_ byte: UInt8) -> Bool {
        guard let buffers, let lengths else { return false }
        let processor = Processors.currentIndex
        guard processor < processorCount else { return false }
        let flags = cpu_save_and_disable_interrupts()
        let length = lengths[processor]
        buffers[processor * capacity + length] = byte
        lengths[processor] = length + 1
        if byte == 0x0A || length + 1 == capacity { flush(processor) }
        cpu_restore_interrupts(flags)
        return true
    }

    /// Writes what the running CPU has collected (a thread switch, exit).
    public static func flushCurrentProcessor() {
        guard buffers != nil else { return }
        let processor = Processors.currentIndex
        guard processor < processorCount else { return }
        let flags = cpu_save_and_disable_interrupts()
        flush(processor)
        cpu_restore_interrupts(flags)
    }

    /// Called with interrupts masked.
    static func flush(_ processor: Int) {
        guard let buffers, let lengths, lengths[processor] > 0 else { return }
        _ = lock.lock()
        let line = UnsafeBufferPointer(start: buffers + processor * capacity, count: lengths[processor])
        Platform.console.write(contentsOf: line)
        lock.unlock(restoring: false)
        lengths[processor] = 0
    }
}
#endif
