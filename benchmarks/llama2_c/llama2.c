/* The shared part of the C baseline (see llama2.h): the transformer forward over the
   matrices that run.c or runq.c supply, the tokenizer, the sampler, the generate loop and
   the command line, with the semantics of llama2.c's run.c. */
#include "llama2.h"

#include <ctype.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { BOS = 1, BYTE_TOKENS = 3 /* id of the piece <0x00> */ };

/* --- files ------------------------------------------------------------------------------ */

void die(const char *format, ...) {
    va_list args;
    va_start(args, format);
    vfprintf(stderr, format, args);
    va_end(args);
    fputc('\n', stderr);
    exit(EXIT_FAILURE);
}

const unsigned char *map_file(const char *path, size_t *size) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("cannot open %s", path);
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size == 0) die("%s: empty or unreadable", path);
    *size = (size_t)st.st_size;
    void *data = mmap(NULL, *size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd); /* the mapping keeps the file */
    if (data == MAP_FAILED) die("%s: mmap failed", path);
    return data;
}

void unmap_file(const unsigned char *data, size_t size) { munmap((void *)data, size); }

void check_size(const char *path, size_t size, size_t expected) {
    if (size != expected)
        die("%s: %zu bytes, but its header implies %zu", path, size, expected);
}

void check_config(const char *path, const Config *c) {
    if (c->dim <= 0 || c->hidden_dim <= 0 || c->n_layers <= 0 || c->n_heads <= 0 ||
        c->n_kv_heads <= 0 || c->vocab_size <= 0 || c->seq_len <= 0 || c->dim % c->n_heads ||
        c->n_heads % c->n_kv_heads || (c->dim / c->n_heads) % 2)
        die("%s: not a valid llama2 config in the header", path);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *checked_calloc(size_t count, size_t size) {
    void *p = calloc(count, size);
    if (!p) die("out of memory");
    return p;
}

/* --- the transformer --------------------------------------------------------------------- */

typedef struct {
    float *x, *xb, *xb2, *hb, *hb2, *q, *k, *v, *att, *logits;
    float *key_cache, *value_cache; /* [n_layers, seq_len, kv_dim] */
} State;

typedef struct {
    Config c;
    Norms norms;
    Matrices *m;
    State s;
} Transformer;

static int kv_dim(const Config *c) { return c->dim / c->n_heads * c->n_kv_heads; }

static void open_transformer(Transformer *t, const char *path) {
    t->m = open_checkpoint(path, &t->c, &t->norms);
    const Config *c = &t->c;
    State *s = &t->s;
    size_t cache = (size_t)c->n_layers * c->seq_len * kv_dim(c);
    s->x = checked_calloc(c->dim, sizeof(float));
    s->xb = checked_calloc(c->dim, sizeof(float));
    s->xb2 = checked_calloc(c->dim, sizeof(float));
    s->hb = checked_calloc(c->hidden_dim, sizeof(float));
    s->hb2 = checked_calloc(c->hidden_dim, sizeof(float));
    s->q = checked_calloc(c->dim, sizeof(float));
    s->k = checked_calloc(kv_dim(c), sizeof(float));
    s->v = checked_calloc(kv_dim(c), sizeof(float));
    s->att = checked_calloc((size_t)c->n_heads * c->seq_len, sizeof(float));
    s->logits = checked_calloc(c->vocab_size, sizeof(float));
    s->key_cache = checked_calloc(cache, sizeof(float));
    s->value_cache = checked_calloc(cache, sizeof(float));
}

static void close_transformer(Transformer *t) {
    State *s = &t->s;
    float *buffers[] = {s->x,   s->xb,  s->xb2, s->hb,     s->hb2,       s->q,
                        s->k,   s->v,   s->att, s->logits, s->key_cache, s->value_cache};
    for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; i++) free(buffers[i]);
    close_checkpoint(t->m);
}

static void rmsnorm(float *out, const float *x, const float *weight, int n) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float inv_rms = 1.0f / sqrtf(ss / n + 1e-5f);
    for (int i = 0; i < n; i++) out[i] = weight[i] * (inv_rms * x[i]);
}

