/*
 * report.c - what mra-load prints: a text summary per run, JSON for
 * scripts, the CSV of a sweep, and its gnuplot PNG (p50/p99 latency
 * against achieved throughput, joined by offered rate: where throughput
 * stops following the offered rate and latency turns up is where the
 * service saturates).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "clients/load/load.h"
#include "protocol/proto.h"

static double ms(uint64_t us)
{
    return (double)us / 1000.0;
}

static const char *mode_name(const struct load_config *cfg)
{
    if (cfg->rate <= 0)
        return "closed";
    return cfg->poisson ? "poisson" : "fixed";
}

void load_report_text(const struct load_config *cfg,
                      const struct load_result *r)
{
    if (cfg->rate > 0)
        printf("offered    %.1f req/s (%s arrivals), %.1f s measured after "
               "%.1f s warmup\n",
               r->offered_rate, mode_name(cfg), cfg->duration_s, cfg->warmup_s);
    else
        printf("closed loop, concurrency %d, %.1f s measured after %.1f s "
               "warmup\n",
               cfg->concurrency, cfg->duration_s, cfg->warmup_s);
    printf("requests   %llu sent in the measured phase, %llu completed in "
           "%.2f s (and %llu sent in the warm-up, not counted)\n",
           (unsigned long long)r->sent, (unsigned long long)r->completed,
           r->elapsed_s, (unsigned long long)r->warmup_sent);
    printf("status     200: %llu  503: %llu  504: %llu  other: %llu  "
           "transport: %llu\n",
           (unsigned long long)r->n200, (unsigned long long)r->n503,
           (unsigned long long)r->n504, (unsigned long long)r->nother,
           (unsigned long long)r->ntransport);
    if (r->ntransport) {
        printf("transport  ");
        for (int c = 0; c < LOAD_TRANSPORT_KINDS; c++)
            if (r->by_transport[c])
                printf("%s: %llu  ", curl_easy_strerror((CURLcode)c),
                       (unsigned long long)r->by_transport[c]);
        printf("\n");
    }
    if (r->nother) {
        printf("other      ");
        for (int s = 0; s < 600; s++)
            if (r->by_status[s] && s != 200 && s != 503 && s != 504)
                printf("%d: %llu  ", s, (unsigned long long)r->by_status[s]);
        printf("\n");
    }
    printf("throughput %.1f req/s (200 answers)\n", r->throughput);
    const struct hist *h = &r->lat_ok;
    if (h->total)
        printf("latency    p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max "
               "%.2f  mean %.2f ms (200 answers, from intended send time)\n",
               ms(hist_quantile(h, 0.5)), ms(hist_quantile(h, 0.9)),
               ms(hist_quantile(h, 0.99)), ms(hist_quantile(h, 0.999)),
               ms(h->max), hist_mean(h) / 1000.0);
    else
        printf("latency    no 200 answers\n");
    if (r->backlog_max)
        printf("note       up to %llu arrivals waited for a free %s; their "
               "wait is in the latency\n",
               (unsigned long long)r->backlog_max,
               cfg->decode ? "session or connection"
                           : "connection (--max-inflight)");
    const struct load_decode *d = cfg->decode;
    if (d)
        printf("sessions   %zu of %u tokens at the start; gone (404) %llu, "
               "re-created %llu, steps sent again %llu, re-creates failed "
               "%llu, 507 %llu, abandoned %llu\n",
               d->n, (unsigned)d->context, (unsigned long long)r->kv_lost,
               (unsigned long long)r->kv_recreated,
               (unsigned long long)r->kv_retried,
               (unsigned long long)r->kv_recreate_failed,
               (unsigned long long)r->kv_full,
               (unsigned long long)r->abandoned);
}

static void json_hist(const char *name, const struct hist *h)
{
    printf("\"%s\":{\"count\":%llu,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,"
           "\"p999\":%.3f,\"max\":%.3f,\"mean\":%.3f}",
           name, (unsigned long long)h->total, ms(hist_quantile(h, 0.5)),
           ms(hist_quantile(h, 0.9)), ms(hist_quantile(h, 0.99)),
           ms(hist_quantile(h, 0.999)), ms(h->total ? h->max : 0),
           hist_mean(h) / 1000.0);
}

static void json_one(const struct load_config *cfg, const struct load_result *r)
{
    printf("{\"mode\":\"%s\",\"offered_rate\":%.3f,\"concurrency\":%d,"
           "\"duration_s\":%.3f,\"warmup_s\":%.3f,\"elapsed_s\":%.3f,"
           "\"sent\":%llu,\"warmup_sent\":%llu,\"completed\":%llu,"
           "\"throughput_rps\":%.3f,",
           mode_name(cfg), r->offered_rate,
           cfg->rate > 0 ? 0 : cfg->concurrency, cfg->duration_s, cfg->warmup_s,
           r->elapsed_s, (unsigned long long)r->sent,
           (unsigned long long)r->warmup_sent, (unsigned long long)r->completed,
           r->throughput);
    printf("\"status\":{\"200\":%llu,\"503\":%llu,\"504\":%llu,\"other\":%llu,"
           "\"transport\":%llu},",
           (unsigned long long)r->n200, (unsigned long long)r->n503,
           (unsigned long long)r->n504, (unsigned long long)r->nother,
           (unsigned long long)r->ntransport);
    printf("\"by_status\":{");
    int first = 1;
    for (int s = 0; s < 600; s++)
        if (r->by_status[s]) {
            printf("%s\"%d\":%llu", first ? "" : ",", s,
                   (unsigned long long)r->by_status[s]);
            first = 0;
        }
    printf("},\"transport_errors\":{");
    first = 1;
    for (int c = 0; c < LOAD_TRANSPORT_KINDS; c++)
        if (r->by_transport[c]) {
            const char *msg = curl_easy_strerror((CURLcode)c);
            char esc[512];
            proto_json_escape(esc, sizeof esc, msg, strlen(msg));
            printf("%s\"%s\":%llu", first ? "" : ",", esc,
                   (unsigned long long)r->by_transport[c]);
            first = 0;
        }
    printf("},\"backlog_max\":%llu,", (unsigned long long)r->backlog_max);
    json_hist("latency_ms", &r->lat_ok);
    printf(",");
    json_hist("latency_all_ms", &r->lat_all);
    printf(",");
    json_hist("latency_503_ms", &r->lat_503);
    const struct load_decode *d = cfg->decode;
    if (d)
        printf(",\"sessions_recreated\":%llu,"
               "\"decode\":{\"sessions\":%zu,\"context\":%u,"
               "\"kv_not_found\":%llu,\"recreated\":%llu,\"retried\":%llu,"
               "\"recreate_failed\":%llu,\"kv_cache_full\":%llu,"
               "\"abandoned\":%llu,\"deleted\":%llu,\"gone_at_end\":%llu}",
               (unsigned long long)r->kv_recreated, d->n, (unsigned)d->context,
               (unsigned long long)r->kv_lost,
               (unsigned long long)r->kv_recreated,
               (unsigned long long)r->kv_retried,
               (unsigned long long)r->kv_recreate_failed,
               (unsigned long long)r->kv_full, (unsigned long long)r->abandoned,
               (unsigned long long)d->deleted, (unsigned long long)d->gone);
    printf("}");
}

void load_report_json(const struct load_config *cfg,
                      const struct load_result *rs, size_t n)
{
    if (n == 1) {
        json_one(cfg, &rs[0]);
        printf("\n");
        return;
    }
    printf("{\"runs\":[");
    for (size_t i = 0; i < n; i++) {
        struct load_config c = *cfg;
        c.rate = rs[i].offered_rate;
        if (i)
            printf(",");
        json_one(&c, &rs[i]);
    }
    printf("]}\n");
}

void load_csv_header(FILE *f)
{
    fprintf(f, "offered_rps,throughput_rps,p50_ms,p90_ms,p99_ms,p999_ms,"
               "max_ms,n200,n503,n504,other,transport\n");
}

void load_csv_row(FILE *f, const struct load_result *r)
{
    const struct hist *h = &r->lat_ok;
    fprintf(f, "%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%llu,%llu,%llu,%llu,%llu\n",
            r->offered_rate, r->throughput, ms(hist_quantile(h, 0.5)),
            ms(hist_quantile(h, 0.9)), ms(hist_quantile(h, 0.99)),
            ms(hist_quantile(h, 0.999)), ms(h->total ? h->max : 0),
            (unsigned long long)r->n200, (unsigned long long)r->n503,
            (unsigned long long)r->n504, (unsigned long long)r->nother,
            (unsigned long long)r->ntransport);
}

static int by_offered_rate(const void *a, const void *b)
{
    double x = (*(const struct load_result *const *)a)->offered_rate;
    double y = (*(const struct load_result *const *)b)->offered_rate;
    return (x > y) - (x < y);
}

int load_plot(const struct load_result *rs, size_t n, const char *png_path,
              const char *title)
{
    /* The path and title go into gnuplot string literals. */
    if (strpbrk(png_path, "'\n") || strpbrk(title, "'\n")) {
        fprintf(stderr, "mra-load: --plot paths may not contain ' or a "
                        "newline\n");
        return -1;
    }
    /* A sweep's rates come in the order given; the line joins them by
     * offered rate, so that it runs from light to heavy load. */
    const struct load_result **order = n ? calloc(n, sizeof *order) : NULL;
    if (n && !order) {
        fprintf(stderr, "mra-load: out of memory for the plot\n");
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        order[i] = &rs[i];
    if (n)
        qsort(order, n, sizeof *order, by_offered_rate);
    FILE *g = popen("gnuplot", "w");
    if (!g) {
        fprintf(stderr, "mra-load: could not run gnuplot\n");
        free(order);
        return -1;
    }
    /* The points travel inline (a datablock): offered rate, throughput,
     * p50 and p99 in ms, one run a line. */
    fprintf(g, "$sweep << EOD\n");
    for (size_t i = 0; i < n; i++) {
        const struct hist *h = &order[i]->lat_ok;
        fprintf(g, "%.3f %.3f %.3f %.3f\n", order[i]->offered_rate,
                order[i]->throughput, ms(hist_quantile(h, 0.5)),
                ms(hist_quantile(h, 0.99)));
    }
    fprintf(g,
            "EOD\n"
            "set terminal pngcairo size 960,640 noenhanced\n"
            "set output '%s'\n"
            "set title '%s'\n"
            "set xlabel 'throughput (successful requests per second)'\n"
            "set ylabel 'latency (ms)'\n"
            "set logscale y\n"
            "set grid\n"
            "set offsets graph 0.05, graph 0.05, 0, 0\n"
            "set key below horizontal\n"
            "plot $sweep using 2:3 with linespoints pt 7 title 'p50 latency', "
            "$sweep using 2:4 with linespoints pt 5 title 'p99 latency', "
            "$sweep using 2:4:(sprintf('%%.0f/s offered', $1)) with labels "
            "offset 0,1 font ',8' notitle\n",
            png_path, title);
    free(order);
    int rc = pclose(g);
    if (rc != 0) {
        fprintf(stderr, "mra-load: gnuplot failed (status %d)\n", rc);
        return -1;
    }
    return 0;
}
