/*
 * rumpuser_component.h: helpers for host-side components of rump kernel
 * drivers (NetBSD lib/librumpuser/rumpuser_component.h).
 *
 * A component's host half (say a virtual network interface reading a tap
 * device) runs on host threads.  Before it blocks in the host it gives up the
 * rump kernel CPU with rumpuser_component_unschedule() and takes one back
 * with rumpuser_component_schedule(cookie).  The kthread helpers give a host
 * thread its own rump kernel lwp so that it can enter the kernel later.
 */

#ifndef _RUMP_RUMPUSER_COMPONENT_H_
#define _RUMP_RUMPUSER_COMPONENT_H_

#ifdef __cplusplus
extern "C" {
#endif

struct lwp;

void *rumpuser_component_unschedule(void);
void rumpuser_component_schedule(void *);
int rumpuser_component_errtrans(int);

void rumpuser_component_kthread(void);
struct lwp *rumpuser_component_curlwp(void);
void rumpuser_component_switchlwp(struct lwp *);
void rumpuser_component_kthread_release(void);

/*
 * For host code that delivers interrupts (a host thread that noticed a
 * device event and must run the kernel's interrupt handler), with no CPU
 * held on entry.  schedule_intr takes a virtual CPU through hyp_schedule:
 * a thread without an lwp of its own runs on a temporary one the kernel
 * binds to it; unschedule_intr gives the CPU back through hyp_unschedule,
 * which also drops that temporary lwp (a thread with its own lwp, from
 * rumpuser_component_kthread, keeps it).  Unlike component_schedule, no
 * big-lock count is carried: interrupt context starts with none.  This
 * pair is a swift-rumprun addition; NetBSD's header has no such call.
 */
void rumpuser_component_schedule_intr(void);
void rumpuser_component_unschedule_intr(void);

#ifdef __cplusplus
}
#endif

#endif /* _RUMP_RUMPUSER_COMPONENT_H_ */
