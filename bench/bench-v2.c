/*
 * bench-v2.c - the same problem computed in-process and served by one
 * running mrad (started with --allow-shm) three ways, side by side: /v1
 * msgpack, /v2 with binary tensor data, and /v2 with the tensors and the
 * output in system shared memory (no tensor byte on the socket).
 *
 *   bench-v2 --port P [--shape B,H,N,D] [--seconds S] [--concurrency C]
 *            [--threads T]
 *
 * Each mode runs R = 3 rounds of S / 3 seconds, the modes in alternation
 * (in-process, v1, v2, shared memory, again), so that a drift in the
 * machine's load weighs on all alike; a mode's rate is its requests over
 * its time.  In-process, C problems are computed as one batch at a time,
 * the work the server's batches of C requests do.  C client threads keep C requests in flight over keep-alive
 * connections (shared memory: each thread its own output region).  The
 * first answer of each mode is checked bit for bit against the in-process
 * output.  Prints the rates and the targets (shared memory >= 90% of the
 * in-process rate, v2 binary >= 95% of v1 msgpack), then one JSON line
 * (what bench/60-v2.sh writes to bench-out/v2.json).
 */
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "attention/attn.h"
#include "bench/loopback.h"
#include "protocol/proto.h"

#define ROUNDS 3
#define MAX_THREADS 16

enum mode { INPROC, V1, V2, SHM, NMODES };
static const char *const mode_names[NMODES] = {"in-process", "v1 msgpack",
                                               "v2 binary", "v2 shm"};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "bench-v2: %s\n", what);
    exit(1);
}

/* What the client threads of one mode send. */
struct job {
    uint16_t port;
    const char *path, *headers; /* headers: each ending in CRLF */
    const char *body[MAX_THREADS];
    size_t len[MAX_THREADS];
    double t_end;
    const void *expect;  /* the in-process output */
    size_t out_bytes;
    const void *out_region[MAX_THREADS]; /* shared memory: thread i's */
    pthread_mutex_t lock;
    uint64_t done;
    int failures, mismatch, checked;
};

struct thread_arg {
    struct job *j;
    int i;
};

static void *client_thread(void *arg)
{
    struct thread_arg *a = arg;
    struct job *j = a->j;
    struct client c = {.fd = -1};
    if (client_connect(&c, j->port))
        die("cannot connect");
    while (now_s() < j->t_end) {
        const char *resp;
        size_t rlen;
        int st = client_request_h(&c, "POST", j->path, j->headers,
                                  j->body[a->i], j->len[a->i], &resp, &rlen);
        pthread_mutex_lock(&j->lock);
        if (st != 200) {
            j->failures++;
            pthread_mutex_unlock(&j->lock);
            if (st < 0)
                break;
            continue;
        }
        j->done++;
        int check = !j->checked;
        j->checked = 1;
        pthread_mutex_unlock(&j->lock);
        if (check) {
            /* the output: the thread's region, v2's bytes after the JSON
             * header (the body's last), or /v1's decoded answer */
            struct proto_response pr;
            char err[128];
            int v1 = j->headers == NULL;
            const void *out = NULL;
            if (j->out_region[a->i])
                out = j->out_region[a->i];
            else if (!v1 && rlen >= j->out_bytes)
                out = resp + rlen - j->out_bytes;
            else if (v1 && proto_response_decode(resp, rlen, PROTO_MSGPACK,
                                                 &pr, err, sizeof err) ==
                               PROTO_OK) {
                out = pr.out_bytes == j->out_bytes ? pr.out : NULL;
            }
            if (!out || memcmp(out, j->expect, j->out_bytes))
                j->mismatch = 1;
            if (v1 && out)
                proto_response_release(&pr);
        }
    }
    client_close(&c);
    return NULL;
}

