/*
 * spclient.c: a minimal syscall proxy client speaking the wire protocol
 * (the role of NetBSD's librumpclient), for the sysproxy suite.  One thread
 * per connection; it may have several system calls outstanding and serves
 * the server's copyin/copyout/anonmmap/raise requests while it waits.
 */

#define _GNU_SOURCE
#include "sptest.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define HDR ((size_t)sizeof(struct spc_header))
#define TIMEOUT_MS 30000

enum { REQ, RESP, ERR };
enum { T_HANDSHAKE, T_SYSCALL, T_COPYIN, T_COPYINSTR, T_COPYOUT, T_COPYOUTSTR, T_ANONMMAP, T_PREFORK, T_RAISE };

_Static_assert(sizeof(struct spc_header) == 24, "rsp_hdr is 24 bytes");

static int
read_full(int fd, void *buffer, size_t len)
{
	size_t got = 0;

	while (got < len) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		int ready = poll(&pfd, 1, TIMEOUT_MS);
		if (ready == 0)
			return -1;
		if (ready < 0) {
			if (errno == EINTR)
				continue;
			return 0;
		}
		ssize_t n = read(fd, (char *)buffer + got, len - got);
		if (n == 0)
			return 0;
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return 0;
		}
		got += (size_t)n;
	}
	return 1;
}

static int
write_full(int fd, const void *buffer, size_t len)
{
	size_t sent = 0;

	while (sent < len) {
		ssize_t n = send(fd, (const char *)buffer + sent, len - sent, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		sent += (size_t)n;
	}
	return 0;
}

int
spc_connect(struct spc_conn *c, const char *url)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	size_t got = 0;

	memset(c, 0, sizeof(*c));
	c->fd = -1;
	c->next = 1000;
	memset(&ss, 0, sizeof(ss));
	if (strncmp(url, "unix://", 7) == 0) {
		struct sockaddr_un *sun = (void *)&ss;
		sun->sun_family = AF_UNIX;
		strncpy(sun->sun_path, url + 7, sizeof(sun->sun_path) - 1);
		sl = sizeof(*sun);
	} else if (strncmp(url, "tcp://", 6) == 0) {
		struct sockaddr_in *sin = (void *)&ss;
		char host[64];
		const char *colon = strchr(url + 6, ':');
		if (colon == NULL || (size_t)(colon - (url + 6)) >= sizeof(host))
			return EINVAL;
		memcpy(host, url + 6, (size_t)(colon - (url + 6)));
		host[colon - (url + 6)] = '\0';
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)atoi(colon + 1));
		if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
			return EINVAL;
		sl = sizeof(*sin);
	} else {
		return EINVAL;
	}
	c->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return errno;
	if (connect(c->fd, (struct sockaddr *)&ss, sl) != 0) {
		int error = errno;
		close(c->fd);
		c->fd = -1;
		return error;
	}
	/* The banner: one line. */
	while (got < sizeof(c->banner) - 1) {
		if (read_full(c->fd, c->banner + got, 1) != 1) {
			close(c->fd);
			c->fd = -1;
			return ECONNRESET;
		}
		if (c->banner[got++] == '\n')
			break;
	}
	c->banner[got] = '\0';
	return 0;
}

void
spc_close(struct spc_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

uint64_t
spc_send(struct spc_conn *c, uint16_t cls, uint16_t type, uint32_t arg,
    const void *body, size_t len)
{
	struct spc_header h = { HDR + len, c->next++, cls, type, arg };

	if (write_full(c->fd, &h, HDR) != 0 || (len > 0 && write_full(c->fd, body, len) != 0))
		return 0;
	return h.reqno;
}

static void
respond(struct spc_conn *c, uint64_t reqno, uint16_t cls, uint16_t type, uint32_t arg,
    const void *body, size_t len)
{
	struct spc_header h = { HDR + len, reqno, cls, type, arg };

	if (write_full(c->fd, &h, HDR) == 0 && len > 0)
		(void)write_full(c->fd, body, len);
}

int
spc_read_frame(struct spc_conn *c, struct spc_header *h, void *body, size_t max, size_t *blen)
{
	int rv = read_full(c->fd, h, HDR);

	if (rv != 1)
		return rv;
	if (h->len < HDR || h->len - HDR > max)
		return 0;
	*blen = (size_t)(h->len - HDR);
	if (*blen > 0 && (rv = read_full(c->fd, body, *blen)) != 1)
		return rv;
	return 1;
}

/* Serves one request of the server. */
static void
serve(struct spc_conn *c, const struct spc_header *h, unsigned char *body, size_t blen)
{
	uint64_t len, addr;

	switch (h->type) {
	case T_COPYIN:
	case T_COPYINSTR:
		if (blen != 16)
			return;
		memcpy(&len, body, 8);
		memcpy(&addr, body + 8, 8);
		c->copyins++;
		if (h->type == T_COPYINSTR) {
			size_t n = strnlen((const char *)(uintptr_t)addr, (size_t)len);
			len = n < len ? n + 1 : len;
		}
		switch (c->refuse_copyin) {
		case 1:	/* short */
			respond(c, h->reqno, RESP, T_COPYIN, 0, (void *)(uintptr_t)addr, (size_t)len / 2);
			return;
		case 2:	/* an ERROR frame instead */
			respond(c, h->reqno, ERR, 0, 1, NULL, 0);
			return;
		case 3: { /* longer than asked */
			size_t big = (size_t)len + 4096;
			void *junk = calloc(1, big);
			respond(c, h->reqno, RESP, T_COPYIN, 0, junk, big);
			free(junk);
			return;
		}
		case 4:	/* vanish */
			close(c->fd);
			c->fd = -1;
			c->gone = 1;
			return;
		}
		respond(c, h->reqno, RESP, T_COPYIN, 0, (void *)(uintptr_t)addr, (size_t)len);
		return;
	case T_COPYOUT:
	case T_COPYOUTSTR:
		if (blen < 16)
			return;
		memcpy(&len, body, 8);
		memcpy(&addr, body + 8, 8);
		if (len != blen - 16)
			return;
		c->copyouts++;
		memcpy((void *)(uintptr_t)addr, body + 16, (size_t)len);
		return;
	case T_ANONMMAP: {
		void *mapped;
		if (blen != 8)
			return;
		memcpy(&len, body, 8);
		mapped = mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_ANON | MAP_PRIVATE, -1, 0);
		if (mapped == MAP_FAILED)
			mapped = NULL;
		c->mmaps++;
		respond(c, h->reqno, RESP, T_ANONMMAP, 0, &mapped, sizeof(mapped));
		return;
	}
	case T_RAISE:
		c->raised = (int)h->arg;
		return;
	}
}