static void softmax(float *x, int n) {
    float max = x[0];
    for (int i = 1; i < n; i++) max = x[i] > max ? x[i] : max;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    for (int i = 0; i < n; i++) x[i] /= sum;
}

static void rotate(float *pair, float cos, float sin) {
    float v0 = pair[0], v1 = pair[1];
    pair[0] = v0 * cos - v1 * sin;
    pair[1] = v0 * sin + v1 * cos;
}

/* RoPE: rotate the pairs (i, i+1) of each head of q (dim) and k (kv_dim) by pos * freq. */
static void rope(const Config *c, float *q, float *k, int pos) {
    const int head_size = c->dim / c->n_heads;
    for (int i = 0; i < c->dim; i += 2) {
        float freq = 1.0f / powf(10000.0f, (i % head_size) / (float)head_size);
        float cos = cosf(pos * freq), sin = sinf(pos * freq);
        rotate(q + i, cos, sin);
        if (i < kv_dim(c)) rotate(k + i, cos, sin);
    }
}

/* s->xb = softmax(q . keys / sqrt(head_size)) . values over positions 0..pos, per head;
   query head h reads kv head h / (n_heads / n_kv_heads). */
static void attention(Transformer *t, int layer, int pos) {
    const Config *c = &t->c;
    State *s = &t->s;
    const int head_size = c->dim / c->n_heads, kvd = kv_dim(c);
    const int kv_mul = c->n_heads / c->n_kv_heads;
    const size_t layer_offset = (size_t)layer * c->seq_len * kvd;
#pragma omp parallel for
    for (int h = 0; h < c->n_heads; h++) {
        const float *q = s->q + h * head_size;
        const size_t head_offset = layer_offset + (size_t)(h / kv_mul) * head_size;
        float *att = s->att + (size_t)h * c->seq_len;
        for (int p = 0; p <= pos; p++) {
            const float *k = s->key_cache + head_offset + (size_t)p * kvd;
            float score = 0.0f;
#pragma omp simd reduction(+ : score)
            for (int i = 0; i < head_size; i++) score += q[i] * k[i];
            att[p] = score / sqrtf(head_size);
        }
        softmax(att, pos + 1);
        float *out = s->xb + h * head_size;
        memset(out, 0, head_size * sizeof(float));
        for (int p = 0; p <= pos; p++) {
            const float *v = s->value_cache + head_offset + (size_t)p * kvd;
            for (int i = 0; i < head_size; i++) out[i] += att[p] * v[i];
        }
    }
}

static void add(float *x, const float *y, int n) {
    for (int i = 0; i < n; i++) x[i] += y[i];
}

/* hb = silu(hb) * hb2 */
static void swiglu(float *hb, const float *hb2, int n) {
    for (int i = 0; i < n; i++) hb[i] = hb[i] * (1.0f / (1.0f + expf(-hb[i]))) * hb2[i];
}

static float *forward(Transformer *t, int token, int pos) {
    const Config *c = &t->c;
    State *s = &t->s;
    Matrices *m = t->m;
    const int dim = c->dim, kvd = kv_dim(c);
    embed(m, token, s->x);
    for (int l = 0; l < c->n_layers; l++) {
        rmsnorm(s->xb, s->x, t->norms.att + (size_t)l * dim, dim);
        set_input(m, s->xb, dim);
        matmul(m, WQ, l, s->q, dim);
        matmul(m, WK, l, s->k, kvd);
        matmul(m, WV, l, s->v, kvd);
        rope(c, s->q, s->k, pos);
        size_t cache_row = ((size_t)l * c->seq_len + pos) * kvd;
        memcpy(s->key_cache + cache_row, s->k, kvd * sizeof(float));
        memcpy(s->value_cache + cache_row, s->v, kvd * sizeof(float));
        attention(t, l, pos);
        set_input(m, s->xb, dim);
        matmul(m, WO, l, s->xb2, dim);
        add(s->x, s->xb2, dim);

        rmsnorm(s->xb, s->x, t->norms.ffn + (size_t)l * dim, dim);
        set_input(m, s->xb, dim);
        matmul(m, W1, l, s->hb, c->hidden_dim);
        matmul(m, W3, l, s->hb2, c->hidden_dim);
        swiglu(s->hb, s->hb2, c->hidden_dim);
        set_input(m, s->hb, c->hidden_dim);
        matmul(m, W2, l, s->xb, dim);
        add(s->x, s->xb, dim);
    }
    rmsnorm(s->x, s->x, t->norms.final, dim);
    set_input(m, s->x, dim);
    matmul(m, WCLS, 0, s->logits, c->vocab_size);
    return s->logits;
}

