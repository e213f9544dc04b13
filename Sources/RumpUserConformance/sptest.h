/*
 * sptest.h: the harness kernel's fake system calls for the syscall proxy
 * suite (spkernel.c implements them, sysproxy.c calls them through the test
 * client in spclient.c), and the test client's interface.
 *
 * Argument blocks hold pointers into the client's memory; the kernel reaches
 * it only through rumpuser_sp_copyin/copyout/anonmmap (client and harness
 * share one process, but the kernel side never dereferences them).
 */

#ifndef RUMPCONF_SPTEST_H
#define RUMPCONF_SPTEST_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum {
	SPT_ECHO = 1,	  /* copyin len bytes, XOR 0x5a, copyout; rv0 = len, rv1 = byte sum */
	SPT_STRING = 2,	  /* copyinstr (max), copyoutstr it reversed; rv0 = strlen */
	SPT_ERROR = 3,	  /* returns the errno in the argument block */
	SPT_GETPID = 4,	  /* rv0 = pid; copyoutstr of the process name */
	SPT_MMAP = 5,	  /* anonmmap len in the client, copyout a pattern there; rv0 = address */
	SPT_RAISE = 6,	  /* rumpuser_sp_raise(signal) */
	SPT_WAITEXIT = 7, /* sleeps until the process must exit; EINTR */
	SPT_FINI = 8,	  /* rumpuser_sp_fini(client): the kernel "halts" */
};

struct spt_echo { const void *in; void *out; size_t len; };
struct spt_string { const char *in; size_t max; char *out; };
struct spt_error { int error; };
struct spt_getpid { char *name; size_t max; };
struct spt_mmap { size_t len; };
struct spt_raise { int signal; };

/* Kernel-side counters the suite checks. */
int conf_sp_live_processes(void);
int conf_sp_live_lwps(void);
uint64_t conf_sp_exits(void);		/* hyp_lwpexit calls */
uint64_t conf_sp_syscalls(void);

/* ---- the test client (spclient.c) ---------------------------------------- */

#define SPC_SLOTS 32
struct spc_header {
	uint64_t len;
	uint64_t reqno;
	uint16_t cls;
	uint16_t type;
	uint32_t arg;
};

struct spc_conn {
	int fd;
	uint64_t next;
	char banner[96];
	struct {
		uint64_t reqno;
		int used, done, error;
		long rv[2];
		uint16_t cls;
		uint32_t arg;
		unsigned char data[16];
		size_t dlen;
	} slots[SPC_SLOTS];
	int raised;		/* last RAISE signal */
	int copyins, copyouts, mmaps;
	int refuse_copyin;	/* 1: answer copyin short; 2: with ERROR; 3: too long; 4: close */
	int gone;		/* the server closed the connection */
};

/* Connects and reads the banner; 0 or a host errno. */
int spc_connect(struct spc_conn *c, const char *url);
void spc_close(struct spc_conn *c);
/* Sends a frame; returns the request number used (or 0 on failure). */
uint64_t spc_send(struct spc_conn *c, uint16_t cls, uint16_t type, uint32_t arg,
    const void *body, size_t len);
/* Waits for the answer to reqno, serving the server's requests meanwhile.
 * Returns 0 and fills the slot's fields, or ETIMEDOUT / ECONNRESET. */
int spc_wait(struct spc_conn *c, uint64_t reqno, int *slot);
/* HANDSHAKE of `kind` with body; returns the handshake error, the errno
 * of an ERROR frame (as NetBSD's errmap), or -1 if the connection died. */
int spc_handshake(struct spc_conn *c, uint32_t kind, const void *body, size_t len);
/* A syscall: returns its NetBSD error (or -1 when the connection died). */
int spc_syscall(struct spc_conn *c, int number, const void *args, size_t len, long rv[2]);
/* Reads one frame (with timeout); 1 got one, 0 closed, -1 timeout. */
int spc_read_frame(struct spc_conn *c, struct spc_header *h, void *body, size_t max, size_t *blen);

#endif
