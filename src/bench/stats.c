/*
 * stats.c — one run's numbers: counters, histograms, errors by code; merging
 * the children of --procs; the table and the JSON that report them.
 */
#include "bench.h"

#include <string.h>

void cb_stats_init(cb_stats *s)
{
    memset(s, 0, sizeof *s);
}

/* Adds n errors of `code`; the first example of each code is kept. Codes
 * past CB_MAX_CODES are counted together as OTHER. */
static void add_error(cb_stats *s, const char *code, const char *example, uint64_t n)
{
    for (int i = 0; i < s->nerrors; i++) {
        if (strcmp(s->errors[i].code, code) == 0) {
            s->errors[i].n += n;
            return;
        }
    }
    cb_error *e;
    if (s->nerrors < CB_MAX_CODES) {
        e = &s->errors[s->nerrors++];
        snprintf(e->code, sizeof e->code, "%s", code);
    } else {
        e = &s->errors[CB_MAX_CODES];
        snprintf(e->code, sizeof e->code, "OTHER");
    }
    if (e->n == 0)
        snprintf(e->example, sizeof e->example, "%s: %s", code, example ? example : "");
    e->n += n;
}

void cb_stats_error(cb_stats *s, const char *code, const char *example)
{
    add_error(s, code, example, 1);
}

void cb_stats_merge(cb_stats *into, const cb_stats *from)
{
    cb_hist_merge(&into->connect, &from->connect);
    cb_hist_merge(&into->ttft, &from->ttft);
    cb_hist_merge(&into->gap, &from->gap);
    cb_hist_merge(&into->turn, &from->turn);
    into->turns_ok += from->turns_ok;
    into->turns_failed += from->turns_failed;
    into->tokens += from->tokens;
    into->bytes_in += from->bytes_in;
    into->conns_ok += from->conns_ok;
    into->conns_failed += from->conns_failed;
    into->conns_lost += from->conns_lost;
    into->late_starts += from->late_starts;
    if (from->t_start_ns && (!into->t_start_ns || from->t_start_ns < into->t_start_ns))
        into->t_start_ns = from->t_start_ns;
    if (from->t_end_ns > into->t_end_ns)
        into->t_end_ns = from->t_end_ns;
    for (int i = 0; i <= CB_MAX_CODES; i++) {
        const cb_error *e = &from->errors[i];
        if ((i < from->nerrors || i == CB_MAX_CODES) && e->n) {
            /* the example already starts with "<code>: " (and a code may
             * hold a colon itself: HTTP_429:rate_limit_exceeded) */
            size_t cl = strlen(e->code);
            const char *ex = strncmp(e->example, e->code, cl) == 0 && e->example[cl] == ':' &&
                                     e->example[cl + 1] == ' '
                                 ? e->example + cl + 2
                                 : e->example;
            add_error(into, e->code, ex, e->n);
        }
    }
}

uint64_t cb_stats_errors(const cb_stats *s)
{
    return s->turns_failed + s->conns_failed;
}

static double elapsed_s(const cb_stats *s)
{
    return s->t_start_ns && s->t_end_ns > s->t_start_ns ? (double)(s->t_end_ns - s->t_start_ns) / 1e9 : 0;
}

static double ms(uint64_t ns)
{
    return (double)ns / 1e6;
}

static void hist_row(FILE *f, const char *name, const cb_hist *h)
{
    if (h->n == 0) {
        fprintf(f, "  %-8s %10s\n", name, "-");
        return;
    }
    fprintf(f, "  %-8s %10.3f %10.3f %10.3f %10.3f %10.3f %10llu\n", name,
            ms(cb_hist_percentile(h, 50)), ms(cb_hist_percentile(h, 90)),
            ms(cb_hist_percentile(h, 99)), ms(h->max), ms((uint64_t)(h->sum / (double)h->n)),
            (unsigned long long)h->n);
}

static const char *mode_note(const cb_report_info *ri)
{
    return ri->idle ? "idle connections" : "turns";
}