/* --- tokenizer ----------------------------------------------------------------------------- */

typedef struct {
    const char *piece;
    int id;
} Entry;

typedef struct {
    char **pieces;
    float *scores;
    int vocab_size, max_len;
    Entry *sorted; /* by piece, for bsearch */
    char *buffer;  /* two pieces, or one codepoint, and a NUL */
} Tokenizer;

static int compare_entries(const void *a, const void *b) {
    return strcmp(((const Entry *)a)->piece, ((const Entry *)b)->piece);
}

static void read_exactly(FILE *f, void *into, size_t bytes, const char *path) {
    if (fread(into, 1, bytes, f) != bytes) die("%s: truncated", path);
}

static void open_tokenizer(Tokenizer *t, const char *path, int vocab_size) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open %s", path);
    t->vocab_size = vocab_size;
    t->pieces = checked_calloc(vocab_size, sizeof(char *));
    t->scores = checked_calloc(vocab_size, sizeof(float));
    t->sorted = checked_calloc(vocab_size, sizeof(Entry));
    read_exactly(f, &t->max_len, sizeof(int), path);
    for (int i = 0; i < vocab_size; i++) {
        int len;
        read_exactly(f, &t->scores[i], sizeof(float), path);
        read_exactly(f, &len, sizeof(int), path);
        if (len < 0) die("%s: piece %d has length %d", path, i, len);
        t->pieces[i] = checked_calloc(len + 1, 1);
        read_exactly(f, t->pieces[i], len, path);
        t->max_len = len > t->max_len ? len : t->max_len;
        t->sorted[i] = (Entry){t->pieces[i], i};
    }
    fclose(f);
    qsort(t->sorted, vocab_size, sizeof(Entry), compare_entries);
    t->buffer = checked_calloc(2 * t->max_len + 5, 1);
}

static void close_tokenizer(Tokenizer *t) {
    for (int i = 0; i < t->vocab_size; i++) free(t->pieces[i]);
    free(t->pieces);
    free(t->scores);
    free(t->sorted);
    free(t->buffer);
}

static int lookup(const Tokenizer *t, const char *piece) {
    Entry key = {piece, -1};
    const Entry *found = bsearch(&key, t->sorted, t->vocab_size, sizeof(Entry), compare_entries);
    return found ? found->id : -1;
}

/* One token per UTF-8 codepoint of text that is a piece, else one byte token per byte. */
static int encode_codepoints(const Tokenizer *t, const char *text, int *tokens) {
    int n = 0;
    size_t len = 0;
    for (const char *c = text; *c; c++) {
        t->buffer[len++] = *c;
        t->buffer[len] = '\0';
        if ((c[1] & 0xC0) == 0x80 && len < 4) continue; /* the codepoint goes on */
        int id = lookup(t, t->buffer);
        if (id >= 0) {
            tokens[n++] = id;
        } else {
            for (size_t i = 0; i < len; i++) tokens[n++] = (unsigned char)t->buffer[i] + BYTE_TOKENS;
        }
        len = 0;
    }
    return n;
}

/* Merge the adjacent pair whose concatenation is the best-scoring piece, until none is. */
static int merge_pairs(const Tokenizer *t, int *tokens, int n) {
    for (;;) {
        float best_score = -1e10f;
        int best_id = -1, best_at = -1;
        for (int i = 0; i + 1 < n; i++) {
            strcpy(t->buffer, t->pieces[tokens[i]]);
            strcat(t->buffer, t->pieces[tokens[i + 1]]);
            int id = lookup(t, t->buffer);
            if (id >= 0 && t->scores[id] > best_score) {
                best_score = t->scores[id];
                best_id = id;
                best_at = i;
            }
        }
        if (best_at < 0) return n;
        tokens[best_at] = best_id;
        memmove(tokens + best_at + 1, tokens + best_at + 2, (n - best_at - 2) * sizeof(int));
        n--;
    }
}