/* Runs a mode for `seconds`; returns its requests. */
static uint64_t run_http(struct job *j, int threads, double seconds)
{
    pthread_t th[MAX_THREADS];
    struct thread_arg args[MAX_THREADS];
    j->done = 0;
    j->t_end = now_s() + seconds;
    for (int i = 0; i < threads; i++) {
        args[i] = (struct thread_arg){j, i};
        pthread_create(&th[i], NULL, client_thread, &args[i]);
    }
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    return j->done;
}

/* The JSON header of a v2 request for q, k, v [B,H,N,D] f32: binary data
 * after it, or references into shared memory ("in" for the inputs, `out`
 * for the output). */
static char *v2_header(const uint32_t *shape, size_t bytes, const char *out)
{
    char *h = malloc(2048);
    if (!h)
        die("out of memory");
    char sh[64];
    snprintf(sh, sizeof sh, "[%u,%u,%u,%u]", shape[0], shape[1], shape[2],
             shape[3]);
    const char *names[3] = {"q", "k", "v"};
    size_t n = (size_t)snprintf(h, 2048, "{\"inputs\":[");
    for (int i = 0; i < 3; i++) {
        if (out)
            n += (size_t)snprintf(
                h + n, 2048 - n,
                "%s{\"name\":\"%s\",\"datatype\":\"FP32\",\"shape\":%s,"
                "\"parameters\":{\"shared_memory_region\":\"in\","
                "\"shared_memory_byte_size\":%zu,"
                "\"shared_memory_offset\":%zu}}",
                i ? "," : "", names[i], sh, bytes, i * bytes);
        else
            n += (size_t)snprintf(
                h + n, 2048 - n,
                "%s{\"name\":\"%s\",\"datatype\":\"FP32\",\"shape\":%s,"
                "\"parameters\":{\"binary_data_size\":%zu}}",
                i ? "," : "", names[i], sh, bytes);
    }
    if (out)
        snprintf(h + n, 2048 - n,
                 "],\"outputs\":[{\"name\":\"out\",\"parameters\":{"
                 "\"shared_memory_region\":\"%s\","
                 "\"shared_memory_byte_size\":%zu}}]}",
                 out, bytes);
    else
        snprintf(h + n, 2048 - n,
                 "],\"outputs\":[{\"name\":\"out\",\"parameters\":{"
                 "\"binary_data\":true}}]}");
    return h;
}

/* A shared-memory object of `bytes` bytes, mapped; registered as `name`. */
static void *make_region(uint16_t port, const char *name, size_t bytes,
                         char *key, size_t keylen)
{
    snprintf(key, keylen, "/mrad-bench-%d-%s", (int)getpid(), name);
    shm_unlink(key);
    int fd = shm_open(key, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)bytes))
        die("cannot make a shared-memory object");
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        die("cannot map a shared-memory object");
    char path[128], body[256];
    snprintf(path, sizeof path, "/v2/systemsharedmemory/region/%s/register",
             name);
    int n = snprintf(body, sizeof body,
                     "{\"key\":\"%s\",\"offset\":0,\"byte_size\":%zu}", key,
                     bytes);
    struct client c = {.fd = -1};
    const char *resp;
    size_t rlen;
    if (client_connect(&c, port) ||
        client_request_h(&c, "POST", path,
                         "Content-Type: application/json\r\n", body,
                         (size_t)n, &resp, &rlen) != 200)
        die("cannot register a region (is mrad running with --allow-shm?)");
    client_close(&c);
    return p;
}