static int
slot_for(struct spc_conn *c, uint64_t reqno, int create)
{
	for (int i = 0; i < SPC_SLOTS; i++)
		if (c->slots[i].used && c->slots[i].reqno == reqno)
			return i;
	if (!create)
		return -1;
	for (int i = 0; i < SPC_SLOTS; i++) {
		if (!c->slots[i].used) {
			memset(&c->slots[i], 0, sizeof(c->slots[i]));
			c->slots[i].used = 1;
			c->slots[i].reqno = reqno;
			return i;
		}
	}
	return -1;
}

int
spc_wait(struct spc_conn *c, uint64_t reqno, int *slotp)
{
	static const size_t max = (1 << 20) + 64;
	unsigned char *body = malloc(max);
	int slot = slot_for(c, reqno, 1);

	while (!c->slots[slot].done) {
		struct spc_header h;
		size_t blen = 0;
		int rv;

		if (c->fd < 0) {
			free(body);
			return ECONNRESET;
		}
		rv = spc_read_frame(c, &h, body, max, &blen);
		if (rv != 1) {
			c->gone = 1;
			free(body);
			return rv == 0 ? ECONNRESET : ETIMEDOUT;
		}
		if (h.cls == REQ) {
			serve(c, &h, body, blen);
			continue;
		}
		int s = slot_for(c, h.reqno, 1);
		if (s < 0)
			continue;
		c->slots[s].done = 1;
		c->slots[s].cls = h.cls;
		c->slots[s].arg = h.arg;
		c->slots[s].dlen = blen;
		memcpy(c->slots[s].data, body, blen < 16 ? blen : 16);
		if (h.cls == RESP && h.type == T_SYSCALL && blen == 24) {
			int error;
			memcpy(&error, body, sizeof(error));
			c->slots[s].error = error;
			memcpy(c->slots[s].rv, body + 8, 16);
		}
	}
	free(body);
	*slotp = slot;
	return 0;
}

/* NetBSD's errmap for ERROR frames. */
static int
errmap(uint32_t code)
{
	static const int map[] = { 0, 35, 1, 3, 5, 16, 12, 22 };
	return code < sizeof(map) / sizeof(map[0]) ? map[code] : -2;
}

int
spc_handshake(struct spc_conn *c, uint32_t kind, const void *body, size_t len)
{
	uint64_t reqno = spc_send(c, REQ, T_HANDSHAKE, kind, body, len);
	int slot = 0, rv, error;

	if (reqno == 0 || spc_wait(c, reqno, &slot) != 0)
		return -1;
	c->slots[slot].used = 0;
	if (c->slots[slot].cls == ERR)
		return errmap(c->slots[slot].arg);
	if (c->slots[slot].dlen != sizeof(int))
		return -3;
	memcpy(&error, c->slots[slot].data, sizeof(error));
	rv = error;
	return rv;
}

int
spc_syscall(struct spc_conn *c, int number, const void *args, size_t len, long rv[2])
{
	uint64_t reqno = spc_send(c, REQ, T_SYSCALL, (uint32_t)number, args, len);
	int slot = 0, error;

	if (reqno == 0 || spc_wait(c, reqno, &slot) != 0)
		return -1;
	c->slots[slot].used = 0;
	if (c->slots[slot].cls == ERR)
		return 1000 + errmap(c->slots[slot].arg);
	error = c->slots[slot].error;
	if (rv != NULL)
		memcpy(rv, c->slots[slot].rv, sizeof(long) * 2);
	return error;
}
