/* The C baseline of the llama2 runner: what run.c (legacy float32 checkpoint) and runq.c
   (version-2 int8 checkpoint) share with llama2.c (configuration, transformer forward,
   tokenizer, sampler, generate loop, command line), and what each of them supplies: the
   weight matrices in its file's format. */
#ifndef LLAMA2_H
#define LLAMA2_H

#include <stddef.h>

typedef struct {
    int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
} Config;

/* The float32 rms-norm weights, which both files keep unquantized. */
typedef struct {
    const float *att;   /* [n_layers, dim] */
    const float *ffn;   /* [n_layers, dim] */
    const float *final; /* [dim] */
} Norms;

/* The matrices, named for the Matrices' lookups; WCLS has no layer. */
typedef enum { WQ, WK, WV, WO, W1, W2, W3, WCLS, N_MATRICES } Matrix;

/* --- supplied by run.c or runq.c ------------------------------------------------------- */

typedef struct Matrices Matrices;

/* Map a checkpoint; fills config and norms, exits with a message on a bad file. */
Matrices *open_checkpoint(const char *path, Config *config, Norms *norms);
void close_checkpoint(Matrices *m);
/* x = the token's embedding row, in float32 */
void embed(const Matrices *m, int token, float *x);
/* The vector (n floats) that the following matmuls multiply (runq.c quantizes it here). */
void set_input(Matrices *m, const float *x, int n);
/* out[rows] = matrix (of `layer`) @ input */
void matmul(const Matrices *m, Matrix which, int layer, float *out, int rows);

/* --- helpers shared by both ------------------------------------------------------------ */

/* Print a message (printf format) to stderr and exit with status 1. */
void die(const char *format, ...);
/* mmap a whole file read-only; exits with a message on failure. */
const unsigned char *map_file(const char *path, size_t *size);
void unmap_file(const unsigned char *data, size_t size);
/* Exits with a message unless the file has exactly the size its header implies. */
void check_size(const char *path, size_t size, size_t expected);
void check_config(const char *path, const Config *c);

#endif
