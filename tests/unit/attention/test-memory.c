/*
 * test-memory.c - no N x N buffer anywhere: a 65,536-token head (B=1,
 * H=1, D=64, f32) runs in exact and in mra2 with a peak resident set under
 * 512 MiB, inputs and output included.  Each method runs in its own forked
 * child, which reports its own ru_maxrss through a pipe, so the two
 * measurements do not mix (and the parent's memory does not count).
 *
 * Under AddressSanitizer the resident set measures shadow memory and
 * quarantine rather than the library, and the checks slow the kernels
 * severalfold, so sanitizer builds (SANITIZE set by tests/run.sh, or an
 * ASan compiler macro) run a smaller N and check only that it computes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "attention/attn.h"
#include "tests/unit/attention/attn-fixture.h"

#if defined(__SANITIZE_ADDRESS__)
#define ASAN_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ASAN_BUILD 1
#endif
#endif
#ifndef ASAN_BUILD
#define ASAN_BUILD 0
#endif

#define LIMIT_KIB (512L * 1024)

static int sanitized(void)
{
    const char *s = getenv("SANITIZE");
    return ASAN_BUILD || (s && *s);
}

/* In the child: computes one big head, writes "rc maxrss_kib checksum". */
static void child(int fd, enum attn_method method, uint32_t N)
{
    const uint32_t D = 64;
    size_t n = (size_t)N * D;
    float *q = malloc(n * sizeof *q), *k = malloc(n * sizeof *k);
    float *v = malloc(n * sizeof *v), *o = malloc(n * sizeof *o);
    long rss = -1;
    int rc = ATTN_ENOMEM;
    double sum = 0;
    if (q && k && v && o) {
        uint64_t st = 7;
        for (size_t i = 0; i < n; i++) {
            st = st * 6364136223846793005ull + 1442695040888963407ull;
            q[i] = (float)((st >> 40) & 0xffff) / 65536.0f - 0.5f;
            k[i] = (float)((st >> 20) & 0xffff) / 65536.0f - 0.5f;
            v[i] = (float)(st & 0xffff) / 65536.0f - 0.5f;
        }
        struct attn_problem p = {
            .method = method,
            .dtype = ATTN_F32,
            .B = 1,
            .H = 1,
            .Hkv = 1,
            .Nq = N,
            .Nk = N,
            .D = D,
            .q = q,
            .k = k,
            .v = v,
            .out = o,
        };
        struct attn_config cfg = {0};
        struct attn_backend *be;
        rc = attn_backend_new(fx_backend_name(), &cfg, &be);
        if (rc == ATTN_OK) {
            rc = attn_backend_compute(be, &p, NULL);
            attn_backend_free(be);
        }
        for (size_t i = 0; i < n; i += 997)
            sum += o[i];
        struct rusage ru;
        if (getrusage(RUSAGE_SELF, &ru) == 0)
            rss = ru.ru_maxrss;
    }
    char buf[128];
    int len = snprintf(buf, sizeof buf, "%d %ld %.9g\n", rc, rss, sum);
    if (write(fd, buf, (size_t)len) != len)
        _exit(3);
    _exit(0);
}

static void run_one(enum attn_method method)
{
    uint32_t N = sanitized() ? 8192 : 65536;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        child(fds[1], method, N);
    }
    close(fds[1]);
    char buf[128] = "";
    ssize_t got = read(fds[0], buf, sizeof buf - 1);
    close(fds[0]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_true(got > 0);
    int rc = -99;
    long rss = -1;
    double sum = 0;
    assert_int_equal(sscanf(buf, "%d %ld %lg", &rc, &rss, &sum), 3);
    print_message("%s N=%u: rc=%d peak RSS %.1f MiB\n",
                  attn_method_name(method), N, rc, (double)rss / 1024.0);
    assert_int_equal(rc, ATTN_OK);
    assert_true(sum == sum); /* not NaN */
    if (!sanitized())
        assert_true(rss > 0 && rss < LIMIT_KIB);
}

static void test_exact_65536(void **state)
{
    (void)state;
    run_one(ATTN_EXACT);
}

static void test_mra2_65536(void **state)
{
    (void)state;
    run_one(ATTN_MRA2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mra2_65536),
        cmocka_unit_test(test_exact_65536),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
