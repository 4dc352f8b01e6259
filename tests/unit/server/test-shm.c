/*
 * test-shm.c - system shared-memory regions (server/shm.c): registration
 * and its refusals, owners, status, uses checked against the registered
 * size, an object removed or shrunk after registration, a region
 * unregistered while in use, and a fault in a region that shrank while in
 * use: zeros instead of a crash, and the region marked broken.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "server/shm.h"

static char key[64];

/* A shared-memory object of `bytes` bytes, byte i = i % 251. */
static void make_object(size_t bytes)
{
    snprintf(key, sizeof key, "/mrad-test-shm-%d", (int)getpid());
    shm_unlink(key);
    int fd = shm_open(key, O_RDWR | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)bytes), 0);
    unsigned char *p =
        mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(p != MAP_FAILED);
    for (size_t i = 0; i < bytes; i++)
        p[i] = (unsigned char)(i % 251);
    munmap(p, bytes);
    close(fd);
}

static void shrink_object(size_t bytes)
{
    int fd = shm_open(key, O_RDWR, 0);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)bytes), 0);
    close(fd);
}

static void test_register_and_use(void **state)
{
    (void)state;
    make_object(3 * 4096);
    struct mrad_shm_table *t;
    assert_int_equal(mrad_shm_table_new(&t), 0);
    char msg[256];
    /* offset not on a page: the mapping starts below it */
    assert_int_equal(
        mrad_shm_register(t, 1, "in", key, 100, 8000, msg, sizeof msg), 0);
    assert_int_equal(
        mrad_shm_register(t, 1, "in", key, 0, 8, msg, sizeof msg), -1);
    assert_non_null(strstr(msg, "region in is already registered"));
    /* another owner may use the same name */
    assert_int_equal(mrad_shm_register(t, 2, "in", key, 0, 8, msg, sizeof msg),
                     0);
    struct { const char *name, *key; uint64_t off, size; const char *why; }
    bad[] = {
        {"a/b", key, 0, 8, "region name"},
        {"", key, 0, 8, "region name"},
        {"x", "nope", 0, 8, "key: a shared-memory object name"},
        {"x", "/../etc", 0, 8, "key: a shared-memory object name"},
        {"x", "/mrad-test-shm-absent", 0, 8, "cannot open"},
        {"x", key, 0, 0, "byte_size: must be >= 1"},
        {"x", key, 4096, 3 * 4096, "fewer than offset + byte_size"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        msg[0] = '\0';
        assert_int_equal(mrad_shm_register(t, 1, bad[i].name, bad[i].key,
                                           bad[i].off, bad[i].size, msg,
                                           sizeof msg),
                         -1);
        if (!strstr(msg, bad[i].why)) {
            print_error("case %zu: %s\n", i, msg);
            fail();
        }
    }
    struct mrad_shm_info info[4];
    assert_int_equal(mrad_shm_status(t, 1, NULL, info, 4), 1);
    assert_string_equal(info[0].name, "in");
    assert_string_equal(info[0].key, key);
    assert_int_equal(info[0].offset, 100);
    assert_int_equal(info[0].byte_size, 8000);
    assert_int_equal(mrad_shm_status(t, 1, "other", info, 4), 0);

    void *p;
    struct mrad_shm_region *r =
        mrad_shm_use(t, 1, "in", 10, 64, "inputs[0]", &p, msg, sizeof msg);
    assert_non_null(r);
    assert_int_equal(((unsigned char *)p)[0], 110 % 251);
    assert_string_equal(mrad_shm_name(r), "in");
    assert_false(mrad_shm_broken(r));
    assert_null(
        mrad_shm_use(t, 1, "in", 8000, 1, "inputs[1]", &p, msg, sizeof msg));
    assert_non_null(strstr(msg, "inputs[1]: 1 bytes at offset 8000 are past"));
    assert_null(mrad_shm_use(t, 3, "in", 0, 1, "q", &p, msg, sizeof msg));
    assert_non_null(strstr(msg, "q: shared-memory region in is not registered"));
    /* unregistered in use: still readable until released */
    assert_int_equal(mrad_shm_unregister(t, 1, "in", msg, sizeof msg), 0);
    assert_int_equal(mrad_shm_unregister(t, 1, "in", msg, sizeof msg), -1);
    assert_non_null(strstr(msg, "region in is not registered"));
    assert_int_equal(((unsigned char *)p)[1], 111 % 251);
    mrad_shm_release(t, r);
    assert_int_equal(mrad_shm_unregister(t, 2, NULL, msg, sizeof msg), 0);
    assert_int_equal(mrad_shm_status(t, 2, NULL, info, 4), 0);
    mrad_shm_table_free(t);
    shm_unlink(key);
}

static void test_removed_or_shrunk(void **state)
{
    (void)state;
    make_object(2 * 4096);
    struct mrad_shm_table *t;
    assert_int_equal(mrad_shm_table_new(&t), 0);
    char msg[256];
    void *p;
    assert_int_equal(
        mrad_shm_register(t, 0, "r", key, 0, 2 * 4096, msg, sizeof msg), 0);
    shrink_object(4096);
    assert_null(mrad_shm_use(t, 0, "r", 0, 16, "outputs[0]", &p, msg,
                             sizeof msg));
    assert_non_null(strstr(msg, "shrank to 4096 bytes"));
    shm_unlink(key);
    assert_null(mrad_shm_use(t, 0, "r", 0, 16, "k", &p, msg, sizeof msg));
    assert_non_null(strstr(msg, "k: the shared-memory object of region r was "
                                "removed"));
    mrad_shm_table_free(t);
}

/* The object shrinks under a request: its reads past the new end fault,
 * and read zeros instead; the region is broken from then on. */
static void test_fault_while_in_use(void **state)
{
    (void)state;
    assert_int_equal(mrad_shm_guard(), 0);
    make_object(4 * 4096);
    struct mrad_shm_table *t;
    assert_int_equal(mrad_shm_table_new(&t), 0);
    char msg[256];
    void *p;
    assert_int_equal(
        mrad_shm_register(t, 0, "r", key, 0, 4 * 4096, msg, sizeof msg), 0);
    struct mrad_shm_region *r =
        mrad_shm_use(t, 0, "r", 0, 4 * 4096, "q", &p, msg, sizeof msg);
    assert_non_null(r);
    shrink_object(4096);
    volatile unsigned char *b = p;
    assert_int_equal(b[5], 5);
    assert_int_equal(b[3 * 4096 + 7], 0); /* faulted: zeros */
    b[3 * 4096 + 8] = 9;                  /* and writable */
    assert_int_equal(b[3 * 4096 + 8], 9);
    assert_true(mrad_shm_broken(r));
    mrad_shm_release(t, r);
    assert_null(mrad_shm_use(t, 0, "r", 0, 16, "q", &p, msg, sizeof msg));
    assert_non_null(strstr(msg, "shrank while a request used it"));
    /* registered again: whole */
    shrink_object(4 * 4096);
    assert_int_equal(mrad_shm_unregister(t, 0, "r", msg, sizeof msg), 0);
    assert_int_equal(
        mrad_shm_register(t, 0, "r", key, 0, 4 * 4096, msg, sizeof msg), 0);
    r = mrad_shm_use(t, 0, "r", 0, 16, "q", &p, msg, sizeof msg);
    assert_non_null(r);
    assert_false(mrad_shm_broken(r));
    mrad_shm_release(t, r);
    mrad_shm_table_free(t);
    shm_unlink(key);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register_and_use),
        cmocka_unit_test(test_removed_or_shrunk),
        cmocka_unit_test(test_fault_while_in_use),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
