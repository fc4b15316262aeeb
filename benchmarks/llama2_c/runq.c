/* The C baseline's int8 weights: llama2.c's version-2 checkpoint (export.py
   version2_export, runq.c), memory-mapped. A 256-byte header (magic "ak42", version 2, the
   config, a shared-classifier byte, the group size); the float32 rms weights; then each
   matrix, layer by layer, as int8 values followed by one float32 scale per group. The
   matmul input is quantized the same way, per group, and dot products are exact integer
   sums per group scaled by both scales. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "llama2.h"

enum { HEADER_BYTES = 256, MAGIC = 0x616b3432, VERSION = 2 };

typedef struct {
    const int8_t *q; /* values */
    const float *s;  /* one scale per group of values */
} QTensor;

struct Matrices {
    const unsigned char *data;
    size_t size;
    int dim, group;
    QTensor *embedding;          /* one tensor */
    QTensor *layers[N_MATRICES]; /* each matrix's layers (WCLS: one) */
    int8_t *xq;                  /* the quantized input: values and scales */
    float *xs;
    int n;
};

/* `count` quantized tensors of `values` values each, from the file at *offset. */
static QTensor *take(const Matrices *m, size_t *offset, int count, size_t values) {
    QTensor *tensors = calloc(count, sizeof(QTensor));
    if (!tensors) die("out of memory");
    for (int i = 0; i < count; i++) {
        tensors[i].q = (const int8_t *)(m->data + *offset);
        *offset += values;
        tensors[i].s = (const float *)(m->data + *offset);
        *offset += values / m->group * sizeof(float);
    }
    return tensors;
}

static void read_header(Matrices *m, const char *path, Config *c, int *shared_classifier) {
    if (m->size < HEADER_BYTES) die("%s: too short for a version-2 header", path);
    uint32_t magic;
    int32_t version, sizes[7];
    memcpy(&magic, m->data, 4);
    memcpy(&version, m->data + 4, 4);
    memcpy(sizes, m->data + 8, sizeof sizes);
    *shared_classifier = m->data[36];
    memcpy(&m->group, m->data + 37, 4);
    if (magic != MAGIC) die("%s: bad magic, not a version-2 llama2.c checkpoint", path);
    if (version != VERSION) die("%s: version %d, need version 2", path, version);
    *c = (Config){sizes[0], sizes[1], sizes[2], sizes[3], sizes[4], sizes[5], sizes[6]};
    check_config(path, c);
    if (m->group <= 0 || c->dim % m->group || c->hidden_dim % m->group)
        die("%s: group size %d does not divide dim and hidden_dim", path, m->group);
}

Matrices *open_checkpoint(const char *path, Config *c, Norms *norms) {
    Matrices *m = calloc(1, sizeof *m);
    if (!m) die("out of memory");
    m->data = map_file(path, &m->size);
    int shared_classifier;
    read_header(m, path, c, &shared_classifier);
    m->dim = c->dim;

    const size_t L = c->n_layers, dim = c->dim, hidden = c->hidden_dim;
    const size_t kv_dim = dim / c->n_heads * c->n_kv_heads, vocab = c->vocab_size;
    const float *rms = (const float *)(m->data + HEADER_BYTES);
    *norms = (Norms){rms, rms + L * dim, rms + 2 * L * dim};
    size_t offset = HEADER_BYTES + (2 * L + 1) * dim * sizeof(float);
    m->embedding = take(m, &offset, 1, vocab * dim);
    m->layers[WQ] = take(m, &offset, L, dim * dim);
    m->layers[WK] = take(m, &offset, L, kv_dim * dim);
    m->layers[WV] = take(m, &offset, L, kv_dim * dim);
    m->layers[WO] = take(m, &offset, L, dim * dim);
    m->layers[W1] = take(m, &offset, L, hidden * dim);
    m->layers[W2] = take(m, &offset, L, dim * hidden);
    m->layers[W3] = take(m, &offset, L, hidden * dim);
    m->layers[WCLS] = shared_classifier ? m->embedding : take(m, &offset, 1, vocab * dim);
    check_size(path, m->size, offset);

    const size_t widest = hidden > dim ? hidden : dim;
    m->xq = calloc(widest, 1);
    m->xs = calloc(widest / m->group, sizeof(float));
    if (!m->xq || !m->xs) die("out of memory");
    return m;
}

void close_checkpoint(Matrices *m) {
    for (int i = 0; i < N_MATRICES; i++)
        if (m->layers[i] != m->embedding) free(m->layers[i]);
    free(m->embedding);
    free(m->xq);
    free(m->xs);
    unmap_file(m->data, m->size);
    free(m);
}

void embed(const Matrices *m, int token, float *x) {
    const size_t start = (size_t)token * m->dim;
    for (int i = 0; i < m->dim; i++)
        x[i] = m->embedding->q[start + i] * m->embedding->s[(start + i) / m->group];
}

/* Quantize x per group as the weights are: scale = max|x| / 127, q = round(x / scale). */
void set_input(Matrices *m, const float *x, int n) {
    const int g = m->group;
    for (int start = 0; start < n; start += g) {
        float max_abs = 0.0f;
        for (int i = start; i < start + g; i++) max_abs = fmaxf(max_abs, fabsf(x[i]));
        const float scale = max_abs / 127.0f;
        m->xs[start / g] = scale;
        for (int i = start; i < start + g; i++)
            m->xq[i] = scale > 0.0f ? (int8_t)roundf(x[i] / scale) : 0;
    }
    m->n = n;
}

void matmul(const Matrices *m, Matrix which, int layer, float *out, int rows) {
    const QTensor w = m->layers[which][layer];
    const int n = m->n, g = m->group, groups = n / g;
    const int8_t *xq = m->xq;
    const float *xs = m->xs;
#pragma omp parallel for
    for (int i = 0; i < rows; i++) {
        const int8_t *row = w.q + (size_t)i * n;
        const float *row_scales = w.s + (size_t)i * groups;
        float sum = 0.0f;
        for (int k = 0; k < groups; k++) {
            int32_t dot = 0;
            for (int j = k * g; j < (k + 1) * g; j++) dot += (int32_t)row[j] * xq[j];
            sum += (float)dot * row_scales[k] * xs[k];
        }
        out[i] = sum;
    }
}
