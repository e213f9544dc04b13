// rumpuser(3) "Clocks": RUMPUSER_CLOCK_RELWALL is the host's wall clock,
// RUMPUSER_CLOCK_ABSMONO its monotonic clock.

import CRumpUser

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

@inline(__always)
func hostClock(_ rumpClock: Int32) -> clockid_t? {
    switch rumpClock {
    case Int32(RUMPUSER_CLOCK_RELWALL.rawValue): return CLOCK_REALTIME
    case Int32(RUMPUSER_CLOCK_ABSMONO.rawValue): return CLOCK_MONOTONIC
    default: return nil
    }
}

@_spi(RumpUserABI) @_cdecl("rumpuser_clock_gettime")
public func rumpuserClockGettime(_ clock: Int32, _ sec: UnsafeMutablePointer<Int64>, _ nsec: UnsafeMutablePointer<Int>) -> Int32 {
    guard let id = hostClock(clock) else { return NetBSDErrno.EINVAL.rawValue }
    var now = timespec()
    if clock_gettime(id, &now) != 0 { return netbsdErrnoFromCurrentHostErrno() }
    sec.pointee = Int64(now.tv_sec)
    nsec.pointee = now.tv_nsec
    return 0
}

/// RELWALL: sleep at least `sec`.`nsec`; ABSMONO: sleep until the monotonic
/// clock reaches `sec`.`nsec`. Signals do not cut the sleep short.
@_spi(RumpUserABI) @_cdecl("rumpuser_clock_sleep")
public func rumpuserClockSleep(_ clock: Int32, _ sec: Int64, _ nsec: Int) -> Int32 {
    guard hostClock(clock) != nil else { return NetBSDErrno.EINVAL.rawValue }
    guard sec >= 0, nsec >= 0, nsec < 1_000_000_000 else { return NetBSDErrno.EINVAL.rawValue }
    let error = withCPUReleased { () -> Int32 in
        var request = timespec(tv_sec: Int(sec), tv_nsec: nsec)
        if clock == Int32(RUMPUSER_CLOCK_RELWALL.rawValue) {
            var remaining = timespec()
            while nanosleep(&request, &remaining) != 0 {
                if crumpuser_errno() != EINTR { return crumpuser_errno() }
                request = remaining
            }
            return 0
        }
        while true {
            let rv = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &request, nil)
            if rv != EINTR { return rv }
        }
    }
    return netbsdErrno(fromHost: error)
}