int main(int argc, char **argv)
{
    uint16_t port = 0;
    uint32_t shape[4] = {1, 12, 4096, 64};
    double seconds = 9;
    int threads = 2, cthreads = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--port"))
            port = (uint16_t)atoi(v);
        else if (!strcmp(k, "--shape"))
            sscanf(v, "%u,%u,%u,%u", &shape[0], &shape[1], &shape[2],
                   &shape[3]);
        else if (!strcmp(k, "--seconds"))
            seconds = atof(v);
        else if (!strcmp(k, "--concurrency"))
            threads = atoi(v);
        else if (!strcmp(k, "--threads"))
            cthreads = atoi(v);
        else
            die("usage: bench-v2 --port P [--shape B,H,N,D] [--seconds S] "
                "[--concurrency C] [--threads T]");
    }
    if (!port || threads < 1 || threads > MAX_THREADS)
        die("usage: bench-v2 --port P [--shape B,H,N,D] [--seconds S] "
            "[--concurrency C] [--threads T]");
    size_t n = (size_t)shape[0] * shape[1] * shape[2] * shape[3];
    size_t bytes = n * sizeof(float);

    /* The problem and its in-process answer. */
    float *qkv = malloc(3 * bytes), *out = aligned_alloc(64, bytes);
    if (!qkv || !out)
        die("out of memory");
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < 3 * n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        qkv[i] = (float)((double)(x >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
    struct attn_problem p = {0};
    p.method = ATTN_MRA2;
    p.dtype = ATTN_F32;
    p.B = shape[0], p.H = p.Hkv = shape[1], p.Nq = p.Nk = shape[2];
    p.D = shape[3];
    p.q = qkv, p.k = qkv + n, p.v = qkv + 2 * n, p.out = out;
    struct attn_config cfg = {.threads = cthreads};
    struct attn_backend *be;
    if (attn_backend_new("cpu", &cfg, &be) != ATTN_OK)
        die("no CPU backend");
    attn_backend_compute(be, &p, NULL);

    /* The bodies of each mode. */
    struct job jobs[NMODES];
    memset(jobs, 0, sizeof jobs);
    for (int m = V1; m < NMODES; m++) {
        jobs[m].port = port;
        jobs[m].expect = out;
        jobs[m].out_bytes = bytes;
        pthread_mutex_init(&jobs[m].lock, NULL);
    }
    char *v1body;
    size_t v1len;
    if (proto_request_encode(&p, PROTO_MSGPACK, NULL, 0, &v1body, &v1len))
        die("cannot encode");
    jobs[V1].path = "/v1/attention";
    for (int i = 0; i < threads; i++)
        jobs[V1].body[i] = v1body, jobs[V1].len[i] = v1len;
    char *hdr = v2_header(shape, bytes, NULL);
    size_t hl = strlen(hdr);
    char *v2body = malloc(hl + 3 * bytes);
    memcpy(v2body, hdr, hl);
    memcpy(v2body + hl, qkv, 3 * bytes);
    static char v2headers[128];
    snprintf(v2headers, sizeof v2headers,
             "Content-Type: application/octet-stream\r\n"
             "Inference-Header-Content-Length: %zu\r\n",
             hl);
    jobs[V2].path = jobs[SHM].path = "/v2/models/mra2/infer";
    jobs[V2].headers = v2headers;
    for (int i = 0; i < threads; i++)
        jobs[V2].body[i] = v2body, jobs[V2].len[i] = hl + 3 * bytes;
    char key[64];
    void *in = make_region(port, "in", 3 * bytes, key, sizeof key);
    memcpy(in, qkv, 3 * bytes);
    char keys[MAX_THREADS][64], *shmhdr[MAX_THREADS];
    void *outs[MAX_THREADS];
    jobs[SHM].headers = "Content-Type: application/json\r\n";
    for (int i = 0; i < threads; i++) {
        char name[16];
        snprintf(name, sizeof name, "out%d", i);
        outs[i] = make_region(port, name, bytes, keys[i], sizeof keys[i]);
        shmhdr[i] = v2_header(shape, bytes, name);
        jobs[SHM].body[i] = shmhdr[i];
        jobs[SHM].len[i] = strlen(shmhdr[i]);
        jobs[SHM].out_region[i] = outs[i];
    }

    struct attn_problem copies[MAX_THREADS];
    const struct attn_problem *batch[MAX_THREADS];
    int errs[MAX_THREADS];
    void *outbuf = aligned_alloc(64, bytes * (size_t)threads);
    if (!outbuf)
        die("out of memory");
    for (int i = 0; i < threads; i++) {
        copies[i] = p;
        copies[i].out = (char *)outbuf + (size_t)i * bytes;
        batch[i] = &copies[i];
    }

    /* Rounds: a warm-up request of each mode, then the modes in turn. */
    double elapsed[NMODES] = {0};
    uint64_t done[NMODES] = {0};
    for (int m = V1; m < NMODES; m++)
        run_http(&jobs[m], 1, 0.001);
    for (int r = 0; r < ROUNDS; r++)
        for (int m = 0; m < NMODES; m++) {
            double t0 = now_s(), span = seconds / ROUNDS;
            if (m == INPROC) {
                /* As many problems at once as the server is given, in one
                 * batch: the work its batches do, without the transport. */
                while (now_s() - t0 < span) {
                    attn_backend_compute_batch(be, batch, (size_t)threads,
                                               NULL, errs);
                    done[m] += (uint64_t)threads;
                }
            } else {
                done[m] += run_http(&jobs[m], threads, span);
            }
            elapsed[m] += now_s() - t0;
        }
    attn_backend_free(be);

    double rate[NMODES];
    printf("one problem %ux%ux%ux%u f32 mra2, %d in flight, %d rounds of "
           "%.1f s\n",
           shape[0], shape[1], shape[2], shape[3], threads, ROUNDS,
           seconds / ROUNDS);
    int bad = 0;
    for (int m = 0; m < NMODES; m++) {
        rate[m] = (double)done[m] / elapsed[m];
        printf("  %-12s %8.2f req/s  %5.1f%% of in-process%s%s\n",
               mode_names[m], rate[m], 100.0 * rate[m] / rate[INPROC],
               m && jobs[m].failures ? "  FAILURES" : "",
               m && jobs[m].mismatch ? "  ANSWER MISMATCH" : "");
        bad |= m && (jobs[m].failures || jobs[m].mismatch);
    }
    double shm_ratio = rate[SHM] / rate[INPROC], v2_ratio = rate[V2] / rate[V1];
    printf("  shared memory / in-process %.1f%% (target >= 90%%: %s)\n",
           100.0 * shm_ratio, shm_ratio >= 0.9 ? "met" : "MISSED");
    printf("  v2 binary / v1 msgpack     %.1f%% (target >= 95%%: %s)\n",
           100.0 * v2_ratio, v2_ratio >= 0.95 ? "met" : "MISSED");
    printf("{\"shape\":[%u,%u,%u,%u],\"concurrency\":%d,\"inproc_rps\":%.4f,"
           "\"v1_rps\":%.4f,\"v2_rps\":%.4f,\"shm_rps\":%.4f,"
           "\"shm_over_inproc\":%.4f,\"v2_over_v1\":%.4f,\"answers_match\":%s}"
           "\n",
           shape[0], shape[1], shape[2], shape[3], threads, rate[INPROC],
           rate[V1], rate[V2], rate[SHM], shm_ratio, v2_ratio,
           bad ? "false" : "true");
    /* The regions go. */
    struct client c = {.fd = -1};
    const char *resp;
    size_t rlen;
    if (client_connect(&c, port) ||
        client_request_h(&c, "POST", "/v2/systemsharedmemory/unregister", "",
                         NULL, 0, &resp, &rlen) != 200)
        bad = 1;
    client_close(&c);
    for (int i = 0; i < threads; i++) {
        munmap(outs[i], bytes);
        shm_unlink(keys[i]);
        free(shmhdr[i]);
    }
    munmap(in, 3 * bytes);
    shm_unlink(key);
    free(hdr), free(v2body), free(v1body), free(qkv), free(out), free(outbuf);
    return bad;
}
