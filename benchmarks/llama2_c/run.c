/* The C baseline's float32 weights: llama2.c's legacy checkpoint (7 int32 header, the
   weights in llama2.c's order, two unused RoPE tables, then the classifier if unshared),
   memory-mapped. */
#include <stdlib.h>
#include <string.h>

#include "llama2.h"

struct Matrices {
    const unsigned char *data;
    size_t size;
    int dim;
    const float *embedding;
    const float *first[N_MATRICES]; /* layer 0 of each matrix; layers follow each other */
    const float *input;
    int n;
};

/* The next `floats` floats of the file at *offset. */
static const float *take(const Matrices *m, size_t *offset, size_t floats) {
    const float *p = (const float *)(m->data + *offset);
    *offset += floats * sizeof(float);
    return p;
}

Matrices *open_checkpoint(const char *path, Config *c, Norms *norms) {
    Matrices *m = calloc(1, sizeof *m);
    if (!m) die("out of memory");
    m->data = map_file(path, &m->size);
    int header[7];
    if (m->size < sizeof header) die("%s: too short for a llama2.c header", path);
    memcpy(header, m->data, sizeof header);
    *c = (Config){header[0], header[1], header[2], header[3], header[4], abs(header[5]), header[6]};
    check_config(path, c);
    const int shared_classifier = header[5] > 0; /* negative vocab_size: unshared */

    m->dim = c->dim;
    const size_t L = c->n_layers, dim = c->dim, hidden = c->hidden_dim;
    const size_t kv_dim = dim / c->n_heads * c->n_kv_heads, vocab = c->vocab_size;
    size_t offset = sizeof header;
    m->embedding = take(m, &offset, vocab * dim);
    norms->att = take(m, &offset, L * dim);
    m->first[WQ] = take(m, &offset, L * dim * dim);
    m->first[WK] = take(m, &offset, L * kv_dim * dim);
    m->first[WV] = take(m, &offset, L * kv_dim * dim);
    m->first[WO] = take(m, &offset, L * dim * dim);
    norms->ffn = take(m, &offset, L * dim);
    m->first[W1] = take(m, &offset, L * hidden * dim);
    m->first[W2] = take(m, &offset, L * dim * hidden);
    m->first[W3] = take(m, &offset, L * hidden * dim);
    norms->final = take(m, &offset, dim);
    take(m, &offset, (size_t)c->seq_len * (dim / c->n_heads)); /* RoPE cos and sin tables */
    m->first[WCLS] = shared_classifier ? m->embedding : take(m, &offset, vocab * dim);
    check_size(path, m->size, offset);
    return m;
}

void close_checkpoint(Matrices *m) {
    unmap_file(m->data, m->size);
    free(m);
}

void embed(const Matrices *m, int token, float *x) {
    memcpy(x, m->embedding + (size_t)token * m->dim, m->dim * sizeof(float));
}

void set_input(Matrices *m, const float *x, int n) {
    m->input = x;
    m->n = n;
}

void matmul(const Matrices *m, Matrix which, int layer, float *out, int rows) {
    const int n = m->n;
    const float *w = m->first[which] + (size_t)layer * rows * n;
    const float *x = m->input;
#pragma omp parallel for
    for (int i = 0; i < rows; i++) {
        const float *row = w + (size_t)i * n;
        float sum = 0.0f;
        /* lets the compiler vectorize the sum (reassociate it), as -ffast-math would */
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < n; j++) sum += row[j] * x[j];
        out[i] = sum;
    }
}