void cb_report_table(FILE *f, const cb_stats *s, const cb_report_info *ri)
{
    double el = elapsed_s(s);
    fprintf(f, "chatbench: %s %s, %d sessions (%s), %d tokens per answer", ri->mode, ri->url,
            ri->sessions, mode_note(ri), ri->tokens);
    if (ri->rate > 0)
        fprintf(f, ", rate %.0f turns/s", ri->rate);
    if (ri->procs > 1)
        fprintf(f, ", %d processes", ri->procs);
    fprintf(f, "\n");
    fprintf(f, "connections: %llu ready, %llu failed, %llu closed by the server outside a turn\n",
            (unsigned long long)s->conns_ok, (unsigned long long)s->conns_failed,
            (unsigned long long)s->conns_lost);
    if (!ri->idle) {
        fprintf(f, "turns: %llu ok, %llu failed in %.2f s: %.1f turns/s, %.0f tokens/s",
                (unsigned long long)s->turns_ok, (unsigned long long)s->turns_failed, el,
                el > 0 ? (double)s->turns_ok / el : 0, el > 0 ? (double)s->tokens / el : 0);
        if (s->late_starts)
            fprintf(f, ", %llu started late", (unsigned long long)s->late_starts);
        fprintf(f, "\n");
    }
    fprintf(f, "  %-8s %10s %10s %10s %10s %10s %10s\n", "ms", "p50", "p90", "p99", "max", "mean",
            "count");
    hist_row(f, "connect", &s->connect);
    if (!ri->idle) {
        hist_row(f, "ttft", &s->ttft);
        hist_row(f, "gap", &s->gap);
        hist_row(f, "turn", &s->turn);
    }
    int shown = s->nerrors + (s->errors[CB_MAX_CODES].n ? 1 : 0);
    if (shown == 0) {
        fprintf(f, "errors: none\n");
        return;
    }
    fprintf(f, "errors:\n");
    for (int i = 0; i <= CB_MAX_CODES; i++) {
        const cb_error *e = &s->errors[i];
        if (i < s->nerrors || (i == CB_MAX_CODES && e->n))
            fprintf(f, "  %-20s %8llu  first: %s\n", e->code, (unsigned long long)e->n, e->example);
    }
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void hist_json(FILE *f, const char *name, const cb_hist *h)
{
    fprintf(f, "\"%s\":{\"count\":%llu,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f,"
               "\"mean\":%.3f,\"min\":%.3f}",
            name, (unsigned long long)h->n, ms(cb_hist_percentile(h, 50)),
            ms(cb_hist_percentile(h, 90)), ms(cb_hist_percentile(h, 99)), ms(h->max),
            h->n ? ms((uint64_t)(h->sum / (double)h->n)) : 0.0, ms(h->min));
}

void cb_report_json(FILE *f, const cb_stats *s, const cb_report_info *ri)
{
    double el = elapsed_s(s);
    fprintf(f, "{\"mode\":");
    json_str(f, ri->mode);
    fprintf(f, ",\"url\":");
    json_str(f, ri->url);
    fprintf(f, ",\"sessions\":%d,\"idle\":%s,\"tokens_per_answer\":%d,\"rate\":%.3f,\"procs\":%d,"
               "\"elapsed_s\":%.3f,\"connections_ready\":%llu,\"connections_failed\":%llu,"
               "\"connections_lost\":%llu,\"turns_ok\":%llu,\"turns_failed\":%llu,\"tokens\":%llu,"
               "\"bytes_in\":%llu,\"late_starts\":%llu,\"turns_per_s\":%.3f,\"tokens_per_s\":%.1f,"
               "\"latency_ms\":{",
            ri->sessions, ri->idle ? "true" : "false", ri->tokens, ri->rate, ri->procs, el,
            (unsigned long long)s->conns_ok, (unsigned long long)s->conns_failed,
            (unsigned long long)s->conns_lost, (unsigned long long)s->turns_ok,
            (unsigned long long)s->turns_failed, (unsigned long long)s->tokens,
            (unsigned long long)s->bytes_in, (unsigned long long)s->late_starts,
            el > 0 ? (double)s->turns_ok / el : 0, el > 0 ? (double)s->tokens / el : 0);
    hist_json(f, "connect", &s->connect);
    fputc(',', f);
    hist_json(f, "ttft", &s->ttft);
    fputc(',', f);
    hist_json(f, "gap", &s->gap);
    fputc(',', f);
    hist_json(f, "turn", &s->turn);
    fprintf(f, "},\"errors\":{");
    int first = 1;
    for (int i = 0; i <= CB_MAX_CODES; i++) {
        const cb_error *e = &s->errors[i];
        if (!(i < s->nerrors || (i == CB_MAX_CODES && e->n)))
            continue;
        if (!first)
            fputc(',', f);
        first = 0;
        json_str(f, e->code);
        fprintf(f, ":{\"count\":%llu,\"example\":", (unsigned long long)e->n);
        json_str(f, e->example);
        fputc('}', f);
    }
    fprintf(f, "}}\n");
}
