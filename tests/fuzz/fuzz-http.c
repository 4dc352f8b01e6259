/*
 * fuzz-http.c - libFuzzer target for mrad's HTTP request path (`make fuzz`).
 *
 * The daemon is started in-process once (the real server/ code: routing,
 * API-key check, content type and length checks, body intake within the
 * limit, decode, scheduling, compute on a one-thread CPU backend, encode)
 * on a loopback port.  Each input is written as raw bytes to a fresh TCP
 * connection and the answer is read until the
 * daemon closes the connection or goes quiet (bounded wait).  So the fuzzer
 * drives request lines, headers, chunked encoding, body sizes, content types,
 * keys and bodies through exactly what a remote peer reaches.  Sanitizers turn
 * any bad access in a daemon thread into a crash of this process.
 *
 * The key is "fuzz-key" (Authorization: Bearer fuzz-key), limits are small
 * (64 KiB bodies, 4096 tokens, 2^20 elements) so that large shapes take the
 * 413 path instead of allocating.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "attention/attn.h"
#include "server/config.h"
#include "server/http.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/sched.h"

static struct mrad_config cfg;
static uint16_t port;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    signal(SIGPIPE, SIG_IGN);
    char keyfile[] = "/tmp/mrad-fuzz-key-XXXXXX";
    int fd = mkstemp(keyfile);
    if (fd < 0 || write(fd, "fuzz-key\n", 9) != 9)
        abort();
    close(fd);
    char *args[] = {"mrad",      "--host",
                    "127.0.0.1", "--port",
                    "0",         "--backend",
                    "cpu",       "--threads",
                    "1",         "--http-threads",
                    "2",         "--max-body-bytes",
                    "65536",     "--max-json-bytes",
                    "65536",     "--max-tokens",
                    "4096",      "--max-elements",
                    "1048576",   "--request-timeout-ms",
                    "2000",      "--api-key-file",
                    keyfile,     "--log-level",
                    "error",     NULL};
    int n = (int)(sizeof(args) / sizeof(args[0])) - 1;
    if (mrad_config_parse(&cfg, n, args, stdout, stderr) != MRAD_CONFIG_RUN)
        abort();
    unlink(keyfile);
    mrad_log_init(cfg.log_format, cfg.log_level);
    struct attn_config ac = {.threads = 1};
    static struct attn_backend *be[1];
    static int devices[1];
    if (attn_backend_new("cpu", &ac, &be[0]) != ATTN_OK)
        abort();
    mrad_metrics_init("fuzz", "cpu");
    mrad_config_resolve(&cfg, "cpu", 0);
    static struct mrad_sched *sched;
    struct mrad_sched_config sc = {cfg.max_queue, cfg.max_batch_requests,
                                   cfg.max_batch_tokens, cfg.batch_window_us};
    if (mrad_sched_start(&sched, &sc, be, devices, 1))
        abort();
    static struct mrad_kv_table *kv;
    struct mrad_kv_config kc = {"cpu", 1, 64ull << 20, 64, 60000, 60000,
                                cfg.limits.max_tokens};
    if (mrad_kv_table_new(&kv, &kc))
        abort();
    static struct mrad_http_info info = {"cpu", "fuzz", 1};
    static struct mrad_http *http;
    if (mrad_http_start(&http, &cfg, sched, kv, NULL, &info))
        abort();
    mrad_http_set_ready(http, 1);
    port = mrad_http_port(http);
    /* The daemon lives until the process exits: libFuzzer never returns
     * from its loop except by exit(). */
    return 0;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) &&
        errno != EINPROGRESS) {
        close(fd);
        return 0;
    }
    /* Write everything, reading (and dropping) answers meanwhile so that a
     * pipelined input cannot deadlock on full buffers; then read until the
     * daemon closes or stays silent for 25 ms (an incomplete request waits
     * for more bytes; a client that leaves is a case worth driving too).
     * At most 2 s per input. */
    size_t off = 0;
    uint64_t end = now_ms() + 2000, idle = 0;
    char buf[65536];
    for (;;) {
        uint64_t t = now_ms();
        if (t >= end || (off == size && idle && t >= idle))
            break;
        uint64_t until = off == size && idle && idle < end ? idle : end;
        struct pollfd pf = {fd, POLLIN | (off < size ? POLLOUT : 0), 0};
        int n = poll(&pf, 1, (int)(until - t));
        if (n < 0)
            break;
        if (n == 0)
            continue;
        if (pf.revents & POLLIN) {
            ssize_t r = recv(fd, buf, sizeof buf, 0);
            if (r == 0 || (r < 0 && errno != EAGAIN))
                break;
        } else if (pf.revents & (POLLERR | POLLHUP)) {
            break;
        }
        if (off < size && (pf.revents & POLLOUT)) {
            ssize_t w = send(fd, data + off, size - off, MSG_NOSIGNAL);
            if (w > 0)
                off += (size_t)w;
            else if (w < 0 && errno != EAGAIN)
                break;
        }
        if (off == size)
            idle = now_ms() + 25;
    }
    close(fd);
    return 0;
}