/* llama2.c's encode: BOS, the dummy prefix " " (non-empty text), codepoints, merges.
   tokens must hold strlen(text) + 2. */
static int encode(const Tokenizer *t, const char *text, int *tokens) {
    int n = 0;
    tokens[n++] = BOS;
    if (text[0]) {
        tokens[n] = lookup(t, " ");
        if (tokens[n++] < 0) die("the tokenizer has no ' ' piece for the dummy prefix");
    }
    n += encode_codepoints(t, text, tokens + n);
    return merge_pairs(t, tokens, n);
}

/* The byte of a piece "<0xXX>", or -1. */
static int byte_of_piece(const char *piece) {
    if (strlen(piece) != 6 || strncmp(piece, "<0x", 3) || piece[5] != '>' ||
        !isxdigit((unsigned char)piece[3]) || !isxdigit((unsigned char)piece[4]))
        return -1;
    return (int)strtol(piece + 3, NULL, 16);
}

/* Print what token stands for after prev: no leading space after BOS, raw bytes for
   byte pieces, and a lone byte only if printable or whitespace. */
static void print_piece(const Tokenizer *t, int prev, int token) {
    const char *piece = t->pieces[token];
    if (prev == BOS && piece[0] == ' ') piece++;
    int byte = byte_of_piece(piece);
    char single[2] = {(char)byte, '\0'};
    if (byte >= 0) piece = single;
    if (piece[0] == '\0') return;
    if (piece[1] == '\0' && !isprint((unsigned char)piece[0]) && !isspace((unsigned char)piece[0]))
        return;
    fputs(piece, stdout);
}

/* --- sampler ------------------------------------------------------------------------------- */

typedef struct {
    float prob;
    int index;
} Candidate;

typedef struct {
    int vocab_size;
    float temperature, topp;
    unsigned long long rng;
    Candidate *candidates;
} Sampler;

/* xorshift*: shifts 12, 25, 27, then the top 32 bits of the product */
static unsigned int random_u32(unsigned long long *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (unsigned int)((*state * 0x2545F4914F6CDD1Dull) >> 32);
}

static float random_f32(unsigned long long *state) { return (random_u32(state) >> 8) / 16777216.0f; }

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) best = x[i] > x[best] ? i : best;
    return best;
}

/* The first index whose running sum of probs exceeds coin (the last, if rounding leaves
   the sum short). */
static int sample_cdf(const float *probs, int n, float coin) {
    float cdf = 0.0f;
    for (int i = 0; i < n; i++) {
        cdf += probs[i];
        if (coin < cdf) return i;
    }
    return n - 1;
}

static int by_prob_descending(const void *a, const void *b) {
    float pa = ((const Candidate *)a)->prob, pb = ((const Candidate *)b)->prob;
    return (pa < pb) - (pa > pb);
}

/* Nucleus sampling: draw among the most likely tokens whose probabilities first sum past
   topp. A token below (1 - topp) / (n - 1) cannot be among them, so is not sorted. */
static int sample_topp(Sampler *s, const float *probs, float coin) {
    const int n = s->vocab_size;
    const float cutoff = (1.0f - s->topp) / (n - 1);
    int count = 0;
    for (int i = 0; i < n; i++)
        if (probs[i] >= cutoff) s->candidates[count++] = (Candidate){probs[i], i};
    qsort(s->candidates, count, sizeof(Candidate), by_prob_descending);
    float cumulative = 0.0f;
    int last = count - 1;
    for (int i = 0; i < count; i++) {
        cumulative += s->candidates[i].prob;
        if (cumulative > s->topp) {
            last = i;
            break;
        }
    }
    float r = coin * cumulative, cdf = 0.0f;
    for (int i = 0; i <= last; i++) {
        cdf += s->candidates[i].prob;
        if (r < cdf) return s->candidates[i].index;
    }
    return s->candidates[last].index;
}

