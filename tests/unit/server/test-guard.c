/*
 * test-guard.c - the connection guard (server/guard.c) on real loopback TCP
 * connections: a connection idle between requests stays open past the
 * head deadline, a head that starts and does not finish is closed at it,
 * a head watched by the guard and then answered does not count against
 * the idle time that follows, a body that begins while the guard looks
 * is not slow (and a slow one is closed), and a lingering close reads what the
 * client still sends.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "server/guard.h"
#include "server/sched.h" /* mrad_now_ns */

#define HEAD_MS 300

struct pair {
    int client, server;
};

/* A connected loopback TCP pair. */
static struct pair connect_pair(void)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(l >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(l, 1), 0);
    assert_int_equal(getsockname(l, (struct sockaddr *)&a, &len), 0);
    struct pair p = {socket(AF_INET, SOCK_STREAM, 0), -1};
    assert_true(p.client >= 0);
    assert_int_equal(connect(p.client, (struct sockaddr *)&a, sizeof a), 0);
    p.server = accept(l, NULL, NULL);
    assert_true(p.server >= 0);
    close(l);
    return p;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) && errno == EINTR)
        ;
}

static void send_str(int fd, const char *s)
{
    assert_int_equal(send(fd, s, strlen(s), MSG_NOSIGNAL), (ssize_t)strlen(s));
}

/* Reads what the server side holds, as the HTTP library would. */
static void drain(int fd)
{
    char buf[256];
    while (recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0)
        ;
}

/* Whether the guard shut the connection down: the client reads EOF. */
static int shut_down(int client)
{
    struct pollfd pfd = {client, POLLIN, 0};
    if (poll(&pfd, 1, 0) <= 0)
        return 0;
    char c;
    return recv(client, &c, 1, MSG_DONTWAIT) == 0;
}

/* One request on the connection: its head and end as the server sees. */
static void one_request(struct mrad_guard_conn *c, struct pair p)
{
    send_str(p.client, "GET / HTTP/1.1\r\n\r\n");
    sleep_ms(5);
    drain(p.server);
    mrad_guard_head_done(c);
    mrad_guard_request_done(c);
}

/* A guard with the head deadline HEAD_MS and a minimum upload rate. */
static struct mrad_guard *start(uint64_t rate)
{
    struct mrad_guard_config cfg = {HEAD_MS * 1000000ull, rate};
    struct mrad_guard *g = NULL;
    assert_int_equal(mrad_guard_start(&g, &cfg), 0);
    return g;
}

/* A guard watching the server side of one connection that has served a
 * request. */
struct watched {
    struct mrad_guard *g;
    struct pair p;
    struct mrad_guard_conn *c;
};

static int watched_setup(void **state)
{
    static struct watched w;
    w.g = start(0);
    w.p = connect_pair();
    w.c = mrad_guard_watch(w.g, w.p.server);
    assert_non_null(w.c);
    one_request(w.c, w.p);
    *state = &w;
    return 0;
}

static int watched_teardown(void **state)
{
    struct watched *w = *state;
    mrad_guard_forget(w->g, w->c);
    mrad_guard_stop(w->g);
    close(w->p.client);
    close(w->p.server);
    return 0;
}

static uint64_t head_timeouts(struct mrad_guard *g)
{
    struct mrad_guard_stats st;
    mrad_guard_stats(g, &st);
    return st.head_timeouts;
}

static void test_idle_between_requests_stays_open(void **state)
{
    struct watched *w = *state;
    one_request(w->c, w->p);
    sleep_ms(3 * HEAD_MS);
    assert_false(shut_down(w->p.client));
    assert_int_equal(head_timeouts(w->g), 0);
}

static void test_an_unfinished_head_is_closed(void **state)
{
    struct watched *w = *state;
    send_str(w->p.client, "GET / HT"); /* and nothing more */
    /* closed a tick or two past the deadline; a loaded machine may take
     * longer */
    int shut = 0;
    for (int i = 0; i < 100 && !shut; i++) {
        sleep_ms(50);
        shut = shut_down(w->p.client);
    }
    assert_true(shut);
    assert_int_equal(head_timeouts(w->g), 1);
}

/* The guard sees the bytes of a head before the request begins (it starts
 * the head's deadline); the request is then served and the connection
 * waits for the next one.  That wait is idle time, not a slow head. */
static void test_a_watched_head_that_was_answered(void **state)
{
    struct watched *w = *state;
    send_str(w->p.client, "GET / HTTP/1.1\r\n\r\n");
    sleep_ms(250); /* two ticks of the guard: it has seen the bytes */
    drain(w->p.server);
    mrad_guard_head_done(w->c);
    mrad_guard_request_done(w->c);
    sleep_ms(3 * HEAD_MS);
    assert_false(shut_down(w->p.client));
    assert_int_equal(head_timeouts(w->g), 0);
}

/* A body that begins after the guard read its clock for a look (the
 * look waits for the lock, or reads lingering sockets first) is new, not
 * slow. */
static void test_a_body_that_begins_during_a_look(void **state)
{
    (void)state;
    struct mrad_guard *g = start(1 << 30);
    struct pair p = connect_pair();
    struct mrad_guard_conn *c = mrad_guard_watch(g, p.server);
    uint64_t now = mrad_now_ns();
    sleep_ms(1);
    mrad_guard_head_done(c);
    mrad_guard_body(c, 1);
    mrad_guard_check(g, now);
    struct mrad_guard_stats st;
    mrad_guard_stats(g, &st);
    assert_int_equal(st.slow_uploads, 0);
    assert_false(shut_down(p.client));
    /* and one that is slow is closed */
    mrad_guard_check(g, mrad_now_ns() + GUARD_GRACE_NS + 1000000);
    mrad_guard_stats(g, &st);
    assert_int_equal(st.slow_uploads, 1);
    assert_true(shut_down(p.client));
    mrad_guard_forget(g, c);
    mrad_guard_stop(g);
    close(p.client);
    close(p.server);
}

static void test_lingering_close_reads_the_rest(void **state)
{
    (void)state;
    struct mrad_guard *g = start(0);
    struct pair p = connect_pair();
    assert_int_equal(mrad_guard_linger(g, p.server), 0);
    close(p.server); /* the library's close: the guard's copy remains */
    char buf[64 << 10];
    memset(buf, 'x', sizeof buf);
    /* a send that blocks for good (nobody reading) fails instead */
    struct timeval tv = {10, 0};
    setsockopt(p.client, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    for (int i = 0; i < 64; i++) /* 4 MiB: more than the socket buffers */
        assert_int_equal(send(p.client, buf, sizeof buf, MSG_NOSIGNAL),
                         (ssize_t)sizeof buf);
    struct mrad_guard_stats st;
    mrad_guard_stats(g, &st);
    assert_int_equal(st.lingered, 1);
    close(p.client);
    mrad_guard_stop(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_idle_between_requests_stays_open,
                                        watched_setup, watched_teardown),
        cmocka_unit_test_setup_teardown(test_an_unfinished_head_is_closed,
                                        watched_setup, watched_teardown),
        cmocka_unit_test_setup_teardown(test_a_watched_head_that_was_answered,
                                        watched_setup, watched_teardown),
        cmocka_unit_test(test_a_body_that_begins_during_a_look),
        cmocka_unit_test(test_lingering_close_reads_the_rest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
