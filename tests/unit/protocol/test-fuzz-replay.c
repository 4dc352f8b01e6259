/*
 * test-fuzz-replay.c - replays the codec fuzzer's seeds, the request
 * bodies of tests/data (its *.msgpack and *.json files), through the fuzz
 * target's own checks (tests/fuzz/fuzz-proto.c), so each of them stays a
 * regression test in `make test` (and under the sanitizers in `make test
 * SANITIZE=address,undefined`).  An input a fuzz run found worth keeping,
 * a crash above all, is added to tests/data under a name ending in
 * .msgpack (or .json when it is JSON text).  The target aborts on any
 * broken invariant; files named req-* must decode, bad-* must be refused,
 * kv-step* must decode as a request on a session and the other kv-* as a
 * create or append body.
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* The fuzz target itself: LLVMFuzzerTestOneInput and its round trip. */
#include "tests/fuzz/fuzz-proto.c"

#define CORPUS "tests/data"

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* True for the files of tests/data that are bodies. */
static int is_body(const char *name)
{
    size_t n = strlen(name);
    return (n > 8 && !strcmp(name + n - 8, ".msgpack")) ||
           (n > 5 && !strcmp(name + n - 5, ".json"));
}

static void test_replay_corpus(void **state)
{
    (void)state;
    DIR *d = opendir(CORPUS);
    assert_non_null(d);
    struct dirent *e;
    int files = 0, good = 0, bad = 0, sessions = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !is_body(e->d_name))
            continue;
        char path[512];
        snprintf(path, sizeof path, CORPUS "/%s", e->d_name);
        size_t len;
        char *body = read_file(path, &len);
        LLVMFuzzerTestOneInput((const uint8_t *)body, len);
        enum proto_format fmt =
            strstr(e->d_name, ".json") ? PROTO_JSON : PROTO_MSGPACK;
        struct proto_request req;
        char err[256] = "";
        int rc =
            proto_request_decode(body, len, fmt, NULL, &req, err, sizeof err);
        if (!strncmp(e->d_name, "req-", 4)) {
            assert_int_equal(rc, PROTO_OK);
            proto_request_release(&req);
            good++;
        } else if (!strncmp(e->d_name, "bad-", 4)) {
            assert_int_not_equal(rc, PROTO_OK);
            assert_true(err[0] != '\0');
            bad++;
        } else if (!strncmp(e->d_name, "kv-step", 7)) {
            assert_int_equal(rc, PROTO_OK);
            assert_true(req.has_kv);
            proto_request_release(&req);
            sessions++;
        } else if (!strncmp(e->d_name, "kv-", 3)) {
            assert_int_not_equal(rc, PROTO_OK);
            struct proto_kv_body kb;
            assert_int_equal(proto_kv_body_decode(body, len, fmt, NULL, 1, &kb,
                                                  err, sizeof err),
                             PROTO_OK);
            proto_kv_body_release(&kb);
            sessions++;
        } else if (rc == PROTO_OK) {
            proto_request_release(&req);
        }
        free(body);
        files++;
    }
    closedir(d);
    assert_true(files >= 10);
    assert_true(good >= 3 && bad >= 5 && sessions >= 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replay_corpus),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
