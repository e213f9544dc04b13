/*
 * io.c: asynchronous block I/O.  Thousands of rumpuser_bio requests against
 * a file, every completion checked exactly once: it arrives on another
 * thread, scheduled on a CPU with an lwp, with the full length and no error,
 * and the data read back is the data written.
 */

#include "conf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BLOCK 512

struct bio_run {
	struct rumpuser_mtx *mtx;
	struct rumpuser_cv *cv;
	int outstanding;
	_Atomic int *completions;	/* per request */
	pthread_t submitter;
};

struct bio_request {
	struct bio_run *run;
	int index;
	size_t expected;
	int expected_error;
	unsigned char *data;
};

static void
biodone(void *arg, size_t transferred, int error)
{
	struct bio_request *req = arg;
	struct bio_run *run = req->run;

	atomic_fetch_add(&conf_biodones, 1);
	conf_self.in_biodone = 1;
	CHECK(conf_self.cpu != -1, "biodone called without a CPU");
	CHECK(rumpuser_curlwp() != NULL, "biodone called without an lwp");
	CHECK(!pthread_equal(pthread_self(), run->submitter),
	    "biodone ran on the submitting thread");
	CHECK(error == req->expected_error, "bio %d: error %d, expected %d",
	    req->index, error, req->expected_error);
	CHECK(transferred == req->expected, "bio %d moved %zu of %zu bytes",
	    req->index, transferred, req->expected);
	atomic_fetch_add(&run->completions[req->index], 1);
	conf_self.in_biodone = 0;

	/* The kernel side of biodone: wake the waiter (never blocks: SPIN). */
	rumpuser_mutex_enter_nowrap(run->mtx);
	if (--run->outstanding == 0)
		rumpuser_cv_broadcast(run->cv);
	rumpuser_mutex_exit(run->mtx);
}

static void
fill(unsigned char *block, int index, int generation)
{
	for (int i = 0; i < BLOCK; i++)
		block[i] = (unsigned char)(index * 7 + i + generation * 13);
}

static void
wait_all(struct bio_run *run)
{
	rumpuser_mutex_enter(run->mtx);
	while (run->outstanding > 0)
		HYPERCALL(CONF_ALWAYS, rumpuser_cv_wait(run->cv, run->mtx));
	rumpuser_mutex_exit(run->mtx);
}

int
rumpconf_test_bio(const char *directory, int count)
{
	char path[1024];
	struct bio_run run;
	struct bio_request *reqs;
	unsigned char *data;
	int fd = -1, rv;

	conf_begin_suite();
	conf_enter_kernel();
	snprintf(path, sizeof(path), "%s/bio.img", directory);
	unlink(path);
	HYPERCALL(CONF_ALWAYS, rv = rumpuser_open(path,
	    RUMPUSER_OPEN_RDWR | RUMPUSER_OPEN_CREATE | RUMPUSER_OPEN_BIO, &fd));
	CHECK_EQ(rv, 0, "open bio file");
	if (rv != 0) {
		conf_leave_kernel();
		return conf_end_suite();
	}

	reqs = calloc((size_t)count, sizeof(*reqs));
	data = malloc((size_t)count * BLOCK);
	run.completions = calloc((size_t)count, sizeof(_Atomic int));
	run.submitter = pthread_self();
	rumpuser_mutex_init(&run.mtx, RUMPUSER_MTX_SPIN | RUMPUSER_MTX_KMUTEX);
	conf_register_mutex(run.mtx, RUMPUSER_MTX_SPIN | RUMPUSER_MTX_KMUTEX);
	rumpuser_cv_init(&run.cv);

	for (int generation = 0; generation < 2; generation++) {
		int op = generation == 0 ? RUMPUSER_BIO_WRITE : RUMPUSER_BIO_READ;

		if (generation == 1)
			memset(data, 0, (size_t)count * BLOCK);
		for (int i = 0; i < count; i++) {
			atomic_store(&run.completions[i], 0);
			reqs[i] = (struct bio_request){ &run, i, BLOCK, 0, data + (size_t)i * BLOCK };
			if (generation == 0)
				fill(reqs[i].data, i, 0);
		}
		run.outstanding = count;
		for (int i = 0; i < count; i++) {
			/* Every 64th write is synchronous (RUMPUSER_BIO_SYNC). */
			int flags = op | (op == RUMPUSER_BIO_WRITE && i % 64 == 0 ? RUMPUSER_BIO_SYNC : 0);
			/* Blocks go out in a scattered order (7919 is prime). */
			int index = count % 7919 == 0 ? i : (int)(((long long)i * 7919) % count);
			HYPERCALL(CONF_MAY, rumpuser_bio(fd, flags, reqs[index].data, BLOCK,
			    (int64_t)index * BLOCK, biodone, &reqs[index]));
		}
		wait_all(&run);
		int wrong = 0;
		for (int i = 0; i < count; i++)
			wrong += atomic_load(&run.completions[i]) != 1;
		CHECK(wrong == 0, "%d of %d bios completed other than exactly once", wrong, count);
	}
	unsigned char expected[BLOCK];
	int mismatches = 0;
	for (int i = 0; i < count; i++) {
		fill(expected, i, 0);
		mismatches += memcmp(expected, data + (size_t)i * BLOCK, BLOCK) != 0;
	}
	CHECK(mismatches == 0, "%d of %d blocks read back differ", mismatches, count);

	/* A read past the end of the file completes short, with no error. */
	struct bio_request tail = { &run, 0, 0, 0, data };
	atomic_store(&run.completions[0], 0);
	run.outstanding = 1;
	HYPERCALL(CONF_MAY, rumpuser_bio(fd, RUMPUSER_BIO_READ, data, BLOCK,
	    (int64_t)count * BLOCK, biodone, &tail));
	wait_all(&run);
	CHECK_EQ(atomic_load(&run.completions[0]), 1, "read past the end completed");

	HYPERCALL(CONF_ALWAYS, rv = rumpuser_close(fd));
	CHECK_EQ(rv, 0, "close bio file");

	/* A bio on a closed descriptor completes with NetBSD EBADF (9). */
	struct bio_request bad = { &run, 0, 0, 9, data };
	atomic_store(&run.completions[0], 0);
	run.outstanding = 1;
	HYPERCALL(CONF_MAY, rumpuser_bio(fd, RUMPUSER_BIO_WRITE, data, BLOCK, 0,
	    biodone, &bad));
	wait_all(&run);
	CHECK_EQ(atomic_load(&run.completions[0]), 1, "failed bio completed");

	rumpuser_cv_destroy(run.cv);
	conf_forget_mutex(run.mtx);
	rumpuser_mutex_destroy(run.mtx);
	free(run.completions);
	free(data);
	free(reqs);
	unlink(path);
	conf_leave_kernel();
	return conf_end_suite();
}