static int sample(Sampler *s, float *logits) {
    if (s->temperature == 0.0f) return argmax(logits, s->vocab_size);
    for (int i = 0; i < s->vocab_size; i++) logits[i] /= s->temperature;
    softmax(logits, s->vocab_size);
    float coin = random_f32(&s->rng);
    if (s->topp <= 0.0f || s->topp >= 1.0f) return sample_cdf(logits, s->vocab_size, coin);
    return sample_topp(s, logits, coin);
}

/* --- generate and the command line -------------------------------------------------------- */

/* Force the prompt's tokens, then sample, for `steps` positions or until BOS; print the
   text, and "achieved tok/s" on stderr (timed from the end of the first step, as llama2.c);
   verbose: all tokens too, on stderr. */
static void generate(Transformer *t, Tokenizer *tok, Sampler *sampler, const char *prompt,
                     int steps, int verbose) {
    int *prompt_tokens = checked_calloc(strlen(prompt) + 2, sizeof(int));
    int n_prompt = encode(tok, prompt, prompt_tokens);
    int *tokens = checked_calloc(steps + 1, sizeof(int));
    int n = 0, token = prompt_tokens[0];
    tokens[n++] = token;
    double start = 0.0;
    int done = 0; /* forward passes */
    while (done < steps) {
        float *logits = forward(t, token, done);
        done++;
        int next = done < n_prompt ? prompt_tokens[done] : sample(sampler, logits);
        if (next == BOS) break;
        print_piece(tok, token, next);
        fflush(stdout);
        tokens[n++] = token = next;
        if (done == 1) start = now_seconds();
    }
    printf("\n");
    if (done > 1) fprintf(stderr, "achieved tok/s: %f\n", (done - 1) / (now_seconds() - start));
    if (verbose) {
        fprintf(stderr, "tokens:");
        for (int i = 0; i < n; i++) fprintf(stderr, " %d", tokens[i]);
        fprintf(stderr, "\n");
    }
    free(tokens);
    free(prompt_tokens);
}

static void usage(void) {
    die("usage: run <checkpoint> [options]\n"
        "  -t <float>  temperature, default 1.0 (0: greedy)\n"
        "  -p <float>  top-p in [0,1], default 0.9 (1: off)\n"
        "  -s <int>    random seed, default time(NULL)\n"
        "  -n <int>    steps, default 256 (0: seq_len)\n"
        "  -i <string> prompt\n"
        "  -z <string> tokenizer, default tokenizer.bin\n"
        "  -v <int>    1: print all tokens on stderr");
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    const char *checkpoint = argv[1], *tokenizer_path = "tokenizer.bin", *prompt = "";
    float temperature = 1.0f, topp = 0.9f;
    unsigned long long seed = 0;
    int steps = 256, verbose = 0;
    for (int i = 2; i < argc; i += 2) {
        if (i + 1 >= argc || argv[i][0] != '-' || strlen(argv[i]) != 2) usage();
        const char *value = argv[i + 1];
        switch (argv[i][1]) {
        case 't': temperature = atof(value); break;
        case 'p': topp = atof(value); break;
        case 's': seed = strtoull(value, NULL, 10); break;
        case 'n': steps = atoi(value); break;
        case 'i': prompt = value; break;
        case 'z': tokenizer_path = value; break;
        case 'v': verbose = atoi(value); break;
        default: usage();
        }
    }
    if (seed == 0) seed = (unsigned long long)time(NULL);
    if (temperature < 0.0f) temperature = 0.0f;
    if (topp < 0.0f || topp > 1.0f) topp = 0.9f;

    Transformer t;
    open_transformer(&t, checkpoint);
    if (steps <= 0 || steps > t.c.seq_len) steps = t.c.seq_len;
    Tokenizer tok;
    open_tokenizer(&tok, tokenizer_path, t.c.vocab_size);
    Sampler sampler = {t.c.vocab_size, temperature, topp, seed,
                       checked_calloc(t.c.vocab_size, sizeof(Candidate))};
    generate(&t, &tok, &sampler, prompt, steps, verbose);
    free(sampler.candidates);
    close_tokenizer(&tok);
    close_transformer(&t);
    return 0;
}
