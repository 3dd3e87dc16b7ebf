/*
 * deit.c - DeiT (Touvron et al., "Training data-efficient image transformers & distillation
 * through attention", ICML 2021) in one file of C: the vision transformer with a class and a
 * distillation token, every layer's forward and hand-written backward, the paper's losses, a
 * CNN teacher, AdamW/SGD, the CIFAR loader with DeiT's augmentations, and a command line.
 *
 *   cc -O3 deit.c -lm -o deit        (or: make, for OpenMP and -march=native)
 *
 * The file has three parts. Read Part I; the other two are there when you need them.
 *
 *   Part I   The paper. Everything a training run needs, top to bottom in the paper's order:
 *            tensors and the naive matmul; each layer's forward/backward pair; the model with
 *            its class + distillation tokens; the losses (none / soft / hard distillation);
 *            the teacher CNN; AdamW/SGD with warmup + cosine; the CIFAR loader and DeiT's
 *            augmentations; checkpoints; the training loop and evaluation.
 *   Part II  Making it fast. The packed, cache-blocked matmul that replaces the naive one,
 *            and the convolutions without im2col built on its kernels (./deit --matmul
 *            naive|fast picks; fast is the default).
 *   Part III The workshop. Validation of untrusted files, the resume state, progress lines,
 *            the paper's analyses (token similarity, disagreement, attention maps as PNG),
 *            the command line and the benchmark.
 *
 * Part I reaches into Parts II and III only through functions declared ahead of their use
 * and marked "hook" (matmul_fast, Part II's convolution without im2col, run_begin,
 * run_step_done, ...), each named for what it does.
 *
 * Conventions (as in llm.c): a layer is a pair  name_forward(out, ..., inp, ..., sizes)  and
 * name_backward(dinp, ..., dout, ..., sizes). Backward functions ADD (+=) to the parameters'
 * gradients, which the model zeroes once before each backward pass. Inside a block, an
 * activation's gradient is written (=) by the backward function that reaches it first (a linear
 * layer's dx, attention, GELU, the residual connection) and added to by any after it (LayerNorm's
 * dx); the gradients added to from the start (the token selections', for one) are zeroed.
 */
#include "deit.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>


/* ############################################################################################
 *
 *  PART I: THE PAPER
 *
 *  A DeiT is a ViT (Dosovitskiy et al.) with one more token: the distillation token, which
 *  learns from a teacher's predictions through attention as the class token learns from the
 *  labels. Here, in order: utilities (I.1); the matmul in its naive form, on which every
 *  layer is built (I.2); the transformer's layers (I.3); the model with its two tokens and
 *  two heads (I.4); the losses of Sec. 4 of the paper (I.5); the convnet teacher (I.6); the
 *  optimizers and schedule (I.7); CIFAR and DeiT's augmentations (I.8); checkpoints (I.9);
 *  training and evaluation (I.10). Every backward has its derivation in a comment above it.
 *  A "----" banner without a number is a part of the numbered section above it.
 *
 * ########################################################################################## */

/* ============================================================================================
 * I.1 Utilities
 * ========================================================================================== */

/* OpenMP is optional. OMP(...) expands to a #pragma omp when compiling with -fopenmp and to
   nothing otherwise, so that -Wall does not warn about unknown pragmas in a plain build. */
#ifdef _OPENMP
#include <omp.h>
#define OMP(...) _Pragma(#__VA_ARGS__)
static int num_threads(void) { return omp_get_max_threads(); }
static int inside_parallel_region(void) { return omp_get_level() > 0; }
static int thread_index(void) { return omp_get_thread_num(); } /* inside a parallel region: 0 .. team_size()-1 */
static int team_size(void) { return omp_get_num_threads(); }
static void set_threads(int n) {
    if (n > omp_get_num_procs())
        fprintf(stderr, "deit: warning: --threads %d on %d processors: the threads will wait on each other (slower)\n", n,
                omp_get_num_procs());
    if (n > 0) omp_set_num_threads(n);
}
#else
#define OMP(...)
static int num_threads(void) { return 1; }
static int inside_parallel_region(void) { return 0; }
static int thread_index(void) { return 0; }
static int team_size(void) { return 1; }
static void set_threads(int n) { (void)n; }
#endif

/* Vector width for the plain build. `cc -O3 deit.c -lm` compiles for the oldest x86-64 (SSE2: 4
   floats at a time). The loops where the time goes outside the matmul carry VECTOR_CLONES: GCC
   and Clang then compile each of them three times (AVX-512, AVX2 + FMA, plain) and the program
   takes the best one the processor has when it starts (Part II does the same for the matmul).
   With -march=native (make), -fopenmp or -O0 (make debug: what gdb shows stays plain), they are
   compiled once, as any other function. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__OPTIMIZE__) && !defined(__AVX2__) && !defined(_OPENMP)
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VECTOR_CLONES
#endif

static double now_seconds(void) {
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Fatal errors: one line on stderr naming what is wrong, then exit(1). */
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "deit: error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

/* Recoverable errors (bad files): print the message and return -1 to the caller. */
static int report(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "deit: error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return -1;
}

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) die("out of memory allocating %zu bytes", bytes);
    return p;
}

/* snprintf for file names: a name too long for buf is an error, not a silently shorter name. */
static void path_printf(char *buf, size_t size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    if (len < 0 || (size_t)len >= size) die("file name too long (over %zu characters): %.60s...", size - 1, buf);
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) die("out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

/* Whole-tensor memory loops (zero, copy, add), split over the threads: on one thread they
   would leave the other threads waiting while megabytes of activations stream by.          */
VECTOR_CLONES
static void fill_zero(float *x, size_t n) {
    OMP(omp parallel for schedule(static))
    for (size_t i = 0; i < n; i++) x[i] = 0.0f;
}

/* n zeroed floats, every page of them written once now. The system maps the pages of a large
   calloc only when they are first written: for DeiT-Ti's 1.5 GB of activations and gradients
   at batch 128 that took 7 s inside the first training step, which then ran at 15 img/s. */
static float *xcalloc_touched(size_t n) {
    float *p = xmalloc(sizeof(float) * n);
    fill_zero(p, n);
    return p;
}
static void copy_into(float *dst, const float *src, size_t n) {
    OMP(omp parallel for schedule(static))
    for (size_t i = 0; i < n; i++) dst[i] = src[i];
}

/* Random numbers: xorshift64* (Marsaglia / Vigna). One Rng per stream so runs are seeded and
   reproducible; splitmix64 turns (seed, epoch, index) into independent per-sample seeds. */
static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
static void rng_seed(Rng *r, uint64_t seed) { r->state = splitmix64(seed) | 1; }
static uint32_t rng_u32(Rng *r) {
    r->state ^= r->state >> 12;
    r->state ^= r->state << 25;
    r->state ^= r->state >> 27;
    return (uint32_t)((r->state * 0x2545F4914F6CDD1Dull) >> 32);
}
static float rng_uniform(Rng *r) { return (rng_u32(r) >> 8) * (1.0f / 16777216.0f); } /* [0,1) */
static int rng_int(Rng *r, int n) { return (int)(((uint64_t)rng_u32(r) * (uint64_t)n) >> 32); }
static float rng_normal(Rng *r) { /* Box-Muller */
    float u1 = rng_uniform(r), u2 = rng_uniform(r);
    if (u1 < 1e-12f) u1 = 1e-12f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530718f * u2);
}
/* Gamma(a, 1) by Marsaglia-Tsang, used for Beta(a, a) in mixup / cutmix. */
static float rng_gamma(Rng *r, float a) {
    if (a < 1.0f) return rng_gamma(r, a + 1.0f) * powf(rng_uniform(r) + 1e-12f, 1.0f / a);
    float d = a - 1.0f / 3.0f, c = 1.0f / sqrtf(9.0f * d);
    for (;;) {
        float x = rng_normal(r), v = 1.0f + c * x;
        if (v <= 0) continue;
        v = v * v * v;
        float u = rng_uniform(r);
        if (logf(u + 1e-12f) < 0.5f * x * x + d - d * v + d * logf(v)) return d * v;
    }
}
static float rng_beta(Rng *r, float a) {
    float x = rng_gamma(r, a), y = rng_gamma(r, a);
    if (x + y == 0.0f) return rng_uniform(r) < 0.5f ? 0.0f : 1.0f; /* both underflowed (tiny a): Beta is then ~ a coin flip */
    return x / (x + y);
}

/* ============================================================================================
 * I.2 The matmul
 *
 * Every linear layer, every convolution (via im2col) and all their backward passes are one
 * product  C += A * B  (matmul), or  C = A * B + bias  (matmul_store), with A (M x K),
 * B (K x N), C (M x N). The three products of a linear
 * layer only differ in which operand is read transposed, so matmul() takes each operand with
 * a row stride and a column stride:  A(i,k) = A[i*a_rs + k*a_cs],  B(k,j) = B[k*b_rs + j*b_cs].
 * ========================================================================================== */

/* The naive matmul: the textbook three loops. Their order changes the speed, not the result:
   the innermost loop should walk memory with unit stride, so that every cache line loaded is
   used whole and the compiler can vectorize. When B's rows are contiguous (b_cs == 1), the
   order i-k-j does that: row i of C gets row k of B times A(i,k), for k = 0..K-1. When B is
   read transposed (its columns contiguous), the order i-j-k does: C(i,j) is the dot product of
   row i of A and column j of B. (The textbook i-j-k with B's rows contiguous reads B a column
   at a time, N floats apart: about 20x slower; ./deit bench shows all three.)              */
static void matmul_naive(float *C, int ldc, const float *A, int a_rs, int a_cs,
                         const float *B, int b_rs, int b_cs, int M, int N, int K) {
    if (b_cs == 1) {
        for (int i = 0; i < M; i++)
            for (int k = 0; k < K; k++) {
                float a_ik = A[(size_t)i * a_rs + (size_t)k * a_cs];
                const float *b_row = B + (size_t)k * b_rs;
                float *c_row = C + (size_t)i * ldc;
                for (int j = 0; j < N; j++) c_row[j] += a_ik * b_row[j];
            }
    } else {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                float sum = 0.0f;
                for (int k = 0; k < K; k++) sum += A[(size_t)i * a_rs + (size_t)k * a_cs] * B[(size_t)k * b_rs + (size_t)j * b_cs];
                C[(size_t)i * ldc + j] += sum;
            }
    }
}

/* Every product of Part I goes through here, except the convolutions that Part II computes
   without im2col (trick 6, with the fast matmul only), which call its kernels directly. One
   switch picks the implementation:
   the naive loops above, or matmul_fast (Part II), which gives the same numbers up to float
   rounding, 50x sooner. --matmul naive|fast sets it; make debug builds with naive as default,
   so that stepping into linear_backward in gdb lands in the three loops above.             */
#ifndef DEIT_MATMUL_FAST
#define DEIT_MATMUL_FAST 1
#endif
static int matmul_use_fast = DEIT_MATMUL_FAST;
static void matmul_fast(float *C, int ldc, const float *A, int a_rs, int a_cs, /* hook: Part II */
                        const float *B, int b_rs, int b_cs, int M, int N, int K, int store, const float *bias);

/* C += A B */
static void matmul(float *C, int ldc, const float *A, int a_rs, int a_cs,
                   const float *B, int b_rs, int b_cs, int M, int N, int K) {
    if (matmul_use_fast) matmul_fast(C, ldc, A, a_rs, a_cs, B, b_rs, b_cs, M, N, K, 0, NULL);
    else matmul_naive(C, ldc, A, a_rs, a_cs, B, b_rs, b_cs, M, N, K);
}

/* C = A B, plus bias[j] in every row when bias is given; C's old values are not read. Here:
   fill C with the bias (or zeros), then add the product. The fast version starts each tile of
   C from the bias in the registers that add up its products: the first slice of K stores C
   without reading it (later slices, where K > 256, add to it).                              */
static void matmul_store(float *C, int ldc, const float *bias, const float *A, int a_rs, int a_cs,
                         const float *B, int b_rs, int b_cs, int M, int N, int K) {
    if (matmul_use_fast && K > 0) {
        matmul_fast(C, ldc, A, a_rs, a_cs, B, b_rs, b_cs, M, N, K, 1, bias);
        return;
    }
    for (int i = 0; i < M; i++) /* (also with K = 0: no product, C = bias) */
        for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = bias ? bias[j] : 0.0f;
    matmul_naive(C, ldc, A, a_rs, a_cs, B, b_rs, b_cs, M, N, K);
}

/* Linear layer, y = x W^T + b, with W stored (out, in) as in PyTorch.
     inp (M, K), w (N, K), b (N) -> out (M, N)                                             */
static void linear_forward(float *out, const float *inp, const float *w, const float *b, int M, int K, int N) {
    matmul_store(out, N, b, inp, K, 1, w, 1, K, M, N, K); /* B(k,j) = w[j*K + k]: W read transposed */
}

/* Backward of y = x W^T + b:
     dx = dy W          (M,N)(N,K)  -> (M,K)
     dW = dy^T x        (N,M)(M,K)  -> (N,K)
     db = sum over rows of dy
   dx is written (x gets no other gradient before this one: see deit_zero_grad); dW and db
   are added to, as every parameter's gradient is.                                         */
VECTOR_CLONES
static void linear_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                            const float *w, int M, int K, int N) {
    if (dinp) matmul_store(dinp, K, NULL, dout, N, 1, w, K, 1, M, K, N);
    matmul(dw, K, dout, 1, N, inp, K, 1, N, K, M); /* A(i,k) = dout[k*N + i]: dy read transposed */
    if (db) {
        OMP(omp parallel for schedule(static))
        for (int j0 = 0; j0 < N; j0 += 64) { /* each thread owns a range of columns */
            int width = N - j0 < 64 ? N - j0 : 64;
            float sum[64] = {0}; /* in registers: db[j] += ... row after row waited on memory */
            for (int i = 0; i < M; i++) {
                const float *dy = dout + (size_t)i * N + j0;
                if (width == 64) for (int j = 0; j < 64; j++) sum[j] += dy[j]; /* constant count: vectorized */
                else for (int j = 0; j < width; j++) sum[j] += dy[j];
            }
            for (int j = 0; j < width; j++) db[j0 + j] += sum[j];
        }
    }
}

/* ============================================================================================
 * I.3 The vision transformer, layer by layer (paper Sec. 3 and 4; ViT of Dosovitskiy et al.)
 * ========================================================================================== */

/* ---- I.3.1 Patch embedding ---------------------------------------------------------------
   The image (C, S, S) is cut into N = (S/P)^2 patches of C x P x P numbered row-major, each
   flattened in (channel, row, col) order; a linear map takes each to D numbers. This equals
   the paper's P x P convolution with stride P (its kernel flattened the same way).         */
static void im2patch(float *patches, const float *images, int B, int C, int S, int P) {
    int G = S / P, N = G * G, K = C * P * P;
    OMP(omp parallel for schedule(static))
    for (int b = 0; b < B; b++)
        for (int n = 0; n < N; n++) {
            int py = n / G, px = n % G;
            float *dst = patches + ((size_t)b * N + n) * K;
            for (int c = 0; c < C; c++)
                for (int dy = 0; dy < P; dy++) {
                    const float *src = images + (((size_t)b * C + c) * S + py * P + dy) * S + px * P;
                    for (int dx = 0; dx < P; dx++) *dst++ = src[dx];
                }
        }
}

static void patch_embed_forward(float *out, float *patches, const float *images, const float *w,
                                const float *b, int B, int C, int S, int P, int D) {
    int N = (S / P) * (S / P);
    im2patch(patches, images, B, C, S, P);
    linear_forward(out, patches, w, b, B * N, C * P * P, D);
}

/* The images need no gradient, so only the weights get one: dW = dy^T patches, db = sum dy. */
static void patch_embed_backward(float *dw, float *db, const float *dout, const float *patches,
                                 int B, int C, int S, int P, int D) {
    int N = (S / P) * (S / P);
    linear_backward(NULL, dw, db, dout, patches, NULL, B * N, C * P * P, D);
}

/* ---- I.3.2 Class token, distillation token, position embedding ---------------------------
   x[b] = [cls + pos_0, dist + pos_1, patch_1 + pos_2, ..., patch_N + pos_{T-1}]
   Without a distillation token: [cls + pos_0, patch_1 + pos_1, ...].
   At another image size, the patch part of pos is resized as a grid (paper Sec. 3, "Fixing the
   positional encoding across resolutions"): deit_resize, I.8.6.                             */
VECTOR_CLONES
static void tokens_forward(float *x, const float *patch_emb, const float *cls, const float *dist,
                           const float *pos, int B, int N, int D, int has_dist) {
    int T = 1 + has_dist + N;
    OMP(omp parallel for schedule(static))
    for (int b = 0; b < B; b++) {
        float *xb = x + (size_t)b * T * D;
        for (int i = 0; i < D; i++) xb[i] = cls[i] + pos[i];
        if (has_dist)
            for (int i = 0; i < D; i++) xb[D + i] = dist[i] + pos[D + i];
        for (int n = 0; n < N; n++) {
            int t = 1 + has_dist + n;
            const float *pe = patch_emb + ((size_t)b * N + n) * D;
            for (int i = 0; i < D; i++) xb[(size_t)t * D + i] = pe[i] + pos[(size_t)t * D + i];
        }
    }
}

/* Sums are linear: each token's gradient flows unchanged to its source; the class and
   distillation tokens and the position embedding are shared by the batch, so sum over b. */
VECTOR_CLONES
static void tokens_backward(float *dpatch_emb, float *dcls, float *ddist, float *dpos, const float *dx,
                            int B, int N, int D, int has_dist) {
    int T = 1 + has_dist + N;
    OMP(omp parallel for schedule(static))
    for (int b = 0; b < B; b++)
        for (int n = 0; n < N; n++) {
            const float *g = dx + ((size_t)b * T + 1 + has_dist + n) * D;
            float *dpe = dpatch_emb + ((size_t)b * N + n) * D;
            for (int i = 0; i < D; i++) dpe[i] += g[i];
        }
    OMP(omp parallel for schedule(static))
    for (int t = 0; t < T; t++) /* each thread owns whole rows of dpos */
        for (int b = 0; b < B; b++) {
            const float *g = dx + ((size_t)b * T + t) * D;
            for (int i = 0; i < D; i++) dpos[(size_t)t * D + i] += g[i];
        }
    for (int b = 0; b < B; b++) {
        const float *xb = dx + (size_t)b * T * D;
        for (int i = 0; i < D; i++) dcls[i] += xb[i];
        if (has_dist)
            for (int i = 0; i < D; i++) ddist[i] += xb[D + i];
    }
}

/* ---- I.3.3 LayerNorm (eps 1e-6), over the last dimension of each of R rows ----------------
   y = (x - mean) * rstd * w + b,   rstd = 1 / sqrt(var + eps)                              */
#define LN_EPS 1e-6f

/* sum of (x[i] - c)^p over i < n, p = 1 or 2. One running sum would be a chain of n adds that
   the compiler must keep in order (float addition is not associative); sixteen partial sums
   (lane j takes every 16th number) let it do sixteen adds with one vector instruction.      */
#define SUM_LANES 16
static inline float sum_pow(const float *x, float c, int n, int p) {
    float lane[SUM_LANES] = {0};
    int i = 0;
    for (; i + SUM_LANES <= n; i += SUM_LANES)
        for (int j = 0; j < SUM_LANES; j++) {
            float d = x[i + j] - c;
            lane[j] += p == 2 ? d * d : d;
        }
    for (; i < n; i++) lane[0] += p == 2 ? (x[i] - c) * (x[i] - c) : x[i] - c;
    float sum = 0.0f;
    for (int j = 0; j < SUM_LANES; j++) sum += lane[j];
    return sum;
}

VECTOR_CLONES
static void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                              const float *b, int R, int D) {
    OMP(omp parallel for schedule(static))
    for (int r = 0; r < R; r++) {
        const float *x = inp + (size_t)r * D;
        float m = sum_pow(x, 0.0f, D, 1) / D;
        float v = sum_pow(x, m, D, 2) / D;
        float s = 1.0f / sqrtf(v + LN_EPS);
        float *y = out + (size_t)r * D;
        for (int i = 0; i < D; i++) y[i] = (x[i] - m) * s * w[i] + b[i];
        mean[r] = m;
        rstd[r] = s;
    }
}

/* With xhat = (x - mean) * rstd and g = dy * w:
     dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
     dw = sum over rows of dy * xhat,   db = sum over rows of dy
   dx is added to (+=): LayerNorm's input is the residual stream, whose gradient the residual
   connection's backward has already written (see the conventions at the top).              */
VECTOR_CLONES
static void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                               const float *w, const float *mean, const float *rstd, int R, int D) {
    OMP(omp parallel for schedule(static))
    for (int r = 0; r < R; r++) {
        const float *x = inp + (size_t)r * D, *dy = dout + (size_t)r * D;
        float m = mean[r], s = rstd[r];
        float g_mean = 0.0f, gx_mean = 0.0f;
        for (int i = 0; i < D; i++) {
            float g = dy[i] * w[i];
            g_mean += g;
            gx_mean += g * (x[i] - m) * s;
        }
        g_mean /= D;
        gx_mean /= D;
        float *dx = dinp + (size_t)r * D;
        for (int i = 0; i < D; i++) dx[i] += s * (dy[i] * w[i] - g_mean - (x[i] - m) * s * gx_mean);
    }
    OMP(omp parallel for schedule(static))
    for (int i0 = 0; i0 < D; i0 += 16) { /* each thread owns a range of columns of dw, db */
        int width = D - i0 < 16 ? D - i0 : 16;
        float sum_w[16] = {0}, sum_b[16] = {0}; /* in registers, as in linear_backward */
        for (int r = 0; r < R; r++) {
            const float *x = inp + (size_t)r * D + i0, *dy = dout + (size_t)r * D + i0;
            for (int i = 0; i < width; i++) {
                sum_w[i] += dy[i] * (x[i] - mean[r]) * rstd[r];
                sum_b[i] += dy[i];
            }
        }
        for (int i = 0; i < width; i++) dw[i0 + i] += sum_w[i], db[i0 + i] += sum_b[i];
    }
}

/* ---- I.3.4 Multi-head self-attention ------------------------------------------------------
   qkv (B, T, 3D) holds, for each token, q (D) then k (D) then v (D); head h owns numbers
   [h*hd, (h+1)*hd) of each, hd = D/NH. For each image b and head h, with Q, K, V the (T, hd)
   matrices of the head's q, k and v rows:
     score = Q K^T / sqrt(hd)        (T, T): score[t][t2] = q_t . k_t2; no mask, every token sees all
     att   = softmax of each row of score
     out   = att V                   (T, hd), written to out[b, t, h*hd ...]
   Both products are matmul() calls that read Q, K and V where they lie in qkv, through strides:
   Q has rows 3D apart (a_rs = 3D, a_cs = 1), K^T is K read by columns (b_rs = 1, b_cs = 3D).
   One thread takes one (image, head) at a time; the matmuls inside run on that thread alone.
   Queries: only the first Tq tokens ask (Tq = T, except in the last block: see deit_tokens_out).
   Then score, att and out have Tq rows: out is (B, Tq, D), and att keeps its (T, T) place per
   image and head, of which the first Tq rows are written. */
/* exp for the softmax (and phi in gelu_backward). expf from libm is a function call per number,
   which keeps the compiler from vectorizing the loop; this is plain arithmetic that it runs 8
   or 16 numbers at a time:
     exp(x) = 2^n exp(r),  n = x / ln 2 rounded,  r = x - n ln 2 in [-ln2/2, ln2/2]
   exp(r) is its Taylor series to r^6 (the next term, r^7/7!, is at most 1.2e-7), and 2^n is
   the float whose exponent bits are n + 127: they come from the bits of n + 1.5 * 2^23, since
   adding then subtracting 1.5 * 2^23 rounds to an integer (the sum has no bits left for a
   fraction). ln 2 is split in two so that n ln 2 is exact enough. Both callers pass x <= 0 (a
   score minus its row's max; -x^2/2), so x is only raised to -87, where it is below, for 2^n to
   stay a normal float. That clamp is an unsigned minimum of the float's bits (for x < 0 they
   grow with |x|): a float comparison made GCC leave the loop scalar without AVX-512 (dev/SPEED.md,
   "The AVX2 tile, again"). A NaN comes back out through x - x (0 for every finite x); so does
   exp(-inf), NaN here, not 0. test_deit.c measures the error against exp. */
static inline float exp_approx(float x) {
    union { float f; uint32_t bits; } y = {.f = x}, lowest = {.f = -87.0f};
    y.bits = y.bits < lowest.bits ? y.bits : lowest.bits; /* y = max(x, -87) for x <= 0 */
    float shifted = y.f * 1.44269504f + 12582912.0f;      /* 1.5 * 2^23 + n */
    float n = shifted - 12582912.0f;
    float r = (y.f - n * 0.693145752f) - n * 1.42860677e-6f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    union { float f; uint32_t bits; } two_n = {.f = shifted};
    two_n.bits = (two_n.bits - 0x4b400000u + 127u) << 23; /* exponent bits n + 127 */
    return p * two_n.f + (x - x);
}

/* x *= s, and the largest x: the maximum kept in SUM_LANES running maxima side by side (as
   sum_pow), so that the compiler takes 16 at a time. One running maximum is a chain of compares,
   each waiting for the one before: on an Intel Xeon a block's attention_forward ran 12-15% slower. */
static inline float scale_max(float *x, float s, int n) {
    float lane[SUM_LANES];
    for (int j = 0; j < SUM_LANES; j++) lane[j] = -FLT_MAX;
    int i = 0;
    for (; i + SUM_LANES <= n; i += SUM_LANES)
        for (int j = 0; j < SUM_LANES; j++) {
            x[i + j] *= s;
            lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];
        }
    for (; i < n; i++) {
        x[i] *= s;
        lane[0] = x[i] > lane[0] ? x[i] : lane[0];
    }
    float m = lane[0];
    for (int j = 1; j < SUM_LANES; j++) m = lane[j] > m ? lane[j] : m;
    return m;
}

VECTOR_CLONES
static void attention_forward(float *out, float *att, const float *qkv, int B, int T, int Tq, int D, int NH) {
    int hd = D / NH;
    float scale = 1.0f / sqrtf((float)hd);
    OMP(omp parallel for collapse(2) schedule(static))
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *q = qkv + (size_t)b * T * 3 * D + h * hd, *k = q + D, *v = q + 2 * D;
            float *a = att + ((size_t)b * NH + h) * T * T, *o = out + (size_t)b * Tq * D + h * hd;
            matmul_store(a, T, NULL, q, 3 * D, 1, k, 1, 3 * D, Tq, T, hd); /* a = Q K^T */
            for (int t = 0; t < Tq; t++) {                      /* each row: softmax(scale * a[t]) */
                float *row = a + (size_t)t * T, maxv = scale_max(row, scale, T);
                for (int t2 = 0; t2 < T; t2++) row[t2] = exp_approx(row[t2] - maxv);
                float inv = 1.0f / sum_pow(row, 0.0f, T, 1);
                for (int t2 = 0; t2 < T; t2++) row[t2] *= inv;
            }
            matmul_store(o, D, NULL, a, T, 1, v, 3 * D, 1, Tq, hd, T); /* out = att V */
        }
}

/* Backward, for one image b and head h, with dOut (Tq, hd) the gradient of out:
     datt   = dOut V^T                                  (Tq, T)
     dscore = scale * att * (datt - rowsum(att * datt))   row by row: the softmax backward, times
              the 1/sqrt(hd) of the scores; dscore is the gradient of the raw product Q K^T
     dQ     = dscore K,    dK  = dscore^T Q,    dV  = att^T dOut
   (dQ for the Tq query rows; the other rows' queries reached no output: their dQ is 0.)
   dscore (Tq, T) is the thread's own scratch. Each (b, h) writes its own slice of dqkv, all
   of it and nothing else, so the parallel loop is race-free and dqkv needs no zeroing first. */
VECTOR_CLONES
static void attention_backward(float *dqkv, const float *dout, const float *qkv, const float *att,
                               int B, int T, int Tq, int D, int NH) {
    int hd = D / NH;
    float scale = 1.0f / sqrtf((float)hd);
    OMP(omp parallel)
    {
        float *dscore = xmalloc(sizeof(float) * (size_t)Tq * T);
        OMP(omp for collapse(2) schedule(static))
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++) {
                const float *q = qkv + (size_t)b * T * 3 * D + h * hd, *k = q + D, *v = q + 2 * D;
                float *dq = dqkv + (size_t)b * T * 3 * D + h * hd, *dk = dq + D, *dv = dq + 2 * D;
                const float *a = att + ((size_t)b * NH + h) * T * T, *dy = dout + (size_t)b * Tq * D + h * hd;
                matmul_store(dscore, T, NULL, dy, D, 1, v, 1, 3 * D, Tq, T, hd); /* datt = dOut V^T */
                for (int t = 0; t < Tq; t++) {                        /* softmax backward, row by row */
                    const float *a_row = a + (size_t)t * T;
                    float *ds = dscore + (size_t)t * T, dot = 0.0f;
                    for (int t2 = 0; t2 < T; t2++) dot += a_row[t2] * ds[t2];
                    for (int t2 = 0; t2 < T; t2++) ds[t2] = a_row[t2] * (ds[t2] - dot) * scale;
                }
                matmul_store(dq, 3 * D, NULL, dscore, T, 1, k, 3 * D, 1, Tq, hd, T); /* dQ = dscore K */
                for (int t = Tq; t < T; t++) memset(dq + (size_t)t * 3 * D, 0, sizeof(float) * hd);
                matmul_store(dk, 3 * D, NULL, dscore, 1, T, q, 3 * D, 1, T, hd, Tq); /* dK = dscore^T Q */
                matmul_store(dv, 3 * D, NULL, a, 1, T, dy, D, 1, T, hd, Tq);         /* dV = att^T dOut */
            }
        free(dscore);
    }
}

/* ---- I.3.5 MLP: linear, GELU (exact, with erf), linear -------------------------------------
   gelu(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))
   gelu'(x) = Phi(x) + x phi(x),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)

   erf from libm (erff) is a function call per element, which keeps the compiler from
   vectorizing the loop; erf_approx is Abramowitz & Stegun's formula 7.1.28 (3e-7 from erf in exact
   arithmetic; 8.4e-7 at most in float, which test_deit.c measures against erf), and only multiplies, adds
   and divides, so the loops below run 8 or 16 elements at a time:
     erf(t) = 1 - 1 / p^16,  p = 1 + a1 t + a2 t^2 + ... + a6 t^6,  for t >= 0;  erf(-t) = -erf(t) */
static inline float erf_approx(float x) {
    /* t = min(|x|, 9): erf(9) is 1 in float, and p^16 stays finite. Taken on the bits, as in
       exp_approx (for t >= 0 they grow with t; a NaN's are above infinity's, so it becomes 9 here
       and comes back out at the end): a float comparison left the loop scalar with AVX2. */
    union { float f; uint32_t bits; } abs_x = {.f = fabsf(x)}, nine = {.f = 9.0f};
    abs_x.bits = abs_x.bits < nine.bits ? abs_x.bits : nine.bits;
    float t = abs_x.f;
    float u = t * (0.0705230784f + t * (0.0422820123f + t * (0.0092705272f +
                   t * (0.0001520143f + t * (0.0002765672f + t * 0.0000430638f))))); /* p - 1 */
    float p = 1.0f + u, p2 = p * p, p4 = p2 * p2, p8 = p4 * p4;
    /* 1 - 1/p^16 = (p^16 - 1) / p^16, with p^16 - 1 = (p - 1)(p + 1)(p^2 + 1)(p^4 + 1)(p^8 + 1):
       no cancellation near t = 0, where p is close to 1 */
    float e = u * (p + 1.0f) * (p2 + 1.0f) * (p4 + 1.0f) * (p8 + 1.0f) / (p8 * p8);
    e = x < 0.0f ? -e : e;
    return x == x ? e : x; /* a NaN stays NaN */
}

VECTOR_CLONES
static void gelu_forward(float *out, const float *inp, size_t n) {
    OMP(omp parallel for schedule(static))
    for (size_t i = 0; i < n; i++) out[i] = 0.5f * inp[i] * (1.0f + erf_approx(inp[i] * 0.70710678118654752f));
}

/* dinp = dout * gelu'(inp), written. Both Phi and phi are plain arithmetic here (erf_approx,
   exp_approx): the loop vectorizes. */
VECTOR_CLONES
static void gelu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
    OMP(omp parallel for schedule(static))
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float cdf = 0.5f * (1.0f + erf_approx(x * 0.70710678118654752f)); /* Phi(x) */
        float pdf = 0.39894228040143268f * exp_approx(-0.5f * x * x);      /* phi(x) */
        dinp[i] = dout[i] * (cdf + x * pdf);
    }
}

/* ---- I.3.6 Residual connection with stochastic depth (drop path) ---------------------------
   out = x + scale[b] * branch, where scale[b] is 1 at inference and, in training, 0 with
   probability rate or 1/(1 - rate) otherwise, drawn per sample (Huang et al. 2016).
   Backward: dx = dout,  dbranch = scale[b] * dout (both written: the first gradients to reach
   them; LayerNorm's backward adds its part to dx after).
   Per image: n numbers of out and branch; x (and dx) may hold more, x_n per image, of which the
   first n are used (the last block, which keeps only the heads' tokens: see deit_tokens_out); the
   rest of dx is 0 from here.                                                                */
static void drop_path_sample(float *scale, float rate, int B, Rng *rng) {
    float keep = 1.0f - rate;
    for (int b = 0; b < B; b++) scale[b] = (rate > 0.0f) ? (rng_uniform(rng) < keep ? 1.0f / keep : 0.0f) : 1.0f;
}

VECTOR_CLONES
static void residual_forward(float *out, const float *x, size_t x_n, const float *branch, const float *scale, int B,
                             size_t n) {
    OMP(omp parallel for schedule(static))
    for (int b = 0; b < B; b++) {
        float s = scale[b], *o = out + (size_t)b * n;
        const float *xb = x + (size_t)b * x_n, *f = branch + (size_t)b * n;
        for (size_t i = 0; i < n; i++) o[i] = xb[i] + s * f[i];
    }
}

VECTOR_CLONES
static void residual_backward(float *dx, size_t x_n, float *dbranch, const float *dout, const float *scale, int B,
                              size_t n) {
    OMP(omp parallel for schedule(static))
    for (int b = 0; b < B; b++) {
        float s = scale[b], *dxb = dx + (size_t)b * x_n, *df = dbranch + (size_t)b * n;
        const float *dy = dout + (size_t)b * n;
        for (size_t i = 0; i < n; i++) {
            dxb[i] = dy[i];
            df[i] = s * dy[i];
        }
        for (size_t i = n; i < x_n; i++) dxb[i] = 0.0f;
    }
}

/* ---- I.3.7 The heads read one token: the class token (t = 0) or the distillation token (t = 1) */
static void select_token_forward(float *out, const float *x, int t, int B, int T, int D) {
    for (int b = 0; b < B; b++) memcpy(out + (size_t)b * D, x + ((size_t)b * T + t) * D, sizeof(float) * D);
}

/* out[b] = x[b, t]  =>  dx[b, t] += dout[b], the other tokens' dx untouched (added to: both
   heads' selections reach the same dx, which deit_zero_grad zeroes) */
static void select_token_backward(float *dx, const float *dout, int t, int B, int T, int D) {
    for (int b = 0; b < B; b++)
        for (int i = 0; i < D; i++) dx[((size_t)b * T + t) * D + i] += dout[(size_t)b * D + i];
}

/* ============================================================================================
 * I.4 The model: DeiT = ViT + distillation token
 * ========================================================================================== */

/* Presets for 32x32 CIFAR images with 4x4 patches (64 patches): Table 1 of the paper. */
typedef struct {
    const char *name;
    int dim, depth, heads;
} ModelPreset;
static const ModelPreset model_presets[] = {
    {"tiny", 192, 12, 3}, {"small", 384, 12, 6}, {"base", 768, 12, 12},
};

static int deit_preset(DeiTConfig *cfg, const char *name) {
    for (size_t i = 0; i < sizeof(model_presets) / sizeof(model_presets[0]); i++)
        if (strcmp(name, model_presets[i].name) == 0) {
            cfg->img_size = 32;
            cfg->patch_size = 4;
            cfg->in_chans = 3;
            cfg->num_classes = 10;
            cfg->dim = model_presets[i].dim;
            cfg->depth = model_presets[i].depth;
            cfg->heads = model_presets[i].heads;
            cfg->mlp_hidden = 4 * model_presets[i].dim;
            cfg->dist_token = 1;
            return 0;
        }
    return -1;
}


/* The table of parameter tensors, in checkpoint order: name, offset (filled below), size,
   decay, trainable, lr_mult. decay = 1 marks the tensors AdamW's weight decay applies to: the weight
   matrices. Biases, LayerNorm, the class/distillation tokens and the position embedding get
   none (the reference's no-weight-decay list; Table 9's 0.05 is for the rest). */
static void deit_tensor_table(TensorInfo *t, const DeiTConfig *c) {
    size_t D = c->dim, L = c->depth, H = c->mlp_hidden, C = c->num_classes;
    size_t K = (size_t)c->in_chans * c->patch_size * c->patch_size;
    size_t N = (size_t)(c->img_size / c->patch_size) * (c->img_size / c->patch_size);
    size_t T = 1 + c->dist_token + N, dt = c->dist_token;
    TensorInfo table[NUM_PARAM_TENSORS] = { /* name, offset, size, decay, trainable, lr_mult */
        {"patch_w", 0, D * K, 1, 1, 1},         {"patch_b", 0, D, 0, 1, 1},
        {"cls_token", 0, D, 0, 1, 1},           {"dist_token", 0, dt * D, 0, 1, 1},
        {"pos_embed", 0, T * D, 0, 1, 1},       {"ln1_w", 0, L * D, 0, 1, 1},
        {"ln1_b", 0, L * D, 0, 1, 1},           {"qkv_w", 0, L * 3 * D * D, 1, 1, 1},
        {"qkv_b", 0, L * 3 * D, 0, 1, 1},       {"proj_w", 0, L * D * D, 1, 1, 1},
        {"proj_b", 0, L * D, 0, 1, 1},          {"ln2_w", 0, L * D, 0, 1, 1},
        {"ln2_b", 0, L * D, 0, 1, 1},           {"fc1_w", 0, L * H * D, 1, 1, 1},
        {"fc1_b", 0, L * H, 0, 1, 1},           {"fc2_w", 0, L * D * H, 1, 1, 1},
        {"fc2_b", 0, L * D, 0, 1, 1},           {"lnf_w", 0, D, 0, 1, 1},
        {"lnf_b", 0, D, 0, 1, 1},               {"head_w", 0, C * D, 1, 1, 1},
        {"head_b", 0, C, 0, 1, 1},              {"head_dist_w", 0, dt * C * D, 1, 1, 1},
        {"head_dist_b", 0, dt * C, 0, 1, 1},
    };
    size_t offset = 0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        t[i] = table[i];
        t[i].offset = offset;
        offset += table[i].size;
    }
}

/* Point the named fields of a ParameterTensors into one block of memory. */
static void point_parameters(ParameterTensors *p, float *memory, const TensorInfo *t) {
    float **ptrs[NUM_PARAM_TENSORS] = {
        &p->patch_w, &p->patch_b, &p->cls_token, &p->dist_token, &p->pos_embed, &p->ln1_w, &p->ln1_b,
        &p->qkv_w, &p->qkv_b, &p->proj_w, &p->proj_b, &p->ln2_w, &p->ln2_b, &p->fc1_w, &p->fc1_b,
        &p->fc2_w, &p->fc2_b, &p->lnf_w, &p->lnf_b, &p->head_w, &p->head_b, &p->head_dist_w, &p->head_dist_b,
    };
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) *ptrs[i] = memory + t[i].offset;
}

static void deit_build(DeiT *m, const DeiTConfig *cfg) {
    memset(m, 0, sizeof(*m));
    m->config = *cfg;
    m->num_patches = (cfg->img_size / cfg->patch_size) * (cfg->img_size / cfg->patch_size);
    m->num_tokens = 1 + cfg->dist_token + m->num_patches;
    deit_tensor_table(m->tensors, cfg);
    m->num_params = m->tensors[NUM_PARAM_TENSORS - 1].offset + m->tensors[NUM_PARAM_TENSORS - 1].size;
    m->params_memory = xcalloc(m->num_params, sizeof(float));
    m->grads_memory = xcalloc(m->num_params, sizeof(float));
    point_parameters(&m->params, m->params_memory, m->tensors);
    point_parameters(&m->grads, m->grads_memory, m->tensors);
    rng_seed(&m->rng, 1);
}

static void deit_free(DeiT *m) {
    free(m->params_memory);
    free(m->grads_memory);
    free(m->acts_memory);
    free(m->grads_acts_memory);
    memset(m, 0, sizeof(*m));
}

/* Truncated normal N(0, std^2) cut at [-2, 2] (absolute, as timm's trunc_normal_(std=.02)). */
static void trunc_normal(float *x, size_t n, float std, Rng *rng) {
    for (size_t i = 0; i < n; i++) {
        float v;
        do v = std * rng_normal(rng); while (v < -2.0f || v > 2.0f);
        x[i] = v;
    }
}

static void fill_value(float *x, size_t n, float v) {
    for (size_t i = 0; i < n; i++) x[i] = v;
}

/* Init as the reference: linear weights, class/distillation tokens and position embedding ~
   trunc normal(0.02); biases 0; LayerNorm weight 1, bias 0. One difference: the patch embedding
   is a linear map here and is initialised like the others; the reference's is a Conv2d that
   keeps PyTorch's default, uniform(+-1/sqrt(fan_in)) (+-0.14 for 4x4x3 patches). */
static void deit_init(DeiT *m, uint64_t seed) {
    Rng rng;
    rng_seed(&rng, seed);
    const DeiTConfig *c = &m->config;
    size_t D = c->dim, L = c->depth, H = c->mlp_hidden, C = c->num_classes, T = m->num_tokens;
    size_t K = (size_t)c->in_chans * c->patch_size * c->patch_size, dt = c->dist_token;
    ParameterTensors *p = &m->params;
    memset(m->params_memory, 0, sizeof(float) * m->num_params); /* every bias, and the LayerNorm biases: 0 */
    trunc_normal(p->patch_w, D * K, 0.02f, &rng);
    trunc_normal(p->cls_token, D, 0.02f, &rng);
    trunc_normal(p->dist_token, dt * D, 0.02f, &rng);
    trunc_normal(p->pos_embed, T * D, 0.02f, &rng);
    fill_value(p->ln1_w, L * D, 1.0f);
    trunc_normal(p->qkv_w, L * 3 * D * D, 0.02f, &rng);
    trunc_normal(p->proj_w, L * D * D, 0.02f, &rng);
    fill_value(p->ln2_w, L * D, 1.0f);
    trunc_normal(p->fc1_w, L * H * D, 0.02f, &rng);
    trunc_normal(p->fc2_w, L * D * H, 0.02f, &rng);
    fill_value(p->lnf_w, D, 1.0f);
    trunc_normal(p->head_w, C * D, 0.02f, &rng);
    trunc_normal(p->head_dist_w, dt * C * D, 0.02f, &rng);
    rng_seed(&m->rng, seed ^ 0xD15C0ull);
}

/* Activations are laid out like the parameters: a table of sizes, one allocation. The order
   of the table is the order in memory, on which deit_zero_grad's two ranges rely. */
static void deit_alloc_activations(DeiT *m, int B) {
    if (m->acts_memory && B <= m->batch_size) return;
    free(m->acts_memory);
    free(m->grads_acts_memory);
    const DeiTConfig *c = &m->config;
    size_t L = c->depth, D = c->dim, H = c->mlp_hidden, C = c->num_classes, NH = c->heads;
    size_t N = m->num_patches, T = m->num_tokens, K = (size_t)c->in_chans * c->patch_size * c->patch_size;
    size_t Bs = B;
    size_t sizes[NUM_ACTIVATION_TENSORS] = {
        Bs * N * K, Bs * N * D, Bs * T * D,                         /* patches, patch_emb, x0 */
        L * Bs * T * D, L * Bs * T, L * Bs * T,                     /* ln1, mean, rstd */
        L * Bs * T * 3 * D, L * Bs * NH * T * T, L * Bs * T * D,    /* qkv, att, atty */
        L * Bs * T * D, L * Bs * T * D,                             /* attproj, resid1 */
        L * Bs * T * D, L * Bs * T, L * Bs * T,                     /* ln2, mean, rstd */
        L * Bs * T * H, L * Bs * T * H, L * Bs * T * D, L * Bs * T * D, /* fc1, gelu, fc2, resid2 */
        L * 2 * Bs,                                                 /* drop_scale */
        Bs * T * D, Bs * T, Bs * T,                                 /* lnf, mean, rstd */
        Bs * D, Bs * D, Bs * C, Bs * C, Bs * C,                     /* cls_out, dist_out, logits, logits_dist, logits_mean */
    };
    /* Which of them receive a gradient in the backward pass, and how much of it grads_acts holds.
       0: none (the patches, whose images need none, the LayerNorm statistics, the attention
       probabilities, the drop-path scales and the inference output: NULL in grads_acts, no memory
       allocated or zeroed). A: all of it. 1: one block's slice (ln1 .. fc2): a block's activation
       gradients are used only while the backward pass is in that block, so every block reuses
       the same one, each tensor written anew by its first backward step. 2: two slices (resid2):
       the gradient arriving at a block and the one it passes to the block below. */
    enum { A = -1 };
    static const int grad_slices[NUM_ACTIVATION_TENSORS] = {
        0, A, A,       1, 0, 0,       1, 0, 1,    1, 1,    1, 0, 0,
        1, 1, 1, 2,    0,             A, 0, 0,    A, A, A, A, 0,
    };
    float **ptrs[NUM_ACTIVATION_TENSORS], **gptrs[NUM_ACTIVATION_TENSORS];
    ActivationTensors *a = &m->acts, *g = &m->grads_acts;
#define ACT_PTRS(s, arr)                                                                         \
    do {                                                                                         \
        float **tmp[NUM_ACTIVATION_TENSORS] = {                                                  \
            &s->patches, &s->patch_emb, &s->x0, &s->ln1, &s->ln1_mean, &s->ln1_rstd, &s->qkv,    \
            &s->att, &s->atty, &s->attproj, &s->resid1, &s->ln2, &s->ln2_mean, &s->ln2_rstd,     \
            &s->fc1, &s->gelu, &s->fc2, &s->resid2, &s->drop_scale, &s->lnf, &s->lnf_mean,       \
            &s->lnf_rstd, &s->cls_out, &s->dist_out, &s->logits, &s->logits_dist,                \
            &s->logits_mean};                                                                    \
        memcpy(arr, tmp, sizeof(tmp));                                                           \
    } while (0)
    ACT_PTRS(a, ptrs);
    ACT_PTRS(g, gptrs);
#undef ACT_PTRS
    size_t gsizes[NUM_ACTIVATION_TENSORS];
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++)
        gsizes[i] = grad_slices[i] == A ? sizes[i] : sizes[i] / L * grad_slices[i];
    size_t total = 0, total_grads = 0;
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) {
        m->act_sizes[i] = sizes[i];
        total += sizes[i];
        total_grads += gsizes[i];
    }
    m->num_acts = total;
    m->num_grads_acts = total_grads;
    m->acts_memory = xcalloc_touched(total);
    m->grads_acts_memory = xcalloc_touched(total_grads);
    size_t off = 0, goff = 0;
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) {
        *ptrs[i] = m->acts_memory + off;
        *gptrs[i] = gsizes[i] ? m->grads_acts_memory + goff : NULL;
        off += sizes[i];
        goff += gsizes[i];
    }
    m->batch_size = B;
}

/* The heads read two tokens of the last block's output: the class and distillation tokens
   (one without the distillation token). Inside a block only attention mixes tokens; after it,
   each token goes through the projection, the residual adds, LayerNorm and the MLP on its own.
   So in the last block only those tokens ask a query, and the rest of the block and the final
   norm run on them alone: their keys and values still come from all T tokens, and the logits
   are the same as with all T tokens computed, for ~6% less work in DeiT-Ti/4 (R = 2 of T = 66
   rows in proj, fc1 and fc2 of one block of 12). Tokens that leave block l (rows per image of
   its atty, attproj, resid1, ln2, fc1, gelu, fc2 and resid2, and then of lnf): */
static int deit_last_block_all_tokens = 0; /* 1: every block keeps all T tokens (tests) */
static int deit_tokens_out(const DeiT *m, int l) {
    int last = l == m->config.depth - 1 && !deit_last_block_all_tokens;
    return last ? 1 + m->config.dist_token : m->num_tokens;
}

/* Forward pass of B images (B, in_chans, S, S), already normalised. train = 1 turns on drop
   path. Leaves acts.logits, acts.logits_dist and acts.logits_mean (the inference output). */
static void deit_forward(DeiT *m, const float *images, int B, int train) {
    deit_alloc_activations(m, B);
    const DeiTConfig *c = &m->config;
    int L = c->depth, D = c->dim, H = c->mlp_hidden, NH = c->heads, C = c->num_classes;
    int N = m->num_patches, T = m->num_tokens;
    size_t BTD = (size_t)B * T * D, BTH = (size_t)B * T * H, BT = (size_t)B * T;
    ParameterTensors *p = &m->params;
    ActivationTensors *a = &m->acts;

    patch_embed_forward(a->patch_emb, a->patches, images, p->patch_w, p->patch_b, B, c->in_chans,
                        c->img_size, c->patch_size, D);
    tokens_forward(a->x0, a->patch_emb, p->cls_token, p->dist_token, p->pos_embed, B, N, D, c->dist_token);

    /* The L transformer blocks (ViT's pre-norm block, the paper's Fig. 2 between tokens and
       heads): x = x + attention(LN(x)), then x = x + MLP(LN(x)), each branch with drop path. */
    const float *x = a->x0;
    for (int l = 0; l < L; l++) {
        int Tq = deit_tokens_out(m, l); /* T, or the heads' tokens in the last block */
        size_t BQ = (size_t)B * Tq;
        /* drop-path rate grows linearly with depth: block l uses rate * l / (L - 1) */
        float rate = (train && L > 1) ? m->drop_path * l / (L - 1) : 0.0f;
        float *scale1 = a->drop_scale + (size_t)l * 2 * B, *scale2 = scale1 + B;
        drop_path_sample(scale1, rate, B, &m->rng);
        drop_path_sample(scale2, rate, B, &m->rng);
        float *ln1 = a->ln1 + l * BTD, *ln1_mean = a->ln1_mean + l * BT, *ln1_rstd = a->ln1_rstd + l * BT;
        float *qkv = a->qkv + l * 3 * BTD, *att = a->att + (size_t)l * B * NH * T * T;
        float *atty = a->atty + l * BTD, *attproj = a->attproj + l * BTD, *resid1 = a->resid1 + l * BTD;
        float *ln2 = a->ln2 + l * BTD, *ln2_mean = a->ln2_mean + l * BT, *ln2_rstd = a->ln2_rstd + l * BT;
        float *fc1 = a->fc1 + l * BTH, *gelu = a->gelu + l * BTH, *fc2 = a->fc2 + l * BTD;
        float *resid2 = a->resid2 + l * BTD;

        /* x = x + drop_path(attention(LayerNorm(x))) */
        layernorm_forward(ln1, ln1_mean, ln1_rstd, x, p->ln1_w + l * D, p->ln1_b + l * D, B * T, D);
        linear_forward(qkv, ln1, p->qkv_w + (size_t)l * 3 * D * D, p->qkv_b + l * 3 * D, B * T, D, 3 * D);
        attention_forward(atty, att, qkv, B, T, Tq, D, NH);
        linear_forward(attproj, atty, p->proj_w + (size_t)l * D * D, p->proj_b + l * D, BQ, D, D);
        residual_forward(resid1, x, (size_t)T * D, attproj, scale1, B, (size_t)Tq * D);
        /* x = x + drop_path(MLP(LayerNorm(x))) */
        layernorm_forward(ln2, ln2_mean, ln2_rstd, resid1, p->ln2_w + l * D, p->ln2_b + l * D, BQ, D);
        linear_forward(fc1, ln2, p->fc1_w + (size_t)l * H * D, p->fc1_b + l * H, BQ, D, H);
        gelu_forward(gelu, fc1, BQ * H);
        linear_forward(fc2, gelu, p->fc2_w + (size_t)l * D * H, p->fc2_b + l * D, BQ, H, D);
        residual_forward(resid2, resid1, (size_t)Tq * D, fc2, scale2, B, (size_t)Tq * D);
        x = resid2;
    }
    int R = deit_tokens_out(m, L - 1); /* tokens per image in x now */
    layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, x, p->lnf_w, p->lnf_b, B * R, D);
    select_token_forward(a->cls_out, a->lnf, 0, B, R, D);
    linear_forward(a->logits, a->cls_out, p->head_w, p->head_b, B, D, C);
    if (c->dist_token) {
        select_token_forward(a->dist_out, a->lnf, 1, B, R, D);
        linear_forward(a->logits_dist, a->dist_out, p->head_dist_w, p->head_dist_b, B, D, C);
        /* Inference output: the mean of the two heads' logits, as in the official code. The
           paper (Sec. 4, "joint classifiers") adds the two softmax outputs instead; the
           prediction differs only when the heads disagree a lot. */
        for (size_t i = 0; i < (size_t)B * C; i++) a->logits_mean[i] = 0.5f * (a->logits[i] + a->logits_dist[i]);
    } else {
        memcpy(a->logits_mean, a->logits, sizeof(float) * B * C);
    }
}

/* Zero the gradients that are added to from the start: every parameter's, and, outside the
   blocks, the logits' (deit_loss adds to logits and logits_dist), lnf's (both token selections
   add), the final norm's input (resid2's slot for block L - 1) and the patch embeddings'. They
   are zeroed as two ranges of grads_acts: everything before ln1 (patch_emb, x0) and everything
   from resid2 on (resid2's two slots, lnf, cls_out, dist_out, logits, logits_dist), which holds
   all of these because of the order of the tensors in deit_alloc_activations (x0, resid2's
   other slot and the heads' inputs are zeroed too, and then written). A block's own gradients
   (ln1 .. fc2) and the one it passes down are written by their first backward step (see the
   conventions at the top): not zeroing them saves 700 MB of stores a step at batch 64
   (dev/SPEED.md). The threads share the work (fill_zero). */
static void deit_zero_grad(DeiT *m) {
    memset(m->grads_memory, 0, sizeof(float) * m->num_params);
    if (!m->grads_acts_memory) return;
    float *start = m->grads_acts_memory, *end = start + m->num_grads_acts;
    float *block = m->grads_acts.ln1, *block_end = m->grads_acts.resid2;
    fill_zero(start, (size_t)(block - start));
    fill_zero(block_end, (size_t)(end - block_end));
}

/* Backward pass: the forward's layers in reverse, from grads_acts.logits(_dist) to grads. */
static void deit_backward(DeiT *m, int B) {
    const DeiTConfig *c = &m->config;
    int L = c->depth, D = c->dim, H = c->mlp_hidden, NH = c->heads, C = c->num_classes;
    int N = m->num_patches, T = m->num_tokens;
    size_t BTD = (size_t)B * T * D, BTH = (size_t)B * T * H, BT = (size_t)B * T;
    ParameterTensors *p = &m->params, *g = &m->grads;
    ActivationTensors *a = &m->acts, *da = &m->grads_acts;

    int R = deit_tokens_out(m, L - 1); /* tokens per image after the last block */
    if (c->dist_token) {
        linear_backward(da->dist_out, g->head_dist_w, g->head_dist_b, da->logits_dist, a->dist_out,
                        p->head_dist_w, B, D, C);
        select_token_backward(da->lnf, da->dist_out, 1, B, R, D);
    }
    linear_backward(da->cls_out, g->head_w, g->head_b, da->logits, a->cls_out, p->head_w, B, D, C);
    select_token_backward(da->lnf, da->cls_out, 0, B, R, D);
    const float *x_last = a->resid2 + (size_t)(L - 1) * BTD;
    float *dx_last = da->resid2 + (size_t)((L - 1) % 2) * BTD; /* da->resid2 holds two: block l's at l % 2 */
    layernorm_backward(dx_last, g->lnf_w, g->lnf_b, da->lnf, x_last, p->lnf_w, a->lnf_mean, a->lnf_rstd, B * R, D);

    for (int l = L - 1; l >= 0; l--) {
        int Tq = deit_tokens_out(m, l);
        size_t BQ = (size_t)B * Tq;
        const float *x = l == 0 ? a->x0 : a->resid2 + (size_t)(l - 1) * BTD;
        float *dx = l == 0 ? da->x0 : da->resid2 + (size_t)((l - 1) % 2) * BTD;
        float *scale1 = a->drop_scale + (size_t)l * 2 * B, *scale2 = scale1 + B;
        float *ln1 = a->ln1 + l * BTD, *ln1_mean = a->ln1_mean + l * BT, *ln1_rstd = a->ln1_rstd + l * BT;
        float *qkv = a->qkv + l * 3 * BTD, *att = a->att + (size_t)l * B * NH * T * T;
        float *atty = a->atty + l * BTD, *resid1 = a->resid1 + l * BTD;
        float *ln2 = a->ln2 + l * BTD, *ln2_mean = a->ln2_mean + l * BT, *ln2_rstd = a->ln2_rstd + l * BT;
        float *fc1 = a->fc1 + l * BTH, *gelu = a->gelu + l * BTH;
        /* Gradients: dresid2 arrives from above (the block l + 1, or the final norm), dx goes to
           the block below. The others are this block's, in grads_acts' one-block tensors, reused
           by every block: each is written by the first step below that reaches it. */
        float *dresid2 = da->resid2 + (size_t)(l % 2) * BTD;
        float *dln1 = da->ln1, *dqkv = da->qkv, *datty = da->atty, *dattproj = da->attproj;
        float *dresid1 = da->resid1, *dln2 = da->ln2, *dfc1 = da->fc1, *dgelu = da->gelu, *dfc2 = da->fc2;

        /* MLP branch */
        residual_backward(dresid1, (size_t)Tq * D, dfc2, dresid2, scale2, B, (size_t)Tq * D);
        linear_backward(dgelu, g->fc2_w + (size_t)l * D * H, g->fc2_b + l * D, dfc2, gelu,
                        p->fc2_w + (size_t)l * D * H, BQ, H, D);
        gelu_backward(dfc1, dgelu, fc1, BQ * H);
        linear_backward(dln2, g->fc1_w + (size_t)l * H * D, g->fc1_b + l * H, dfc1, ln2,
                        p->fc1_w + (size_t)l * H * D, BQ, D, H);
        layernorm_backward(dresid1, g->ln2_w + l * D, g->ln2_b + l * D, dln2, resid1, p->ln2_w + l * D,
                           ln2_mean, ln2_rstd, BQ, D);
        /* attention branch */
        residual_backward(dx, (size_t)T * D, dattproj, dresid1, scale1, B, (size_t)Tq * D);
        linear_backward(datty, g->proj_w + (size_t)l * D * D, g->proj_b + l * D, dattproj, atty,
                        p->proj_w + (size_t)l * D * D, BQ, D, D);
        attention_backward(dqkv, datty, qkv, att, B, T, Tq, D, NH);
        linear_backward(dln1, g->qkv_w + (size_t)l * 3 * D * D, g->qkv_b + l * 3 * D, dqkv, ln1,
                        p->qkv_w + (size_t)l * 3 * D * D, B * T, D, 3 * D);
        layernorm_backward(dx, g->ln1_w + l * D, g->ln1_b + l * D, dln1, x, p->ln1_w + l * D, ln1_mean,
                           ln1_rstd, B * T, D);
    }
    tokens_backward(da->patch_emb, g->cls_token, g->dist_token, g->pos_embed, da->x0, B, N, D, c->dist_token);
    patch_embed_backward(g->patch_w, g->patch_b, da->patch_emb, a->patches, B, c->in_chans, c->img_size,
                         c->patch_size, D);
}

/* ============================================================================================
 * I.5 Losses (paper Sec. 4 "Distillation through attention")
 * ========================================================================================== */

/* log softmax(x / tau) of one row of C logits, into out (in double: the losses are sums of
   small differences, and the gradient checks see their rounding). */
static void log_softmax_row(double *out, const float *x, float tau, int C) {
    double maxv = -DBL_MAX, sum = 0.0;
    for (int c = 0; c < C; c++) maxv = x[c] / (double)tau > maxv ? x[c] / (double)tau : maxv;
    for (int c = 0; c < C; c++) sum += exp(x[c] / (double)tau - maxv);
    double lse = maxv + log(sum);
    for (int c = 0; c < C; c++) out[c] = x[c] / (double)tau - lse;
}

/* Targets for cross-entropy: label smoothing eps puts 1 - eps + eps/C on the label and eps/C
   on every other class (so each row sums to 1). eps = 0 gives one-hot targets. */
static void smooth_targets(float *targets, const int *labels, float eps, int B, int C) {
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) targets[(size_t)b * C + c] = eps / C + (c == labels[b] ? 1.0f - eps : 0.0f);
}

/* Hard distillation target: the teacher's decision y_t = argmax of its logits, one-hot. */
static void hard_targets(float *targets, const float *teacher_logits, int B, int C) {
    for (int b = 0; b < B; b++) {
        const float *t = teacher_logits + (size_t)b * C;
        int best = 0;
        for (int c = 1; c < C; c++) if (t[c] > t[best]) best = c;
        for (int c = 0; c < C; c++) targets[(size_t)b * C + c] = (c == best) ? 1.0f : 0.0f;
    }
}

/* ---- Cross-entropy with a target distribution (one-hot, smoothed, or mixed by mixup/cutmix)
   loss = mean over b of  - sum_c target[b,c] log softmax(logits[b])_c
   dlogits[b] = (softmax(logits[b]) - target[b]) / B     (targets sum to 1)                */
static double cross_entropy_forward(const float *logits, const float *targets, int B, int C) {
    double *logp = xmalloc(sizeof(double) * C);
    double loss = 0.0;
    for (int b = 0; b < B; b++) {
        log_softmax_row(logp, logits + (size_t)b * C, 1.0f, C);
        for (int c = 0; c < C; c++) loss -= (double)targets[(size_t)b * C + c] * logp[c];
    }
    free(logp);
    return loss / B;
}

static void cross_entropy_backward(float *dlogits, const float *logits, const float *targets, float dloss,
                                   int B, int C) {
    double *logp = xmalloc(sizeof(double) * C);
    for (int b = 0; b < B; b++) {
        log_softmax_row(logp, logits + (size_t)b * C, 1.0f, C);
        for (int c = 0; c < C; c++)
            dlogits[(size_t)b * C + c] += dloss * (float)(exp(logp[c]) - targets[(size_t)b * C + c]) / B;
    }
    free(logp);
}

/* ---- Soft distillation (Hinton et al.; the KL term of the paper's Eq. 2), as in the
   reference implementation:
   loss = tau^2 / (B C) * sum_{b,c} p_t (log p_t - log p_s),  p = softmax(logits / tau)
   (KL(teacher || student); dividing by all B*C logits is the reference's normalisation).
   dloss/dstudent[b,c] = tau / (B C) * (p_s - p_t)                                          */
static double distill_soft_forward(const float *student, const float *teacher, float tau, int B, int C) {
    double *ls = xmalloc(sizeof(double) * C), *lt = xmalloc(sizeof(double) * C);
    double kl = 0.0;
    for (int b = 0; b < B; b++) {
        log_softmax_row(ls, student + (size_t)b * C, tau, C);
        log_softmax_row(lt, teacher + (size_t)b * C, tau, C);
        for (int c = 0; c < C; c++) kl += exp(lt[c]) * (lt[c] - ls[c]);
    }
    free(ls);
    free(lt);
    return kl * tau * tau / ((double)B * C);
}

static void distill_soft_backward(float *dstudent, const float *student, const float *teacher, float tau,
                                  float dloss, int B, int C) {
    double *ls = xmalloc(sizeof(double) * C), *lt = xmalloc(sizeof(double) * C);
    for (int b = 0; b < B; b++) {
        log_softmax_row(ls, student + (size_t)b * C, tau, C);
        log_softmax_row(lt, teacher + (size_t)b * C, tau, C);
        for (int c = 0; c < C; c++)
            dstudent[(size_t)b * C + c] += dloss * tau / ((float)B * C) * (float)(exp(ls[c]) - exp(lt[c]));
    }
    free(ls);
    free(lt);
}

/* ---- DeiT's loss: base on the class head, distillation on the distillation head ----------
   alpha is the paper's lambda (--alpha; not mixup's alpha); head, head_dist and teacher are
   logits (the paper's Z_s and Z_t):
     none: loss = CE(head, targets)
     soft: loss = (1 - alpha) CE(head, targets) + alpha * soft(head_dist, teacher)      (Eq. 2)
     hard: loss = (1 - alpha) CE(head, targets) + alpha * CE(head_dist, argmax teacher) (Eq. 3)
   Eq. 3 fixes the weights at 1/2 and 1/2: the default alpha = 0.5 (and tau = 1), the official
   code's defaults; the paper's "usual distillation" row of Table 3 is --distill soft --tau 3
   --alpha 0.1. Label smoothing applies to
   the true labels only; the teacher's y_t stays one-hot, as in the reference code.
   Without a distillation token the distillation term uses the class head as well.          */
typedef enum { DISTILL_NONE = 0, DISTILL_SOFT = 1, DISTILL_HARD = 2 } DistillType;
static const char *distill_names[] = {"none", "soft", "hard"};

/* The distillation settings of a run: parsed once from --distill, --alpha, --tau. */
typedef struct {
    DistillType type; /* none | soft | hard */
    float alpha;      /* the paper's lambda: weight of the distillation term (0.5) */
    float tau;        /* temperature of soft distillation (1) */
} Distillation;

/* What the loss reads and writes: a network's head outputs (B, C) and their gradients. dist is
   the distillation head, NULL for a network without one (a plain ViT, a ResNet); the gradients
   are NULL when only the loss is wanted. */
typedef struct {
    const float *cls, *dist;
    float *dcls, *ddist;
} Heads;

typedef struct {
    double total, base, distill; /* in double: they are averages of many terms */
} LossParts;

/* Computes the loss and ADDS its gradient wrt the logits into out.dcls / out.ddist. */
static LossParts deit_loss(Heads out, const float *targets, const float *teacher_logits, const Distillation *kd,
                           int B, int C) {
    LossParts p = {0, 0, 0};
    int backward = out.dcls != NULL;
    p.base = cross_entropy_forward(out.cls, targets, B, C);
    if (kd->type == DISTILL_NONE || !teacher_logits) {
        p.total = p.base;
        if (backward) cross_entropy_backward(out.dcls, out.cls, targets, 1.0f, B, C);
        return p;
    }
    const float *kd_logits = out.dist ? out.dist : out.cls; /* the head that learns from the teacher */
    float *kd_dlogits = out.dist ? out.ddist : out.dcls;
    float alpha = kd->alpha;
    if (kd->type == DISTILL_SOFT) {
        p.distill = distill_soft_forward(kd_logits, teacher_logits, kd->tau, B, C);
        if (backward) distill_soft_backward(kd_dlogits, kd_logits, teacher_logits, kd->tau, alpha, B, C);
    } else {
        float *y_teacher = xmalloc(sizeof(float) * (size_t)B * C);
        hard_targets(y_teacher, teacher_logits, B, C);
        p.distill = cross_entropy_forward(kd_logits, y_teacher, B, C);
        if (backward) cross_entropy_backward(kd_dlogits, kd_logits, y_teacher, alpha, B, C);
        free(y_teacher);
    }
    if (backward) cross_entropy_backward(out.dcls, out.cls, targets, 1.0f - alpha, B, C);
    p.total = (1.0 - alpha) * p.base + alpha * p.distill;
    return p;
}

/* ============================================================================================
 * I.6 The teacher: a CIFAR ResNet (He et al. 2016, Sec. 4.2)
 *
 * The paper's best teachers are convnets: their inductive bias is what the distillation token
 * passes on to the transformer. Here: a 3x3 stem conv + BN + ReLU, S stages of B basic blocks
 * (stride 2 at the first block of stages 2..S), global average pooling, a linear classifier.
 * Where a block changes the shape, its shortcut is a 1x1 conv + BN (He et al.'s option B, as
 * torchvision's `downsample`); their CIFAR nets use option A (identity, zero-padded channels).
 * All activations are channel-major (C, B, H, W).
 * ========================================================================================== */

typedef struct {
    const char *name;
    int blocks, widths[3];
} ResNetPreset;
static const ResNetPreset resnet_presets[] = {
    {"resnet8", 1, {16, 32, 64}},   {"resnet20", 3, {16, 32, 64}},
    {"resnet56", 9, {16, 32, 64}},  {"resnet20w4", 3, {64, 128, 256}},
};

static int teacher_preset(TeacherConfig *c, const char *name) {
    memset(c, 0, sizeof(*c));
    c->img_size = 32, c->in_chans = 3, c->num_classes = 10, c->stages = 3;
    if (!strcmp(name, "airbench")) { /* I.6b: 24 whitening filters, then 64, 256, 256 channels */
        c->arch = ARCH_AIRBENCH, c->blocks = 1;
        c->widths[0] = 64, c->widths[1] = 256, c->widths[2] = 256;
        return 0;
    }
    for (size_t i = 0; i < sizeof(resnet_presets) / sizeof(resnet_presets[0]); i++)
        if (!strcmp(name, resnet_presets[i].name)) {
            c->arch = ARCH_RESNET;
            c->blocks = resnet_presets[i].blocks;
            for (int s = 0; s < 3; s++) c->widths[s] = resnet_presets[i].widths[s];
            return 0;
        }
    return -1;
}

/* ---- I.6.1 Convolution via im2col: out = W (cout, cin*k*k) x col (cin*k*k, pixels) ------------
   Activations are stored (C, B, H, W). The col matrix of the whole batch would be tens of MB,
   far bigger than the caches, so a convolution is done a few images at a time (conv_chunk):
   each chunk's col is built, used by the matmul while it is still in cache, and overwritten by
   the next chunk. Its rows are ld = pixels + 16 floats apart: a power-of-two row stride would
   make all rows of a matmul tile fall into the same cache sets.
   A "same" convolution (stride 1, output as big as the input: ResNet's and airbench's 3x3 pad 1)
   has a shortcut. Row (c, ky, kx) of one image's col is then the input plane read shifted by
   (ky - pad) rows and (kx - pad) columns: col[oy*w + ox] = in[oy*w + ox + shift]. So it is one
   memcpy of the plane, then the entries whose pixel lies in the padding are set to zero (whole
   rows at the top or bottom, pad columns at either side). Row by row, as below, it takes 32
   memcpy calls of 32 floats per image and row of col; ResNet-20 trains about 1.2x as fast this
   way (dev/SPEED.md).
   This is the convolution to read. With the fast matmul, the "same" convolutions on all but
   the smallest images, and ResNet's stride-2 3x3 ones, skip im2col altogether: Part II, trick 6,
   computes the same sums from a padded copy of the input (ResNet-20 trains 1.1x, infers 1.2x as
   fast).                                                                                     */

/* Zero the columns ox < lo and ox >= hi of an image's h x w block of col: their pixels lie in
   the padding. Column by column on purpose: row by row, the compiler turns each run of 0 or 1
   floats into a memset call, and those calls took longer than copying the image. */
static void zero_columns(float *dst, int h, int w, int lo, int hi) {
    for (int ox = 0; ox < lo; ox++)
        for (int oy = 0; oy < h; oy++) dst[oy * w + ox] = 0.0f;
    for (int ox = hi; ox < w; ox++)
        for (int oy = 0; oy < h; oy++) dst[oy * w + ox] = 0.0f;
}

VECTOR_CLONES
static void im2col(float *col, int ld, const float *in, int B, int b0, int nb, int cin, int hin, int win, int k,
                   int stride, int pad, int hout, int wout) {
    OMP(omp parallel for schedule(static))
    for (int row = 0; row < cin * k * k; row++) {
        int c = row / (k * k), ky = (row / k) % k, kx = row % k;
        /* output columns ox whose input column ix = ox*stride - pad + kx lies inside the image */
        int lo = 0, hi = wout;
        while (lo < wout && lo * stride - pad + kx < 0) lo++;
        while (hi > lo && (hi - 1) * stride - pad + kx >= win) hi--;
        float *dst = col + (size_t)row * ld;
        if (stride == 1 && hout == hin && wout == win) { /* "same" convolution: see the note above */
            int oy_lo = pad - ky > 0 ? pad - ky : 0, oy_hi = hin + pad - ky < hout ? hin + pad - ky : hout;
            if (oy_lo > hout) oy_lo = hout;
            if (oy_hi < oy_lo) oy_hi = oy_lo; /* (only on images smaller than the kernel) */
            long shift = (long)(ky - pad) * win + (kx - pad), n = (long)hout * wout; /* src index = dst index + shift */
            long d_lo = (long)oy_lo * wout, d_hi = (long)oy_hi * wout;
            if (d_lo < -shift) d_lo = -shift;           /* keep the source inside this image's plane; */
            if (d_hi > n - shift) d_hi = n - shift;     /* the entries cut off are padding columns    */
            for (int b = b0; b < b0 + nb; b++, dst += n) {
                const float *plane = in + ((size_t)c * B + b) * hin * win;
                if (d_hi > d_lo) memcpy(dst + d_lo, plane + d_lo + shift, sizeof(float) * (d_hi - d_lo));
                if (oy_lo > 0) memset(dst, 0, sizeof(float) * oy_lo * wout); /* rows above the image */
                if (oy_hi < hout) memset(dst + (long)oy_hi * wout, 0, sizeof(float) * (hout - oy_hi) * wout); /* below */
                zero_columns(dst, hout, wout, lo, hi);
            }
            continue;
        }
        for (int b = b0; b < b0 + nb; b++, dst += hout * wout) { /* any stride: row by row */
            for (int oy = 0; oy < hout; oy++) {
                int iy = oy * stride - pad + ky;
                float *dst_row = dst + oy * wout;
                if (iy < 0 || iy >= hin) {
                    memset(dst_row, 0, sizeof(float) * wout);
                    continue;
                }
                const float *in_row = in + (((size_t)c * B + b) * hin + iy) * win;
                if (stride == 1 && hi > lo) memcpy(dst_row + lo, in_row + lo - pad + kx, sizeof(float) * (hi - lo));
                else if (stride == 2) { /* the same with a constant stride: ResNet's downsampling 1.07-1.2x faster */
                    const float *src = in_row - pad + kx;
                    for (int ox = lo; ox < hi; ox++) dst_row[ox] = src[2 * ox];
                } else if (stride != 1) for (int ox = lo; ox < hi; ox++) dst_row[ox] = in_row[ox * stride - pad + kx];
            }
            zero_columns(dst, hout, wout, lo, hi);
        }
    }
}

/* The adjoint of im2col: every col entry flows back to the input pixel it was copied from.
   Each thread owns one input channel, so the += never races. */
VECTOR_CLONES
static void col2im(float *din, const float *dcol, int ld, int B, int b0, int nb, int cin, int hin, int win, int k,
                   int stride, int pad, int hout, int wout) {
    OMP(omp parallel for schedule(static))
    for (int c = 0; c < cin; c++)
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++) {
                int lo = 0, hi = wout; /* the same valid range of ox as in im2col */
                while (lo < wout && lo * stride - pad + kx < 0) lo++;
                while (hi > lo && (hi - 1) * stride - pad + kx >= win) hi--;
                const float *src = dcol + (size_t)((c * k + ky) * k + kx) * ld;
                for (int b = b0; b < b0 + nb; b++)
                    for (int oy = 0; oy < hout; oy++, src += wout) {
                        int iy = oy * stride - pad + ky;
                        if (iy < 0 || iy >= hin) continue;
                        float *din_row = din + (((size_t)c * B + b) * hin + iy) * win;
                        if (stride == 1 && hi > lo) { /* the common case, written so that it vectorizes */
                            float *dst = din_row + lo - pad + kx; /* input column of ox = lo */
                            for (int ox = lo; ox < hi; ox++) dst[ox - lo] += src[ox];
                        } else if (stride != 1) {
                            for (int ox = lo; ox < hi; ox++) din_row[ox * stride - pad + kx] += src[ox];
                        }
                    }
            }
}

/* Images per chunk: as many as keep one chunk's col within about 2 MB (at least one), then
   fewer, so that the chunks come in a multiple of the CONV_LANES lanes (below) and the threads
   get equal shares: ResNet-20's 8 x 8 stage had 10 chunks of 14 images, 70 images for one of
   two threads and 58 for the other, and its 1 x 1 shortcut one chunk, all on one thread (2
   threads: 772 -> 810 img/s). A smaller col, 512 KB (half this core's L2), made ResNet-20 4-5%
   faster but airbench, the default teacher, about 15% slower at 2 threads (dev/SPEED.md, "The convolution's chunk"). Variables, not constants, so
   that the tests can force one image per chunk, or one chunk (conv_chunk_even 0). */
static size_t conv_chunk_floats = 1 << 19;
static int conv_chunk_even = 1;
#define CONV_LANES 8
static int conv_chunk(const ConvBN *l, int B) {
    size_t per_image = (size_t)l->cin * l->ksize * l->ksize * l->hout * l->wout;
    size_t nb = conv_chunk_floats / per_image;
    if (nb < 1) return 1;
    if (nb >= (size_t)B) nb = B;
    if (!conv_chunk_even) return (int)nb;
    size_t chunks = (B + nb - 1) / nb; /* then as many chunks as the next multiple of the lanes */
    chunks = (chunks + CONV_LANES - 1) / CONV_LANES * CONV_LANES;
    return (int)((B + chunks - 1) / chunks);
}
/* hooks: Part II's convolution without im2col (trick 6), which the fast matmul uses where it can */
static int conv_direct_shape(const ConvBN *l);
static int conv_direct(const ConvBN *l);
static size_t conv_direct_scratch(const ConvBN *l, int nb);
static int conv_weight_grad_stack(const ConvBN *l);
static int conv_weight_grad_plain(const ConvBN *l);
static size_t conv_weight_grad_at(const ConvBN *l, int g, int co, int ci, int ky, int kx);
static void conv_forward_direct(float *out, float *col, float *keep, const float *in, const float *w, const ConvBN *l,
                                int B, int b0, int nb);
static size_t conv_padded_size(const ConvBN *l, int B);
static void conv_backward_direct(float *din, int din_add, float *dw_lane, float *col, float *dcol,
                                 const float *kept, const float *w_flip, const float *dout, const float *in,
                                 const ConvBN *l, int B, int b0, int nb);

static size_t conv_col_size(const ConvBN *l, int B) { /* floats of the col scratch of one chunk */
    size_t size = (size_t)l->cin * l->ksize * l->ksize * ((size_t)conv_chunk(l, B) * l->hout * l->wout + 16);
    size_t direct = conv_direct_shape(l) ? conv_direct_scratch(l, conv_chunk(l, B)) : 0;
    return size > direct ? size : direct;
}

/* Threads split the batch, not the products. The chunks are dealt out in CONV_LANES lanes of
   consecutive chunks (lane i: chunks [i*n/L, (i+1)*n/L)), and each lane has its own col, dcol
   and partial weight gradient. A thread runs whole lanes, chunk after chunk; the matmul and
   im2col it calls run on that thread alone (Part II: a product asked for inside a parallel
   loop). A convolution of a few images is a small product, and splitting each one over the
   threads made them wait at a barrier every KC slice: airbench trained 1.2x faster on 2
   threads than on one. The weight gradient is the lanes' partial sums added in lane order, so
   it is the same whatever the thread count; 8 lanes keep up to 8 cores busy. */
static size_t conv_scratch_size(const ConvBN *l, int B) { return CONV_LANES * conv_col_size(l, B); }
static int conv_lane_first(int lane, int n_chunks) { return (int)((long)lane * n_chunks / CONV_LANES); }

/* keep: NULL, or where the direct path (Part II, trick 6) leaves its padded copy of the input
   for the backward (conv_padded_size floats; see ConvBN.padded_in) */
static void conv_forward(float *out, float *cols, float *keep, const float *in, const float *w, const ConvBN *l, int B) {
    int hw = l->hout * l->wout, NP = B * hw, K = l->cin * l->ksize * l->ksize, chunk = conv_chunk(l, B);
    int n_chunks = (B + chunk - 1) / chunk;
    size_t col_size = conv_col_size(l, B);
    int direct = conv_direct(l);
    OMP(omp parallel for schedule(static))
    for (int lane = 0; lane < CONV_LANES; lane++) {
        float *col = cols + lane * col_size;
        for (int c = conv_lane_first(lane, n_chunks); c < conv_lane_first(lane + 1, n_chunks); c++) {
            int b0 = c * chunk, nb = B - b0 < chunk ? B - b0 : chunk, ld = nb * hw + 16;
            if (direct) { /* the fast path: no im2col (Part II, trick 6) */
                conv_forward_direct(out, col, keep, in, w, l, B, b0, nb);
                continue;
            }
            im2col(col, ld, in, B, b0, nb, l->cin, l->hin, l->win, l->ksize, l->stride, l->pad, l->hout, l->wout);
            matmul_store(out + (size_t)b0 * hw, NP, NULL, w, K, 1, col, ld, 1, l->cout, nb * hw, K);
        }
    }
}

/* out = W col  =>  dW = dout col^T,  dcol = W^T dout,  din = col2im(dcol), chunk by chunk.
   Every path below computes exactly these; the flags (flip, direct, plain, dw_transposed) only
   choose how, and the tests check each path against finite differences. The how:
   The fast matmul copies an operand read transposed into panels: col^T (K columns) in dout col^T.
   Where K > cout (ResNet's stride-2 3x3 convolutions when they take this path: K = 144 or 288
   against 32 or 64), each lane computes dW^T = col dout^T instead, whose transposed operand is
   dout (cout columns), and the lanes are added up transposed back (ResNet-20's 16 -> 32 stride-2
   backward 1.3x faster).
   A stride-1 convolution that keeps the shape (ResNet's 3x3 pad 1 convs inside a stage) takes
   a shortcut for din: the gradient of a convolution is the convolution of dout with the same
   kernel flipped in space and with in/out channels swapped (the "transposed convolution"):
     din[ci][y][x] = sum_{co,ky,kx} w_flip[ci][co][ky][kx] dout[co][y+ky-p'][x+kx-p'],
     w_flip[ci][co][ky][kx] = w[co][ci][k-1-ky][k-1-kx],  p' = k-1-pad (= pad here).
   So din = w_flip x im2col(dout): one im2col and one well-shaped product (K = cout*k*k) instead
   of a product with K = cout into dcol and col2im: the same arithmetic, and ResNet-20
   trains about 5% faster. The tests check both paths against finite differences.
   dw += the sum of the lanes' partial gradients (dw_lanes: CONV_LANES x cout*K scratch; the
   direct path of Part II stores each lane's partial transposed, (tap, ci) x co, its taps in
   groups: conv_weight_grad_at; with fewer input channels than the tile has rows, in dW's own
   layout: conv_weight_grad_plain);
   din += each chunk's share (a chunk's images are its own, so lanes never write the same din),
   or, with din_add 0, din = it: the first gradient to reach a tensor is then written over
   whatever it held, and the tensor needs no zeroing before the backward pass. The products
   that write (out in the forward, dcol, and din = it on the transposed-convolution path) store
   their result (matmul_store): no memset before them. Only col2im adds to a zeroed din.
   kept: NULL, or the padded input that conv_forward kept (the direct path then does not
   make it again). */
static int conv_same_shape(const ConvBN *l) {
    return l->stride == 1 && l->cin == l->cout && l->hin == l->hout && l->win == l->wout;
}
static void conv_backward(float *din, int din_add, float *dw, float *dw_lanes, float *cols, float *dcols,
                          const float *kept, float *w_flip, const float *dout, const float *in, const float *w,
                          const ConvBN *l, int B) {
    int hw = l->hout * l->wout, NP = B * hw, K = l->cin * l->ksize * l->ksize, chunk = conv_chunk(l, B);
    int k = l->ksize, flip = din && conv_same_shape(l), n_chunks = (B + chunk - 1) / chunk;
    int direct = conv_direct(l); /* direct: the lanes' partials are transposed, (tap, ci) x co, */
    int plain = direct && conv_weight_grad_plain(l); /* except with few input channels */
    int taps_per_group = direct ? conv_weight_grad_stack(l) : 1, dw_transposed = !direct && K > l->cout;
    size_t col_size = conv_col_size(l, B), nw = (size_t)l->cout * K;
    if (flip || (din && direct && l->stride == 1))
        for (int co = 0; co < l->cout; co++)
            for (int ci = 0; ci < l->cin; ci++)
                for (int ky = 0; ky < k; ky++)
                    for (int kx = 0; kx < k; kx++)
                        w_flip[((size_t)(ci * l->cout + co) * k + ky) * k + kx] =
                            w[((size_t)(co * l->cin + ci) * k + (k - 1 - ky)) * k + (k - 1 - kx)];
    OMP(omp parallel for schedule(static))
    for (int lane = 0; lane < CONV_LANES; lane++) {
        float *col = cols + lane * col_size, *dcol = dcols + lane * col_size, *dw_lane = dw_lanes + lane * nw;
        memset(dw_lane, 0, sizeof(float) * nw);
        for (int c = conv_lane_first(lane, n_chunks); c < conv_lane_first(lane + 1, n_chunks); c++) {
            int b0 = c * chunk, nb = B - b0 < chunk ? B - b0 : chunk, ld = nb * hw + 16;
            const float *dout_chunk = dout + (size_t)b0 * hw;
            if (direct) { /* the fast path: no im2col (Part II, trick 6); din too where the stride is 1 */
                conv_backward_direct(l->stride == 1 ? din : NULL, din_add, dw_lane, col, dcol, kept, w_flip, dout, in, l,
                                     B, b0, nb);
                if (l->stride == 1 || !din) continue;
            }
            if (din && !din_add && !flip) /* col2im below adds to din */
                for (int ci = 0; ci < l->cin; ci++)
                    memset(din + ((size_t)ci * B + b0) * l->hin * l->win, 0, sizeof(float) * nb * l->hin * l->win);
            if (!direct) {
                im2col(col, ld, in, B, b0, nb, l->cin, l->hin, l->win, k, l->stride, l->pad, l->hout, l->wout); /* recomputed: cheaper than storing */
                if (dw_transposed) matmul(dw_lane, l->cout, col, ld, 1, dout_chunk, 1, NP, K, l->cout, nb * hw);
                else matmul(dw_lane, K, dout_chunk, NP, 1, col, 1, ld, l->cout, K, nb * hw);
            }
            if (flip) { /* col is free again: it now takes the patches of dout (cout*k*k = K rows) */
                im2col(col, ld, dout, B, b0, nb, l->cout, l->hout, l->wout, k, 1, k - 1 - l->pad, l->hin, l->win);
                if (din_add) matmul(din + (size_t)b0 * hw, NP, w_flip, K, 1, col, ld, 1, l->cin, nb * hw, K);
                else matmul_store(din + (size_t)b0 * hw, NP, NULL, w_flip, K, 1, col, ld, 1, l->cin, nb * hw, K);
            } else if (din) {
                matmul_store(dcol, ld, NULL, w, 1, K, dout_chunk, NP, 1, K, nb * hw, l->cout);
                col2im(din, dcol, ld, B, b0, nb, l->cin, l->hin, l->win, k, l->stride, l->pad, l->hout, l->wout);
            }
        }
    }
    /* the lanes' partial gradients added up in lane order, in place of lane 0's, in the order
       they lie in memory; then added to dw, from dWt's layout on the direct path (reading the
       lanes through conv_weight_grad_at took 7% of a 64-channel backward at 8 x 8) */
    OMP(omp parallel for schedule(static))
    for (size_t i = 0; i < nw; i++) {
        float sum = 0.0f;
        for (int lane = 0; lane < CONV_LANES; lane++) sum += dw_lanes[lane * nw + i];
        dw_lanes[i] = sum;
    }
    OMP(omp parallel for schedule(static))
    for (int co = 0; co < l->cout; co++) {
        float *dw_co = dw + (size_t)co * K;
        if (!direct || plain) {
            for (int i = 0; i < K; i++) dw_co[i] += dw_lanes[dw_transposed ? (size_t)i * l->cout + co : (size_t)co * K + i];
            continue;
        }
        for (int ci = 0; ci < l->cin; ci++)
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++) dw_co[(ci * k + ky) * k + kx] += dw_lanes[conv_weight_grad_at(l, taps_per_group, co, ci, ky, kx)];
    }
}

/* ---- I.6.2 BatchNorm (Ioffe & Szegedy 2015), per channel over its n = B*h*w numbers -----------
   training: y = (x - mean) * rstd * gamma + beta with the batch's mean and biased variance;
             running = (1 - momentum) running + momentum batch (the unbiased variance for
             running_var; momentum 0.1, airbench's 0.4)
   eval:     the running statistics instead of the batch's
   What follows a BatchNorm in the ResNet, the residual add and the ReLU, is done in the same
   pass over memory: out = max(y + residual, 0) (residual may be NULL, relu 0 or 1). Three
   passes over a stage's 8 MB became one; with the statistics in one pass (below), ResNet-20
   trains about 3% faster.                                                                   */
#define BN_EPS 1e-5f
#define BN_MOMENTUM 0.1f

/* Sums over a channel's n = B*h*w numbers (131072 for ResNet-20's first stage at batch 128),
   in double. One running sum is a chain where each add waits for the previous one; 32
   independent partial sums (lane j takes every 32nd number) let the compiler do many adds
   at once with vector instructions, and still nothing is reordered within a lane. (With 8
   lanes GCC 12 made a slow loop of them: bn_sums ran at 2.5 G numbers/s on one AVX-512 core,
   against 16.4 with 32 lanes; 8.7 with AVX2, 3.7 with SSE2. ResNet-20 trains 5% faster.)
     bn_sums: sum (x - c) and sum (x - c)^2;   bn_dot: sum dy (x - c) and sum dy
   The statistics take one pass: with d = x - c, mean = c + sum d / n and the variance is
   sum d^2 / n - (sum d / n)^2. That difference loses digits when the mean is far from c
   compared with the spread; c = the channel's first number is within a few standard
   deviations of the mean, and in double the loss is far below float's precision.           */
#define BN_LANES 32
static void bn_sums(const float *x, float c, size_t n, double *sum, double *sum_sq) {
    double s[BN_LANES] = {0}, q[BN_LANES] = {0};
    size_t i = 0;
    for (; i + BN_LANES <= n; i += BN_LANES)
        for (int j = 0; j < BN_LANES; j++) {
            double d = (double)x[i + j] - c;
            s[j] += d;
            q[j] += d * d;
        }
    for (; i < n; i++) s[0] += (double)x[i] - c, q[0] += ((double)x[i] - c) * ((double)x[i] - c);
    *sum = *sum_sq = 0.0;
    for (int j = 0; j < BN_LANES; j++) *sum += s[j], *sum_sq += q[j];
}
static void bn_dot(const float *dy, const float *x, float c, size_t n, double *sum_dy_x, double *sum_dy) {
    double p[BN_LANES] = {0}, s[BN_LANES] = {0};
    size_t i = 0;
    for (; i + BN_LANES <= n; i += BN_LANES)
        for (int j = 0; j < BN_LANES; j++) {
            p[j] += (double)dy[i + j] * ((double)x[i + j] - c);
            s[j] += dy[i + j];
        }
    for (; i < n; i++) p[0] += (double)dy[i] * ((double)x[i] - c), s[0] += dy[i];
    *sum_dy_x = *sum_dy = 0.0;
    for (int j = 0; j < BN_LANES; j++) *sum_dy_x += p[j], *sum_dy += s[j];
}
VECTOR_CLONES
static void batchnorm_forward(float *out, float *mean, float *rstd, float *running_mean, float *running_var,
                              const float *inp, const float *gamma, const float *beta, const float *residual,
                              int relu, int C, size_t n, int train, float eps, float momentum) {
    OMP(omp parallel for schedule(static))
    for (int c = 0; c < C; c++) {
        const float *x = inp + (size_t)c * n;
        float m, s;
        if (train) {
            double sum_d, sum_d2;
            bn_sums(x, x[0], n, &sum_d, &sum_d2); /* d = x - x[0] */
            double mean_d = sum_d / n, var = sum_d2 / n - mean_d * mean_d, sq = var * n;
            if (var < 0.0) var = sq = 0.0; /* (only by rounding, when all n numbers are equal) */
            double mu = x[0] + mean_d;
            m = (float)mu;
            s = (float)(1.0 / sqrt(var + eps));
            mean[c] = m;
            rstd[c] = s;
            running_mean[c] = (1 - momentum) * running_mean[c] + momentum * m;
            running_var[c] = (1 - momentum) * running_var[c] + momentum * (float)(n > 1 ? sq / (n - 1) : var);
        } else {
            m = running_mean[c];
            s = 1.0f / sqrtf(running_var[c] + eps);
        }
        float *y = out + (size_t)c * n;
        const float *r = residual ? residual + (size_t)c * n : NULL;
        float g = gamma[c] * s, b = beta[c] - m * gamma[c] * s;
        for (size_t i = 0; i < n; i++) {
            float v = x[i] * g + b + (r ? r[i] : 0.0f);
            y[i] = relu && v < 0.0f ? 0.0f : v;
        }
    }
}

/* Training-mode backward, the same algebra as LayerNorm's but per channel:
     dx = rstd * (g - mean(g) - xhat * mean(g xhat)),  g = dy * gamma
     dgamma = sum dy * xhat,  dbeta = sum dy
   dx is written, not added to: the input of every BatchNorm here (a convolution's or a pool's
   output) feeds nothing else, and not zeroing dx first saves a pass over memory.             */
VECTOR_CLONES
static void batchnorm_backward(float *dinp, float *dgamma, float *dbeta, const float *dout, const float *inp,
                               const float *gamma, const float *mean, const float *rstd, int C, size_t n) {
    OMP(omp parallel for schedule(static))
    for (int c = 0; c < C; c++) {
        const float *x = inp + (size_t)c * n, *dy = dout + (size_t)c * n;
        float m = mean[c], s = rstd[c];
        double sum_dy, sum_dy_xhat;
        bn_dot(dy, x, m, n, &sum_dy_xhat, &sum_dy);
        sum_dy_xhat *= s; /* xhat = (x - mean) * rstd */
        dgamma[c] += (float)sum_dy_xhat;
        dbeta[c] += (float)sum_dy;
        float g_mean = (float)(sum_dy / n) * gamma[c], gx_mean = (float)(sum_dy_xhat / n) * gamma[c];
        float *dx = dinp + (size_t)c * n;
        for (size_t i = 0; i < n; i++) dx[i] = s * (dy[i] * gamma[c] - g_mean - (x[i] - m) * s * gx_mean);
    }
}

/* ---- I.6.3 ReLU and global average pooling ------------------------------------------------
   The ReLU's forward, y = max(x, 0), is done by the BatchNorm before it (batchnorm_forward). */

/* y = max(x, 0) => dx = dy where y > 0, else 0. In place: d holds dy on entry and dx on return
   (an exception to the (dinp, ..., dout) convention: dy is not needed after), given the output y. */
static void relu_backward(float *d, const float *y, size_t n) {
    OMP(omp parallel for schedule(static))
    for (size_t i = 0; i < n; i++) d[i] = y[i] > 0.0f ? d[i] : 0.0f;
}

/* pooled[b][c] = mean over the hw pixels of channel c of image b  (input channel-major) */
static void avgpool_forward(float *pooled, const float *in, int B, int C, int hw) {
    for (int c = 0; c < C; c++)
        for (int b = 0; b < B; b++) {
            const float *x = in + ((size_t)c * B + b) * hw;
            float s = 0.0f;
            for (int i = 0; i < hw; i++) s += x[i];
            pooled[(size_t)b * C + c] = s / hw;
        }
}

/* din = dpooled / hw on each of the pixels (written: the pool's input feeds nothing else) */
static void avgpool_backward(float *din, const float *dpooled, int B, int C, int hw) {
    for (int c = 0; c < C; c++)
        for (int b = 0; b < B; b++) {
            float g = dpooled[(size_t)b * C + c] / hw;
            float *dx = din + ((size_t)c * B + b) * hw;
            for (int i = 0; i < hw; i++) dx[i] = g;
        }
}

/* ---- I.6.4 Conv + BN as one unit, and the basic block ------------------------------------- */
/* Where a training forward keeps the padded input of a conv for its backward (ConvBN.padded_in),
   or NULL; and, for the backward, what was kept. */
static float *conv_keep_padded(const Teacher *t, ConvBN *l, int B, int train) {
    l->padded_in_kept = train && l->padded_in && conv_direct(l) && B == t->batch_size; /* (allocated for that B) */
    return l->padded_in_kept ? l->padded_in : NULL;
}
static const float *conv_kept_padded(const ConvBN *l) { return l->padded_in_kept ? l->padded_in : NULL; }

/* out = max(BN(conv(in)) + residual, 0) with relu, BN(conv(in)) + residual without; residual may be NULL. */
static void convbn_forward(Teacher *t, ConvBN *l, const float *in, const float *residual, int relu, int B, int train) {
    size_t n = (size_t)B * l->hout * l->wout;
    conv_forward(l->conv, t->col, conv_keep_padded(t, l, B, train), in, l->w, l, B);
    batchnorm_forward(l->out, l->bn_mean, l->bn_rstd, l->running_mean, l->running_var, l->conv, l->gamma, l->beta,
                      residual, relu, l->cout, n, train, l->bn_eps, l->bn_momentum);
}

/* From l->dout back to the parameters' gradients and to din (+= with din_add, = without).
   Uses t->dconv as scratch. */
static void convbn_backward(Teacher *t, ConvBN *l, float *din, int din_add, const float *in, int B) {
    size_t n = (size_t)B * l->hout * l->wout;
    batchnorm_backward(t->dconv, l->dgamma, l->dbeta, l->dout, l->conv, l->gamma, l->bn_mean, l->bn_rstd, l->cout, n);
    conv_backward(din, din_add, l->dw, t->dw_lanes, t->col, t->dcol, conv_kept_padded(l), t->w_flip, t->dconv, in,
                  l->w, l, B);
}

/* out = relu(BN(conv2(relu(BN(conv1(in))))) + shortcut(in)): the shortcut (the identity, or a
   1x1 conv + BN where the shape changes) first, so that conv2's BN can add it as it writes. */
static void basic_block_forward(Teacher *t, BasicBlock *k, const float *in, int B, int train) {
    convbn_forward(t, &k->conv1, in, NULL, 1, B, train);
    const float *sc = in;
    if (k->has_shortcut) {
        convbn_forward(t, &k->shortcut, in, NULL, 0, B, train);
        sc = k->shortcut.out;
    }
    convbn_forward(t, &k->conv2, k->conv1.out, sc, 1, B, train);
}

/* Given conv2.dout (gradient of the block output), writes the gradient of the input to din:
   the shortcut's share first (written over din's old contents), then conv1's added to it. */
static void basic_block_backward(Teacher *t, BasicBlock *k, float *din, const float *in, int B) {
    size_t n_out = (size_t)k->conv2.cout * B * k->conv2.hout * k->conv2.wout;
    relu_backward(k->conv2.dout, k->conv2.out, n_out);
    if (k->has_shortcut) {
        copy_into(k->shortcut.dout, k->conv2.dout, n_out);
        convbn_backward(t, &k->shortcut, din, 0, in, B);
    } else {
        copy_into(din, k->conv2.dout, n_out);
    }
    convbn_backward(t, &k->conv2, k->conv1.dout, 0, k->conv1.out, B);
    relu_backward(k->conv1.dout, k->conv1.out, (size_t)k->conv1.cout * B * k->conv1.hout * k->conv1.wout);
    convbn_backward(t, &k->conv1, din, 1, in, B);
}

/* ---- I.6.5 The teacher model: layout, init, forward, backward (its checkpoint: I.9) --------
   Two architectures share the Teacher struct: the ResNet below and airbench (I.6b), to which
   each of these functions hands over when config.arch says so. */
static void airbench_build(Teacher *t, const TeacherConfig *cfg);
static void airbench_init(Teacher *t, uint64_t seed);
static void airbench_alloc_activations(Teacher *t, int B);
static void airbench_forward(Teacher *t, int B, int train);
static void airbench_zero_grad(Teacher *t);
static void airbench_backward(Teacher *t, int B);
static void airbench_begin_epoch(Teacher *t, int epoch);

/* The teacher's table of tensors is built in two walks over the architecture, in checkpoint
   order: the first (add_convbn, add_tensor) appends each tensor's name, size and offset and
   counts the floats; after the one allocation, the second (point_convbn) points each layer's
   fields (w, gamma, beta, running_mean, running_var and the gradients) into it. */
static void add_tensor(Teacher *t, const char *name, size_t size, int decay, int trainable) {
    TensorInfo *ti = &t->tensors[t->num_tensors++];
    ti->name = name;
    ti->offset = t->num_params;
    ti->size = size;
    ti->decay = decay;
    ti->trainable = trainable;
    ti->lr_mult = 1.0f;
    t->num_params += size;
}

static void add_convbn(Teacher *t, ConvBN *l, int cin, int cout, int k, int stride, int hin, int win) {
    l->cin = cin, l->cout = cout, l->ksize = k, l->stride = stride, l->pad = k / 2;
    l->hin = hin, l->win = win;
    l->hout = (hin + 2 * l->pad - k) / stride + 1;
    l->wout = (win + 2 * l->pad - k) / stride + 1;
    l->bn_eps = BN_EPS, l->bn_momentum = BN_MOMENTUM;
    add_tensor(t, "conv_w", (size_t)cout * cin * k * k, 1, 1);
    add_tensor(t, "bn_gamma", cout, 0, 1);
    add_tensor(t, "bn_beta", cout, 0, 1);
    add_tensor(t, "bn_running_mean", cout, 0, 0);
    add_tensor(t, "bn_running_var", cout, 0, 0);
}

static void point_convbn(Teacher *t, ConvBN *l, int *ti) {
    float **p[5] = {&l->w, &l->gamma, &l->beta, &l->running_mean, &l->running_var};
    float **g[5] = {&l->dw, &l->dgamma, &l->dbeta, NULL, NULL};
    for (int i = 0; i < 5; i++, (*ti)++) {
        *p[i] = t->params_memory + t->tensors[*ti].offset;
        if (g[i]) *g[i] = t->grads_memory + t->tensors[*ti].offset;
    }
}

static void teacher_build(Teacher *t, const TeacherConfig *cfg) {
    memset(t, 0, sizeof(*t));
    t->config = *cfg;
    if (cfg->arch == ARCH_AIRBENCH) {
        airbench_build(t, cfg);
        return;
    }
    int S = cfg->stages, NB = cfg->blocks;
    t->num_blocks = S * NB;
    t->blocks = xcalloc(t->num_blocks, sizeof(BasicBlock));
    t->tensors = xcalloc((size_t)5 * (1 + 3 * t->num_blocks) + 2, sizeof(TensorInfo));
    int h = cfg->img_size, w = cfg->img_size, cin = cfg->widths[0];
    add_convbn(t, &t->stem, cfg->in_chans, cfg->widths[0], 3, 1, h, w);
    for (int s = 0; s < S; s++)
        for (int b = 0; b < NB; b++) {
            BasicBlock *k = &t->blocks[s * NB + b];
            int stride = (s > 0 && b == 0) ? 2 : 1, cout = cfg->widths[s];
            add_convbn(t, &k->conv1, cin, cout, 3, stride, h, w);
            add_convbn(t, &k->conv2, cout, cout, 3, 1, k->conv1.hout, k->conv1.wout);
            k->has_shortcut = (stride != 1 || cin != cout);
            if (k->has_shortcut) add_convbn(t, &k->shortcut, cin, cout, 1, stride, h, w);
            h = k->conv1.hout, w = k->conv1.wout, cin = cout;
        }
    add_tensor(t, "fc_w", (size_t)cfg->num_classes * cin, 1, 1);
    add_tensor(t, "fc_b", cfg->num_classes, 0, 1);
    t->params_memory = xcalloc(t->num_params, sizeof(float));
    t->grads_memory = xcalloc(t->num_params, sizeof(float));
    int ti = 0;
    point_convbn(t, &t->stem, &ti);
    for (int i = 0; i < t->num_blocks; i++) {
        point_convbn(t, &t->blocks[i].conv1, &ti);
        point_convbn(t, &t->blocks[i].conv2, &ti);
        if (t->blocks[i].has_shortcut) point_convbn(t, &t->blocks[i].shortcut, &ti);
    }
    t->fc_w = t->params_memory + t->tensors[ti].offset, t->dfc_w = t->grads_memory + t->tensors[ti].offset, ti++;
    t->fc_b = t->params_memory + t->tensors[ti].offset, t->dfc_b = t->grads_memory + t->tensors[ti].offset, ti++;
}

static void teacher_free(Teacher *t) {
    free(t->blocks);
    free(t->tensors);
    free(t->params_memory);
    free(t->grads_memory);
    free(t->acts_memory);
    memset(t, 0, sizeof(*t));
}

static int teacher_last_width(const Teacher *t) { return t->config.widths[t->config.stages - 1]; }

/* All convolutions in forward order (ResNet: stem, then each block's conv1, conv2, shortcut;
   airbench: the whitening conv, then each stage's conv1, conv2); list must hold
   teacher_max_convs(t) pointers. Returns how many. */
static int teacher_max_convs(const Teacher *t) { return 7 + 3 * t->num_blocks; }
static int teacher_convs(Teacher *t, ConvBN **list) {
    int n = 0;
    if (t->config.arch == ARCH_AIRBENCH) {
        list[n++] = &t->whiten;
        for (int s = 0; s < 3; s++) list[n++] = &t->air[s].conv1, list[n++] = &t->air[s].conv2;
        return n;
    }
    list[n++] = &t->stem;
    for (int i = 0; i < t->num_blocks; i++) {
        list[n++] = &t->blocks[i].conv1;
        list[n++] = &t->blocks[i].conv2;
        if (t->blocks[i].has_shortcut) list[n++] = &t->blocks[i].shortcut;
    }
    return n;
}

/* Init as torchvision's ResNet: convs Kaiming normal (fan_out, ReLU gain), BN weight 1 bias 0,
   running mean 0 / var 1; the classifier PyTorch's default uniform(+-1/sqrt(fan_in)). */
static void teacher_init(Teacher *t, uint64_t seed) {
    if (t->config.arch == ARCH_AIRBENCH) {
        airbench_init(t, seed);
        return;
    }
    Rng rng;
    rng_seed(&rng, seed);
    memset(t->params_memory, 0, sizeof(float) * t->num_params); /* BN beta and running mean: 0 */
    /* convs: std = sqrt(2 / (cout * k * k)) */
    ConvBN **all = xmalloc(sizeof(ConvBN *) * teacher_max_convs(t));
    int n = teacher_convs(t, all);
    for (int i = 0; i < n; i++) {
        ConvBN *l = all[i];
        fill_value(l->gamma, l->cout, 1.0f);
        fill_value(l->running_var, l->cout, 1.0f);
        float std = sqrtf(2.0f / (float)(l->cout * l->ksize * l->ksize));
        size_t size = (size_t)l->cout * l->cin * l->ksize * l->ksize;
        for (size_t j = 0; j < size; j++) l->w[j] = std * rng_normal(&rng);
    }
    free(all);
    int C = t->config.num_classes, W = teacher_last_width(t);
    float bound = 1.0f / sqrtf((float)W);
    for (int j = 0; j < C * W; j++) t->fc_w[j] = bound * (2.0f * rng_uniform(&rng) - 1.0f);
    for (int j = 0; j < C; j++) t->fc_b[j] = bound * (2.0f * rng_uniform(&rng) - 1.0f);
}

static void teacher_alloc_activations(Teacher *t, int B) {
    if (t->config.arch == ARCH_AIRBENCH) {
        airbench_alloc_activations(t, B);
        return;
    }
    if (t->acts_memory && B <= t->batch_size) return;
    free(t->acts_memory);
    const TeacherConfig *c = &t->config;
    size_t total = 0, max_col = 0, max_out = 0, max_w = 0;
    ConvBN **all = xmalloc(sizeof(ConvBN *) * teacher_max_convs(t));
    int n = teacher_convs(t, all);
    for (int pass = 0; pass < 2; pass++) { /* pass 0 counts, pass 1 points */
        size_t off = 0;
        float *base = pass ? t->acts_memory : NULL;
#define TAKE(ptr, count) do { if (pass) (ptr) = base + off; off += (count); } while (0)
        TAKE(t->input, (size_t)c->in_chans * B * c->img_size * c->img_size);
        for (int i = 0; i < n; i++) {
            ConvBN *l = all[i];
            size_t np = (size_t)B * l->hout * l->wout;
            TAKE(l->conv, l->cout * np);
            TAKE(l->out, l->cout * np);
            TAKE(l->dout, l->cout * np);
            TAKE(l->bn_mean, l->cout);
            TAKE(l->bn_rstd, l->cout);
            if (conv_direct(l)) TAKE(l->padded_in, conv_padded_size(l, B));
            size_t col = conv_scratch_size(l, B);
            if (col > max_col) max_col = col;
            if (l->cout * np > max_out) max_out = l->cout * np;
            if ((size_t)l->cout * l->cin * l->ksize * l->ksize > max_w) max_w = (size_t)l->cout * l->cin * l->ksize * l->ksize;
        }
        TAKE(t->pooled, (size_t)B * teacher_last_width(t));
        TAKE(t->dpooled, (size_t)B * teacher_last_width(t));
        TAKE(t->logits, (size_t)B * c->num_classes);
        TAKE(t->dlogits, (size_t)B * c->num_classes);
        TAKE(t->col, max_col);
        TAKE(t->dcol, max_col);
        TAKE(t->dconv, max_out);
        TAKE(t->w_flip, max_w);
        TAKE(t->dw_lanes, CONV_LANES * max_w);
#undef TAKE
        if (!pass) {
            total = off;
            t->acts_memory = xcalloc_touched(total);
            t->num_acts = total;
        }
    }
    free(all);
    t->batch_size = B;
}

/* images (B, in_chans, S, S) -> logits (B, C). train = 1: BatchNorm uses batch statistics. */
static void teacher_forward(Teacher *t, const float *images, int B, int train) {
    teacher_alloc_activations(t, B);
    const TeacherConfig *c = &t->config;
    int S = c->img_size, hw = S * S;
    for (int b = 0; b < B; b++) /* (B, C, H, W) -> (C, B, H, W) */
        for (int ch = 0; ch < c->in_chans; ch++)
            memcpy(t->input + ((size_t)ch * B + b) * hw, images + ((size_t)b * c->in_chans + ch) * hw, sizeof(float) * hw);
    if (c->arch == ARCH_AIRBENCH) {
        airbench_forward(t, B, train);
        return;
    }
    convbn_forward(t, &t->stem, t->input, NULL, 1, B, train);
    const float *x = t->stem.out;
    for (int i = 0; i < t->num_blocks; i++) {
        basic_block_forward(t, &t->blocks[i], x, B, train);
        x = t->blocks[i].conv2.out;
    }
    ConvBN *last = &t->blocks[t->num_blocks - 1].conv2;
    avgpool_forward(t->pooled, x, B, last->cout, last->hout * last->wout);
    linear_forward(t->logits, t->pooled, t->fc_w, t->fc_b, B, last->cout, c->num_classes);
}

static void teacher_zero_grad(Teacher *t) {
    if (t->config.arch == ARCH_AIRBENCH) {
        airbench_zero_grad(t);
        return;
    }
    memset(t->grads_memory, 0, sizeof(float) * t->num_params);
    /* The activations' gradients need no zeroing: the first to reach each one writes it
       (linear_backward, avgpool_backward, copy_into or din_add = 0 in basic_block_backward). */
    memset(t->dlogits, 0, sizeof(float) * t->batch_size * t->config.num_classes);
}

/* From t->dlogits (set by the loss) back to all parameter gradients (training mode). */
static void teacher_backward(Teacher *t, int B) {
    if (t->config.arch == ARCH_AIRBENCH) {
        airbench_backward(t, B);
        return;
    }
    const TeacherConfig *c = &t->config;
    ConvBN *last = &t->blocks[t->num_blocks - 1].conv2;
    linear_backward(t->dpooled, t->dfc_w, t->dfc_b, t->dlogits, t->pooled, t->fc_w, B, last->cout, c->num_classes);
    avgpool_backward(last->dout, t->dpooled, B, last->cout, last->hout * last->wout);
    for (int i = t->num_blocks - 1; i >= 0; i--) {
        const float *in = i == 0 ? t->stem.out : t->blocks[i - 1].conv2.out;
        float *din = i == 0 ? t->stem.dout : t->blocks[i - 1].conv2.dout;
        basic_block_backward(t, &t->blocks[i], din, in, B);
    }
    relu_backward(t->stem.dout, t->stem.out, (size_t)t->stem.cout * B * t->stem.hout * t->stem.wout);
    convbn_backward(t, &t->stem, NULL, 0, t->input, B);
}

/* ============================================================================================
 * I.6b The fast teacher: airbench (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single
 *      GPU"), the default teacher
 *
 * The paper's point about teachers (Sec. 5.2) is that a strong convnet makes the best one. On
 * two cores, "strong" must also be cheap: airbench94 reaches 94% in 10 epochs, about 0.36 PFLOP
 * of training. The net: a 2x2 convolution whose 24 filters are fixed, computed from the data
 * (whitening: the principal directions of 2x2 patches, scaled to unit variance, and their
 * negatives); then three stages of  conv3x3 -> max-pool 2 -> BatchNorm -> GELU -> conv3x3 ->
 * BatchNorm -> GELU  with 64, 256, 256 channels (32 -> 31 -> 15 -> 7 -> 3 pixels); a max over the
 * last 3x3 pixels; a linear layer without bias, its output scaled by 1/9. BatchNorm has eps 1e-12,
 * running-statistics momentum 0.4, and its weight (gamma) frozen at 1. Its training recipe (SGD
 * with Nesterov momentum, BatchNorm biases at 64x the learning rate, Lookahead, translation by 2
 * pixels with alternating flips, test-time augmentation) is spread over I.7, I.8 and I.10;
 * dev/AIRBENCH.md lists every choice with its source.
 * ========================================================================================== */

#define AIR_BN_EPS 1e-12f
#define AIR_BN_MOMENTUM 0.4f
#define AIR_LOGIT_SCALE (1.0f / 9.0f)
#define AIR_WHITEN_EPS 5e-4

/* ---- Max-pooling over k x k windows, stride k (floor: a 31-pixel side gives 15) -------------
   The output is the largest input of its window; the gradient flows back to that input alone.
   in (planes, h, w) -> out (planes, h/k, w/k); from[o] = the index (y*w + x) of the max.      */
static void maxpool_forward(float *out, int32_t *from, const float *in, size_t planes, int h, int w, int k) {
    int ho = h / k, wo = w / k;
    OMP(omp parallel for schedule(static))
    for (size_t p = 0; p < planes; p++) {
        const float *x = in + p * h * w;
        for (int y = 0; y < ho; y++)
            for (int xo = 0; xo < wo; xo++) {
                int best = y * k * w + xo * k;
                for (int dy = 0; dy < k; dy++)
                    for (int dx = 0; dx < k; dx++) {
                        int i = (y * k + dy) * w + xo * k + dx;
                        if (x[i] > x[best]) best = i;
                    }
                size_t o = (p * ho + y) * wo + xo;
                out[o] = x[best];
                from[o] = best;
            }
    }
}

/* din[max of each window] += dout. The windows do not overlap, so planes can run in parallel. */
static void maxpool_backward(float *din, const float *dout, const int32_t *from, size_t planes, int h, int w, int k) {
    size_t per_plane = (size_t)(h / k) * (w / k);
    OMP(omp parallel for schedule(static))
    for (size_t p = 0; p < planes; p++)
        for (size_t o = p * per_plane; o < (p + 1) * per_plane; o++) din[p * h * w + from[o]] += dout[o];
}

/* The head's max over all hw pixels of each channel: in (C, B, hw), channel-major, -> out (B, C),
   the layout of a linear layer's input. */
static void global_maxpool_forward(float *out, int32_t *from, const float *in, int B, int C, int hw) {
    for (int c = 0; c < C; c++)
        for (int b = 0; b < B; b++) {
            const float *x = in + ((size_t)c * B + b) * hw;
            int best = 0;
            for (int i = 1; i < hw; i++) if (x[i] > x[best]) best = i;
            out[(size_t)b * C + c] = x[best];
            from[(size_t)b * C + c] = best;
        }
}

/* out[b][c] = in[c][b][from[b][c]]  =>  din at that pixel += dout[b][c]; the other pixels get nothing */
static void global_maxpool_backward(float *din, const float *dout, const int32_t *from, int B, int C, int hw) {
    for (int c = 0; c < C; c++)
        for (int b = 0; b < B; b++) din[((size_t)c * B + b) * hw + from[(size_t)b * C + c]] += dout[(size_t)b * C + c];
}

/* ---- The eigenvectors of a symmetric matrix (Jacobi's method) -------------------------------
   Repeatedly zeroes the largest remaining off-diagonal pair A[p][q] with a plane rotation
   (Golub & Van Loan, Sec. 8.5): A <- J^T A J, V <- V J. A becomes diagonal (its eigenvalues),
   V's columns the eigenvectors. n is small here (12), so plain and exact is what we want.   */
static void symmetric_eigen(double *A, double *V, int n) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) V[i * n + j] = i == j;
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0.0, total = 0.0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) total += A[i * n + j] * A[i * n + j], off += i != j ? A[i * n + j] * A[i * n + j] : 0.0;
        if (off <= 1e-30 * total) break;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                if (A[p * n + q] == 0.0) continue;
                /* the angle that zeroes A[p][q]: t = tan(theta), the smaller root of t^2 + 2 t cot(2 theta) - 1 = 0 */
                double theta = (A[q * n + q] - A[p * n + p]) / (2.0 * A[p * n + q]);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0));
                double c = 1.0 / sqrt(t * t + 1.0), s = t * c;
                for (int k = 0; k < n; k++) { /* columns p and q: A J */
                    double akp = A[k * n + p], akq = A[k * n + q];
                    A[k * n + p] = c * akp - s * akq, A[k * n + q] = s * akp + c * akq;
                }
                for (int k = 0; k < n; k++) { /* rows p and q: J^T (A J) */
                    double apk = A[p * n + k], aqk = A[q * n + k];
                    A[p * n + k] = c * apk - s * aqk, A[q * n + k] = s * apk + c * aqk;
                }
                for (int k = 0; k < n; k++) {
                    double vkp = V[k * n + p], vkq = V[k * n + q];
                    V[k * n + p] = c * vkp - s * vkq, V[k * n + q] = s * vkp + c * vkq;
                }
            }
    }
}

/* ---- The whitening filters, from the data ---------------------------------------------------
   Every 2x2 patch (all 31 x 31 positions) of the first 5000 training images, normalised, is a
   vector x of 12 numbers, in the (channel, row, column) order of a filter. With the (uncentred)
   second moment  M = mean of x x^T = V diag(lambda) V^T,  filter i (i < 12) is the i-th
   eigenvector (largest lambda first) divided by sqrt(lambda_i + 5e-4), and filter 12 + i is its
   negative: the 24 outputs of the convolution are the patch's coordinates along its principal
   directions, each scaled to variance ~1, split into a positive and a negative half for the GELU. */
static void airbench_whiten_init(Teacher *t, const uint8_t *images, int n, const float *mean, const float *std) {
    int C = t->config.in_chans, S = t->config.img_size, K = C * 4, n_img = n < 5000 ? n : 5000;
    double *M = xcalloc((size_t)K * K, sizeof(double)), *V = xmalloc(sizeof(double) * K * K), x[64];
    float *norm = xmalloc(sizeof(float) * C * S * S);
    long count = 0;
    for (int i = 0; i < n_img; i++) {
        const uint8_t *img = images + (size_t)i * C * S * S;
        for (int c = 0; c < C; c++)
            for (int p = 0; p < S * S; p++) norm[c * S * S + p] = (img[c * S * S + p] / 255.0f - mean[c]) / std[c];
        for (int y = 0; y + 1 < S; y++)
            for (int xx = 0; xx + 1 < S; xx++, count++) {
                for (int c = 0; c < C; c++)
                    for (int dy = 0; dy < 2; dy++)
                        for (int dx = 0; dx < 2; dx++) x[(c * 2 + dy) * 2 + dx] = norm[(c * S + y + dy) * S + xx + dx];
                for (int a = 0; a < K; a++)
                    for (int b = 0; b < K; b++) M[a * K + b] += x[a] * x[b];
            }
    }
    for (int a = 0; a < K * K; a++) M[a] /= (double)count;
    symmetric_eigen(M, V, K);
    int order[64];
    for (int i = 0; i < K; i++) order[i] = i;
    for (int i = 1; i < K; i++) /* eigenvalues (the diagonal of M now) largest first */
        for (int j = i; j > 0 && M[order[j] * K + order[j]] > M[order[j - 1] * K + order[j - 1]]; j--) {
            int tmp = order[j];
            order[j] = order[j - 1], order[j - 1] = tmp;
        }
    for (int i = 0; i < K; i++) {
        double lambda = M[order[i] * K + order[i]], scale = 1.0 / sqrt(lambda + AIR_WHITEN_EPS);
        for (int a = 0; a < K; a++) {
            t->whiten.w[(size_t)i * K + a] = (float)(V[a * K + order[i]] * scale);
            t->whiten.w[(size_t)(K + i) * K + a] = -(float)(V[a * K + order[i]] * scale);
        }
    }
    free(M), free(V), free(norm);
}

/* ---- Layout: the tensors in checkpoint order --------------------------------------------- */
#define AIR_WHITEN_B 1 /* the whitening bias's index in the table of tensors (airbench_build) */
static void airbench_build(Teacher *t, const TeacherConfig *cfg) {
    int S = cfg->img_size, K = cfg->in_chans * 4, W = 2 * K; /* 24 whitening filters for RGB */
    t->tensors = xcalloc(2 + 3 * 2 * 5 + 1, sizeof(TensorInfo));
    ConvBN *wh = &t->whiten;
    wh->cin = cfg->in_chans, wh->cout = W, wh->ksize = 2, wh->stride = 1, wh->pad = 0;
    wh->hin = wh->win = S, wh->hout = wh->wout = S - 1;
    add_tensor(t, "whiten_w", (size_t)W * K, 0, 0); /* fixed: computed from the data */
    add_tensor(t, "whiten_b", W, 1, 1);             /* AIR_WHITEN_B: trains for the first 3 epochs (airbench_begin_epoch) */
    int h = S - 1, cin = W;
    for (int s = 0; s < 3; s++) {
        AirStage *st = &t->air[s];
        int w = cfg->widths[s];
        add_convbn(t, &st->conv1, cin, w, 3, 1, h, h);
        st->hp = st->wp = h / 2;
        add_convbn(t, &st->conv2, w, w, 3, 1, st->hp, st->wp);
        ConvBN *units[2] = {&st->conv1, &st->conv2};
        for (int u = 0; u < 2; u++) {
            units[u]->bn_eps = AIR_BN_EPS, units[u]->bn_momentum = AIR_BN_MOMENTUM;
            TensorInfo *gamma = &t->tensors[t->num_tensors - 5 * (2 - u) + 1], *beta = gamma + 1;
            gamma->trainable = 0;                   /* BatchNorm weight frozen at 1 */
            beta->decay = 1, beta->lr_mult = 64.0f; /* BatchNorm bias: 64x the learning rate */
        }
        h = st->hp, cin = w;
    }
    add_tensor(t, "fc_w", (size_t)cfg->num_classes * cin, 1, 1);
    t->params_memory = xcalloc(t->num_params, sizeof(float));
    t->grads_memory = xcalloc(t->num_params, sizeof(float));
    int ti = 0;
    wh->w = t->params_memory + t->tensors[ti].offset, wh->dw = t->grads_memory + t->tensors[ti].offset, ti++;
    t->whiten_b = t->params_memory + t->tensors[ti].offset, t->dwhiten_b = t->grads_memory + t->tensors[ti].offset, ti++;
    for (int s = 0; s < 3; s++) {
        point_convbn(t, &t->air[s].conv1, &ti);
        point_convbn(t, &t->air[s].conv2, &ti);
    }
    t->fc_w = t->params_memory + t->tensors[ti].offset, t->dfc_w = t->grads_memory + t->tensors[ti].offset;
    t->fc_b = t->dfc_b = NULL;
}

/* Init as airbench: convolutions PyTorch's default, uniform(+-1/sqrt(fan_in)), then the first
   cin filters of each made the identity (Dirac: 1 at the centre of their own input channel), so
   that at the start every stage passes its input through; BatchNorm weight 1, bias 0, running
   mean 0 and variance 1; the linear layer PyTorch's default. The whitening filters come from the
   data (airbench_whiten_init); until then they are PyTorch's default too. */
static void airbench_init(Teacher *t, uint64_t seed) {
    Rng rng;
    rng_seed(&rng, seed);
    memset(t->params_memory, 0, sizeof(float) * t->num_params);
    ConvBN *wh = &t->whiten;
    float bound = 1.0f / sqrtf((float)(wh->cin * 4));
    for (int i = 0; i < wh->cout * wh->cin * 4; i++) wh->w[i] = bound * (2.0f * rng_uniform(&rng) - 1.0f);
    for (int s = 0; s < 3; s++) {
        ConvBN *units[2] = {&t->air[s].conv1, &t->air[s].conv2};
        for (int u = 0; u < 2; u++) {
            ConvBN *l = units[u];
            int fan_in = l->cin * 9;
            bound = 1.0f / sqrtf((float)fan_in);
            for (int i = 0; i < l->cout * fan_in; i++) l->w[i] = bound * (2.0f * rng_uniform(&rng) - 1.0f);
            for (int o = 0; o < l->cin && o < l->cout; o++) { /* Dirac */
                for (int i = 0; i < fan_in; i++) l->w[(size_t)o * fan_in + i] = 0.0f;
                l->w[(size_t)o * fan_in + o * 9 + 4] = 1.0f;
            }
            fill_value(l->gamma, l->cout, 1.0f);
            fill_value(l->running_var, l->cout, 1.0f);
        }
    }
    int W = teacher_last_width(t), C = t->config.num_classes;
    bound = 1.0f / sqrtf((float)W);
    for (int i = 0; i < C * W; i++) t->fc_w[i] = bound * (2.0f * rng_uniform(&rng) - 1.0f);
}

/* The whitening bias trains for the first 3 epochs only (then it is frozen, as in airbench). */
static void airbench_begin_epoch(Teacher *t, int epoch) {
    t->tensors[AIR_WHITEN_B].trainable = epoch < 3;
}

static void airbench_alloc_activations(Teacher *t, int B) {
    if (t->acts_memory && B <= t->batch_size) return;
    free(t->acts_memory);
    const TeacherConfig *c = &t->config;
    ConvBN *wh = &t->whiten;
    size_t max_col = conv_scratch_size(wh, B), max_out = (size_t)wh->cout * B * wh->hout * wh->wout, max_w = 0;
    for (int pass = 0; pass < 2; pass++) { /* pass 0 counts, pass 1 points */
        size_t off = 0;
        float *base = pass ? t->acts_memory : NULL;
#define TAKE(ptr, count) do { if (pass) (ptr) = (void *)(base + off); off += (count); } while (0)
        size_t nw = (size_t)wh->cout * B * wh->hout * wh->wout;
        TAKE(t->input, (size_t)c->in_chans * B * c->img_size * c->img_size);
        TAKE(wh->conv, nw); TAKE(wh->out, nw); TAKE(wh->dout, nw);
        for (int s = 0; s < 3; s++) {
            AirStage *st = &t->air[s];
            ConvBN *l1 = &st->conv1, *l2 = &st->conv2;
            size_t n1 = (size_t)l1->cout * B * l1->hout * l1->wout, np = (size_t)l1->cout * B * st->hp * st->wp;
            TAKE(l1->conv, n1);
            TAKE(st->pooled, np); TAKE(st->dpooled, np); TAKE(st->pool_from, np);
            TAKE(l1->out, np); TAKE(l1->dout, np); TAKE(l1->bn_mean, l1->cout); TAKE(l1->bn_rstd, l1->cout);
            TAKE(st->act1, np); TAKE(st->dact1, np);
            TAKE(l2->conv, np); TAKE(l2->out, np); TAKE(l2->dout, np); TAKE(l2->bn_mean, l2->cout); TAKE(l2->bn_rstd, l2->cout);
            TAKE(st->act2, np); TAKE(st->dact2, np);
            if (conv_direct(l1)) TAKE(l1->padded_in, conv_padded_size(l1, B));
            if (conv_direct(l2)) TAKE(l2->padded_in, conv_padded_size(l2, B));
            ConvBN *units[2] = {l1, l2};
            for (int u = 0; u < 2; u++) {
                size_t col = conv_scratch_size(units[u], B), out = (size_t)units[u]->cout * B * units[u]->hout * units[u]->wout;
                size_t w = (size_t)units[u]->cout * units[u]->cin * 9;
                max_col = col > max_col ? col : max_col, max_out = out > max_out ? out : max_out, max_w = w > max_w ? w : max_w;
            }
        }
        size_t W = (size_t)teacher_last_width(t);
        TAKE(t->head_pooled, B * W); TAKE(t->dhead_pooled, B * W); TAKE(t->head_from, B * W);
        TAKE(t->logits, (size_t)B * c->num_classes); TAKE(t->dlogits, (size_t)B * c->num_classes);
        TAKE(t->col, max_col); TAKE(t->dcol, max_col); TAKE(t->dconv, max_out); TAKE(t->w_flip, max_w);
        TAKE(t->dw_lanes, CONV_LANES * max_w);
#undef TAKE
        if (!pass) {
            t->acts_memory = xcalloc_touched(off);
            t->num_acts = off;
        }
    }
    t->batch_size = B;
}

/* images (B, in_chans, S, S) -> logits (B, C); t->input must hold them channel-major already. */
static void airbench_forward(Teacher *t, int B, int train) {
    ConvBN *wh = &t->whiten;
    size_t hw = (size_t)wh->hout * wh->wout;
    conv_forward(wh->conv, t->col, NULL, t->input, wh->w, wh, B);
    OMP(omp parallel for schedule(static))
    for (int c = 0; c < wh->cout; c++)
        for (size_t i = 0; i < (size_t)B * hw; i++) wh->conv[(size_t)c * B * hw + i] += t->whiten_b[c];
    gelu_forward(wh->out, wh->conv, (size_t)wh->cout * B * hw);
    const float *x = wh->out;
    for (int s = 0; s < 3; s++) {
        AirStage *st = &t->air[s];
        ConvBN *l1 = &st->conv1;
        size_t np = (size_t)B * st->hp * st->wp;
        conv_forward(l1->conv, t->col, conv_keep_padded(t, l1, B, train), x, l1->w, l1, B);
        maxpool_forward(st->pooled, st->pool_from, l1->conv, (size_t)l1->cout * B, l1->hout, l1->wout, 2);
        batchnorm_forward(l1->out, l1->bn_mean, l1->bn_rstd, l1->running_mean, l1->running_var, st->pooled, l1->gamma,
                          l1->beta, NULL, 0, l1->cout, np, train, l1->bn_eps, l1->bn_momentum);
        gelu_forward(st->act1, l1->out, l1->cout * np);
        convbn_forward(t, &st->conv2, st->act1, NULL, 0, B, train);
        gelu_forward(st->act2, st->conv2.out, st->conv2.cout * np);
        x = st->act2;
    }
    AirStage *last = &t->air[2];
    int W = last->conv2.cout, C = t->config.num_classes;
    global_maxpool_forward(t->head_pooled, t->head_from, x, B, W, last->hp * last->wp);
    linear_forward(t->logits, t->head_pooled, t->fc_w, NULL, B, W, C);
    for (int i = 0; i < B * C; i++) t->logits[i] *= AIR_LOGIT_SCALE;
}

static void airbench_zero_grad(Teacher *t) {
    memset(t->grads_memory, 0, sizeof(float) * t->num_params);
    int B = t->batch_size;
    fill_zero(t->whiten.dout, (size_t)t->whiten.cout * B * t->whiten.hout * t->whiten.wout);
    for (int s = 0; s < 3; s++) {
        AirStage *st = &t->air[s];
        size_t np = (size_t)st->conv1.cout * B * st->hp * st->wp;
        fill_zero(st->dact1, np), fill_zero(st->dact2, np); /* (conv1.dout, conv2.dout: gelu_backward writes them) */
    }
    memset(t->dlogits, 0, sizeof(float) * B * t->config.num_classes);
}

/* From t->dlogits back to every gradient, the forward's steps in reverse. The scale 1/9 of the
   logits is applied to dlogits in place first. The whitening filters are fixed: only their bias
   gets a gradient, the sum of dL/d(conv output) over each channel's pixels. Once the bias is
   frozen too (after epoch 3, airbench_begin_epoch), nothing below the first block needs a
   gradient, and the first conv's input gradient is not computed. */
static void airbench_backward(Teacher *t, int B) {
    int W = teacher_last_width(t), C = t->config.num_classes, whiten_trains = t->tensors[AIR_WHITEN_B].trainable;
    for (int i = 0; i < B * C; i++) t->dlogits[i] *= AIR_LOGIT_SCALE;
    linear_backward(t->dhead_pooled, t->dfc_w, NULL, t->dlogits, t->head_pooled, t->fc_w, B, W, C);
    AirStage *last = &t->air[2];
    global_maxpool_backward(last->dact2, t->dhead_pooled, t->head_from, B, W, last->hp * last->wp);
    for (int s = 2; s >= 0; s--) {
        AirStage *st = &t->air[s];
        ConvBN *l1 = &st->conv1;
        size_t np = (size_t)B * st->hp * st->wp, n1 = (size_t)B * l1->hout * l1->wout;
        const float *x = s == 0 ? t->whiten.out : t->air[s - 1].act2;
        float *dx = s > 0 ? t->air[s - 1].dact2 : whiten_trains ? t->whiten.dout : NULL;
        gelu_backward(st->conv2.dout, st->dact2, st->conv2.out, st->conv2.cout * np);
        convbn_backward(t, &st->conv2, st->dact1, 1, st->act1, B);
        gelu_backward(l1->dout, st->dact1, l1->out, l1->cout * np);
        batchnorm_backward(st->dpooled, l1->dgamma, l1->dbeta, l1->dout, st->pooled, l1->gamma, l1->bn_mean, l1->bn_rstd,
                           l1->cout, np);
        fill_zero(t->dconv, l1->cout * n1);
        maxpool_backward(t->dconv, st->dpooled, st->pool_from, (size_t)l1->cout * B, l1->hout, l1->wout, 2);
        conv_backward(dx, 1, l1->dw, t->dw_lanes, t->col, t->dcol, conv_kept_padded(l1), t->w_flip, t->dconv, x, l1->w,
                      l1, B);
    }
    if (!whiten_trains) return;
    ConvBN *wh = &t->whiten;
    size_t hw = (size_t)B * wh->hout * wh->wout;
    gelu_backward(t->dconv, wh->dout, wh->conv, wh->cout * hw);
    OMP(omp parallel for schedule(static))
    for (int c = 0; c < wh->cout; c++) {
        double sum = 0.0;
        for (size_t i = 0; i < hw; i++) sum += t->dconv[(size_t)c * hw + i];
        t->dwhiten_b[c] += (float)sum;
    }
}

/* ============================================================================================
 * I.7 Optimizers and learning-rate schedule
 *
 * The paper's recipe (Table 9): AdamW, lr 5e-4 x batch/512, weight decay 0.05, 5 warmup epochs
 * from 1e-6, then a cosine down to 1e-5, for 300 epochs. The student's defaults here are that
 * recipe shortened to a night: 40 epochs, 3 warmup epochs, lr 2.5e-4 x batch/128 (train_config).
 * ========================================================================================== */

typedef enum { OPT_ADAMW = 0, OPT_SGD = 1 } OptType;

typedef struct {
    OptType type;
    float beta1, beta2, eps; /* AdamW: 0.9, 0.999, 1e-8 */
    float weight_decay;      /* decoupled for AdamW, L2 added to the gradient for SGD */
    float momentum;          /* SGD */
    int nesterov;            /* SGD */
    long step;               /* optimizer steps taken so far */
    size_t n;
    float *m;                /* AdamW first moment, or SGD momentum buffer */
    float *v;                /* AdamW second moment */
    float *slow;             /* Lookahead's slow weights (NULL without --lookahead); not the paper's EMA model */
} Optimizer;

static void optimizer_init(Optimizer *o, OptType type, size_t n, float weight_decay, float momentum, int nesterov,
                           int lookahead) {
    memset(o, 0, sizeof(*o));
    o->type = type;
    o->beta1 = 0.9f;
    o->beta2 = 0.999f;
    o->eps = 1e-8f;
    o->weight_decay = weight_decay;
    o->momentum = momentum;
    o->nesterov = nesterov;
    o->n = n;
    o->m = xcalloc_touched((lookahead ? 3 : 2) * n); /* m, v (and slow) in one block: the state file writes it whole */
    o->v = o->m + n;
    o->slow = lookahead ? o->m + 2 * n : NULL;
}

static void optimizer_free(Optimizer *o) {
    free(o->m);
    o->m = o->v = o->slow = NULL;
}

/* Lookahead (Zhang et al. 2019), as airbench does it: every 5 steps the weights are pulled
   toward a slow moving average, slow = d slow + (1 - d) w, and continue from it, w = slow. The
   decay d = 0.95^5 (step / total)^3 grows from 0 (slow follows w) to 0.77 at the end. Every
   number of the model takes part, BatchNorm's running statistics too. At the last step the
   weights become the average (d = 1 when that step is not a multiple of 5). */
static void lookahead_step(Optimizer *o, float *params, long step, long total_steps) {
    if (!o->slow || (step % 5 != 0 && step != total_steps)) return;
    double frac = (double)step / (double)total_steps;
    float d = step % 5 == 0 ? (float)(0.7737809375 * frac * frac * frac) : 1.0f; /* 0.95^5 = 0.7737809375 */
    OMP(omp parallel for schedule(static))
    for (size_t i = 0; i < o->n; i++) {
        o->slow[i] = d * o->slow[i] + (1.0f - d) * params[i];
        params[i] = o->slow[i];
    }
}

/* One step over every trainable tensor of the table, as PyTorch's AdamW and SGD do it. Each
   tensor has its own learning rate lr * lr_mult; its weight decay is divided by lr_mult, so that
   the decay per step (lr * wd) is the same for every tensor (airbench's BatchNorm biases learn 64x
   faster, and decay as fast as the rest).
   AdamW:  p -= lr * wd * p  (decoupled decay, only where decay is on)
           m = b1 m + (1-b1) g,  v = b2 v + (1-b2) g^2
           p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
   SGD:    g += wd * p (only where decay is on);  buf = momentum buf + g
           p -= lr * buf,   or with Nesterov  p -= lr * (g + momentum buf)                   */
VECTOR_CLONES
static void optimizer_step(Optimizer *o, float *params, const float *grads, const TensorInfo *tensors,
                           int num_tensors, float lr) {
    o->step++;
    float bc1 = 1.0f - powf(o->beta1, (float)o->step), bc2 = 1.0f - powf(o->beta2, (float)o->step);
    for (int t = 0; t < num_tensors; t++) {
        const TensorInfo *ti = &tensors[t];
        if (!ti->trainable || ti->size == 0) continue;
        float mult = ti->lr_mult > 0.0f ? ti->lr_mult : 1.0f, lr_t = lr * mult;
        float wd = ti->decay ? o->weight_decay / mult : 0.0f;
        float *p = params + ti->offset, *m = o->m + ti->offset, *v = o->v + ti->offset;
        const float *g = grads + ti->offset;
        long n = (long)ti->size;
        if (o->type == OPT_ADAMW) {
            OMP(omp parallel for schedule(static))
            for (long i = 0; i < n; i++) {
                p[i] -= lr_t * wd * p[i];
                m[i] = o->beta1 * m[i] + (1.0f - o->beta1) * g[i];
                v[i] = o->beta2 * v[i] + (1.0f - o->beta2) * g[i] * g[i];
                p[i] -= lr_t * (m[i] / bc1) / (sqrtf(v[i] / bc2) + o->eps);
            }
        } else {
            OMP(omp parallel for schedule(static))
            for (long i = 0; i < n; i++) {
                float gi = g[i] + wd * p[i];
                m[i] = o->momentum * m[i] + gi;
                p[i] -= lr_t * (o->nesterov ? gi + o->momentum * m[i] : m[i]);
            }
        }
    }
}

/* Learning rate at a step: linear warmup from warmup_lr to lr, then cosine down to min_lr
   (or linearly down to it, as airbench; or constant). Per step rather than per epoch as timm's scheduler in the reference (which also
   adds 10 cooldown epochs at min_lr), so the rate changes smoothly within an epoch. The cosine
   starts where the warmup ends; timm's runs from step 0 underneath the warmup, a difference of
   warmup/epochs in the cosine's phase (5/300 in the paper's recipe). */
typedef enum { SCHED_COSINE = 0, SCHED_CONSTANT = 1, SCHED_LINEAR = 2 } SchedType;

static float lr_at(long step, long total_steps, long warmup_steps, float lr, float min_lr, float warmup_lr,
                   SchedType sched) {
    if (step < warmup_steps) return warmup_lr + (lr - warmup_lr) * (float)step / (float)warmup_steps;
    if (sched == SCHED_CONSTANT || total_steps <= warmup_steps) return lr;
    double progress = (double)(step - warmup_steps) / (double)(total_steps - warmup_steps);
    if (progress > 1.0) progress = 1.0;
    if (sched == SCHED_LINEAR) return lr + (min_lr - lr) * (float)progress; /* airbench: a straight line down */
    return min_lr + 0.5f * (lr - min_lr) * (float)(1.0 + cos(3.14159265358979 * progress));
}

/* ============================================================================================
 * I.8 Data: CIFAR-10 / CIFAR-100 binary files, and DeiT's augmentations (paper Sec. 6, Table 9)
 *
 * Table 9's RandAugment, random erasing, Mixup and CutMix are here; two items of the paper's
 * recipe are not: repeated augmentation (each image three times in an epoch, augmented anew
 * each time: the official code's sampler for multi-GPU runs, not used there on one machine) and
 * the EMA of the weights (Sec. 6 found it worth 0.1 point, gone after fine-tuning; Lookahead's
 * slow weights, I.7, are another thing).
 * ========================================================================================== */

/* The binary version: records of 1 label byte (CIFAR-100: coarse and fine label bytes; we use
   the fine one) + 3072 pixel bytes: the 1024 R values of the 32x32 image row by row, then G,
   then B. */
#define CIFAR_SIDE 32
#define CIFAR_PIXELS (3 * CIFAR_SIDE * CIFAR_SIDE)

typedef struct {
    int n;                /* images */
    int num_classes;      /* 10 or 100 */
    uint8_t *images;      /* (n, 3, 32, 32) */
    uint8_t *labels;      /* (n) */
    float mean[3], std[3];/* per-channel normalisation of pixel / 255 */
    const char *name;     /* "CIFAR-10" or "CIFAR-100" */
} Dataset;

static int file_exists(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f) fclose(f);
    return f != NULL;
}

static int file_length(FILE *f, const char *path, long *bytes); /* hook: Part III.1 */

/* Reads one CIFAR binary file (records of label_bytes labels + 3072 pixels; label_bytes is 1
   for CIFAR-10, 2 for CIFAR-100), appending to d. Any whole number of records loads (the tests
   use tiny files); a count other than the official file's (expected) gets a warning, as a cut
   download rarely ends on a record. */
static int cifar_read_file(Dataset *d, const char *path, int label_bytes, int expected) {
    FILE *f = fopen(path, "rb");
    if (!f) return report("%s: cannot open: %s (get the data with ./cifar_download.sh)", path, strerror(errno));
    long bytes, rec = label_bytes + CIFAR_PIXELS;
    if (file_length(f, path, &bytes) != 0) { fclose(f); return -1; }
    if (bytes <= 0 || bytes % rec != 0) {
        fclose(f);
        return report("%s: size %ld bytes is not a whole number of %ld-byte records: truncated or not CIFAR binary", path, bytes, rec);
    }
    int count = (int)(bytes / rec);
    if (count != expected)
        fprintf(stderr, "deit: warning: %s holds %d images, the official file %d (a subset, or cut short?)\n", path, count, expected);
    d->images = realloc(d->images, (size_t)(d->n + count) * CIFAR_PIXELS);
    d->labels = realloc(d->labels, (size_t)(d->n + count));
    if (!d->images || !d->labels) die("out of memory reading %s", path);
    uint8_t *record = xmalloc((size_t)rec);
    for (int i = 0; i < count; i++) {
        if (fread(record, 1, (size_t)rec, f) != (size_t)rec) {
            free(record);
            fclose(f);
            return report("%s: short read at record %d", path, i);
        }
        int label = record[label_bytes - 1];
        if (label >= d->num_classes) {
            free(record);
            fclose(f);
            return report("%s: record %d has label %d, out of range for %d classes", path, i, label, d->num_classes);
        }
        d->labels[d->n + i] = (uint8_t)label;
        memcpy(d->images + (size_t)(d->n + i) * CIFAR_PIXELS, record + label_bytes, CIFAR_PIXELS);
    }
    free(record);
    fclose(f);
    d->n += count;
    return 0;
}

static void dataset_free(Dataset *d) {
    free(d->images);
    free(d->labels);
    memset(d, 0, sizeof(*d));
}

/* Which data set a directory holds: CIFAR-10 when it has data_batch_1.bin (also when
   CIFAR-100's train.bin sits beside it), CIFAR-100 when it has only train.bin. */
static int dataset_is_cifar100(const char *dir) {
    char path[4096];
    path_printf(path, sizeof(path), "%s/data_batch_1.bin", dir);
    if (file_exists(path)) return 0;
    path_printf(path, sizeof(path), "%s/train.bin", dir);
    return file_exists(path);
}

/* Loads the training (train = 1) or test split from dir (see dataset_is_cifar100); CIFAR-10
   needs all five training batches. */
static int dataset_load(Dataset *d, const char *dir, int train) {
    memset(d, 0, sizeof(*d));
    char path[4096];
    int cifar100 = dataset_is_cifar100(dir), cifar10 = !cifar100;
    path_printf(path, sizeof(path), "%s/data_batch_1.bin", dir);
    if (cifar10 && !file_exists(path))
        return report("%s: no CIFAR-10 (data_batch_1.bin) or CIFAR-100 (train.bin) binary files here; "
                      "run ./cifar_download.sh or pass --data DIR", dir);
    if (cifar10) {
        static const float mean[3] = {0.4914f, 0.4822f, 0.4465f}, std[3] = {0.2470f, 0.2435f, 0.2616f};
        d->num_classes = 10, d->name = "CIFAR-10";
        memcpy(d->mean, mean, sizeof(mean)), memcpy(d->std, std, sizeof(std));
        if (train) {
            for (int i = 1; i <= 5; i++) {
                path_printf(path, sizeof(path), "%s/data_batch_%d.bin", dir, i);
                if (cifar_read_file(d, path, 1, 10000)) { dataset_free(d); return -1; }
            }
        } else {
            path_printf(path, sizeof(path), "%s/test_batch.bin", dir);
            if (cifar_read_file(d, path, 1, 10000)) { dataset_free(d); return -1; }
        }
    } else {
        static const float mean[3] = {0.5071f, 0.4865f, 0.4409f}, std[3] = {0.2673f, 0.2564f, 0.2762f};
        d->num_classes = 100, d->name = "CIFAR-100";
        memcpy(d->mean, mean, sizeof(mean)), memcpy(d->std, std, sizeof(std));
        path_printf(path, sizeof(path), "%s/%s", dir, train ? "train.bin" : "test.bin");
        if (cifar_read_file(d, path, 2, train ? 50000 : 10000)) { dataset_free(d); return -1; }
    }
    return 0;
}

/* A class-balanced subset of `limit` images: the first limit/C of each class in file order
   (the remainder goes to the lowest classes). Writes the chosen indices, returns how many. */
static int balanced_subset(int *indices, const Dataset *d, int limit) {
    int C = d->num_classes, count = 0;
    int *taken = xcalloc(C, sizeof(int));
    for (int i = 0; i < d->n && count < limit; i++) {
        int y = d->labels[i], quota = limit / C + (y < limit % C ? 1 : 0);
        if (taken[y] < quota) {
            taken[y]++;
            indices[count++] = i;
        }
    }
    free(taken);
    return count;
}

static void shuffle(int *x, int n, Rng *rng) { /* Fisher-Yates */
    for (int i = n - 1; i > 0; i--) {
        int j = rng_int(rng, i + 1), t = x[i];
        x[i] = x[j], x[j] = t;
    }
}

/* ---- I.8.1 Augmentation settings ------------------------------------------------------------- */
typedef struct {
    int crop_flip;          /* random 32x32 crop of the image padded by 4, horizontal flip: the
                               CIFAR crop, also under --aug deit (DeiT, on ImageNet, uses
                               RandomResizedCrop instead) */
    int randaug_ops;        /* RandAugment: ops per image (0 = off) */
    float randaug_mag;      /* RandAugment magnitude (0..10), with noise of std 0.5 */
    float erase_prob;       /* random erasing probability */
    float mixup_alpha;      /* mixup Beta(alpha, alpha) (0 = off) */
    float cutmix_alpha;     /* cutmix Beta(alpha, alpha) (0 = off); both on: 50/50 per batch */
    float label_smoothing;  /* epsilon */
    int translate;          /* airbench's crop instead: shifts of up to this many pixels (2), the image
                               reflect-padded (0: the crop above) */
    int alternate_flip;     /* airbench: each image's flip is drawn once and reversed every other epoch,
                               so the image is seen both ways in every two epochs */
    uint64_t flip_seed;     /* the run's seed, for the alternating flip */
    int epoch;              /* set by train() for each epoch: which way the alternating flip goes */
} AugConfig;

/* ---- I.8.2 RandAugment (Cubuk et al. 2020) on one uint8 image (3, 32, 32) ---------------------
   The "increasing" op set of timm's rand-m9-mstd0.5-inc1, which DeiT uses. Each op is applied
   with probability 0.5 at magnitude m ~ N(9, 0.5) clipped to [0, 10], level = m / 10.
   Differences from timm, for simplicity: geometric ops resample bilinearly (DeiT's timm setup
   resamples bicubically) and fill with grey 128 (timm: the mean colour).                       */
#define SIDE CIFAR_SIDE
#define PLANE (SIDE * SIDE)
static uint8_t clamp_u8(float v) { return (uint8_t)(v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v + 0.5f)); }

/* out = degenerate + factor * (img - degenerate), as PIL's ImageEnhance blends */
static void blend(uint8_t *img, const uint8_t *degenerate, float factor) {
    for (int i = 0; i < CIFAR_PIXELS; i++) img[i] = clamp_u8(degenerate[i] + factor * (img[i] - degenerate[i]));
}

static void grayscale(uint8_t *gray3, const uint8_t *img) { /* L = (299 R + 587 G + 114 B) / 1000, in 3 planes */
    for (int i = 0; i < PLANE; i++) {
        uint8_t l = (uint8_t)((299 * img[i] + 587 * img[PLANE + i] + 114 * img[2 * PLANE + i]) / 1000);
        gray3[i] = gray3[PLANE + i] = gray3[2 * PLANE + i] = l;
    }
}

/* Resample with the inverse affine map (x, y) -> (a x + b y + c, d x + e y + f) around the
   image centre, bilinear, pixels from outside filled with grey 128 (timm fills with the mean). */
static void affine(uint8_t *img, float a, float b, float c, float d, float e, float f) {
    uint8_t src[CIFAR_PIXELS];
    memcpy(src, img, sizeof(src));
    float cx = 0.5f * (SIDE - 1);
    for (int y = 0; y < SIDE; y++)
        for (int x = 0; x < SIDE; x++) {
            float u = a * (x - cx) + b * (y - cx) + c + cx, v = d * (x - cx) + e * (y - cx) + f + cx;
            int x0 = (int)floorf(u), y0 = (int)floorf(v);
            float fx = u - x0, fy = v - y0;
            for (int ch = 0; ch < 3; ch++) {
                float acc = 0.0f;
                for (int k = 0; k < 4; k++) {
                    int xx = x0 + (k & 1), yy = y0 + (k >> 1);
                    float wgt = ((k & 1) ? fx : 1 - fx) * ((k >> 1) ? fy : 1 - fy);
                    float p = (xx >= 0 && xx < SIDE && yy >= 0 && yy < SIDE) ? src[ch * PLANE + yy * SIDE + xx] : 128.0f;
                    acc += wgt * p;
                }
                img[ch * PLANE + y * SIDE + x] = clamp_u8(acc);
            }
        }
}

static void randaug_op(uint8_t *img, int op, float level, Rng *rng) {
    uint8_t deg[CIFAR_PIXELS];
    float sign = rng_uniform(rng) < 0.5f ? -1.0f : 1.0f;
    switch (op) {
    case 0: /* AutoContrast: stretch each channel to 0..255 */
        for (int ch = 0; ch < 3; ch++) {
            uint8_t *p = img + ch * PLANE, lo = 255, hi = 0;
            for (int i = 0; i < PLANE; i++) lo = p[i] < lo ? p[i] : lo, hi = p[i] > hi ? p[i] : hi;
            if (hi > lo)
                for (int i = 0; i < PLANE; i++) p[i] = clamp_u8((p[i] - lo) * 255.0f / (hi - lo));
        }
        break;
    case 1: /* Equalize: each channel's histogram made flat (PIL's algorithm) */
        for (int ch = 0; ch < 3; ch++) {
            uint8_t *p = img + ch * PLANE;
            int hist[256] = {0}, last = 0;
            for (int i = 0; i < PLANE; i++) hist[p[i]]++;
            for (int i = 0; i < 256; i++) if (hist[i]) last = i;
            int step = (PLANE - hist[last]) / 255;
            if (step == 0) continue;
            int lut[256], acc = step / 2;
            for (int i = 0; i < 256; i++) {
                int v = acc / step;
                lut[i] = v > 255 ? 255 : v;
                acc += hist[i];
            }
            for (int i = 0; i < PLANE; i++) p[i] = (uint8_t)lut[p[i]];
        }
        break;
    case 2: /* Invert */
        for (int i = 0; i < CIFAR_PIXELS; i++) img[i] = (uint8_t)(255 - img[i]);
        break;
    case 3: { /* Rotate by up to +-30 degrees */
        float th = sign * level * 30.0f * 3.14159265f / 180.0f;
        affine(img, cosf(th), sinf(th), 0, -sinf(th), cosf(th), 0);
        break;
    }
    case 4: { /* Posterize: keep 4 - int(4 level) bits (0 bits at magnitude 10: black, as timm) */
        int bits = 4 - (int)(level * 4.0f);
        uint8_t mask = bits <= 0 ? 0 : (uint8_t)(0xFF << (8 - bits));
        for (int i = 0; i < CIFAR_PIXELS; i++) img[i] &= mask;
        break;
    }
    case 5: { /* Solarize: invert pixels above a threshold that falls with the level */
        float thresh = 256.0f - level * 256.0f;
        for (int i = 0; i < CIFAR_PIXELS; i++) if (img[i] >= thresh) img[i] = (uint8_t)(255 - img[i]);
        break;
    }
    case 6: { /* SolarizeAdd: add up to 110 to the dark pixels */
        int add = (int)(level * 110.0f);
        for (int i = 0; i < CIFAR_PIXELS; i++) if (img[i] < 128) img[i] = (uint8_t)(img[i] + add > 255 ? 255 : img[i] + add);
        break;
    }
    case 7: /* Color (saturation) */
        grayscale(deg, img);
        blend(img, deg, 1.0f + sign * level * 0.9f);
        break;
    case 8: { /* Contrast: blend with the mean grey */
        grayscale(deg, img);
        double mean = 0.0;
        for (int i = 0; i < PLANE; i++) mean += deg[i];
        memset(deg, (int)(mean / PLANE + 0.5), sizeof(deg));
        blend(img, deg, 1.0f + sign * level * 0.9f);
        break;
    }
    case 9: /* Brightness: blend with black */
        memset(deg, 0, sizeof(deg));
        blend(img, deg, 1.0f + sign * level * 0.9f);
        break;
    case 10: /* Sharpness: blend with a 3x3 smoothed copy (PIL's SMOOTH kernel), borders kept */
        memcpy(deg, img, sizeof(deg));
        for (int ch = 0; ch < 3; ch++)
            for (int y = 1; y < SIDE - 1; y++)
                for (int x = 1; x < SIDE - 1; x++) {
                    int s = 0;
                    for (int dy = -1; dy <= 1; dy++)
                        for (int dx = -1; dx <= 1; dx++) s += img[ch * PLANE + (y + dy) * SIDE + x + dx] * (dx || dy ? 1 : 5);
                    deg[ch * PLANE + y * SIDE + x] = clamp_u8(s / 13.0f);
                }
        blend(img, deg, 1.0f + sign * level * 0.9f);
        break;
    case 11: affine(img, 1, sign * level * 0.3f, sign * level * 0.3f * 0.5f * (SIDE - 1), 0, 1, 0); break; /* ShearX, origin top-left as PIL */
    case 12: affine(img, 1, 0, 0, sign * level * 0.3f, 1, sign * level * 0.3f * 0.5f * (SIDE - 1)); break; /* ShearY */
    case 13: affine(img, 1, 0, sign * level * 0.45f * SIDE, 0, 1, 0); break;      /* TranslateX */
    case 14: affine(img, 1, 0, 0, 0, 1, sign * level * 0.45f * SIDE); break;      /* TranslateY */
    }
}
#define RANDAUG_NUM_OPS 15

static void randaugment(uint8_t *img, int ops, float magnitude, Rng *rng) {
    for (int i = 0; i < ops; i++) {
        int op = rng_int(rng, RANDAUG_NUM_OPS);
        float m = magnitude + 0.5f * rng_normal(rng);
        m = m < 0.0f ? 0.0f : (m > 10.0f ? 10.0f : m);
        if (rng_uniform(rng) < 0.5f) randaug_op(img, op, m / 10.0f, rng);
    }
}

/* ---- I.8.3 Random erasing (Zhong et al. 2020): a random rectangle of 2%..1/3 of the image with
   aspect ratio in [0.3, 3.3] is replaced by per-pixel normal noise (after normalisation). ---- */
static void random_erase(float *img, int C, int S, Rng *rng) {
    for (int attempt = 0; attempt < 10; attempt++) {
        float area = (0.02f + rng_uniform(rng) * (1.0f / 3.0f - 0.02f)) * S * S;
        float aspect = expf(logf(0.3f) + rng_uniform(rng) * (logf(1.0f / 0.3f) - logf(0.3f)));
        int h = (int)(sqrtf(area * aspect) + 0.5f), w = (int)(sqrtf(area / aspect) + 0.5f);
        if (w < S && h < S && w > 0 && h > 0) {
            int top = rng_int(rng, S - h + 1), left = rng_int(rng, S - w + 1);
            for (int c = 0; c < C; c++)
                for (int y = top; y < top + h; y++)
                    for (int x = left; x < left + w; x++) img[((size_t)c * S + y) * S + x] = rng_normal(rng);
            return;
        }
    }
}

/* ---- I.8.4 Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a batch ------------------
   One lambda ~ Beta(alpha, alpha) per batch; image b is mixed with image B-1-b (the batch
   reversed, as timm does). Mixup blends whole images; CutMix pastes a box of area 1 - lambda
   and corrects lambda to the box actually pasted. Targets mix the same way. With both on,
   each batch picks one of the two with probability 1/2. Returns the lambda used.             */
static float mixup_cutmix(float *images, float *targets, int B, int C, int S, int num_classes, float mixup_alpha,
                          float cutmix_alpha, Rng *rng) {
    if (mixup_alpha <= 0.0f && cutmix_alpha <= 0.0f) return 1.0f;
    int use_cutmix = cutmix_alpha > 0.0f && (mixup_alpha <= 0.0f || rng_uniform(rng) < 0.5f);
    float lam = rng_beta(rng, use_cutmix ? cutmix_alpha : mixup_alpha);
    size_t img = (size_t)C * S * S;
    float *orig = xmalloc(sizeof(float) * img * B), *orig_t = xmalloc(sizeof(float) * (size_t)B * num_classes);
    memcpy(orig, images, sizeof(float) * img * B);
    memcpy(orig_t, targets, sizeof(float) * (size_t)B * num_classes);
    if (use_cutmix) {
        float cut = sqrtf(1.0f - lam);
        int ch = (int)(S * cut), cw = (int)(S * cut);
        int cy = rng_int(rng, S), cx = rng_int(rng, S);
        int y0 = cy - ch / 2 < 0 ? 0 : cy - ch / 2, y1 = cy + ch / 2 > S ? S : cy + ch / 2;
        int x0 = cx - cw / 2 < 0 ? 0 : cx - cw / 2, x1 = cx + cw / 2 > S ? S : cx + cw / 2;
        for (int b = 0; b < B; b++)
            for (int c = 0; c < C; c++)
                for (int y = y0; y < y1; y++)
                    for (int x = x0; x < x1; x++)
                        images[(size_t)b * img + ((size_t)c * S + y) * S + x] = orig[(size_t)(B - 1 - b) * img + ((size_t)c * S + y) * S + x];
        lam = 1.0f - (float)((y1 - y0) * (x1 - x0)) / (float)(S * S);
    } else {
        for (int b = 0; b < B; b++)
            for (size_t i = 0; i < img; i++)
                images[(size_t)b * img + i] = lam * orig[(size_t)b * img + i] + (1.0f - lam) * orig[(size_t)(B - 1 - b) * img + i];
    }
    for (int b = 0; b < B; b++)
        for (int k = 0; k < num_classes; k++)
            targets[(size_t)b * num_classes + k] = lam * orig_t[(size_t)b * num_classes + k] +
                                                   (1.0f - lam) * orig_t[(size_t)(B - 1 - b) * num_classes + k];
    free(orig);
    free(orig_t);
    return lam;
}

/* ---- Resizing a grid of C channels, S_in x S_in -> S_out x S_out, as PyTorch's
   F.interpolate(mode='bicubic' or 'bilinear', align_corners=False): output pixel x samples the
   input at (x + 0.5) * S_in / S_out - 0.5; bicubic is Keys' cubic convolution with a = -0.75,
   taps clamped at the border. Separable: rows first, then columns. Used for the images at a
   higher resolution and for the position embedding of a model fine-tuned there (paper Sec. 6). */
static float cubic_weight(float t) { /* |t| in [0, 2) */
    const float a = -0.75f;
    t = fabsf(t);
    if (t <= 1.0f) return ((a + 2.0f) * t - (a + 3.0f)) * t * t + 1.0f;
    if (t < 2.0f) return ((a * t - 5.0f * a) * t + 8.0f * a) * t - 4.0f * a;
    return 0.0f;
}

static void resize_1d(float *dst, const float *src, int n_in, int n_out, size_t stride, int bicubic) {
    float scale = (float)n_in / n_out;
    for (int x = 0; x < n_out; x++) {
        float s = (x + 0.5f) * scale - 0.5f;
        int i0 = (int)floorf(s);
        float f = s - i0, v = 0.0f;
        if (bicubic) {
            for (int k = -1; k <= 2; k++) {
                int i = i0 + k < 0 ? 0 : (i0 + k >= n_in ? n_in - 1 : i0 + k);
                v += cubic_weight(k - f) * src[(size_t)i * stride];
            }
        } else {
            if (s < 0) i0 = 0, f = 0.0f; /* PyTorch clamps the source coordinate at 0 */
            int i1 = i0 + 1 < n_in ? i0 + 1 : n_in - 1;
            v = (1.0f - f) * src[(size_t)i0 * stride] + f * src[(size_t)i1 * stride];
        }
        dst[(size_t)x * stride] = v;
    }
}

/* C channels of S_in x S_in -> S_out x S_out, either as planes (C, S, S) (images) or channels
   last (S, S, C) (a position embedding's grid of D-vectors). */
static void resize_grid(float *dst, const float *src, int C, int S_in, int S_out, int channels_last, int bicubic) {
    float *tmp = xmalloc(sizeof(float) * (size_t)C * S_in * S_out);
    for (int c = 0; c < C; c++) {
        /* element (y, x) of channel c: channels_last ? (y*S + x)*C + c : (c*S + y)*S + x */
        size_t in_c = channels_last ? (size_t)c : (size_t)c * S_in * S_in, in_x = channels_last ? (size_t)C : 1;
        size_t tmp_c = channels_last ? (size_t)c : (size_t)c * S_in * S_out, tmp_x = channels_last ? (size_t)C : 1;
        size_t out_c = channels_last ? (size_t)c : (size_t)c * S_out * S_out;
        for (int y = 0; y < S_in; y++) /* along x: (S_in, S_in) -> (S_in, S_out) */
            resize_1d(tmp + tmp_c + (size_t)y * S_out * tmp_x, src + in_c + (size_t)y * S_in * in_x, S_in, S_out, tmp_x, bicubic);
        for (int x = 0; x < S_out; x++) /* along y: (S_in, S_out) -> (S_out, S_out) */
            resize_1d(dst + out_c + (size_t)x * tmp_x, tmp + tmp_c + (size_t)x * tmp_x, S_in, S_out, (size_t)S_out * tmp_x, bicubic);
    }
    free(tmp);
}

/* ---- I.8.5 A batch: pick, augment, normalise ----------------------------------------------------
   images (B, 3, S, S) normalised floats, targets (B, num_classes) distributions, labels (B).
   Every random choice comes from seed, so a batch is the same whatever the thread count.  */
static void make_batch(float *images, int S_out, float *targets, int *labels, const Dataset *d, const int *indices, int B,
                       const AugConfig *aug, int train, uint64_t seed) {
    const int S = SIDE, C = 3;
    OMP(omp parallel for schedule(static))
    for (int b = 0; b < B; b++) {
        Rng rng;
        rng_seed(&rng, seed ^ splitmix64((uint64_t)b + 1));
        const uint8_t *src = d->images + (size_t)indices[b] * CIFAR_PIXELS;
        uint8_t img[CIFAR_PIXELS];
        if (train && aug->translate > 0) { /* shift by up to +-translate, reflect-padded; flip */
            int T = aug->translate, dy = rng_int(&rng, 2 * T + 1) - T, dx = rng_int(&rng, 2 * T + 1) - T;
            int flip = aug->alternate_flip ? (int)(splitmix64(aug->flip_seed ^ (0x9E37ull * (uint64_t)(indices[b] + 1))) & 1) ^ (aug->epoch & 1)
                                           : rng_uniform(&rng) < 0.5f;
            for (int c = 0; c < C; c++)
                for (int y = 0; y < S; y++)
                    for (int x = 0; x < S; x++) {
                        int sy = y + dy, sx = (flip ? S - 1 - x : x) + dx;
                        sy = sy < 0 ? -sy : (sy >= S ? 2 * (S - 1) - sy : sy); /* reflect: -1 -> 1, S -> S-2 */
                        sx = sx < 0 ? -sx : (sx >= S ? 2 * (S - 1) - sx : sx);
                        img[(c * S + y) * S + x] = src[(c * S + sy) * S + sx];
                    }
        } else if (train && aug->crop_flip) { /* crop 32x32 out of the image zero-padded by 4, then flip */
            int dy = rng_int(&rng, 9) - 4, dx = rng_int(&rng, 9) - 4, flip = rng_uniform(&rng) < 0.5f;
            for (int c = 0; c < C; c++)
                for (int y = 0; y < S; y++)
                    for (int x = 0; x < S; x++) {
                        int sy = y + dy, sx = flip ? S - 1 - (x + dx) : x + dx;
                        img[(c * S + y) * S + x] = (sy >= 0 && sy < S && sx >= 0 && sx < S) ? src[(c * S + sy) * S + sx] : 0;
                    }
        } else {
            memcpy(img, src, CIFAR_PIXELS);
        }
        if (train && aug->randaug_ops > 0) randaugment(img, aug->randaug_ops, aug->randaug_mag, &rng);
        float norm[CIFAR_PIXELS];
        for (int c = 0; c < C; c++)
            for (int i = 0; i < S * S; i++) norm[c * S * S + i] = (img[c * S * S + i] / 255.0f - d->mean[c]) / d->std[c];
        if (train && aug->erase_prob > 0.0f && rng_uniform(&rng) < aug->erase_prob) random_erase(norm, C, S, &rng);
        float *dst = images + (size_t)b * C * S_out * S_out;
        if (S_out == S) memcpy(dst, norm, sizeof(norm));
        else resize_grid(dst, norm, C, S, S_out, 0, 1); /* a model at a higher resolution: bicubic */
        labels[b] = d->labels[indices[b]];
    }
    smooth_targets(targets, labels, train ? aug->label_smoothing : 0.0f, B, d->num_classes);
    if (train) {
        Rng rng;
        rng_seed(&rng, seed ^ 0x3A1Cull);
        mixup_cutmix(images, targets, B, C, S_out, d->num_classes, aug->mixup_alpha, aug->cutmix_alpha, &rng);
    }
}

/* ---- I.8.6 Fine-tuning at a higher resolution (paper Sec. 3, "Fixing the positional encoding
   across resolutions", and Sec. 6, "Fine-tuning at different resolution"): the same weights at
   image size S; the patch part of the position embedding is resized as a G x G grid of
   D-vectors (bicubic, as the paper; bilinear for comparison), the class and distillation token
   positions are kept as they are. */
static int deit_config_check(const DeiTConfig *c, const char *what); /* hook: Part III.1 */

static void deit_resize(DeiT *dst, const DeiT *src, int img_size, int bicubic) {
    DeiTConfig c = src->config;
    c.img_size = img_size;
    if (deit_config_check(&c, "--img-size")) exit(1);
    deit_build(dst, &c);
    for (int i = 0; i < NUM_PARAM_TENSORS; i++)
        if (strcmp(src->tensors[i].name, "pos_embed"))
            memcpy(dst->params_memory + dst->tensors[i].offset, src->params_memory + src->tensors[i].offset,
                   sizeof(float) * src->tensors[i].size);
    int D = c.dim, special = 1 + c.dist_token;
    int g_in = src->config.img_size / c.patch_size, g_out = img_size / c.patch_size;
    memcpy(dst->params.pos_embed, src->params.pos_embed, sizeof(float) * special * D);
    resize_grid(dst->params.pos_embed + (size_t)special * D, src->params.pos_embed + (size_t)special * D, D, g_in, g_out, 1, bicubic);
    dst->drop_path = src->drop_path;
}

/* ============================================================================================
 * I.9 Checkpoints: a 256-int32 header, then every parameter tensor as float32, little-endian
 *
 * The header names the architecture, so a file is all it takes to rebuild the model. Files
 * are written to FILE.tmp and renamed over FILE, so a killed run never leaves half a file;
 * reading checks magic, sizes and length before anything is allocated (Part III.1 does both).
 * ========================================================================================== */

/* hooks: Part III.1 */
static int write_file_atomic(const char *path, const int32_t *header, const float *data, size_t n);
static int read_header(const char *path, int32_t *header, long *file_bytes);
static int check_file_length(const char *path, uint64_t n, long file_bytes);
static int read_floats_after_header(const char *path, float *data, size_t n, long file_bytes);
static int deit_config_from_header(DeiTConfig *c, const int32_t *h, const char *path);
static int teacher_config_from_header(TeacherConfig *c, const int32_t *h, const char *path);
static uint64_t teacher_count_params(const TeacherConfig *c);
static int teacher_check_loaded(const Teacher *t, const char *path);

static int deit_save(const DeiT *m, const char *path) {
    int32_t header[HEADER_INTS] = {0};
    const DeiTConfig *c = &m->config;
    header[0] = DEIT_MAGIC;
    header[1] = DEIT_VERSION;
    header[2] = c->img_size;
    header[3] = c->patch_size;
    header[4] = c->in_chans;
    header[5] = c->num_classes;
    header[6] = c->dim;
    header[7] = c->depth;
    header[8] = c->heads;
    header[9] = c->mlp_hidden;
    header[10] = c->dist_token;
    return write_file_atomic(path, header, m->params_memory, m->num_params);
}

/* Loads a student checkpoint into a new model. Returns 0, or -1 after printing why not. */
static int deit_load(DeiT *m, const char *path) {
    int32_t header[HEADER_INTS];
    long bytes = 0;
    DeiTConfig cfg;
    if (read_header(path, header, &bytes) || deit_config_from_header(&cfg, header, path)) return -1;
    TensorInfo table[NUM_PARAM_TENSORS];
    deit_tensor_table(table, &cfg);
    if (check_file_length(path, table[NUM_PARAM_TENSORS - 1].offset + table[NUM_PARAM_TENSORS - 1].size, bytes)) return -1;
    deit_build(m, &cfg);
    if (read_floats_after_header(path, m->params_memory, m->num_params, bytes)) {
        deit_free(m);
        return -1;
    }
    return 0;
}

/* Teacher checkpoint: header [0] magic 20151210, [1] version (1: a ResNet; 2: the architecture
   is header[15]), [2] img_size, [3] in_chans, [4] num_classes, [5] stages S, [6] blocks per
   stage, [7 .. 7+S-1] widths, [15] architecture (0 ResNet, 1 airbench); then the tensors in the
   order of teacher_build (ResNet: stem conv, stem bn, blocks..., fc w, fc b; airbench: see
   airbench_build). */
static int teacher_save(const Teacher *t, const char *path) {
    int32_t header[HEADER_INTS] = {0};
    const TeacherConfig *c = &t->config;
    header[0] = TEACHER_MAGIC;
    header[1] = c->arch == ARCH_RESNET ? TEACHER_VERSION : TEACHER_VERSION_ARCH; /* a ResNet file reads as before */
    header[2] = c->img_size;
    header[3] = c->in_chans;
    header[4] = c->num_classes;
    header[5] = c->stages;
    header[6] = c->blocks;
    for (int s = 0; s < c->stages; s++) header[7 + s] = c->widths[s];
    header[15] = c->arch;
    return write_file_atomic(path, header, t->params_memory, t->num_params);
}

static int teacher_load(Teacher *t, const char *path) {
    int32_t header[HEADER_INTS];
    long bytes = 0;
    TeacherConfig cfg;
    if (read_header(path, header, &bytes) || teacher_config_from_header(&cfg, header, path)) return -1;
    if (check_file_length(path, teacher_count_params(&cfg), bytes)) return -1;
    teacher_build(t, &cfg);
    if (read_floats_after_header(path, t->params_memory, t->num_params, bytes) || teacher_check_loaded(t, path)) {
        teacher_free(t);
        return -1;
    }
    return 0;
}

/* ============================================================================================
 * I.10 Training and evaluation
 * ========================================================================================== */

/* A network is a DeiT student or a convnet teacher (ResNet or airbench); either can be
   trained, evaluated or serve as the teacher of a distillation run (the paper also tries a
   transformer as the teacher). */
typedef enum { NET_DEIT = 1, NET_CNN = 2 } NetKind;
typedef struct {
    NetKind kind;
    DeiT deit;
    Teacher cnn;       /* a convnet teacher: ResNet or airbench */
} Net;

enum { HEAD_MEAN = 0, HEAD_CLS = 1, HEAD_DIST = 2 }; /* which output of a student to read */

static int net_load(Net *n, const char *path) {
    int32_t header[HEADER_INTS];
    long bytes = 0;
    memset(n, 0, sizeof(*n));
    if (read_header(path, header, &bytes)) return -1;
    if (header[0] == DEIT_MAGIC) {
        n->kind = NET_DEIT;
        return deit_load(&n->deit, path);
    }
    if (header[0] == TEACHER_MAGIC) {
        n->kind = NET_CNN;
        return teacher_load(&n->cnn, path);
    }
    return report("%s: not a deit.c checkpoint (magic %d; student %d, teacher %d)", path, header[0], DEIT_MAGIC, TEACHER_MAGIC);
}

static int net_save(const Net *n, const char *path) {
    return n->kind == NET_DEIT ? deit_save(&n->deit, path) : teacher_save(&n->cnn, path);
}

static void net_free(Net *n) {
    if (n->kind == NET_DEIT) deit_free(&n->deit);
    if (n->kind == NET_CNN) teacher_free(&n->cnn);
    n->kind = 0;
}

static int net_num_classes(const Net *n) { return n->kind == NET_DEIT ? n->deit.config.num_classes : n->cnn.config.num_classes; }
static int net_img_size(const Net *n) { return n->kind == NET_DEIT ? n->deit.config.img_size : n->cnn.config.img_size; }
static int net_in_chans(const Net *n) { return n->kind == NET_DEIT ? n->deit.config.in_chans : n->cnn.config.in_chans; }

/* A network can run on a CIFAR set when it takes 3-channel images and predicts its classes. */
static int net_fits_data(const Net *n, const Dataset *d, const char *what) {
    if (net_in_chans(n) != 3) return report("%s takes %d-channel images; CIFAR images have 3", what, net_in_chans(n));
    if (net_num_classes(n) != d->num_classes)
        return report("%s predicts %d classes, %s has %d", what, net_num_classes(n), d->name, d->num_classes);
    return 0;
}
static int net_has_dist(const Net *n) { return n->kind == NET_DEIT && n->deit.config.dist_token; }
static float *net_params(Net *n) { return n->kind == NET_DEIT ? n->deit.params_memory : n->cnn.params_memory; }
static float *net_grads(Net *n) { return n->kind == NET_DEIT ? n->deit.grads_memory : n->cnn.grads_memory; }
static size_t net_num_params(const Net *n) { return n->kind == NET_DEIT ? n->deit.num_params : n->cnn.num_params; }
static const TensorInfo *net_tensors(const Net *n) { return n->kind == NET_DEIT ? n->deit.tensors : n->cnn.tensors; }
static int net_num_tensors(const Net *n) { return n->kind == NET_DEIT ? NUM_PARAM_TENSORS : n->cnn.num_tensors; }

/* Activations for batches of up to B images (each forward also asks for them itself). */
static void net_alloc_activations(Net *n, int B) {
    if (n->kind == NET_DEIT) deit_alloc_activations(&n->deit, B);
    else teacher_alloc_activations(&n->cnn, B);
}

static void net_forward(Net *n, const float *images, int B, int train) {
    if (n->kind == NET_DEIT) deit_forward(&n->deit, images, B, train);
    else teacher_forward(&n->cnn, images, B, train);
}

/* The inference outputs of a network: for a student the class head, the distillation head or
   their mean (the model's prediction); a convnet has one head. */
static const float *net_logits(const Net *n, int head) {
    if (n->kind == NET_CNN) return n->cnn.logits;
    const ActivationTensors *a = &n->deit.acts;
    switch (head) {
    case HEAD_CLS: return a->logits;
    case HEAD_DIST: return n->deit.config.dist_token ? a->logits_dist : a->logits;
    default: return a->logits_mean;
    }
}

/* The heads as the loss sees them (Heads, I.5). */
static Heads net_heads(Net *n) {
    if (n->kind == NET_CNN) return (Heads){n->cnn.logits, NULL, n->cnn.dlogits, NULL};
    DeiT *m = &n->deit;
    if (!m->config.dist_token) return (Heads){m->acts.logits, NULL, m->grads_acts.logits, NULL};
    return (Heads){m->acts.logits, m->acts.logits_dist, m->grads_acts.logits, m->grads_acts.logits_dist};
}

static void net_zero_grad(Net *n) {
    if (n->kind == NET_DEIT) deit_zero_grad(&n->deit);
    else teacher_zero_grad(&n->cnn);
}

static void net_backward(Net *n, int B) {
    if (n->kind == NET_DEIT) deit_backward(&n->deit, B);
    else teacher_backward(&n->cnn, B);
}

static void net_begin_epoch(Net *n, int epoch) {
    if (n->kind == NET_CNN && n->cnn.config.arch == ARCH_AIRBENCH) airbench_begin_epoch(&n->cnn, epoch);
}

/* ---- Test-time augmentation (airbench's): the logits averaged over views of each image -------
   level 0: the image;  level 1: the mean of the image and its mirror;  level 2: half of level 1,
   plus half of level 1's mean over the image shifted by one pixel down-right and up-left
   (reflect-padded): 6 forward passes. views (B, 3, S, S) and out (B, C) are scratch buffers;
   returns the averaged inference logits (level 0: the net's own output buffer).            */
static void shift_flip(float *dst, const float *src, int B, int C, int S, int dy, int dx, int flip) {
    OMP(omp parallel for schedule(static))
    for (int p = 0; p < B * C; p++)
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                int sy = y - dy, sx = (flip ? S - 1 - x : x) - dx;
                sy = sy < 0 ? -sy : (sy >= S ? 2 * (S - 1) - sy : sy); /* reflect */
                sx = sx < 0 ? -sx : (sx >= S ? 2 * (S - 1) - sx : sx);
                dst[((size_t)p * S + y) * S + x] = src[((size_t)p * S + sy) * S + sx];
            }
}

static const float *tta_forward(Net *net, const float *images, int B, int level, float *views, float *out) {
    net_forward(net, images, B, 0);
    if (level <= 0) return net_logits(net, HEAD_MEAN);
    static const struct { int dy, dx, flip; float weight; } view[2][6] = {
        {{0, 0, 0, 0.5f}, {0, 0, 1, 0.5f}},
        {{0, 0, 0, 0.25f}, {0, 0, 1, 0.25f}, {1, 1, 0, 0.125f}, {1, 1, 1, 0.125f}, {-1, -1, 0, 0.125f}, {-1, -1, 1, 0.125f}},
    };
    int C = net_num_classes(net), S = net_img_size(net), n_views = level == 1 ? 2 : 6;
    size_t n = (size_t)B * C;
    for (size_t i = 0; i < n; i++) out[i] = view[level - 1][0].weight * net_logits(net, HEAD_MEAN)[i];
    for (int v = 1; v < n_views; v++) {
        shift_flip(views, images, B, 3, S, view[level - 1][v].dy, view[level - 1][v].dx, view[level - 1][v].flip);
        net_forward(net, views, B, 0);
        for (size_t i = 0; i < n; i++) out[i] += view[level - 1][v].weight * net_logits(net, HEAD_MEAN)[i];
    }
    return out;
}

/* ---- I.10.1 Evaluation: accuracy of each head, and the confusion matrix of the inference output */
typedef struct {
    int n;
    int correct[3];  /* HEAD_MEAN, HEAD_CLS, HEAD_DIST */
    int *confusion;  /* (C, C): row = true class, column = predicted (inference output) */
} EvalResult;

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[best]) best = i;
    return best;
}

static void test_progress(int done, int total); /* hook: Part III.3 prints how far the pass is */

/* logits_out (optional): the inference logits, (n, C) in test-set order. tta: test-time
   augmentation level (0 none; 1, 2: see tta_forward). */
static void evaluate(Net *net, const Dataset *d, int batch, int tta, EvalResult *r, float *logits_out) {
    int C = d->num_classes;
    memset(r, 0, sizeof(*r));
    r->confusion = xcalloc((size_t)C * C, sizeof(int));
    int S = net_img_size(net);
    float *images = xmalloc(sizeof(float) * (size_t)batch * 3 * S * S);
    float *views = tta ? xmalloc(sizeof(float) * (size_t)batch * 3 * S * S) : NULL;
    float *tta_out = tta ? xmalloc(sizeof(float) * (size_t)batch * C) : NULL;
    float *targets = xmalloc(sizeof(float) * (size_t)batch * C);
    int *labels = xmalloc(sizeof(int) * batch), *idx = xmalloc(sizeof(int) * batch);
    AugConfig none = {0};
    test_progress(0, d->n);
    for (int start = 0; start < d->n; start += batch) {
        int B = d->n - start < batch ? d->n - start : batch;
        for (int b = 0; b < B; b++) idx[b] = start + b;
        make_batch(images, S, targets, labels, d, idx, B, &none, 0, 0);
        const float *lg = tta_forward(net, images, B, tta, views, tta_out);
        for (int h = 0; h < 3; h++) { /* with test-time augmentation, the heads are not told apart */
            const float *head = tta ? lg : net_logits(net, h);
            for (int b = 0; b < B; b++) r->correct[h] += argmax(head + (size_t)b * C, C) == labels[b];
        }
        for (int b = 0; b < B; b++) r->confusion[labels[b] * C + argmax(lg + (size_t)b * C, C)]++;
        if (logits_out) memcpy(logits_out + (size_t)start * C, lg, sizeof(float) * B * C);
        test_progress(start + B, d->n);
    }
    r->n = d->n;
    free(images), free(targets), free(labels), free(idx), free(views), free(tta_out);
}

struct Options; /* Part III's command-line settings (III.5) */
typedef struct {
    int epochs, batch, train_limit, shuffle;
    long max_steps;           /* stop after this many optimizer steps (0: no limit) */
    int skip_nonfinite;       /* 1: skip a step whose loss or gradient is NaN/Inf instead of stopping */
    int eval_every;           /* test every N epochs (and after the last); not part of the run's settings */
    float lr, min_lr, warmup_lr, warmup_epochs, weight_decay, momentum;
    int nesterov;
    OptType opt;
    SchedType sched;
    AugConfig aug;
    Distillation kd;
    int teacher_tta;          /* views the teacher's logits average: 0 (one), 1 (+ mirror), 2 (six; see tta_forward) */
    int lookahead;            /* 1: Lookahead every 5 steps (airbench) */
    float save_every;         /* minutes between checkpoints inside an epoch (0: only at its end) */
    uint64_t seed;
    const char *data_dir, *out, *log, *resume;
    const char *teacher_path; /* for messages only */
    const struct Options *record_flags; /* a new run's command-line settings, which run_begin (Part III)
                                           writes to OUT.flags once the run is checked; NULL: none */
} TrainConfig;

static uint64_t batch_seed(uint64_t seed, int epoch, int step_in_epoch) {
    return splitmix64(seed * 0x100000001B3ull ^ splitmix64(((uint64_t)epoch << 32) | (uint32_t)step_in_epoch));
}

/* ---- I.10.2 The training loop ----------------------------------------------------------------
   The same loop trains the teacher and the student. Per step: a batch of augmented images; the
   teacher's logits on the same images (eval mode, no gradient); the student's forward pass; the
   loss of Sec. 4 and its gradient; the backward pass; one optimizer step. What a run needs
   besides (loading the data, --resume, skipping or stopping on non-finite values, progress,
   the test and the checkpoint after each epoch) is Part III's, through the run_* hooks.     */

/* What the teacher sees of a batch (B, 3, S, S): the batch itself, or, for a teacher trained at
   another resolution TS, the batch resized to it (bicubic) in buf (B, 3, TS, TS). */
static const float *teacher_input(float *buf, const float *images, int B, int S, int TS) {
    if (TS == S) return images;
    OMP(omp parallel for schedule(static))
    for (int b = 0; b < B; b++) resize_grid(buf + (size_t)b * 3 * TS * TS, images + (size_t)b * 3 * S * S, 3, S, TS, 0, 1);
    return buf;
}

/* Epochs and steps done: what a checkpoint's .state file keeps for --resume (Part III.2). */
typedef struct {
    int epochs_done, step_in_epoch;
    long step;
    uint64_t rng;                     /* the student's drop-path random state */
    double elapsed;                   /* seconds of training so far */
    uint64_t data_hash, teacher_hash; /* what the run learns from (a resumed run must match) */
} RunState;

/* A training run: the data, the batch buffers, the optimizer and the counters. */
typedef struct {
    const TrainConfig *cfg;
    Net *net, *teacher;
    Dataset train_set, test_set;
    int *pool, n_train;          /* the training images used: all, or a class-balanced subset */
    int *order;                  /* the pool in this epoch's order */
    int steps_per_epoch;
    long total_steps, warmup_steps;
    float *images, *targets;     /* one batch: (B, 3, S, S) images and (B, C) target distributions */
    int *labels;                 /* (B) */
    float *teacher_images;       /* the batch at the teacher's resolution, when that differs */
    float *tta_images, *tta_logits; /* --teacher-tta: one view of the batch, and the views' mean */
    Optimizer opt;
    RunState state;
    /* Part III's bookkeeping */
    int stop, status, next_step, steps_done, inline_progress, nothing_to_do, signalled;
    long skipped;
    long teacher_seen, teacher_agrees; /* images, and how many of them the teacher's top class is the target's */
    float lr;
    double epoch_start, last_print, loss_sum, last_save;
    float *params_before_step;   /* --skip-nonfinite on a ResNet: the weights to restore */
    FILE *log;
    char state_path[4096];
} Run;

/* hooks: Part III.3 (and II, for the name of the matmul in use) */
static const char *matmul_name(void);
static int run_begin(Run *run, Net *net, Net *teacher, const TrainConfig *cfg);
static int run_step_check(Run *run, const float *teacher_logits, LossParts loss, int s);
static void run_step_done(Run *run, int epoch, int s, LossParts loss, float lr);
static void run_epoch_done(Run *run, int epoch);
static int run_end(Run *run);

/* The order of an epoch's images: the pool, shuffled with a seed made of the run's and the epoch. */
static void epoch_order(int *order, const int *pool, int n, const TrainConfig *cfg, int epoch) {
    memcpy(order, pool, sizeof(int) * n);
    if (!cfg->shuffle) return;
    Rng rng;
    rng_seed(&rng, cfg->seed ^ splitmix64(0xE90C0000ull + (uint64_t)epoch));
    shuffle(order, n, &rng);
}

/* Trains net (initialised or loaded by the caller) on the training split; teacher may be NULL.
   After every epoch net goes to cfg->out and the training state to cfg->out + ".state". */
static int train(Net *net, Net *teacher, const TrainConfig *cfg) {
    Run run;
    if (run_begin(&run, net, teacher, cfg)) return -1;
    int B = cfg->batch, S = net_img_size(net), C = run.train_set.num_classes;
    for (int epoch = run.state.epochs_done; epoch < cfg->epochs && !run.stop; epoch++) {
        epoch_order(run.order, run.pool, run.n_train, cfg, epoch);
        AugConfig aug = cfg->aug;
        aug.epoch = epoch;           /* the alternating flip's direction */
        net_begin_epoch(net, epoch); /* airbench: the whitening bias trains for 3 epochs */
        int first = epoch == run.state.epochs_done ? run.state.step_in_epoch : 0; /* a resumed run may start mid-epoch */
        for (int s = first; s < run.steps_per_epoch && !run.stop; s++) {
            make_batch(run.images, S, run.targets, run.labels, &run.train_set, run.order + (size_t)s * B, B, &aug, 1,
                       batch_seed(cfg->seed, epoch, s));
            const float *teacher_logits = NULL; /* the teacher in eval mode, on the same images */
            if (teacher && cfg->kd.type != DISTILL_NONE)
                teacher_logits = tta_forward(teacher, teacher_input(run.teacher_images, run.images, B, S, net_img_size(teacher)),
                                             B, cfg->teacher_tta, run.tta_images, run.tta_logits);
            float lr = lr_at(run.state.step, run.total_steps, run.warmup_steps, cfg->lr, cfg->min_lr, cfg->warmup_lr, cfg->sched);
            net_forward(net, run.images, B, 1);
            net_zero_grad(net);
            LossParts loss = deit_loss(net_heads(net), run.targets, teacher_logits, &cfg->kd, B, C);
            net_backward(net, B);
            if (run_step_check(&run, teacher_logits, loss, s)) continue; /* a NaN or Inf: skipped, or the run stops */
            optimizer_step(&run.opt, net_params(net), net_grads(net), net_tensors(net), net_num_tensors(net), lr);
            lookahead_step(&run.opt, net_params(net), run.state.step + 1, run.total_steps);
            run_step_done(&run, epoch, s, loss, lr);
        }
        run_epoch_done(&run, epoch); /* test, log, checkpoint and state */
    }
    return run_end(&run);
}

/* ############################################################################################
 *
 *  PART II: MAKING IT FAST
 *
 *  The naive matmul of Part I (I.2) is right but slow: it reaches a few GFLOP/s, where the
 *  processor can do a hundred or more. matmul_fast below computes the same product, with the
 *  same operands, about 50x faster, in plain C loops that the compiler turns into vector
 *  instructions. matmul() in Part I calls it unless --matmul naive is given.
 *
 * ########################################################################################## */

/* The fast one. Seven tricks, all plain C that the compiler turns into vector instructions (the
 * seventh, just before matmul_fast, is for the weight gradients; the sixth, at the end of this
 * part, for the convolutions):
 *
 * 1. Register tile. The innermost routine (kernel_tile) computes a small MR x NR block of C
 *    in a local array `acc`. For each k it loads MR numbers of A and NR numbers of B and does
 *    MR*NR multiply-adds: every number loaded is used MR or NR times. With constant MR and NR
 *    the compiler keeps `acc` in vector registers and vectorizes the j loop (NR wide).
 *    The tile is then added to C, or, in matmul_store's first slice of K, stored with the
 *    bias: a linear layer's output is not filled first and then read back (later slices of K,
 *    where K > 256, add to it as before).
 * 2. Packing. Before the kernel runs, the part of A it needs is copied into "panels" of MR
 *    rows laid out k by k (MR consecutive floats per k), and B into panels of NR columns (NR
 *    consecutive floats per k). The kernel then reads both with unit stride, whatever the
 *    strides (transposes) of the original operands: this is what lets one routine serve the
 *    forward pass and both backward products. Edges are padded with zeros, so the kernel
 *    always computes a full tile and only the valid part is added to (or stored in) C.
 * 3. Cache blocking. K is cut in slices of at most KC so a packed A block (MC x KC) stays in L2
 *    and a B panel (KC x NR) in L1 while they are reused; N is cut in slices of NC so packed B
 *    fits in L3. The slices are of equal length (k_slice): K = 288 is 144 + 144, not 256 + 32,
 *    whose short slice loads and stores each C tile for only 32 multiply-adds per element
 *    (ResNet-20 trained about 3% faster on an Intel Xeon; dev/SPEED.md).
 * 4. No copy where none is needed: a full group of MR rows of A whose rows or columns are
 *    contiguous is read in place (a_direct below): the kernel then reads A(i,k) at
 *    a[i*a_rs + k*a_cs], with A's own strides, instead of a[k*MR + i]. (A transposed A, as
 *    dout in a weight gradient, gives MR consecutive numbers for each k: reading them there
 *    made DeiT-Ti's weight gradients 3-15% faster than copying them, fc2's 2-5% slower, when
 *    they came here; as deep products they now take trick 7, which packs A, measured faster.)
 *    So is a full B panel whose rows are contiguous, but only in a product of at most MC
 *    rows (b_direct), where the panel is read by a single block of A. With more
 *    blocks the copy pays: packed, the panel is 32 KB in a row that stays in L1 for every
 *    block; in place, each block reads it again as KC short rows b_rs floats apart (3 KB for
 *    fc2's weights). Packing every B panel of the products with thousands of rows made DeiT-Ti
 *    train 2-9% faster (dev/SPEED.md, "B packed again in the big products").
 *    The packing loops themselves run k outer, panel width inner, so every store goes to
 *    consecutive addresses; the other order (one source row at a time, stores MR or NR apart)
 *    measured 3x slower when the source is transposed.
 * Threads (OpenMP) split the tiles of C; no two threads ever write the same element of C, so
 * the backward products are race-free and the result does not depend on the thread count.
 */
#define KC 256
#define MC 72   /* a multiple of every MR below */
#define NC 4032 /* a multiple of every NR below (24, 32, 48) */
static int k_slice(int K) { /* the length of K's slices: as few as KC allows, all equal (the last may be shorter) */
    int slices = (K + KC - 1) / KC;
    return (K + slices - 1) / slices;
}

/* 5. One register tile per processor. How big a tile fits depends on the vector registers: 32
 *    registers of 16 floats (AVX-512) hold an 8 x 32 tile (16 accumulators) plus what is being
 *    loaded. It runs as fast per flop as 6 x 32 (222 GFLOP/s on one core from L1) and fills
 *    whole tiles with 16, 32 or 64 rows, the channel counts of the ResNet's convolutions, where
 *    6 rows left one tile in three partly empty: ResNet-20 trained 10% faster, DeiT-Ti the same
 *    (dev/SPEED.md, "8 x 32 on AVX-512"). A 6 x 32 tile with AVX2's 16 registers of 8 floats
 *    spills to memory (77 against 107 GFLOP/s on one core; a measurement not logged in dev/SPEED.md). AVX2 takes 4 x 24:
 *    12 accumulators (4 rows of 3 vectors), 3 vectors of B and the broadcast
 *    of A make 16, all of AVX2's registers, and per k there are 3 loads of B and 4 broadcasts
 *    for 12 FMAs. That holds only if the compiler keeps B's 3 vectors in registers: GCC 12's
 *    tuning for AMD's Zen (znver2, znver3: what -march=native picks there) reloads B inside each
 *    FMA instead (seen in its assembly), hence "tune=haswell" in the attribute (AVX2_TARGET). On
 *    an Intel Xeon held to this kernel (DEIT_KERNEL=avx2, built without -march), 4 x 24 ran fc1
 *    at 76-86 GFLOP/s on one core against 61-69 with 2 x 48 (2 rows of 6 vectors, B read from
 *    memory by each FMA); on an AMD EPYC (Zen 5) held to AVX2 and built as `make` builds on a
 *    Zen 3 (-march=znver3), at 97-99 against 55-57, and DeiT-Ti trained 1.5-1.7x faster
 *    (dev/SPEED.md, "The AVX2 tile, again" and "An AMD EPYC with AVX-512"). 2 x 48 had won on
 *    a Zen 3 EPYC (48 GFLOP/s against 39) only against a 4 x 24 that reloaded B, before
 *    tune=haswell; it stays, as DEIT_KERNEL=avx2_2x48, for whoever has such a processor to
 *    time it again (dev/SPEED.md, "The AVX2 tile"). So the kernel is written
 *    once, for any tile (kernel_tile), and compiled four times: for AVX-512 with 8 x 32, for
 *    AVX2 + FMA with 4 x 24 and with 2 x 48, and for any x86-64 or other processor (SSE2 and
 *    such) with 4 x 24. GCC and Clang compile a function for another instruction set than the
 *    rest of the program when it carries __attribute__((target(...))); the first matmul asks the
 *    processor what it has (__builtin_cpu_supports) and takes the best
 *    version. So the plain `cc -O3 deit.c -lm`, which targets the oldest x86-64, still runs the
 *    kernel at full vector width. Every version adds the products over k in the same order: they
 *    differ only in rounding (FMA or not), and the tests run each against the reference.        */
#define MR_MAX 8
#define NR_MAX 48

/* C tile (m <= MR rows, n <= NR columns) += A panel (MR x kc) * B panel (kc x NR).
   A(i,k) = a[k*a_k + i*a_i]: a packed panel has a_k = MR, a_i = 1; A read in place has its
   own strides, a_k = a_cs and a_i = a_rs. B(k,j) = b[k*ldb + j], or b[b_off[k] + j] when b_off
   is given (trick 6; ldb unused). MR and NR are constants
   where it is inlined, so the compiler keeps the tile `acc` in registers and unrolls the i
   and j loops. With c_init given (matmul_store, first slice of K), the tile is stored
   instead: C(i,j) = c_init[j] + the sum, and C is not read. Linear layers used to fill their
   output with the bias in a pass of its own, then read it back here: 3% of a DeiT-Ti step. */
#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif
static ALWAYS_INLINE void kernel_tile(const int MR, const int NR, int kc, const float *restrict a, int a_k, int a_i,
                                      const float *restrict b, int ldb, const int *restrict b_off,
                                      float *restrict c, int ldc, const float *restrict c_init, int m, int n) {
    float acc[MR_MAX][NR_MAX];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = 0.0f;
    for (int k = 0; k < kc; k++) {
        const float *b_k = b + (b_off ? (ptrdiff_t)b_off[k] : (ptrdiff_t)k * ldb); /* row k of B */
        for (int i = 0; i < MR; i++) {
            float aik = a[(size_t)k * a_k + (size_t)i * a_i];
            for (int j = 0; j < NR; j++) acc[i][j] += aik * b_k[j];
        }
    }
    int full = m == MR && n == NR;
    if (c_init && full) {
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) c[(size_t)i * ldc + j] = c_init[j] + acc[i][j];
    } else if (c_init) {
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) c[(size_t)i * ldc + j] = c_init[j] + acc[i][j];
    } else if (full) {
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) c[(size_t)i * ldc + j] += acc[i][j];
    } else {
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) c[(size_t)i * ldc + j] += acc[i][j];
    }
}

/* Each tile is compiled twice: B(k,j) = b[k*ldb + j] (every product), and B(k,j) = b[b_off[k] + j]
   with the start of each row given (name_taps: the convolutions of trick 6). */
typedef void (*MicroKernel)(int kc, const float *restrict a, int a_k, int a_i, const float *restrict b, int ldb,
                            float *restrict c, int ldc, const float *restrict c_init, int m, int n);
typedef void (*MicroKernelTaps)(int kc, const float *restrict a, int a_k, int a_i, const float *restrict b,
                                const int *restrict b_off, float *restrict c, int ldc, const float *restrict c_init,
                                int m, int n);
#define MICRO_KERNEL(name, mr, nr, attributes)                                                                        \
    attributes static void name(int kc, const float *restrict a, int a_k, int a_i, const float *restrict b, int ldb, \
                                float *restrict c, int ldc, const float *restrict c_init, int m, int n) {           \
        kernel_tile(mr, nr, kc, a, a_k, a_i, b, ldb, NULL, c, ldc, c_init, m, n);                                    \
    }                                                                                                                \
    attributes static void name##_taps(int kc, const float *restrict a, int a_k, int a_i, const float *restrict b,  \
                                       const int *restrict b_off, float *restrict c, int ldc,                       \
                                       const float *restrict c_init, int m, int n) {                                \
        kernel_tile(mr, nr, kc, a, a_k, a_i, b, 0, b_off, c, ldc, c_init, m, n);                                     \
    }
MICRO_KERNEL(micro_kernel_portable, 4, 24, )
#if defined(__GNUC__) && defined(__x86_64__)
#define DEIT_X86_DISPATCH 1
/* GCC's tuning for Intel's AVX-512 Xeons (what -march=native picks there, skylake-avx512 to
   sapphirerapids) prefers 256-bit vectors: at 8 floats a register the 8 x 32 tile needs all 32
   registers and spills. prefer-vector-width=512 keeps it in 16 registers of 16 floats. On a
   Xeon (Sapphire Rapids, 2 of its cores) the `make` build then trained DeiT-Ti at 59.5-63.9
   img/s against 42.9 (dev/SPEED.md, "An Intel Xeon"). Clang does not take the option in an
   attribute; the Makefile passes -mprefer-vector-width=512 to it.                            */
#if defined(__clang__)
#define AVX512_TARGET "avx512f,avx512vl,avx2,fma"
#else
#define AVX512_TARGET "avx512f,avx512vl,avx2,fma,prefer-vector-width=512"
#endif
/* tune=haswell: see 5. above. (Clang before 12, and Apple's before 13, do not know tune= in an
   attribute: they warn and drop the whole attribute.) */
#if defined(__clang__) && (__clang_major__ < 12 || (defined(__apple_build_version__) && __clang_major__ < 13))
#define AVX2_TARGET "avx2,fma"
#else
#define AVX2_TARGET "avx2,fma,tune=haswell"
#endif
MICRO_KERNEL(micro_kernel_avx512, 8, 32, __attribute__((target(AVX512_TARGET))))
MICRO_KERNEL(micro_kernel_avx2, 4, 24, __attribute__((target(AVX2_TARGET))))
MICRO_KERNEL(micro_kernel_avx2_amd, 2, 48, __attribute__((target("avx2,fma"))))
#endif

typedef struct {
    const char *name;
    int mr, nr;
    MicroKernel kernel;
    MicroKernelTaps kernel_taps;
    int conv_direct_pct; /* trick 6 is used where its padding adds at most this % to the work */
} MatmulPath;


/* In the order of what they need, so that a processor runs the first matmul_runnable_paths(). */
static const MatmulPath matmul_paths[] = {
    {"portable C, 4x24 tile", 4, 24, micro_kernel_portable, micro_kernel_portable_taps, 10},
#ifdef DEIT_X86_DISPATCH
    {"AVX2+FMA, 4x24 tile", 4, 24, micro_kernel_avx2, micro_kernel_avx2_taps, 50},
    {"AVX2+FMA, 2x48 tile", 2, 48, micro_kernel_avx2_amd, micro_kernel_avx2_amd_taps, 50},
    {"AVX-512, 8x32 tile", 8, 32, micro_kernel_avx512, micro_kernel_avx512_taps, 15},
#endif
};
static const char *matmul_path_names[] = {"portable", "avx2", "avx2_2x48", "avx512"};

/* How many of matmul_paths this processor (and this build) runs. */
static int matmul_runnable_paths(void) {
    int n = 1;
#ifdef DEIT_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) n = 3;
    if (n == 3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) n = 4;
#endif
    return n;
}

/* The best version for this processor: an index into matmul_paths. With AVX2 and no AVX-512,
   4 x 24, not 2 x 48 (5. above). */
static int matmul_best_path(void) {
    int n = matmul_runnable_paths();
    return n == 3 ? 1 : n - 1;
}

static int matmul_path_named(const char *name) { /* its index in matmul_paths, or -1 */
    for (int i = 0; i < (int)(sizeof(matmul_path_names) / sizeof(matmul_path_names[0])); i++)
        if (!strcmp(name, matmul_path_names[i])) return i;
    return -1;
}

/* The version in use, chosen at the first call (deit_main makes it before any thread starts):
   the best one, or the one DEIT_KERNEL names (portable, avx2, avx2_2x48 or avx512: for tests
   and benchmarks; one the processor lacks is refused). */
static const MatmulPath *matmul_chosen_path;
static const MatmulPath *matmul_path(void) {
    if (matmul_chosen_path) return matmul_chosen_path;
    int use = matmul_best_path();
    const char *force = getenv("DEIT_KERNEL");
    if (force && *force) {
        use = matmul_path_named(force);
        if (use < 0) die("DEIT_KERNEL=%s: must be portable, avx2, avx2_2x48 or avx512", force);
        if (use >= matmul_runnable_paths()) die("DEIT_KERNEL=%s: this processor (or this build) cannot run it", force);
    }
    matmul_chosen_path = &matmul_paths[use];
    return matmul_chosen_path;
}

/* What the progress lines and bench print: "naive", or the fast version in use. */
static const char *matmul_name(void) {
    return matmul_use_fast ? matmul_path()->name : "naive (three loops)";
}

/* A[i0 .. i0+m) x [k0 .. k0+kc) into panels of MR rows (MR numbers per k), zero padded. */
VECTOR_CLONES
static void pack_a(float *restrict dst, const float *A, int a_rs, int a_cs, int i0, int m, int k0, int kc, int MR) {
    for (int p = 0; p < m; p += MR, dst += (size_t)MR * kc) {
        int rows = m - p < MR ? m - p : MR;
        if (rows < MR) memset(dst, 0, sizeof(float) * MR * kc);
        const float *src = A + (size_t)(i0 + p) * a_rs + (size_t)k0 * a_cs;
        for (int k = 0; k < kc; k++)
            for (int i = 0; i < rows; i++) dst[k * MR + i] = src[(size_t)i * a_rs + (size_t)k * a_cs];
    }
}

/* A full panel of a transposed B, k outer so that every store goes to consecutive addresses;
   inlined with a constant NR (below), so that the compiler unrolls and vectorizes the j loop. */
static ALWAYS_INLINE void pack_b_transposed(float *restrict dst, const float *src, int b_cs, int kc, const int NR) {
    for (int k = 0; k < kc; k++)
        for (int j = 0; j < NR; j++) dst[k * NR + j] = src[(size_t)j * b_cs + k];
}

/* A full panel of a B whose rows are contiguous (b_cs == 1): kc runs of NR numbers, b_rs
   apart. Inlined with a constant NR, so that the compiler copies whole vectors; with NR a
   variable, GCC moved two floats at a time, and this copy took 4.6% of a DeiT-Ti step.
   The + 0.0f: GCC sees a loop that only copies and calls memmove for each run of NR floats
   (128 bytes), which took 2-3% of the step in calls. Adding zero is exact (only a -0 becomes
   +0, and the kernel's sums start at +0 anyway), so the numbers stay the same, but the loop
   is no longer a plain copy, and it stays a few vector loads and stores. The weight
   gradients, which pack this way, ran 5-10% faster (dev/SPEED.md). */
static ALWAYS_INLINE void pack_b_rows(float *restrict dst, const float *src, int b_rs, int kc, const int NR) {
    for (int k = 0; k < kc; k++)
        for (int j = 0; j < NR; j++) dst[k * NR + j] = src[(size_t)k * b_rs + j] + 0.0f;
}

/* One panel: B[k0 .. k0+kc) x [j0 .. j0+n) as kc rows of NR numbers, zero padded. */
VECTOR_CLONES
static void pack_b_panel(float *restrict dst, const float *B, int b_rs, int b_cs, int k0, int kc, int j0, int n, int NR) {
    const float *src = B + (size_t)k0 * b_rs + (size_t)j0 * b_cs;
    if (b_rs == 1 && n == NR) {
        if (NR == 32) pack_b_transposed(dst, src, b_cs, kc, 32);
        else if (NR == 48) pack_b_transposed(dst, src, b_cs, kc, 48);
        else if (NR == 24) pack_b_transposed(dst, src, b_cs, kc, 24);
        else pack_b_transposed(dst, src, b_cs, kc, NR); /* (no tile has another NR today: for a new one) */
        return;
    }
    if (b_cs == 1 && n == NR) {
        if (NR == 32) pack_b_rows(dst, src, b_rs, kc, 32);
        else if (NR == 48) pack_b_rows(dst, src, b_rs, kc, 48);
        else if (NR == 24) pack_b_rows(dst, src, b_rs, kc, 24);
        else pack_b_rows(dst, src, b_rs, kc, NR); /* (likewise) */
        return;
    }
    if (n < NR) memset(dst, 0, sizeof(float) * NR * kc);
    for (int k = 0; k < kc; k++)
        for (int j = 0; j < n; j++) dst[k * NR + j] = src[(size_t)k * b_rs + (size_t)j * b_cs];
}

/* matmul_store (store = 1) stores each tile in the first slice of K (k0 = 0) and adds the
   later slices to it, as matmul does. What the kernel stores a tile whose first column is j
   from: the bias from column j on, or zeros; NULL (add to C) when it should add.           */
static const float matmul_zero_row[NR_MAX];
static const float *tile_init(int store, const float *bias, int k0, int j) {
    if (!store || k0 > 0) return NULL;
    return bias ? bias + j : matmul_zero_row;
}

/* A product asked for from inside a parallel loop (attention: one image and head per thread;
   a convolution's lane: one chunk of images) runs on the calling thread alone, with its
   packing buffers on that thread's stack. Only K is cut (k_slice); each B panel is packed
   once and used by every group of MR rows, as in the loops below. */
static void matmul_fast_one_thread(const MatmulPath *path, float *C, int ldc, const float *A, int a_rs, int a_cs,
                                   const float *B, int b_rs, int b_cs, int M, int N, int K, int store,
                                   const float *bias) {
    const int MR = path->mr, NR = path->nr, a_direct = a_cs == 1 || a_rs == 1;
    _Alignas(64) float bp[KC * NR_MAX];
    _Alignas(64) float ap[KC * MR_MAX];
    for (int k0 = 0, ks = k_slice(K); k0 < K; k0 += ks) {
        int kc = K - k0 < ks ? K - k0 : ks, tail = M / MR * MR;
        /* A read in place (trick 4): only its last rows (fewer than MR) are packed, once per K
           slice, not once per B panel (with the old 6-row tile a convolution's 16 output channels
           were 6 + 6 + 4, and packing the 4 for every panel cost about a tenth of the product) */
        if (a_direct && tail < M) pack_a(ap, A, a_rs, a_cs, tail, M - tail, k0, kc, MR);
        for (int j0 = 0; j0 < N; j0 += NR) {
            int n = N - j0 < NR ? N - j0 : NR, direct = b_cs == 1 && n == NR;
            if (!direct) pack_b_panel(bp, B, b_rs, b_cs, k0, kc, j0, n, NR);
            const float *b = direct ? B + (size_t)k0 * b_rs + j0 : bp;
            for (int i0 = 0; i0 < M; i0 += MR) {
                int m = M - i0 < MR ? M - i0 : MR, in_place = a_direct && m == MR;
                if (!a_direct) pack_a(ap, A, a_rs, a_cs, i0, m, k0, kc, MR);
                const float *a = in_place ? A + (size_t)i0 * a_rs + (size_t)k0 * a_cs : ap;
                path->kernel(kc, a, in_place ? a_cs : MR, in_place ? a_rs : 1, b, direct ? b_rs : NR,
                             C + (size_t)i0 * ldc + j0, ldc, tile_init(store, bias, k0, j0), m, n);
            }
        }
    }
}

static float *matmul_packed_b; /* KC x NC: the blocked loops' packed B panels, allocated once */

/* Rows i0 .. i0+m of C (a block, m <= MC; C already points at the panel's first column) +=
   those rows of A x one B panel (kc x NR, rows ldb apart; n valid columns), MR rows at a time:
   a full group of MR rows is read in place when a_direct (trick 4), the others from ap, where
   the caller has packed the block. Both loops below run every block through here. c_init:
   as the kernel's (NULL: add to C). */
static void block_times_panel(const MatmulPath *path, float *C, int ldc, const float *A, int a_rs, int a_cs,
                              int a_direct, const float *ap, int i0, int m, int k0, int kc, const float *b, int ldb,
                              int n, const float *c_init) {
    const int MR = path->mr;
    for (int p = 0; p < m; p += MR) {
        int im = m - p < MR ? m - p : MR, in_place = a_direct && im == MR;
        const float *a = in_place ? A + (size_t)(i0 + p) * a_rs + (size_t)k0 * a_cs : ap + (size_t)p * kc;
        path->kernel(kc, a, in_place ? a_cs : MR, in_place ? a_rs : 1, b, ldb, C + (size_t)(i0 + p) * ldc, ldc, c_init,
                     im, n);
    }
}

/* 7. Deep products. A weight gradient sums over every token of the batch: K = 4224 for
 *    DeiT-Ti/4 at batch 64 (17 slices: 16 of 249 and one of 240), with M = 192 to 768 rows. The loops of matmul_fast
 *    below stop all threads twice per K slice (pack B together, then compute), 34 times for
 *    one such product, and cut 192 rows into blocks of 72 + 72 + 48, which two threads share
 *    unevenly. Here each thread owns a fixed range of the work items (one block of MC rows x
 *    one B panel) for every K slice, packs the A blocks and B panels its items need into its
 *    own part of a buffer, and never waits for the other: one parallel region per product.
 *    The items run block by block when M > N and panel by panel otherwise, so that each
 *    thread packs about half of the larger operand and all of the smaller one.
 *    A is dout read transposed (A(i,k) = dout[k*N + i]). Read in place, as trick 4 does, each
 *    k of a tile is a new cache line N floats from the last; on an Intel Xeon the qkv and fc1
 *    weight gradients (N = 576, 768: lines 2.3 and 3 KB apart) then ran at 165 GFLOP/s at 2
 *    threads against 260 for the forward products, the other two (768 bytes apart) at 175-215.
 *    Packed here, each token's MC numbers are read in one run, and the four ran at 185-260
 *    (dev/SPEED.md, "The weight gradients on an Intel Xeon"). This pays while a thread's A
 *    blocks and B panels of one K slice stay in L2, so only for M <= 1024: the products with
 *    thousands of rows keep the blocked loops. Each element of C gets the same sums in the
 *    same order as there, so the result is bit for bit the same. */
static int matmul_deep_enabled = 1; /* 0: every product through the blocked loops (tests) */
static float *matmul_deep_packed;   /* each thread's packed A blocks and B panels (grows, kept) */
static size_t matmul_deep_packed_size;

/* Rows i0 .. i0+m of a transposed A (A(i,k) = a[k*a_cs + i]) into panels of MR rows, k outer:
   for each k the m numbers are read in one run. Inlined with a constant MR (below), so that the
   compiler copies whole vectors (the + 0.0f: see pack_b_rows). */
static ALWAYS_INLINE void pack_a_transposed(float *restrict dst, const float *A, int a_cs, int i0, int m, int k0,
                                            int kc, const int MR) {
    int full = m / MR * MR;
    for (int k = 0; k < kc; k++) {
        const float *src = A + (size_t)(k0 + k) * a_cs + i0;
        for (int p = 0; p < full; p += MR)
            for (int i = 0; i < MR; i++) dst[(size_t)p * kc + k * MR + i] = src[p + i] + 0.0f;
    }
    if (full < m) pack_a(dst + (size_t)full * kc, A, 1, a_cs, i0 + full, m - full, k0, kc, MR);
}

/* A block of m <= MC rows of A into panels of MR rows (as pack_a). */
VECTOR_CLONES
static void pack_a_block(float *restrict dst, const float *A, int a_rs, int a_cs, int i0, int m, int k0, int kc, int MR) {
    if (a_rs == 1 && MR == 8) pack_a_transposed(dst, A, a_cs, i0, m, k0, kc, 8);
    else if (a_rs == 1 && MR == 4) pack_a_transposed(dst, A, a_cs, i0, m, k0, kc, 4);
    else if (a_rs == 1 && MR == 2) pack_a_transposed(dst, A, a_cs, i0, m, k0, kc, 2);
    else pack_a(dst, A, a_rs, a_cs, i0, m, k0, kc, MR);
}

static void matmul_fast_deep(const MatmulPath *path, float *C, int ldc, const float *A, int a_rs, int a_cs,
                             const float *B, int b_rs, int b_cs, int M, int N, int K, int store, const float *bias) {
    const int MR = path->mr, NR = path->nr;
    const int n_panels = (N + NR - 1) / NR, n_blocks = (M + MC - 1) / MC, n_items = n_panels * n_blocks;
    /* item w = (outer index) * inner + (inner index): blocks outer when M > N, else panels */
    const int by_block = M > N, inner = by_block ? n_panels : n_blocks;
    size_t per_thread = ((size_t)n_blocks * MC + (size_t)n_panels * NR) * KC;
    if (matmul_deep_packed_size < per_thread * num_threads()) {
        free(matmul_deep_packed);
        matmul_deep_packed_size = per_thread * num_threads();
        matmul_deep_packed = xmalloc(sizeof(float) * matmul_deep_packed_size);
    }
    OMP(omp parallel)
    {
        int t = thread_index(), threads = team_size();
        int w_begin = (int)((long)n_items * t / threads), w_end = (int)((long)n_items * (t + 1) / threads);
        /* the blocks and panels this thread's items use: a range of the outer loop, and all of
           the inner one unless the items stay in one outer step */
        int out_first = w_begin / inner, out_last = (w_end - 1) / inner, in_first = 0, in_last = inner - 1;
        if (out_first == out_last) in_first = w_begin % inner, in_last = (w_end - 1) % inner;
        int blk_first = by_block ? out_first : in_first, blk_last = by_block ? out_last : in_last;
        int q_first = by_block ? in_first : out_first, q_last = by_block ? in_last : out_last;
        float *ap = matmul_deep_packed + (size_t)t * per_thread; /* block blk at ap + blk * MC * kc */
        float *bp = ap + (size_t)n_blocks * MC * KC;              /* panel q at bp + q * NR * kc */
        for (int k0 = 0, ks = k_slice(K); k0 < K && w_begin < w_end; k0 += ks) {
            int kc = K - k0 < ks ? K - k0 : ks;
            for (int q = q_first; q <= q_last; q++) {
                int n = N - q * NR < NR ? N - q * NR : NR;
                pack_b_panel(bp + (size_t)q * NR * kc, B, b_rs, b_cs, k0, kc, q * NR, n, NR);
            }
            for (int blk = blk_first; blk <= blk_last; blk++) {
                int i0 = blk * MC, m = M - i0 < MC ? M - i0 : MC;
                pack_a_block(ap + (size_t)i0 * kc, A, a_rs, a_cs, i0, m, k0, kc, MR);
            }
            for (int w = w_begin; w < w_end; w++) {
                int blk = by_block ? w / inner : w % inner, q = by_block ? w % inner : w / inner;
                int i0 = blk * MC, m = M - i0 < MC ? M - i0 : MC, n = N - q * NR < NR ? N - q * NR : NR;
                block_times_panel(path, C + q * NR, ldc, A, a_rs, a_cs, 0, ap + (size_t)i0 * kc, i0, m, k0, kc,
                                  bp + (size_t)q * NR * kc, NR, n, tile_init(store, bias, k0, q * NR));
            }
        }
    }
}

/* C += A B (store = 0), or C = A B + bias (store = 1: matmul_store) */
static void matmul_fast(float *C, int ldc, const float *A, int a_rs, int a_cs,
                   const float *B, int b_rs, int b_cs, int M, int N, int K, int store, const float *bias) {
    if (M <= 0 || N <= 0 || K <= 0) return; /* (matmul_store fills C itself when K = 0) */
    const MatmulPath *path = matmul_path();
    if (inside_parallel_region()) {
        matmul_fast_one_thread(path, C, ldc, A, a_rs, a_cs, B, b_rs, b_cs, M, N, K, store, bias);
        return;
    }
    const int MR = path->mr, NR = path->nr;
    if (K > KC && M <= 1024 && matmul_deep_enabled) { /* trick 7, a slice of N at a time */
        for (int j0 = 0; j0 < N; j0 += NC)
            matmul_fast_deep(path, C + j0, ldc, A, a_rs, a_cs, B + (size_t)j0 * b_cs, b_rs, b_cs, M,
                             N - j0 < NC ? N - j0 : NC, K, store, bias ? bias + j0 : NULL);
        return;
    }
    if (!matmul_packed_b) matmul_packed_b = xmalloc(sizeof(float) * KC * NC);
    float *bp = matmul_packed_b;
    /* Trick 4: when A's rows or columns are contiguous (a_cs == 1 or a_rs == 1), only a last
       group of fewer than MR rows is packed. When B's rows are contiguous (b_cs == 1) and there
       is one block of A (M <= MC), the kernel reads a full B panel where it lies, with row
       stride b_rs. */
    int b_direct = (b_cs == 1) && M <= MC, a_direct = (a_cs == 1) || (a_rs == 1);
    for (int j0 = 0; j0 < N; j0 += NC) {
        int nc = N - j0 < NC ? N - j0 : NC;
        int n_panels = (nc + NR - 1) / NR;
        for (int k0 = 0, ks = k_slice(K); k0 < K; k0 += ks) {
            int kc = K - k0 < ks ? K - k0 : ks;
            OMP(omp parallel for schedule(static))
            for (int q = 0; q < n_panels; q++) {
                int n = nc - q * NR < NR ? nc - q * NR : NR;
                if (!b_direct || n < NR) pack_b_panel(bp + (size_t)q * NR * kc, B, b_rs, b_cs, k0, kc, j0 + q * NR, n, NR);
            }
            /* Work items: (block of MC rows) x (group of G B panels). Each packs its A block (or
               just its last rows, when A is read in place). G = 4 reuses a packed A block over
               four panels; a small product (fewer than 16 items of four panels: one block of
               rows and a few panels) gets G = 1, so that it still splits evenly over the threads. */
            int n_blocks = (M + MC - 1) / MC;
            int G = n_blocks * ((n_panels + 3) / 4) >= 16 ? 4 : 1;
            int n_groups = (n_panels + G - 1) / G;
            OMP(omp parallel)
            {
                _Alignas(64) float ap[MC * KC];
                int packed_block = -1;
                OMP(omp for schedule(static))
                for (int w = 0; w < n_blocks * n_groups; w++) {
                    int blk = w / n_groups, grp = w % n_groups;
                    int i0 = blk * MC, m = M - i0 < MC ? M - i0 : MC;
                    if (packed_block != blk) {
                        int first = a_direct ? m / MR * MR : 0; /* rows before it are read in place */
                        if (first < m) pack_a(ap + (size_t)first * kc, A, a_rs, a_cs, i0 + first, m - first, k0, kc, MR);
                        packed_block = blk;
                    }
                    int q_end = (grp + 1) * G < n_panels ? (grp + 1) * G : n_panels;
                    for (int q = grp * G; q < q_end; q++) {
                        int jn = nc - q * NR < NR ? nc - q * NR : NR;
                        int direct = b_direct && jn == NR;
                        const float *b = direct ? B + (size_t)k0 * b_rs + j0 + q * NR : bp + (size_t)q * NR * kc;
                        block_times_panel(path, C + j0 + q * NR, ldc, A, a_rs, a_cs, a_direct, ap, i0, m, k0, kc, b,
                                          direct ? b_rs : NR, jn, tile_init(store, bias, k0, j0 + q * NR));
                    }
                }
            }
        }
    }
}

/* 6. A "same" convolution without im2col (stride 1, k = 2 pad + 1 >= 3: every stride-1 3x3 pad 1
 *    convolution of ResNet and airbench; stride 2 at the end). im2col writes every input pixel k*k times and the product reads
 *    them all back: with the packing of col for the weight gradient that was a quarter of
 *    ResNet-20's step at one thread (dev/SPEED.md). Instead each chunk of images is copied
 *    once into a padded layout in which every tap (ky, kx) of the kernel is a fixed shift:
 *      - a channel holds the chunk's nb images interleaved by rows: row y of image 0, row y of
 *        image 1, ..., row y of image nb-1, then row y + 1 of image 0, and so on. Every row
 *        starts with `pad` zeros, so rows are pitch = w + pad floats apart, and the pixel
 *        below (image i, y, x) is step = nb * pitch floats further. `pad` steps of zeros lie
 *        above the first rows and below the last ones. (The zeros at the start of a row are
 *        also the right padding of the row before it: pixel x = w - 1 + d, d = 1 .. pad, of a
 *        row is entry d - 1 of the next row.)
 *      - the output is computed on the same grid: output pixel (image, y, x) is grid column
 *        q = its own input pixel's position minus the first pixel's. Input pixel
 *        (c, y + ky - pad, x + kx - pad), which im2col copies to col row (c, ky, kx), then lies
 *        at q + c * plane + (ky - pad) * step + (kx - pad) from the first pixel.
 *    So row (c, ky, kx) of col is the padded input itself, read from a shifted start: the
 *    kernel takes B row k at b + b_off[k] (the _taps kernels), with no copy. The grid columns
 *    that are padding get an output too (a sum over real memory, meaningless), dropped when the
 *    grid is copied back: (w + pad) / w of the work, 1.03 at 32x32 and 1.125 at 8x8. (With the
 *    images one below the other instead, each image also had its own `pad` zero rows: (w + pad)
 *    x (h + pad) / (w x h), 1.27 at 8x8. Interleaved, ResNet-20 trained 5-6% faster and airbench
 *    9% on an Intel Xeon at 2 threads; dev/SPEED.md, "The images interleaved by rows".)
 *    Every output is the same sum in the same order as through im2col with the same kernel
 *    version, so the forward pass is bit for bit the same.
 *    Backward, with dout copied to the same padded layout (zeros where the grid is padding):
 *      dW^T[(ky,kx), c][co] = sum over q of in[q + shift(c, ky, kx)] * dout[co][q]: the input
 *        read in place, dout packed (conv_taps_weight_grad); conv_backward transposes it back;
 *      din = the transposed convolution of dout (w_flip; see conv_backward): the same
 *        product as the forward pass, written to din (or added to it, with din_add) when
 *        copied back.
 *    Stride 2 (ResNet's two downsampling 3x3 convolutions) fits the same scheme once the input
 *    is split into its four phases: plane (c, py, px) holds the pixels (2y + py, 2x + px), so
 *    input row 2y + ky - pad of output row y is row y + dy of phase py, with ky - pad = 2 dy + py.
 *    Each tap is then a fixed shift in one of channel c's four phase planes (4 cin planes in
 *    all), on a grid of the output's size (conv_tap_shift). dy and dx run from -(pad / 2 rounded
 *    up) to pad / 2 rounded down, so `lead` = pad / 2 rounded up zeros (conv_lead) take the
 *    place of `pad` in the layout above. The forward and the weight gradient take the taps as
 *    above. din does not: the transposed convolution of a stride-2 one is no stride-1 convolution
 *    of dout (it needs zeros between dout's pixels), so din goes through dcol and col2im as on
 *    the im2col path.
 *    ResNet-20's 16 -> 32 and 32 -> 64 convolutions: 1.25x and 1.2x faster forward, 1.1x
 *    backward (dev/SPEED.md, "Stride 2 in phases").
 *    One chunk of images at a time, on the calling thread (the lanes of Part I run them). */
/* Zero columns before each row of the padded layout, and zero rows above and below: pad, or with
   stride 2 the pad / 2 (rounded up) that the phases need */
static int conv_lead(const ConvBN *l) { return (l->pad + l->stride - 1) / l->stride; }
static int conv_direct_shape(const ConvBN *l) { /* (not 1 x 1: there im2col is a plain copy) */
    if (l->ksize < 3 || l->ksize != 2 * l->pad + 1) return 0;
    if (l->stride == 1) return l->hout == l->hin && l->wout == l->win;
    return l->stride == 2 && l->hin == 2 * l->hout && l->win == 2 * l->wout; /* see conv_tap_shift */
}
/* Taken where the grid's padding columns add at most conv_direct_pct % to the work, lead / w
   (pad / w at stride 1; w: the output's width).
   With the AVX-512 tile that is 15%: images of 7 x 7 and more (pad 1). On an Intel Xeon at 2
   threads (dev/bench_conv.c), forward and backward: 1.04x and 1.11x faster than im2col at 8 x 8,
   1.16x and 1.08x at 7 x 7 with 256 channels, 1.25-1.7x at 15 x 15 to 32 x 32; on 3 x 3 (33%)
   1.00x and 0.88x. The portable tile, 10%: 8 x 8 is even there, 7 x 7 0.90x and 0.96x. AVX2's
   2 x 48 tile reads each B vector twice and gains more from a compact B: up to 50% (1.68x and
   1.23x at 3 x 3 on the Xeon; on an AMD EPYC, with the images one below the other, 1.35x
   forward at 7 x 7). Its 4 x 24 tile keeps 50%: ResNet-20 and airbench trained as fast with
   15% (dev/SPEED.md, "The AVX2 tile, again").
   conv_direct_enabled: 1 where the padding costs at most conv_direct_pct, 0 never, 2 on every
   convolution of the shapes above (the tests, which use small images). */
static int conv_direct_enabled = 1;
static int conv_direct(const ConvBN *l) {
    long grid = l->wout + conv_lead(l), pixels = l->wout; /* per image row */
    return matmul_use_fast && conv_direct_enabled && conv_direct_shape(l) &&
           (conv_direct_enabled == 2 || 100 * grid <= (100 + matmul_path()->conv_direct_pct) * pixels);
}

/* Floats of one plane of nb padded images (a channel, or one of its four phases): the rows, one more (the last row's right padding),
   and slack: a last partial panel reads up to NR - 1 floats past the written rows (columns that
   are computed and never stored). Offsets into it are ints: a chunk's planes are a few MB. */
static size_t conv_padded_plane(const ConvBN *l, int nb) {
    int pitch = l->wout + conv_lead(l);
    return (size_t)((l->hout + 2 * conv_lead(l)) * nb + 1) * pitch + NR_MAX + 16;
}
/* Grid columns from a pixel to the one below it in the same image: nb rows of pitch */
static int conv_row_step(const ConvBN *l, int nb) { return nb * (l->wout + conv_lead(l)); }
/* Where the first pixel lies in a padded plane: below `lead` zero rows, after `lead` zeros */
static size_t conv_first_pixel(const ConvBN *l, int nb) { return (size_t)conv_lead(l) * conv_row_step(l, nb) + conv_lead(l); }
/* Grid columns from the first pixel to the last one of nb images */
static int conv_grid_columns(const ConvBN *l, int nb) {
    return (l->hout * nb - 1) * (l->wout + conv_lead(l)) + l->wout;
}
static int conv_in_planes(const ConvBN *l) { return l->cin * l->stride * l->stride; } /* padded planes of the input */
static size_t conv_direct_scratch(const ConvBN *l, int nb) { /* floats of col (and more than dcol needs) */
    return (size_t)(conv_in_planes(l) + l->cout) * conv_padded_plane(l, nb);
}

/* n floats. memcpy of a size the compiler knows becomes a few vector moves; with a variable size
   it is a call, which costs about as much as copying an image row of 8 to 32 floats. So the
   widths of CIFAR's ResNet stages get copies of their own (the copies in and out of the padded
   layout: the 32-channel 16 x 16 forward 4-5% faster; dev/SPEED.md). */
static inline void copy_row(float *restrict dst, const float *restrict src, int n) {
    switch (n) {
    case 8: memcpy(dst, src, sizeof(float) * 8); break;
    case 16: memcpy(dst, src, sizeof(float) * 16); break;
    case 32: memcpy(dst, src, sizeof(float) * 32); break;
    default: memcpy(dst, src, sizeof(float) * n);
    }
}

/* Images b0 .. b0+nb of x (C, B, h, w) into the padded layout, channel c at P + c * plane; with
   phases = 2 (a stride-2 convolution's input), each channel as four planes (see conv_tap_shift):
   plane (c, py, px) holds the pixels (2y + py, 2x + px). The layout's rows are the output's. */
static void conv_pad(float *P, size_t plane, const float *x, int C, int h, int w, int phases, int B, int b0, int nb,
                     const ConvBN *l) {
    int lead = conv_lead(l), pitch = l->wout + lead, step = conv_row_step(l, nb), rows = l->hout, cols = l->wout;
    for (int c = 0; c < C; c++)
        for (int py = 0; py < phases; py++)
            for (int px = 0; px < phases; px++) {
                float *Pc = P + ((size_t)(c * phases + py) * phases + px) * plane, *row = Pc + (size_t)lead * step;
                memset(Pc, 0, sizeof(float) * lead * step); /* the rows above the images */
                for (int y = 0; y < rows; y++)
                    for (int i = 0; i < nb; i++, row += pitch) {
                        const float *src = x + (((size_t)c * B + b0 + i) * h + y * phases + py) * w + px;
                        for (int d = 0; d < lead; d++) row[d] = 0.0f;
                        if (phases == 1) copy_row(row + lead, src, cols);
                        else for (int j = 0; j < cols; j++) row[lead + j] = src[j * phases];
                    }
                memset(row, 0, sizeof(float) * (lead * step + pitch)); /* below them */
            }
}

/* The grid (C rows of ldg) back to images b0 .. b0+nb of y (C, B, h, w): y = grid, or y += grid. */
static void conv_unpad(float *y, const float *G, int ldg, int C, int B, int b0, int nb, const ConvBN *l, int add) {
    int h = l->hout, w = l->wout, pitch = w + conv_lead(l);
    for (int c = 0; c < C; c++)
        for (int i = 0; i < nb; i++)
            for (int r = 0; r < h; r++) {
                const float *src = G + (size_t)c * ldg + (size_t)(r * nb + i) * pitch;
                float *dst = y + (((size_t)c * B + b0 + i) * h + r) * w;
                if (add) for (int x = 0; x < w; x++) dst[x] += src[x];
                else copy_row(dst, src, w);
            }
}

/* Where tap j = (c, ky, kx) of the first pixel lies in the padded layout, relative to it (with
   stride 2, in one of channel c's four phase planes). */
static int conv_tap_shift(const ConvBN *l, size_t plane, int nb, int j) {
    int k = l->ksize, c = j / (k * k), ky = j / k % k, kx = j % k, s = l->stride;
    if (s == 1) return (int)(c * plane) + (ky - l->pad) * conv_row_step(l, nb) + (kx - l->pad);
    /* stride 2: input row 2y + ky - pad = 2 (y + dy) + py, py = 0 or 1, lies in phase py, dy rows
       down; with ky + pad >= 0 (= 2 (dy + pad) + py), / and % give dy and py */
    int py = (ky + l->pad) % 2, dy = (ky + l->pad) / 2 - l->pad, px = (kx + l->pad) % 2, dx = (kx + l->pad) / 2 - l->pad;
    return (int)(((c * 2 + py) * 2 + px) * plane) + dy * conv_row_step(l, nb) + dx;
}

/* G (M x N grid columns, row stride ldg) = A (M x C*k*k, row stride lda) x the taps of the padded
   P: the loops of matmul_fast_one_thread, with B read in place through the shifts of its rows.
   The first slice of K stores its tiles (as matmul_store): G's old values are not read. */
static void conv_taps_product(float *G, int ldg, const float *A, int lda, const float *P, size_t plane, int C,
                              const ConvBN *l, int nb, int M, int N) {
    const MatmulPath *path = matmul_path();
    const int MR = path->mr, NR = path->nr, K = C * l->ksize * l->ksize;
    const float *first = P + conv_first_pixel(l, nb);
    _Alignas(64) float ap[KC * MR_MAX];
    int b_off[KC];
    for (int k0 = 0, ks = k_slice(K); k0 < K; k0 += ks) {
        int kc = K - k0 < ks ? K - k0 : ks, tail = M / MR * MR;
        for (int k = 0; k < kc; k++) b_off[k] = conv_tap_shift(l, plane, nb, k0 + k);
        if (tail < M) pack_a(ap, A, lda, 1, tail, M - tail, k0, kc, MR); /* the last rows, once per slice */
        for (int j0 = 0; j0 < N; j0 += NR) {
            int n = N - j0 < NR ? N - j0 : NR;
            for (int i0 = 0; i0 < M; i0 += MR) {
                int m = M - i0 < MR ? M - i0 : MR;
                const float *a = m == MR ? A + (size_t)i0 * lda + k0 : ap;
                path->kernel_taps(kc, a, m == MR ? 1 : MR, m == MR ? lda : 1, first + j0, b_off,
                                  G + (size_t)i0 * ldg + j0, ldg, tile_init(1, NULL, k0, j0), m, n);
            }
        }
    }
}

/* The weight gradient, transposed: dWt[(tap, c)][co] += sum over grid columns q of
   in[c][q + shift(tap)] * dout[co][q], tap = (ky, kx). In this orientation the operand that has
   to be copied, dout read transposed, is one panel per NR output channels, packed once per K
   slice and used by all k*k*cin rows; and for one tap, MR consecutive input channels are MR
   rows a fixed distance apart (a plane; four at stride 2), which the kernel reads in place. (The other way round, each panel of
   dW's columns had to be gathered from NR shifted starts, for only cout rows: the gather took
   longer than the product.) conv_backward turns dWt back into dW's layout when it adds up the
   lanes.
   Few output channels (ResNet's first stage: 16, half the AVX-512 tile's 32 columns) would
   leave most of the tile idle, so taps are stacked: the sum of tap (ky + h, kx) over q equals,
   with q moved by h image rows (h steps), sum over q of in[c][q + shift(ky, kx)] *
   dout[co][q - h * step]. So one product with the rows of tap (ky, kx) and the panel
   [dout(q), dout(q - step), ..., dout(q - (g-1) step)] gives g taps at once, g * cout columns.
   The sum runs over (g-1) steps more of grid columns; the extra terms read the zero rows
   above and below the images (g - 1 <= pad, see conv_weight_grad_stack). dWt is then laid out per group of stacked taps:
   conv_weight_grad_at(). ResNet-20's first stage: its weight gradient 1.3x faster (AVX2's 2 x 48
   tile 1.35x; its 4 x 24 tile holds no second group of 16), the whole training step 4-5%. */
static int conv_weight_grad_stack(const ConvBN *l) { /* g: taps stacked in one column panel */
    int g = matmul_path()->nr / l->cout;
    if (g > l->pad + 1) g = l->pad + 1;
    if (l->stride > 1) g = 1; /* (taps one row apart lie in different phases) */
    return g < 1 ? 1 : g;
}
/* Where dW[co][ci][ky][kx] lies in dWt: the taps (ky0 .. ky0+rows-1, kx) of a group are rows
   of ci, each rows * cout long (g = 1: dWt[(tap, ci)][co]). */
static size_t conv_weight_grad_at(const ConvBN *l, int g, int co, int ci, int ky, int kx) {
    int k = l->ksize, ky0 = ky / g * g, rows = k - ky0 < g ? k - ky0 : g;
    return (size_t)ky0 * k * l->cin * l->cout + ((size_t)kx * l->cin + ci) * rows * l->cout +
           (size_t)(ky - ky0) * l->cout + co;
}
/* The stacked panel: row q = the cout channels of dout at grid columns q, q - step, ... */
static void pack_b_stacked(float *restrict dst, const float *dout, size_t plane, int step, int cout, int g, int kc,
                           int NR) {
    if (g * cout < NR) memset(dst, 0, sizeof(float) * NR * kc);
    for (int k = 0; k < kc; k++)
        for (int h = 0; h < g; h++)
            for (int co = 0; co < cout; co++) dst[k * NR + h * cout + co] = dout[co * plane + k - (ptrdiff_t)h * step];
}
static void conv_taps_weight_grad(float *dWt, const float *Pdout, const float *Pin, size_t plane, const ConvBN *l,
                                  int nb, int N) {
    const MatmulPath *path = matmul_path();
    const int MR = path->mr, NR = path->nr, C = l->cin, k = l->ksize, cout = l->cout, step = conv_row_step(l, nb);
    const int g = conv_weight_grad_stack(l), N_sum = N + (g - 1) * step; /* grid columns summed over */
    size_t first = conv_first_pixel(l, nb), cstride = plane * l->stride * l->stride; /* channel to channel */
    _Alignas(64) float ap[KC * MR_MAX];
    _Alignas(64) float bp[KC * NR_MAX];
    for (int k0 = 0, ks = k_slice(N_sum); k0 < N_sum; k0 += ks) { /* slices of the grid columns, the sum's index here */
        int kc = N_sum - k0 < ks ? N_sum - k0 : ks, tail = C / MR * MR;
        for (int j0 = 0; j0 < cout; j0 += NR) { /* (with g > 1, one panel) */
            int n = cout - j0 < NR ? cout - j0 : NR;
            if (g == 1) pack_b_panel(bp, Pdout + first, 1, (int)plane, k0, kc, j0, n, NR);
            else pack_b_stacked(bp, Pdout + first + k0, plane, step, cout, g, kc, NR);
            for (int ky0 = 0; ky0 < k; ky0 += g) {
                int rows = k - ky0 < g ? k - ky0 : g, ldc = rows * cout, cols = g == 1 ? n : ldc;
                int kc_rows = N + (rows - 1) * step - k0; /* a last group of fewer taps sums fewer */
                if (kc_rows > kc) kc_rows = kc;
                if (kc_rows <= 0) continue;
                for (int kx = 0; kx < k; kx++) {
                    const float *a = Pin + first + conv_tap_shift(l, plane, nb, ky0 * k + kx) + k0; /* channel 0 */
                    float *c = dWt + conv_weight_grad_at(l, g, j0, 0, ky0, kx);
                    for (int i0 = 0; i0 < tail; i0 += MR)
                        path->kernel(kc_rows, a + i0 * cstride, 1, (int)cstride, bp, NR, c + (size_t)i0 * ldc, ldc, NULL, MR, cols);
                    if (tail < C) {
                        pack_a(ap, a, (int)cstride, 1, tail, C - tail, 0, kc_rows, MR);
                        path->kernel(kc_rows, ap, MR, 1, bp, NR, c + (size_t)tail * ldc, ldc, NULL, C - tail, cols);
                    }
                }
            }
        }
    }
}

/* With fewer input channels than the tile has rows (the stem: 3 colour channels, of the AVX-512
   tile's 8), dWt's rows would leave most of the tile idle: ResNet-20's stem took 4.1 ms for its
   weight gradient, 30 GFLOP/s, against 1.4 for its forward. There the weight gradient is made
   the other way round, in dW's own layout: dW[co][(c, ky, kx)] += sum over grid columns q of
   dout[co][q] * in[c][q + shift(c, ky, kx)]. A is dout, cout rows plane floats apart, read in
   place; B's panel (the k*k*cin taps, 27 for the stem) is gathered from the taps' shifted starts
   once per K slice.                                                                          */
static int conv_weight_grad_plain(const ConvBN *l) { return l->cin < matmul_path()->mr; }
static void conv_taps_weight_grad_plain(float *dW, const float *Pdout, const float *Pin, size_t plane,
                                        const ConvBN *l, int nb, int N) {
    const MatmulPath *path = matmul_path();
    const int MR = path->mr, NR = path->nr, K = l->cin * l->ksize * l->ksize, cout = l->cout, tail = cout / MR * MR;
    size_t first = conv_first_pixel(l, nb);
    _Alignas(64) float ap[KC * MR_MAX];
    _Alignas(64) float bp[KC * NR_MAX];
    int shift[NR_MAX];
    for (int k0 = 0, ks = k_slice(N); k0 < N; k0 += ks) { /* slices of the grid columns, the sum's index */
        int kc = N - k0 < ks ? N - k0 : ks;
        const float *a = Pdout + first + k0, *in = Pin + first + k0; /* A(co, q) = a[co * plane + q] */
        if (tail < cout) pack_a(ap, a, (int)plane, 1, tail, cout - tail, 0, kc, MR);
        for (int j0 = 0; j0 < K; j0 += NR) {
            int n = K - j0 < NR ? K - j0 : NR;
            for (int j = 0; j < n; j++) shift[j] = conv_tap_shift(l, plane, nb, j0 + j);
            for (int q = 0; q < kc; q++) { /* row q of the panel: tap j of grid column q */
                int j = 0;
                /* three taps side by side (kx = 0, 1, 2 at stride 1, where a group starts at j)
                   are 3 floats in a row, shifts s, s + 1, s + 2; others one at a time */
                for (; j + 3 <= n; j += 3)
                    if (shift[j + 1] == shift[j] + 1 && shift[j + 2] == shift[j] + 2) memcpy(bp + q * NR + j, in + shift[j] + q, sizeof(float) * 3);
                    else for (int d = 0; d < 3; d++) bp[q * NR + j + d] = in[shift[j + d] + q];
                for (; j < n; j++) bp[q * NR + j] = in[shift[j] + q];
                for (j = n; j < NR; j++) bp[q * NR + j] = 0.0f;
            }
            for (int i0 = 0; i0 < tail; i0 += MR)
                path->kernel(kc, a + i0 * plane, 1, (int)plane, bp, NR, dW + (size_t)i0 * K + j0, K, NULL, MR, n);
            if (tail < cout) path->kernel(kc, ap, MR, 1, bp, NR, dW + (size_t)tail * K + j0, K, NULL, cout - tail, n);
        }
    }
}

/* The padded copy of a whole batch that a training forward keeps for the backward: chunk c of
   conv_chunk() images at c * conv_in_planes() * plane (the same layout as in col, chunk after chunk). The
   backward would otherwise make it again from the input: ResNet-20 trains 2-3% faster. */
static size_t conv_padded_size(const ConvBN *l, int B) {
    int chunk = conv_chunk(l, B);
    return (size_t)(B + chunk - 1) / chunk * conv_in_planes(l) * conv_padded_plane(l, chunk);
}
static float *conv_padded_chunk(const float *padded, const ConvBN *l, int B, int b0) {
    int chunk = conv_chunk(l, B);
    return (float *)padded + (size_t)(b0 / chunk) * conv_in_planes(l) * conv_padded_plane(l, chunk);
}

/* The chunk b0 .. b0+nb of conv_forward: out = W x taps(in). col holds the padded input (or keep
   does), then the grid. */
static void conv_forward_direct(float *out, float *col, float *keep, const float *in, const float *w, const ConvBN *l,
                                int B, int b0, int nb) {
    size_t plane = conv_padded_plane(l, nb);
    int N = conv_grid_columns(l, nb), ldg = N + 16, K = l->cin * l->ksize * l->ksize;
    float *P = keep ? conv_padded_chunk(keep, l, B, b0) : col, *G = col + conv_in_planes(l) * plane;
    conv_pad(P, plane, in, l->cin, l->hin, l->win, l->stride, B, b0, nb, l);
    conv_taps_product(G, ldg, w, K, P, plane, l->cin, l, nb, l->cout, N);
    conv_unpad(out, G, ldg, l->cout, B, b0, nb, l, 0);
}

/* The chunk b0 .. b0+nb of conv_backward: dw_lane += dout x taps(in)^T and, if din (stride 1
   only: conv_backward passes NULL at stride 2), din (+)= w_flip x taps(dout). col holds the
   padded input and the padded dout; dcol the grid of din. */
static void conv_backward_direct(float *din, int din_add, float *dw_lane, float *col, float *dcol,
                                 const float *kept, const float *w_flip, const float *dout, const float *in,
                                 const ConvBN *l, int B, int b0, int nb) {
    size_t plane = conv_padded_plane(l, nb);
    int N = conv_grid_columns(l, nb), ldg = N + 16, K = l->cout * l->ksize * l->ksize;
    float *Pin = kept ? conv_padded_chunk(kept, l, B, b0) : col, *Pdout = col + conv_in_planes(l) * plane;
    if (!kept) conv_pad(Pin, plane, in, l->cin, l->hin, l->win, l->stride, B, b0, nb, l);
    conv_pad(Pdout, plane, dout, l->cout, l->hout, l->wout, 1, B, b0, nb, l);
    if (conv_weight_grad_plain(l)) conv_taps_weight_grad_plain(dw_lane, Pdout, Pin, plane, l, nb, N);
    else conv_taps_weight_grad(dw_lane, Pdout, Pin, plane, l, nb, N);
    if (!din) return;
    conv_taps_product(dcol, ldg, w_flip, K, Pdout, plane, l->cout, l, nb, l->cin, N);
    conv_unpad(din, dcol, ldg, l->cin, B, b0, nb, l, din_add);
}


/* ############################################################################################
 *
 *  PART III: THE WORKSHOP
 *
 *  What a program needs around the paper and no paper describes: files that may be truncated,
 *  corrupt or from another model (III.1); the state that lets a killed run continue exactly
 *  where it stopped (III.2); the training loop's bookkeeping: settings checks, progress, the
 *  test after each epoch, the log and the checkpoints (III.3); the paper's analyses (III.4);
 *  the command line (III.5) and the benchmark (III.6).
 *
 * ########################################################################################## */

/* ============================================================================================
 * III.1 Files from outside: checkpoints written atomically, and every file read checked
 * ========================================================================================== */

/* Checkpoint files: 256 int32 header, then the parameters as float32, little-endian.
   Written to FILE.tmp and renamed over FILE, so a killed or crashed run never leaves a
   half-written FILE. (Standard C has no fsync: after a power loss the file system decides.) */
static int host_is_little_endian(void) {
    const uint32_t one = 1;
    return *(const unsigned char *)&one == 1;
}

/* Can a file be created beside path, and path then be replaced by it? Creates and removes
   write_file_atomic's temp file (path.tmp, which every checkpoint write overwrites anyway), and
   refuses an empty name or an existing directory (the rename would fail). Training calls this
   before the first epoch, so that a mistyped --out fails at once, not after an hour. */
static int check_writable(const char *path) {
    if (!path[0]) return report("the output file name is empty");
    FILE *existing = fopen(path, "rb");
    if (existing) { /* a directory opens for reading on Linux, but reading it fails (EISDIR) */
        int unreadable = getc(existing) == EOF && ferror(existing);
        int err = errno;
        fclose(existing);
        if (unreadable) return report("%s: cannot be replaced by a checkpoint: %s", path, strerror(err));
    }
    char tmp[4096];
    path_printf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return report("%s: cannot open for writing: %s", tmp, strerror(errno));
    fclose(f);
    remove(tmp);
    return 0;
}

/* Writes header + data to path.tmp (commit_file then renames it over path: a crash leaves the
   old file whole). Weights or moments that are not finite are never written (every reader
   refuses them). */
static int write_file_temp(const char *path, const int32_t *header, const float *data, size_t n) {
    if (!host_is_little_endian()) return report("%s: this program writes little-endian files only", path);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(data[i]))
            return report("%s: not written: value %zu (a weight; in a .state file, an optimizer moment) is not a finite "
                          "number; the file was left as it was", path, i);
    char tmp[4096];
    path_printf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return report("%s: cannot open for writing: %s", tmp, strerror(errno));
    int ok = fwrite(header, sizeof(int32_t), HEADER_INTS, f) == HEADER_INTS;
    ok = ok && fwrite(data, sizeof(float), n, f) == n;
    ok = (fflush(f) == 0) && ok;
    ok = (fclose(f) == 0) && ok;
    if (!ok) {
        report("%s: write failed (disk full?): %s; %s was left as it was", tmp, strerror(errno), path);
        remove(tmp);
    }
    return ok ? 0 : -1;
}

static int commit_file(const char *path) {
    char tmp[4096];
    path_printf(tmp, sizeof(tmp), "%s.tmp", path);
    if (rename(tmp, path) != 0) {
        report("%s: cannot rename to %s: %s", tmp, path, strerror(errno));
        remove(tmp);
        return -1;
    }
    return 0;
}

static int write_file_atomic(const char *path, const int32_t *header, const float *data, size_t n) {
    return write_file_temp(path, header, data, n) || commit_file(path) ? -1 : 0;
}

/* The length of an open file, by seeking to its end. One byte is read first, so that a
   directory or an unreadable file fails here with the system's reason. */
static int file_length(FILE *f, const char *path, long *bytes) {
    if (getc(f) == EOF && ferror(f)) return report("%s: cannot read: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0 || (*bytes = ftell(f)) < 0) return report("%s: cannot seek", path);
    rewind(f);
    return 0;
}

/* Reads the header of a checkpoint file and its length; the caller checks the header, then
   read_floats_after_header checks the length is exactly 4 * (HEADER_INTS + floats) and reads. */
static int read_header(const char *path, int32_t *header, long *file_bytes) {
    if (!host_is_little_endian()) return report("%s: this program reads little-endian files only", path);
    FILE *f = fopen(path, "rb");
    if (!f) return report("%s: cannot open: %s", path, strerror(errno));
    if (file_length(f, path, file_bytes) != 0) { fclose(f); return -1; }
    size_t got = fread(header, sizeof(int32_t), HEADER_INTS, f);
    fclose(f);
    if (got != HEADER_INTS) return report("%s: too short for a checkpoint header (%ld bytes, need %d)", path, *file_bytes, HEADER_INTS * 4);
    return 0;
}

/* The file must hold exactly the header and n floats: checked before anything is allocated. */
static int check_file_length(const char *path, uint64_t n, long file_bytes) {
    uint64_t expect = (uint64_t)HEADER_INTS * 4 + n * 4;
    if ((uint64_t)file_bytes != expect)
        return report("%s: file is %ld bytes but its header describes %llu (%llu parameters): truncated or not this format",
                      path, file_bytes, (unsigned long long)expect, (unsigned long long)n);
    return 0;
}

static int read_floats_after_header(const char *path, float *data, size_t n, long file_bytes) {
    long long expect = (long long)HEADER_INTS * 4 + (long long)n * 4;
    if ((long long)file_bytes != expect)
        return report("%s: file is %ld bytes but its header describes %lld (%zu parameters): truncated or not this format",
                      path, file_bytes, expect, n);
    FILE *f = fopen(path, "rb");
    if (!f) return report("%s: cannot open: %s", path, strerror(errno));
    if (fseek(f, HEADER_INTS * 4, SEEK_SET) != 0) {
        fclose(f);
        return report("%s: cannot seek past the header", path);
    }
    size_t got = fread(data, sizeof(float), n, f);
    fclose(f);
    if (got != n) return report("%s: short read (%zu of %zu floats)", path, got, n);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(data[i])) return report("%s: parameter %zu is not a finite number", path, i);
    return 0;
}

/* A configuration is sane when every size is in range and the products cannot overflow. */
static int deit_config_check(const DeiTConfig *c, const char *what) {
    if (c->img_size < 1 || c->img_size > 4096) return report("%s: img_size %d out of range [1, 4096]", what, c->img_size);
    if (c->patch_size < 1 || c->patch_size > c->img_size) return report("%s: patch_size %d out of range [1, img_size]", what, c->patch_size);
    if (c->img_size % c->patch_size) return report("%s: img_size %d is not divisible by patch_size %d", what, c->img_size, c->patch_size);
    if (c->in_chans < 1 || c->in_chans > 64) return report("%s: in_chans %d out of range [1, 64]", what, c->in_chans);
    if (c->num_classes < 2 || c->num_classes > 100000) return report("%s: num_classes %d out of range [2, 100000]", what, c->num_classes);
    if (c->dim < 1 || c->dim > 16384) return report("%s: dim %d out of range [1, 16384]", what, c->dim);
    if (c->depth < 1 || c->depth > 1000) return report("%s: depth %d out of range [1, 1000]", what, c->depth);
    if (c->heads < 1 || c->heads > c->dim || c->dim % c->heads) return report("%s: dim %d is not divisible by heads %d", what, c->dim, c->heads);
    if (c->mlp_hidden < 1 || c->mlp_hidden > 65536) return report("%s: mlp_hidden %d out of range [1, 65536]", what, c->mlp_hidden);
    if (c->dist_token != 0 && c->dist_token != 1) return report("%s: dist_token must be 0 or 1, not %d", what, c->dist_token);
    int g = c->img_size / c->patch_size;
    if ((long long)g * g > 65536) return report("%s: %d patches is too many", what, g * g);
    if ((long long)c->in_chans * c->patch_size * c->patch_size > (1 << 24)) return report("%s: patch too large", what);
    return 0;
}


static int deit_config_from_header(DeiTConfig *c, const int32_t *h, const char *path) {
    if (h[0] != DEIT_MAGIC) return report("%s: not a deit.c student checkpoint (magic %d, expected %d)", path, h[0], DEIT_MAGIC);
    if (h[1] != DEIT_VERSION) return report("%s: checkpoint version %d, this program reads version %d", path, h[1], DEIT_VERSION);
    c->img_size = h[2];
    c->patch_size = h[3];
    c->in_chans = h[4];
    c->num_classes = h[5];
    c->dim = h[6];
    c->depth = h[7];
    c->heads = h[8];
    c->mlp_hidden = h[9];
    c->dist_token = h[10];
    for (int i = 11; i < HEADER_INTS; i++)
        if (h[i] != 0) return report("%s: header entry %d is %d; entries after 10 are reserved and must be 0", path, i, h[i]);
    return deit_config_check(c, path);
}

static int teacher_config_check(const TeacherConfig *c, const char *what) {
    if (c->arch != ARCH_RESNET && c->arch != ARCH_AIRBENCH) return report("%s: architecture %d unknown (0 ResNet, 1 airbench)", what, c->arch);
    if (c->arch == ARCH_AIRBENCH && (c->img_size != 32 || c->stages != 3 || c->blocks != 1))
        return report("%s: airbench takes 32x32 images, 3 stages of 1 block (not %d, %d, %d)", what, c->img_size, c->stages, c->blocks);
    if (c->img_size < 1 || c->img_size > 4096) return report("%s: img_size %d out of range [1, 4096]", what, c->img_size);
    if (c->in_chans < 1 || c->in_chans > 64) return report("%s: in_chans %d out of range [1, 64]", what, c->in_chans);
    if (c->num_classes < 2 || c->num_classes > 100000) return report("%s: num_classes %d out of range [2, 100000]", what, c->num_classes);
    if (c->stages < 1 || c->stages > TEACHER_MAX_STAGES) return report("%s: stages %d out of range [1, %d]", what, c->stages, TEACHER_MAX_STAGES);
    if (c->blocks < 1 || c->blocks > 200) return report("%s: blocks per stage %d out of range [1, 200]", what, c->blocks);
    for (int s = 0; s < c->stages; s++)
        if (c->widths[s] < 1 || c->widths[s] > 4096) return report("%s: width of stage %d is %d, out of range [1, 4096]", what, s + 1, c->widths[s]);
    return 0;
}


static int teacher_config_from_header(TeacherConfig *c, const int32_t *h, const char *path) {
    if (h[0] != TEACHER_MAGIC) return report("%s: not a deit.c teacher checkpoint (magic %d, expected %d)", path, h[0], TEACHER_MAGIC);
    if (h[1] != TEACHER_VERSION && h[1] != TEACHER_VERSION_ARCH)
        return report("%s: teacher checkpoint version %d, this program reads versions %d and %d", path, h[1], TEACHER_VERSION,
                      TEACHER_VERSION_ARCH);
    memset(c, 0, sizeof(*c));
    c->arch = h[1] == TEACHER_VERSION_ARCH ? h[15] : ARCH_RESNET;
    c->img_size = h[2];
    c->in_chans = h[3];
    c->num_classes = h[4];
    c->stages = h[5];
    c->blocks = h[6];
    if (c->stages < 1 || c->stages > TEACHER_MAX_STAGES) return report("%s: stages %d out of range [1, %d]", path, c->stages, TEACHER_MAX_STAGES);
    for (int s = 0; s < c->stages; s++) c->widths[s] = h[7 + s];
    for (int i = 7 + c->stages; i < HEADER_INTS; i++)
        if (h[i] != 0 && !(i == 15 && h[1] == TEACHER_VERSION_ARCH))
            return report("%s: header entry %d is %d; entries after the widths are reserved and must be 0", path, i, h[i]);
    return teacher_config_check(c, path);
}

/* The parameter count of a teacher configuration, without building it (same walk as teacher_build). */
static uint64_t teacher_count_params(const TeacherConfig *c) {
    if (c->arch == ARCH_AIRBENCH) { /* as airbench_build */
        uint64_t K = 4ull * c->in_chans, cin = 2 * K, n = 2 * K * K + 2 * K;
        for (int s = 0; s < 3; s++) {
            uint64_t w = (uint64_t)c->widths[s];
            n += cin * 9 * w + 4 * w + w * 9 * w + 4 * w;
            cin = w;
        }
        return n + (uint64_t)c->num_classes * cin;
    }
    uint64_t n = (uint64_t)c->in_chans * 9 * c->widths[0] + 4ull * c->widths[0];
    uint64_t cin = (uint64_t)c->widths[0];
    for (int s = 0; s < c->stages; s++)
        for (int b = 0; b < c->blocks; b++) {
            uint64_t cout = (uint64_t)c->widths[s];
            int stride = (s > 0 && b == 0) ? 2 : 1;
            n += cin * 9 * cout + 4 * cout + cout * 9 * cout + 4 * cout;
            if (stride != 1 || cin != cout) n += cin * cout + 4 * cout;
            cin = cout;
        }
    return n + (uint64_t)c->num_classes * cin + (uint64_t)c->num_classes;
}

/* The values of a loaded teacher that no header check can see: a negative running variance
   would make every output NaN. */
static int teacher_check_loaded(const Teacher *t, const char *path) {
    for (int i = 0; i < t->num_tensors; i++) {
        const TensorInfo *ti = &t->tensors[i];
        if (strcmp(ti->name, "bn_running_var") != 0) continue;
        for (size_t j = 0; j < ti->size; j++)
            if (t->params_memory[ti->offset + j] < 0.0f)
                return report("%s: tensor %d (bn_running_var) holds %g: a variance cannot be negative; corrupt file", path, i,
                              (double)t->params_memory[ti->offset + j]);
    }
    return 0;
}

/* ============================================================================================
 * III.2 The training state: what --resume needs besides the model file
 * ========================================================================================== */

/* FILE.state: 256 int32 header ([0] magic, [1] version, [2] net kind, [3] epochs done,
   [4,5] optimizer step (lo, hi), [6,7] drop-path rng (lo, hi), [8,9] parameter count,
   [10] optimizer, [11,12] seed, [13] total epochs, [14] batch, [15] train limit,
   [16] elapsed seconds, [17] steps done in the current epoch (0 at an epoch boundary; a run
   stopped by --steps continues mid-epoch), [18,19] a hash of the model's weights (so a state
   is never paired with another checkpoint), [20,21] a hash of the settings that change what an
   epoch computes (run_settings_hash), [22,23] a hash of the training set (labels and pixels),
   [24,25] a hash of the teacher's weights (0 without a teacher), [26] 1 when Lookahead's slow
   weights follow (--lookahead));
   then the optimizer moments m and v and, with [26] = 1, the slow weights (float32, 2 or 3 x
   parameter count). A state written before a hash existed has 0 there, and that check is skipped. */
/* (RunState, the numbers of this header, is declared with the training loop in Part I.) */

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001B3ull;
    return h;
}

/* Every setting that changes what an epoch computes (not --out, --log, --steps, --threads). */
static uint64_t run_settings_hash(const TrainConfig *c, const Net *net) {
    char s[1024];
    const AugConfig *a = &c->aug;
    int len = snprintf(s, sizeof(s), "%d %d %d %d %a %a %a %a %a %a %d %d %d %d %d %a %a %a %a %a %d %a %a %a %d %llu",
                       c->epochs, c->batch, c->train_limit, c->shuffle, c->lr, c->min_lr, c->warmup_lr, c->warmup_epochs,
                       c->weight_decay, c->momentum, c->nesterov, c->opt, c->sched, a->crop_flip, a->randaug_ops, a->randaug_mag,
                       a->erase_prob, a->mixup_alpha, a->cutmix_alpha, a->label_smoothing, c->kd.type, c->kd.alpha, c->kd.tau,
                       net->kind == NET_DEIT ? net->deit.drop_path : 0.0f, net_img_size(net), (unsigned long long)c->seed);
    if (a->translate || a->alternate_flip || c->lookahead || c->teacher_tta) /* settings added later: only when used, so */
        len += snprintf(s + len, sizeof(s) - (size_t)len, " %d %d %d %d", /* that older states keep their hash */
                        a->translate, a->alternate_flip, c->lookahead, c->teacher_tta);
    return fnv1a(0xCBF29CE484222325ull, s, (size_t)len);
}

static uint64_t params_hash(Net *net) {
    return fnv1a(0xCBF29CE484222325ull, net_params(net), sizeof(float) * net_num_params(net));
}

/* The training set a run learns from: another directory, or CIFAR-100 in place of CIFAR-10, is
   another run, even with the same flags. (About 0.2 s for the 150 MB of CIFAR-10, once.) */
static uint64_t dataset_hash(const Dataset *d) {
    uint64_t h = fnv1a(0xCBF29CE484222325ull, d->labels, (size_t)d->n);
    return fnv1a(h, d->images, (size_t)d->n * CIFAR_PIXELS);
}

static void put_u64(int32_t *h, int i, uint64_t v) { h[i] = (int32_t)(uint32_t)(v & 0xFFFFFFFF), h[i + 1] = (int32_t)(uint32_t)(v >> 32); }
static uint64_t u64_from(const int32_t *h, int i) { return (uint64_t)(uint32_t)h[i] | ((uint64_t)(uint32_t)h[i + 1] << 32); }

/* Writes path.tmp, and renames it over path when rename_now is 1 (run_save renames it itself,
   once the checkpoint it belongs to is in place). */
static int state_write(const char *path, Net *net, const Optimizer *o, const RunState *s, const TrainConfig *c,
                       int rename_now) {
    int32_t h[HEADER_INTS] = {0};
    h[0] = STATE_MAGIC, h[1] = STATE_VERSION, h[2] = net->kind, h[3] = s->epochs_done;
    put_u64(h, 4, (uint64_t)s->step), put_u64(h, 6, s->rng), put_u64(h, 8, net_num_params(net));
    h[10] = o->type, put_u64(h, 11, c->seed);
    h[13] = c->epochs, h[14] = c->batch, h[15] = c->train_limit, h[16] = (int32_t)s->elapsed, h[17] = s->step_in_epoch;
    put_u64(h, 18, params_hash(net)), put_u64(h, 20, run_settings_hash(c, net));
    put_u64(h, 22, s->data_hash), put_u64(h, 24, s->teacher_hash);
    h[26] = o->slow != NULL;
    size_t n = (o->slow ? 3 : 2) * o->n; /* m, v (and slow) are one block */
    return rename_now ? write_file_atomic(path, h, o->m, n) : write_file_temp(path, h, o->m, n);
}

/* The header of a state file and whether the file is whole (as long as its header says), or
   -1 without a word: for finish_interrupted_save, which only looks. */
static int state_header_quiet(const char *path, int32_t *h) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    long bytes = -1;
    int got = fread(h, sizeof(int32_t), HEADER_INTS, f) == HEADER_INTS;
    if (got && fseek(f, 0, SEEK_END) == 0) bytes = ftell(f);
    fclose(f);
    if (!got) return -1;
    uint64_t n = u64_from(h, 8), expect = (uint64_t)HEADER_INTS * 4 + (h[26] ? 3 : 2) * n * 4;
    return h[0] == STATE_MAGIC && bytes >= 0 && (uint64_t)bytes == expect ? 0 : -1;
}

/* A checkpoint and its state are saved as a pair (run_save): FILE.state.tmp is written, then
   FILE replaced, then FILE.state. A run killed between the two renames leaves FILE one save
   ahead of FILE.state, and the state that belongs to FILE whole in FILE.state.tmp. --resume
   finishes that save before it reads the state: FILE.state.tmp replaces FILE.state when it
   belongs to FILE's weights (the hash in its header) and FILE.state does not. */
static void finish_interrupted_save(const char *state_path, Net *net) {
    char tmp[4096];
    int32_t h_tmp[HEADER_INTS], h_old[HEADER_INTS];
    path_printf(tmp, sizeof(tmp), "%s.tmp", state_path);
    uint64_t weights = params_hash(net);
    if (state_header_quiet(tmp, h_tmp) || u64_from(h_tmp, 18) != weights) return;
    if (state_header_quiet(state_path, h_old) == 0 && u64_from(h_old, 18) == weights) return;
    if (rename(tmp, state_path) == 0)
        fprintf(stderr, "deit: %s: the last save stopped between the checkpoint and its state; finished it from %s\n",
                state_path, tmp);
}

static int state_load(const char *path, Net *net, Optimizer *o, RunState *s, const TrainConfig *c, int steps_per_epoch) {
    int32_t h[HEADER_INTS];
    long bytes = 0;
    if (read_header(path, h, &bytes)) return -1;
    if (h[0] != STATE_MAGIC) return report("%s: not a deit.c training-state file (magic %d)", path, h[0]);
    if (h[1] != STATE_VERSION) return report("%s: training-state version %d, expected %d", path, h[1], STATE_VERSION);
    if (h[2] != (int)net->kind || u64_from(h, 8) != net_num_params(net))
        return report("%s: training state belongs to a different model than the checkpoint", path);
    if (h[10] != (int)o->type) return report("%s: saved with --opt %s", path, h[10] == OPT_SGD ? "sgd" : "adamw");
    if (h[13] != c->epochs && u64_from(h, 11) == c->seed && h[14] == c->batch && h[15] == c->train_limit)
        return report("%s: saved by a run of --epochs %d, not %d: its schedule was planned for %d epochs, so --resume "
                      "continues only that; to train on from its weights, start a new run with --init (and --out another file)",
                      path, h[13], c->epochs, h[13]);
    if (u64_from(h, 11) != c->seed || h[13] != c->epochs || h[14] != c->batch || h[15] != c->train_limit)
        return report("%s: saved by a run with --seed %llu --epochs %d --batch %d --train-limit %d; resume with the same flags",
                      path, (unsigned long long)u64_from(h, 11), h[13], h[14], h[15]);
    if (u64_from(h, 18) == 0 && u64_from(h, 20) == 0) { /* written before the hashes existed: cannot be verified */
        fprintf(stderr, "deit: warning: %s has no settings/weights hashes (an older deit.c wrote it); not verified\n", path);
    } else {
        if (u64_from(h, 20) != run_settings_hash(c, net))
            return report("%s: saved by a run with other training settings (lr, schedule, augmentation, distillation, drop path, "
                          "image size...); resume with the same flags", path);
        if (u64_from(h, 18) != params_hash(net))
            return report("%s: does not belong to the weights in the checkpoint (written at another step?)", path);
    }
    if (u64_from(h, 22) != 0 && u64_from(h, 22) != s->data_hash)
        return report("%s: saved by a run on other training data (another --data directory?); resume with the same data", path);
    if (u64_from(h, 24) != 0 && u64_from(h, 24) != s->teacher_hash)
        return report("%s: saved by a run distilled from another teacher; resume with the same --teacher", path);
    long step = (long)u64_from(h, 4);
    if (h[3] < 0 || h[3] > c->epochs || h[17] < 0 || h[17] >= steps_per_epoch ||
        step != (long)h[3] * steps_per_epoch + h[17])
        return report("%s: epochs done %d, step %ld and step in epoch %d are inconsistent", path, h[3], step, h[17]);
    if (h[16] < 0) return report("%s: negative training time %d s: corrupt", path, h[16]);
    if (net->kind == NET_DEIT && u64_from(h, 6) == 0) /* xorshift stays 0 from 0: drop path would stop */
        return report("%s: drop-path random state is 0: corrupt", path);
    if (h[26] != (o->slow != NULL))
        return report("%s: saved by a run %s --lookahead; resume with the same flags", path, h[26] ? "with" : "without");
    for (int i = 27; i < HEADER_INTS; i++)
        if (h[i] != 0) return report("%s: header entry %d is %d, expected 0 (reserved): corrupt or a newer format", path, i, h[i]);
    s->epochs_done = h[3];
    s->step_in_epoch = h[17];
    s->step = step;
    s->rng = u64_from(h, 6);
    s->elapsed = h[16];
    if (read_floats_after_header(path, o->m, (o->slow ? 3 : 2) * o->n, bytes)) return -1;
    if (o->type == OPT_ADAMW) /* v is a running mean of squares */
        for (size_t i = 0; i < o->n; i++)
            if (o->v[i] < 0.0f) return report("%s: AdamW second moment %zu is negative (%g): corrupt", path, i, o->v[i]);
    return 0;
}

/* ============================================================================================
 * III.3 The training run's bookkeeping: train()'s hooks
 * ========================================================================================== */

static int all_finite(const float *x, size_t n) {
    int ok = 1;
    for (size_t i = 0; i < n; i++) ok &= isfinite(x[i]) != 0;
    return ok;
}

/* Progress on one line. */
/* Without POSIX isatty(): stderr is taken to be a terminal when it cannot be positioned
   (ftell fails) and TERM names one; redirected to a file it gets plain lines. A pipe cannot be
   told from a terminal this way: DEIT_PROGRESS=lines (or inline) overrides the guess. */
static int stderr_is_terminal(void) {
    const char *term = getenv("TERM");
    const char *mode = getenv("DEIT_PROGRESS");
    if (mode) return !strcmp(mode, "inline");
    return ftell(stderr) < 0 && term && *term && strcmp(term, "dumb");
}

/* The test pass (evaluate): images done so far, on one line at a terminal, else a line every 30
   seconds; a pass that ends within 3 seconds prints nothing. done = 0 starts a pass. */
static void test_progress(int done, int total) {
    static double start, last;
    static int printed, inline_mode;
    double t = now_seconds();
    if (done == 0) {
        start = last = t, printed = 0, inline_mode = stderr_is_terminal();
        return;
    }
    if (t - start < 3.0 || (!inline_mode && t - last < 30.0 && done < total) || (done == total && !printed)) return;
    fprintf(stderr, "%stesting: %d of %d images, %.0f img/s%s", inline_mode ? "\r" : "", done, total, done / (t - start),
            inline_mode && done < total ? "   " : "\n");
    last = t, printed = 1;
}

/* Ctrl-C (SIGINT) or SIGTERM: the step in progress finishes, the checkpoint and its state are
   written (mid-epoch), and the run stops with a non-zero exit status. A second one kills. */
static volatile sig_atomic_t stop_signal = 0;
static void on_stop_signal(int sig) {
    stop_signal = sig;
    signal(sig, SIG_DFL);
}

/* The gradients of one step, as train() computes them: zero, loss, backward (after a training
   forward). For bench, debug-state and the tests. */
static LossParts net_loss_backward(Net *net, const float *targets, const float *teacher_logits, const Distillation *kd, int B) {
    net_zero_grad(net);
    LossParts loss = deit_loss(net_heads(net), targets, teacher_logits, kd, B, net_num_classes(net));
    net_backward(net, B);
    return loss;
}

static void run_free(Run *r) {
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (r->log) fclose(r->log);
    free(r->images), free(r->targets), free(r->labels), free(r->order), free(r->pool), free(r->teacher_images);
    free(r->tta_images), free(r->tta_logits);
    free(r->params_before_step);
    optimizer_free(&r->opt);
    dataset_free(&r->train_set), dataset_free(&r->test_set);
}

/* Everything before the first step: the output is writable, the data loads and fits the
   networks, the optimizer exists, a --resume run has its state back, the log is open. */
static int record_run_flags(const struct Options *o, const char *out, int is_teacher); /* III.5 */

static int run_begin(Run *r, Net *net, Net *teacher, const TrainConfig *cfg) {
    memset(r, 0, sizeof(*r));
    r->cfg = cfg, r->net = net, r->teacher = teacher;
    if (check_writable(cfg->out)) return report("cannot write the checkpoint %s", cfg->out);
    if (dataset_load(&r->train_set, cfg->data_dir, 1)) return -1;
    if (dataset_load(&r->test_set, cfg->data_dir, 0)) { dataset_free(&r->train_set); return -1; }
    int C = r->train_set.num_classes, B = cfg->batch;
    if (net_fits_data(net, &r->train_set, "the model") || (teacher && net_fits_data(teacher, &r->train_set, "the teacher"))) {
        run_free(r);
        return -1;
    }
    r->pool = xmalloc(sizeof(int) * r->train_set.n), r->n_train = r->train_set.n;
    if (cfg->train_limit > 0) {
        if (cfg->train_limit > r->train_set.n) die("--train-limit %d is more than the %d training images", cfg->train_limit, r->train_set.n);
        r->n_train = balanced_subset(r->pool, &r->train_set, cfg->train_limit);
    } else {
        for (int i = 0; i < r->n_train; i++) r->pool[i] = i;
    }
    r->steps_per_epoch = r->n_train / B;
    if (r->steps_per_epoch < 1) die("batch %d is larger than the %d training images", B, r->n_train);
    if (cfg->record_flags && record_run_flags(cfg->record_flags, cfg->out, net->kind == NET_CNN)) { /* checked: now recorded */
        run_free(r);
        return -1;
    }
    r->total_steps = (long)cfg->epochs * r->steps_per_epoch;
    r->warmup_steps = (long)(cfg->warmup_epochs * r->steps_per_epoch);
    optimizer_init(&r->opt, cfg->opt, net_num_params(net), cfg->weight_decay, cfg->momentum, cfg->nesterov, cfg->lookahead);
    if (r->opt.slow) memcpy(r->opt.slow, net_params(net), sizeof(float) * net_num_params(net)); /* (a resumed run loads it) */
    r->state = (RunState){0, 0, 0, 0, 0.0, dataset_hash(&r->train_set), teacher ? params_hash(teacher) : 0};
    path_printf(r->state_path, sizeof(r->state_path), "%s.state", cfg->out);
    if (cfg->resume) {
        char resume_state[4096];
        path_printf(resume_state, sizeof(resume_state), "%s.state", cfg->resume);
        finish_interrupted_save(resume_state, net);
        if (state_load(resume_state, net, &r->opt, &r->state, cfg, r->steps_per_epoch)) die("cannot resume from %s", cfg->resume);
        r->opt.step = r->state.step;
        if (net->kind == NET_DEIT) net->deit.rng.state = r->state.rng;
        if (r->state.epochs_done >= cfg->epochs || (cfg->max_steps > 0 && r->state.step >= cfg->max_steps)) {
            /* nothing to train: leave the checkpoint, its state and the log as they are */
            fprintf(stderr, "deit: %s is already at epoch %d of %d, step %ld%s: nothing to do\n", cfg->resume, r->state.epochs_done,
                    cfg->epochs, r->state.step, r->state.epochs_done >= cfg->epochs ? " (finished)" : " (--steps reached)");
            r->stop = r->nothing_to_do = 1;
            return 0;
        }
        fprintf(stderr, "deit: resuming %s after epoch %d (step %ld)\n", cfg->resume, r->state.epochs_done, r->state.step);
        if (r->state.step_in_epoch)
            fprintf(stderr, "deit: continuing epoch %d at its step %d\n", r->state.epochs_done + 1, r->state.step_in_epoch + 1);
    }
    if (cfg->log) {
        r->log = fopen(cfg->log, cfg->resume ? "a" : "w");
        if (!r->log) die("%s: cannot open log for writing: %s", cfg->log, strerror(errno));
        if (fseek(r->log, 0, SEEK_END) == 0 && ftell(r->log) == 0) /* a new file (also when resuming into a new --log) */
            fprintf(r->log, "epoch,step,lr,train_loss,test_acc,test_acc_cls,test_acc_dist,img_per_s,elapsed_s\n");
        fflush(r->log);
    }
    fprintf(stderr, "deit: training on %d %s images (%d steps of %d per epoch, %d epoch%s), testing on %d, %d thread%s, matmul %s\n",
            r->n_train, r->train_set.name, r->steps_per_epoch, B, cfg->epochs, cfg->epochs == 1 ? "" : "s", r->test_set.n,
            num_threads(), num_threads() == 1 ? "" : "s", matmul_name());
    int S = net_img_size(net), TS = teacher ? net_img_size(teacher) : S;
    r->images = xmalloc(sizeof(float) * (size_t)B * 3 * S * S), r->targets = xmalloc(sizeof(float) * (size_t)B * C);
    r->labels = xmalloc(sizeof(int) * B), r->order = xmalloc(sizeof(int) * r->n_train);
    /* A teacher trained at another resolution (a student fine-tuned at 48x48 from a 32x32 teacher)
       sees the same augmented batch resized back to its own size: a ResNet-20 trained on 32x32
       images has never seen objects 1.5x larger, and its labels on upsampled images are poor. */
    r->teacher_images = TS != S ? xmalloc(sizeof(float) * (size_t)B * 3 * TS * TS) : NULL;
    if (teacher && cfg->teacher_tta > 0) {
        r->tta_images = xmalloc(sizeof(float) * (size_t)B * 3 * TS * TS);
        r->tta_logits = xmalloc(sizeof(float) * (size_t)B * C);
    }
    r->inline_progress = stderr_is_terminal();
    /* --skip-nonfinite on a ResNet: its forward pass updates BatchNorm's running statistics,
       which live among the parameters, so a skipped step restores the parameters saved here
       (and again after every step). */
    if (cfg->skip_nonfinite && net->kind == NET_CNN) {
        r->params_before_step = xmalloc(sizeof(float) * net_num_params(net));
        memcpy(r->params_before_step, net_params(net), sizeof(float) * net_num_params(net));
    }
    net_alloc_activations(net, B); /* here, not in the first step, which would then look 7x slow */
    if (teacher) net_alloc_activations(teacher, B);
    r->epoch_start = r->last_save = now_seconds();
    stop_signal = 0;
    signal(SIGINT, on_stop_signal);
    signal(SIGTERM, on_stop_signal);
    return 0;
}

/* Counts a step (done or skipped); --steps reached stops the run. */
static void run_count_step(Run *r, int s) {
    r->state.step++;
    r->next_step = s + 1;
    if (r->cfg->max_steps > 0 && r->state.step >= r->cfg->max_steps) r->stop = 1;
}

/* After the backward pass: 0 if the step may go on to the optimizer. A non-finite teacher logit,
   loss or gradient stops the run, or with --skip-nonfinite skips the step (returns 1). */
static int run_step_check(Run *r, const float *teacher_logits, LossParts loss, int s) {
    const TrainConfig *cfg = r->cfg;
    Net *net = r->net;
    long step = r->state.step;
    int epoch = (int)(step / r->steps_per_epoch) + 1; /* for the messages */
    if (teacher_logits && !all_finite(teacher_logits, (size_t)cfg->batch * net_num_classes(r->teacher))) {
        report("%s: the teacher's logits are not finite (epoch %d, step %ld): its weights are unusable", cfg->teacher_path, epoch,
               step + 1);
        r->status = -1, r->stop = 1;
        return 1;
    }
    if (teacher_logits) { /* what distillation tells the student beyond the data: where the two disagree */
        int C = net_num_classes(r->teacher);
        for (int b = 0; b < cfg->batch; b++)
            r->teacher_agrees += argmax(teacher_logits + (size_t)b * C, C) == argmax(r->targets + (size_t)b * C, C);
        r->teacher_seen += cfg->batch;
    }
    const char *bad = !isfinite(loss.total) ? "loss" : (!all_finite(net_grads(net), net_num_params(net)) ? "gradient" : NULL);
    if (!bad) return 0;
    if (cfg->skip_nonfinite) {
        /* leave the weights as they are and go on; the step still counts (for the schedule,
           --steps, the optimizer's step count and --resume), only the update is left out */
        fprintf(stderr, "deit: warning: non-finite %s at epoch %d step %ld: step skipped (--skip-nonfinite)\n", bad, epoch,
                step + 1);
        if (r->params_before_step) memcpy(net_params(net), r->params_before_step, sizeof(float) * net_num_params(net));
        r->opt.step++;
        r->skipped++;
        run_count_step(r, s);
        return 1;
    }
    report("non-finite %s (loss %g) at epoch %d, step %ld: stopping; %s keeps the last good epoch "
           "(--skip-nonfinite 1 skips such steps)", bad, loss.total, epoch, step + 1, cfg->out);
    r->status = -1, r->stop = 1;
    return 1;
}

/* The checkpoint and its state, as a pair that a kill at any moment leaves usable: the state
   to FILE.state.tmp, FILE replaced, then FILE.state (finish_interrupted_save). */
static int run_save(Run *r, const RunState *st) {
    if (state_write(r->state_path, r->net, &r->opt, st, r->cfg, 0)) return -1;
    if (net_save(r->net, r->cfg->out)) return -1;
    return commit_file(r->state_path);
}

/* The checkpoint and its state inside an epoch, after step next_step - 1: --resume continues
   with step next_step of this epoch, exactly as if the run had not stopped. */
static int run_save_mid_epoch(Run *r, int epoch) {
    RunState st = r->state;
    st.epochs_done = epoch, st.step_in_epoch = r->next_step;
    st.rng = r->net->kind == NET_DEIT ? r->net->deit.rng.state : 0;
    st.elapsed += now_seconds() - r->epoch_start;
    if (run_save(r, &st)) return -1;
    r->last_save = now_seconds();
    return 0;
}

static void format_duration(char *buf, size_t size, double seconds) {
    long s = (long)(seconds + 0.5);
    if (s >= 3600) snprintf(buf, size, "%ldh%02ldm", s / 3600, s / 60 % 60);
    else if (s >= 60) snprintf(buf, size, "%ldm%02lds", s / 60, s % 60);
    else snprintf(buf, size, "%lds", s);
}

/* After the optimizer step: counters, a progress line (every 30 s, or inline on a terminal),
   the timed mid-epoch checkpoint (--save-every), and the stop on Ctrl-C / SIGTERM. */
static void run_step_done(Run *r, int epoch, int s, LossParts loss, float lr) {
    const TrainConfig *cfg = r->cfg;
    run_count_step(r, s);
    r->steps_done++;
    r->loss_sum += loss.total;
    r->lr = lr;
    if (r->params_before_step) memcpy(r->params_before_step, net_params(r->net), sizeof(float) * net_num_params(r->net));
    double dt = now_seconds() - r->epoch_start;
    if (r->inline_progress || dt - r->last_print > 30.0 || s + 1 == r->steps_per_epoch) {
        double ips = (double)r->steps_done * cfg->batch / dt, eta = (r->steps_per_epoch - s - 1) * cfg->batch / ips;
        char epoch_eta[32], run_eta[32];
        format_duration(epoch_eta, sizeof(epoch_eta), eta);
        format_duration(run_eta, sizeof(run_eta), (double)(r->total_steps - r->state.step) * cfg->batch / ips);
        fprintf(stderr, "%sepoch %d/%d step %d/%d loss %.4f lr %.2e %.1f img/s eta %s (run %s, tests not counted)%s",
                r->inline_progress ? "\r" : "", epoch + 1, cfg->epochs, s + 1, r->steps_per_epoch, r->loss_sum / r->steps_done,
                lr, ips, epoch_eta, run_eta, r->inline_progress ? "   " : "\n");
        r->last_print = dt;
    }
    int mid_epoch = r->next_step < r->steps_per_epoch && !r->stop; /* else run_epoch_done saves */
    if (mid_epoch && (stop_signal || (cfg->save_every > 0 && now_seconds() - r->last_save >= 60.0 * cfg->save_every)) &&
        run_save_mid_epoch(r, epoch)) {
        r->status = -1, r->stop = 1;
        return;
    }
    if (stop_signal) {
        if (r->inline_progress) fprintf(stderr, "\n");
        fprintf(stderr, "deit: stopped by %s %s step %d of epoch %d; wrote %s and its .state: the same command with "
                        "--resume %s continues from here\n", stop_signal == SIGINT ? "Ctrl-C (SIGINT)" : "SIGTERM",
                mid_epoch ? "after" : "at the end of, after", s + 1, epoch + 1, cfg->out, cfg->out);
        r->stop = 1, r->signalled = 1;
    }
}

/* After an epoch (or the part of it that --steps allowed): the test, the log line, the
   checkpoint and its state. Then the counters start again for the next epoch. */
static void run_epoch_done(Run *r, int epoch) {
    const TrainConfig *cfg = r->cfg;
    Net *net = r->net;
    if (r->inline_progress && !r->signalled) fprintf(stderr, "\n");
    if (r->status || (r->signalled && r->next_step < r->steps_per_epoch)) return; /* (a stop mid-epoch has saved) */
    double train_time = now_seconds() - r->epoch_start;
    r->state.elapsed += train_time;
    int stopped_early = r->stop && r->next_step < r->steps_per_epoch; /* --steps ended the run inside this epoch */
    int last = epoch + 1 == cfg->epochs || r->stop;
    int every = cfg->eval_every > 0 ? cfg->eval_every : 1, test_now = last || (epoch + 1) % every == 0;
    EvalResult er = {0};
    if (test_now) evaluate(net, &r->test_set, cfg->batch, 0, &er, NULL);
    double acc = test_now ? 100.0 * er.correct[HEAD_MEAN] / er.n : 0.0;
    double acc_cls = test_now ? 100.0 * er.correct[HEAD_CLS] / er.n : 0.0;
    double acc_dist = test_now ? 100.0 * er.correct[HEAD_DIST] / er.n : 0.0;
    double ips = r->steps_done ? r->steps_done * (double)cfg->batch / train_time : 0.0;
    double loss = r->steps_done ? r->loss_sum / r->steps_done : 0.0;
    if (!test_now)
        fprintf(stderr, "epoch %d: train loss %.4f, %.1f img/s (next test after epoch %d)\n", epoch + 1, loss, ips,
                (epoch / every + 1) * every);
    else if (net_has_dist(net))
        fprintf(stderr, "epoch %d: train loss %.4f, test acc %.2f%% (class head %.2f%%, distillation head %.2f%%), %.1f img/s\n",
                epoch + 1, loss, acc, acc_cls, acc_dist, ips);
    else
        fprintf(stderr, "epoch %d: train loss %.4f, test acc %.2f%%, %.1f img/s\n", epoch + 1, loss, acc, ips);
    free(er.confusion);
    if (r->log) { /* the test columns stay empty in epochs without a test (--eval-every) */
        fprintf(r->log, "%d,%ld,%.6g,%.6f,", epoch + 1, r->state.step, r->lr, loss);
        if (test_now) fprintf(r->log, "%.2f,%.2f,", acc, acc_cls);
        else fprintf(r->log, ",,");
        if (test_now && net_has_dist(net)) fprintf(r->log, "%.2f", acc_dist);
        fprintf(r->log, ",%.2f,%.1f\n", ips, r->state.elapsed);
        if (fflush(r->log) != 0 || ferror(r->log)) {
            report("%s: cannot write the log (disk full?); stopping, the checkpoint keeps the previous epoch", cfg->log);
            r->status = -1, r->stop = 1;
            return;
        }
    }
    r->state.epochs_done = stopped_early ? epoch : epoch + 1;
    r->state.step_in_epoch = stopped_early ? r->next_step : 0;
    r->state.rng = net->kind == NET_DEIT ? net->deit.rng.state : 0;
    if (run_save(r, &r->state)) { r->status = -1, r->stop = 1; return; }
    if (stopped_early && !r->signalled)
        fprintf(stderr, "deit: stopped after %ld steps (--steps); wrote %s (--resume continues from here)\n", r->state.step, cfg->out);
    r->steps_done = 0, r->loss_sum = 0.0, r->last_print = 0.0, r->lr = 0.0f;
    r->epoch_start = now_seconds();
}

static int run_end(Run *r) {
    if (r->status == 0 && !r->nothing_to_do && !r->signalled)
        fprintf(stderr, "deit: wrote %s (%.0f s of training)\n", r->cfg->out, r->state.elapsed);
    if (r->signalled && r->status == 0) r->status = -1; /* stopped by a signal: the run is not finished */
    if (r->skipped) fprintf(stderr, "deit: %ld step(s) skipped for non-finite values\n", r->skipped);
    if (r->teacher_seen)
        fprintf(stderr, "deit: the teacher's top class was the target's top class on %.2f%% of the %ld training images of this process\n",
                100.0 * r->teacher_agrees / r->teacher_seen, r->teacher_seen);
    int status = r->status;
    run_free(r);
    return status;
}

/* ============================================================================================
 * III.4 Looking inside: the paper's analyses (Sec. 4 token similarity, Table 4 disagreement,
 *     attention maps)
 * ========================================================================================== */

static double cosine(const float *a, const float *b, int n) {
    double ab = 0.0, aa = 0.0, bb = 0.0;
    for (int i = 0; i < n; i++) ab += (double)a[i] * b[i], aa += (double)a[i] * a[i], bb += (double)b[i] * b[i];
    return (aa > 0 && bb > 0) ? ab / sqrt(aa * bb) : 0.0;
}

/* Fraction of the n predictions on which a and b differ. */
static double disagreement(const int *a, const int *b, int n) {
    int diff = 0;
    for (int i = 0; i < n; i++) diff += a[i] != b[i];
    return n ? (double)diff / n : 0.0;
}

/* Attention rollout (Abnar & Zuidema 2020): per layer the heads' average attention plus the
   identity for the residual, rows renormalised, multiplied through the layers:
     R = A'_{L-1} ... A'_1 A'_0,   A'_l = normalize_rows(0.5 mean_h(att_l) + 0.5 I)
   att is (L, NH, T, T) for one image; rollout (T, T) rows are distributions over the inputs.
   The model's last layer writes only the rows of the heads' tokens (deit_tokens_out), and row i
   of the product depends only on row i of the last A': the rows read (0 and 1) are exact. */
static void attention_rollout(float *rollout, const float *att, int L, int NH, int T) {
    double *r = xcalloc((size_t)T * T, sizeof(double)), *a = xmalloc(sizeof(double) * T * T), *tmp = xmalloc(sizeof(double) * T * T);
    for (int i = 0; i < T; i++) r[(size_t)i * T + i] = 1.0;
    for (int l = 0; l < L; l++) {
        for (int i = 0; i < T; i++) {
            double sum = 0.0;
            for (int j = 0; j < T; j++) {
                double v = 0.0;
                for (int h = 0; h < NH; h++) v += att[(((size_t)l * NH + h) * T + i) * T + j];
                v = 0.5 * v / NH + (i == j ? 0.5 : 0.0);
                a[(size_t)i * T + j] = v;
                sum += v;
            }
            for (int j = 0; j < T; j++) a[(size_t)i * T + j] /= sum;
        }
        for (int i = 0; i < T; i++) /* tmp = a r */
            for (int j = 0; j < T; j++) {
                double s = 0.0;
                for (int k = 0; k < T; k++) s += a[(size_t)i * T + k] * r[(size_t)k * T + j];
                tmp[(size_t)i * T + j] = s;
            }
        memcpy(r, tmp, sizeof(double) * T * T);
    }
    for (size_t i = 0; i < (size_t)T * T; i++) rollout[i] = (float)r[i];
    free(r), free(a), free(tmp);
}

/* ---- A PNG writer without a library: the pixels go into "stored" (uncompressed) deflate
   blocks inside a zlib stream; the file is the signature and three chunks (IHDR, IDAT, IEND),
   each with a CRC-32, the zlib stream ending in an Adler-32 of the raw data. ---------------- */
static uint32_t crc32_update(uint32_t crc, const unsigned char *p, size_t n) {
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static void put_u32_be(unsigned char *p, uint32_t v) { p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16), p[2] = (unsigned char)(v >> 8), p[3] = (unsigned char)v; }

static int png_chunk(FILE *f, const char *type, const unsigned char *data, size_t n) {
    unsigned char len[4], crc[4];
    put_u32_be(len, (uint32_t)n);
    uint32_t c = crc32_update(0, (const unsigned char *)type, 4);
    c = crc32_update(c, data, n);
    put_u32_be(crc, c);
    return fwrite(len, 1, 4, f) == 4 && fwrite(type, 1, 4, f) == 4 && (n == 0 || fwrite(data, 1, n, f) == n) && fwrite(crc, 1, 4, f) == 4;
}

/* rgb: (h, w, 3) bytes, row-major. Returns 0 or -1 after printing why not. */
static int write_png(const char *path, const unsigned char *rgb, int w, int h) {
    size_t row = (size_t)w * 3 + 1, raw_n = row * h; /* each row starts with filter byte 0 */
    unsigned char *raw = xmalloc(raw_n);
    for (int y = 0; y < h; y++) raw[y * row] = 0, memcpy(raw + y * row + 1, rgb + (size_t)y * w * 3, (size_t)w * 3);
    size_t blocks = (raw_n + 65534) / 65535, z_n = 2 + raw_n + 5 * blocks + 4;
    unsigned char *z = xmalloc(z_n), *p = z;
    *p++ = 0x78, *p++ = 0x01; /* zlib header: deflate, 32K window, no preset dictionary */
    uint32_t s1 = 1, s2 = 0;
    for (size_t off = 0; off < raw_n; off += 65535) {
        size_t len = raw_n - off < 65535 ? raw_n - off : 65535;
        *p++ = off + len == raw_n; /* BFINAL on the last block, BTYPE 00 = stored */
        *p++ = (unsigned char)len, *p++ = (unsigned char)(len >> 8);
        *p++ = (unsigned char)~len, *p++ = (unsigned char)(~len >> 8);
        memcpy(p, raw + off, len);
        p += len;
    }
    for (size_t i = 0; i < raw_n; i++) s1 = (s1 + raw[i]) % 65521, s2 = (s2 + s1) % 65521;
    put_u32_be(p, (s2 << 16) | s1);
    unsigned char ihdr[13];
    put_u32_be(ihdr, (uint32_t)w), put_u32_be(ihdr + 4, (uint32_t)h);
    ihdr[8] = 8, ihdr[9] = 2, ihdr[10] = ihdr[11] = ihdr[12] = 0; /* 8-bit RGB, no interlace */
    static const unsigned char signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(signature, 1, 8, f) == 8 && png_chunk(f, "IHDR", ihdr, 13) && png_chunk(f, "IDAT", z, z_n) &&
             png_chunk(f, "IEND", NULL, 0);
    if (f) ok = (fclose(f) == 0) && ok;
    free(raw), free(z);
    return ok ? 0 : report("%s: cannot write the PNG file (does its directory exist? mkdir -p it first)", path);
}

/* The input image (3, S, S) bytes, upscaled by `zoom` (nearest), with a G x G heat map laid
   over it in red, the map stretched from its minimum (clear) to its maximum (red). heat may be
   NULL for the plain image. */
static void overlay_image(unsigned char *rgb, const uint8_t *img, int S, const float *heat, int G, int zoom) {
    float lo = FLT_MAX, hi = -FLT_MAX;
    if (heat)
        for (int i = 0; i < G * G; i++) lo = heat[i] < lo ? heat[i] : lo, hi = heat[i] > hi ? heat[i] : hi;
    int W = S * zoom;
    for (int y = 0; y < W; y++)
        for (int x = 0; x < W; x++) {
            int sy = y / zoom, sx = x / zoom;
            float v = (heat && hi > lo) ? (heat[(sy * G / S) * G + sx * G / S] - lo) / (hi - lo) : 0.0f;
            for (int c = 0; c < 3; c++) {
                float p = img[(c * S + sy) * S + sx];
                rgb[((size_t)y * W + x) * 3 + c] = clamp_u8(heat ? (1.0f - 0.7f * v) * p + 0.7f * v * (c == 0 ? 255.0f : 0.0f) : p);
            }
        }
}

/* ============================================================================================
 * III.5 The command line
 * ========================================================================================== */

enum { CMD_TEACHER = 1, CMD_TRAIN = 2, CMD_EVAL = 4, CMD_BENCH = 8, CMD_DEBUG = 16, CMD_TOKENS = 32, CMD_COMPARE = 64, CMD_ATTENTION = 128,
       CMD_DEMO = 256 };
typedef enum { F_INT, F_LONG, F_FLOAT, F_STR } FlagType;
typedef struct {
    const char *name;
    FlagType type;
    void *value;
    unsigned commands;
    double lo, hi;  /* allowed range for numbers */
    const char *help;
} Flag;

#define MAX_FILES 32
typedef struct Options {
    const char *files[MAX_FILES]; /* compare's and bench --table's checkpoints */
    int num_files, image, limit, img_size, table, zoom;
    const char *pos_interp;
    const char *model, *arch, *data, *aug, *opt, *sched, *distill, *teacher, *init, *out, *resume, *log, *ckpt,
        *logits, *dump, *matmul;
    int dim, depth, heads, patch, dist_token, epochs, batch, train_limit, no_shuffle, threads, randaug, nesterov, repeats,
        skip_nonfinite, eval_every, tta, teacher_tta, lookahead, force;
    long steps, seed;
    float lr, min_lr, warmup_lr, warmup, wd, momentum, mixup, cutmix, erase, smoothing, drop_path, randaug_mag, save_every;
    Distillation kd; /* --distill (parsed into kd.type after the flags), --alpha, --tau */
} Options;

#define ALL_TRAIN (CMD_TEACHER | CMD_TRAIN)
#define DEMO_TEACHER "experiments/checkpoints/teacher_airbench_seed1.bin" /* ./deit demo's (committed) */
static Options opt_values;
static const Flag flags[] = {
    {"--model", F_STR, &opt_values.model, CMD_TRAIN | CMD_BENCH, 0, 0, "student size: tiny (192/12/3), small (384/12/6), base (768/12/12)"},
    {"--dim", F_INT, &opt_values.dim, CMD_TRAIN | CMD_BENCH | CMD_DEMO, 1, 16384, "override the token width D"},
    {"--depth", F_INT, &opt_values.depth, CMD_TRAIN | CMD_BENCH | CMD_DEMO, 1, 1000, "override the number of blocks"},
    {"--heads", F_INT, &opt_values.heads, CMD_TRAIN | CMD_BENCH | CMD_DEMO, 1, 16384, "override the number of heads"},
    {"--patch", F_INT, &opt_values.patch, CMD_TRAIN | CMD_BENCH | CMD_DEMO, 1, 32, "patch size (default 4: 64 patches of 32x32 images)"},
    {"--img-size", F_INT, &opt_values.img_size, CMD_TRAIN, 8, 1024, "image size (default 32); with --init at another size: fine-tune there"},
    {"--pos-interp", F_STR, &opt_values.pos_interp, CMD_TRAIN, 0, 0, "position embedding resize for --img-size: bicubic (default) | bilinear"},
    {"--dist-token", F_INT, &opt_values.dist_token, CMD_TRAIN | CMD_BENCH, 0, 1, "1: class + distillation token (default when distilling, and in bench), 0: class token only (default otherwise)"},
    {"--arch", F_STR, &opt_values.arch, CMD_TEACHER | CMD_BENCH, 0, 0, "teacher: airbench (default; Jordan 2024, with its recipe), resnet20, resnet56, resnet20w4, resnet8"},
    {"--data", F_STR, &opt_values.data, ALL_TRAIN | CMD_EVAL | CMD_TOKENS | CMD_COMPARE | CMD_ATTENTION | CMD_BENCH | CMD_DEMO, 0, 0, "CIFAR directory (default $DEIT_DATA or data/cifar-10-batches-bin)"},
    {"--train-limit", F_INT, &opt_values.train_limit, ALL_TRAIN | CMD_DEMO, 0, 1e9, "train on a class-balanced subset of N images"},
    {"--no-shuffle", F_INT, &opt_values.no_shuffle, ALL_TRAIN, 0, 1, "1: keep the file order (no shuffling)"},
    {"--aug", F_STR, &opt_values.aug, ALL_TRAIN, 0, 0, "deit (student default) | basic (crop+flip, ResNet default) | airbench (2-pixel shifts, alternating flip; airbench default) | none"},
    {"--tta", F_INT, &opt_values.tta, CMD_EVAL, 0, 2, "test-time augmentation: 0 none (default), 1 + mirror, 2 + 1-pixel shifts (6 views, airbench's)"},
    {"--teacher-tta", F_INT, &opt_values.teacher_tta, CMD_TRAIN, 0, 2, "the teacher's logits averaged over 0 (default), 1 or 2 levels of views (as --tta)"},
    {"--save-every", F_FLOAT, &opt_values.save_every, ALL_TRAIN, 0, 1e6, "minutes between checkpoints inside an epoch (default 10; 0: at epoch ends only)"},
    {"--force", F_INT, &opt_values.force, ALL_TRAIN, 0, 1, "1: a new run may overwrite an existing --out (default: refused)"},
    {"--lookahead", F_INT, &opt_values.lookahead, ALL_TRAIN, 0, 1, "1: Lookahead every 5 steps (airbench default), 0: off"},
    {"--mixup", F_FLOAT, &opt_values.mixup, CMD_TRAIN, 0, 100, "mixup alpha (deit: 0.8; 0 off)"},
    {"--cutmix", F_FLOAT, &opt_values.cutmix, CMD_TRAIN, 0, 100, "cutmix alpha (deit: 1.0; 0 off)"},
    {"--erase", F_FLOAT, &opt_values.erase, CMD_TRAIN, 0, 1, "random erasing probability (deit: 0.25)"},
    {"--randaug", F_INT, &opt_values.randaug, CMD_TRAIN, 0, 10, "RandAugment ops per image (deit: 2; 0 off)"},
    {"--randaug-mag", F_FLOAT, &opt_values.randaug_mag, CMD_TRAIN, 0, 10, "RandAugment magnitude (deit: 9)"},
    {"--label-smoothing", F_FLOAT, &opt_values.smoothing, ALL_TRAIN | CMD_DEBUG, 0, 1, "label smoothing epsilon (--aug deit: 0.1, airbench: 0.2, basic: 0; debug-state: 0.1)"},
    {"--drop-path", F_FLOAT, &opt_values.drop_path, CMD_TRAIN, 0, 0.99, "stochastic depth rate (--aug deit: 0.1, else 0)"},
    {"--epochs", F_INT, &opt_values.epochs, ALL_TRAIN | CMD_DEMO, 1, 100000, "epochs (student 40, airbench 10, ResNet 30)"},
    {"--batch", F_INT, &opt_values.batch, ALL_TRAIN | CMD_EVAL | CMD_BENCH | CMD_DEBUG | CMD_TOKENS | CMD_COMPARE | CMD_DEMO, 1, 65536, "batch size (train: student 128; teacher: airbench 1024, ResNet 128; demo and bench 64; eval, tokens, compare 100; debug-state 4)"},
    {"--lr", F_FLOAT, &opt_values.lr, ALL_TRAIN | CMD_DEMO, 0, 100, "learning rate (AdamW: 2.5e-4 * batch / 128; SGD: 0.1 * batch / 128; airbench: 1.5 * batch / 1024)"},
    {"--min-lr", F_FLOAT, &opt_values.min_lr, ALL_TRAIN, 0, 100, "final learning rate (AdamW 1e-5, SGD 0, airbench 0.07 x lr)"},
    {"--warmup-lr", F_FLOAT, &opt_values.warmup_lr, ALL_TRAIN, 0, 100, "learning rate at the start of warmup (1e-6; airbench 0.2 x lr)"},
    {"--warmup", F_FLOAT, &opt_values.warmup, ALL_TRAIN, 0, 100000, "warmup epochs (student 3, ResNet 1, airbench 23%; 0 allowed)"},
    {"--sched", F_STR, &opt_values.sched, ALL_TRAIN, 0, 0, "cosine (default) | linear (airbench default) | constant"},
    {"--opt", F_STR, &opt_values.opt, ALL_TRAIN, 0, 0, "adamw (student default) | sgd (teacher default)"},
    {"--wd", F_FLOAT, &opt_values.wd, ALL_TRAIN, 0, 100, "weight decay (AdamW 0.05, SGD 5e-4, airbench 0.00133), never on DeiT's biases/norms/tokens"},
    {"--momentum", F_FLOAT, &opt_values.momentum, ALL_TRAIN, 0, 1, "SGD momentum (0.9; airbench 0.85)"},
    {"--nesterov", F_INT, &opt_values.nesterov, ALL_TRAIN, 0, 1, "1: Nesterov momentum (teacher default 1)"},
    {"--distill", F_STR, &opt_values.distill, CMD_TRAIN | CMD_DEBUG, 0, 0, "none | soft | hard (default hard with --teacher, else none)"},
    {"--teacher", F_STR, &opt_values.teacher, CMD_TRAIN | CMD_DEBUG | CMD_BENCH | CMD_DEMO, 0, 0, "teacher checkpoint (a convnet: ResNet or airbench; or a student); bench: teacher architecture"},
    {"--alpha", F_FLOAT, &opt_values.kd.alpha, CMD_TRAIN | CMD_DEBUG, 0, 1, "weight of the distillation loss (0.5)"},
    {"--tau", F_FLOAT, &opt_values.kd.tau, CMD_TRAIN | CMD_DEBUG, 1e-3, 1000, "soft distillation temperature (1.0)"},
    {"--seed", F_LONG, &opt_values.seed, ALL_TRAIN | CMD_DEBUG | CMD_DEMO, 0, 9e18, "random seed (1337)"},
    {"--threads", F_INT, &opt_values.threads, ALL_TRAIN | CMD_EVAL | CMD_BENCH | CMD_DEBUG | CMD_TOKENS | CMD_COMPARE | CMD_ATTENTION | CMD_DEMO, 1, 1024, "OpenMP threads (default: all cores)"},
    {"--matmul", F_STR, &opt_values.matmul, ALL_TRAIN | CMD_EVAL | CMD_BENCH | CMD_DEBUG | CMD_TOKENS | CMD_COMPARE | CMD_ATTENTION | CMD_DEMO, 0, 0, "fast (default: Part II's packed matmul; make debug's deit_debug: naive) | naive (the three loops of Part I.2)"},
    {"--init", F_STR, &opt_values.init, ALL_TRAIN, 0, 0, "start from this checkpoint's weights"},
    {"--steps", F_LONG, &opt_values.steps, ALL_TRAIN, 1, 1e15, "stop after N optimizer steps"},
    {"--eval-every", F_INT, &opt_values.eval_every, ALL_TRAIN, 1, 100000, "test every N epochs and after the last (default 1)"},
    {"--skip-nonfinite", F_INT, &opt_values.skip_nonfinite, ALL_TRAIN, 0, 1, "1: skip steps with a NaN/Inf loss or gradient (default: stop)"},
    {"--out", F_STR, &opt_values.out, ALL_TRAIN, 0, 0, "checkpoint to write (student.bin / teacher.bin; also OUT.state)"},
    {"--out", F_STR, &opt_values.out, CMD_ATTENTION, 0, 0, "directory for the PNGs (an existing one)"},
    {"--out", F_STR, &opt_values.out, CMD_DEMO, 0, 0, "prefix of the files written (default demo: demo_none.bin, demo_dist.bin, ...)"},
    {"--resume", F_STR, &opt_values.resume, ALL_TRAIN, 0, 0, "continue the run that wrote this checkpoint (and FILE.state)"},
    {"--log", F_STR, &opt_values.log, ALL_TRAIN, 0, 0, "CSV log: epoch,step,lr,train_loss,test_acc,test_acc_cls,test_acc_dist,img_per_s,elapsed_s"},
    {"--ckpt", F_STR, &opt_values.ckpt, CMD_EVAL | CMD_DEBUG | CMD_TOKENS | CMD_ATTENTION, 0, 0, "checkpoint to evaluate (student or teacher)"},
    {"--image", F_INT, &opt_values.image, CMD_ATTENTION | CMD_DEMO, 0, 1e9, "index of the test image (default 0)"},
    {"--zoom", F_INT, &opt_values.zoom, CMD_ATTENTION, 1, 32, "upscaling of the 32x32 image in the PNGs (default 8)"},
    {"--limit", F_INT, &opt_values.limit, CMD_TOKENS | CMD_COMPARE, 1, 1e9, "use only the first N test images"},
    {"--dump", F_STR, &opt_values.dump, CMD_DEBUG, 0, 0, "directory for the debug-state files (must exist)"},
    {"--logits", F_STR, &opt_values.logits, CMD_EVAL, 0, 0, "write the inference logits as float32 (N, C), test-set order"},
    {"--repeats", F_INT, &opt_values.repeats, CMD_BENCH, 1, 1000, "timed repeats (median reported, default 5)"},
    {"--table", F_INT, &opt_values.table, CMD_BENCH, 0, 1, "1: throughput/parameter table of DeiT-Ti/S/B and the ResNet teachers (+ accuracy of CKPT files given)"},
};
#define NUM_FLAGS ((int)(sizeof(flags) / sizeof(flags[0])))

static const struct { unsigned cmd; const char *name; } command_names[] = {
    {CMD_TEACHER, "teacher"}, {CMD_TRAIN, "train"}, {CMD_EVAL, "eval"}, {CMD_BENCH, "bench"}, {CMD_DEBUG, "debug-state"},
    {CMD_TOKENS, "tokens"}, {CMD_COMPARE, "compare"}, {CMD_ATTENTION, "attention"}, {CMD_DEMO, "demo"},
};
#define NUM_COMMANDS ((int)(sizeof(command_names) / sizeof(command_names[0])))
static const char *command_name(unsigned cmd) {
    for (int i = 0; i < NUM_COMMANDS; i++) if (command_names[i].cmd == cmd) return command_names[i].name;
    return "?";
}

static void command_usage(unsigned cmd) {
    fprintf(stderr, "usage: ./deit %s [options]%s\noptions:\n", command_name(cmd),
            cmd == CMD_COMPARE ? " A.bin B.bin ..." : (cmd == CMD_BENCH ? " [--table 1 [CKPT.bin ...]]" : ""));
    for (int i = 0; i < NUM_FLAGS; i++)
        if (flags[i].commands & cmd) fprintf(stderr, "  %-18s %s\n", flags[i].name, flags[i].help);
    if (cmd == CMD_DEMO)
        fprintf(stderr, "demo's own defaults: --dim 64 --depth 4 --heads 2 --patch 8 --train-limit 2000 --epochs 50 --batch 64 "
                        "--lr 1e-3,\n  crop + flip + mixup 0.8 / CutMix 1.0 + label smoothing 0.1, --teacher %s, --out demo\n", DEMO_TEACHER);
}

static unsigned char flag_given[NUM_FLAGS]; /* set by parse_flags: this flag was on the command line */
static int flag_was_given(const char *name) {
    for (int i = 0; i < NUM_FLAGS; i++)
        if (flag_given[i] && !strcmp(flags[i].name, name)) return 1;
    return 0;
}

/* Flags take a value, as "--flag value" or "--flag=value"; a 0/1 flag alone means 1
   ("--no-shuffle"). Numbers must parse completely and be in range. A word that is not a flag is
   a checkpoint file: the one of eval, tokens, attention and debug-state (as --ckpt), or one of
   compare's and bench --table's. */
static void parse_flags(int argc, char **argv, unsigned cmd) {
    for (int a = 2; a < argc; a++) {
        if (!strcmp(argv[a], "--help") || !strcmp(argv[a], "-h")) {
            command_usage(cmd);
            exit(0);
        }
        char name[64];
        const char *eq = strncmp(argv[a], "--", 2) ? NULL : strchr(argv[a], '=');
        size_t len = eq ? (size_t)(eq - argv[a]) : strlen(argv[a]);
        snprintf(name, sizeof(name), "%.*s", (int)(len < sizeof(name) ? len : sizeof(name) - 1), argv[a]);
        const Flag *f = NULL;
        for (int i = 0; i < NUM_FLAGS; i++)
            if (!strcmp(name, flags[i].name) && (flags[i].commands & cmd)) f = &flags[i];
        if (!f && strncmp(argv[a], "--", 2)) { /* checkpoint files */
            if (cmd & (CMD_EVAL | CMD_TOKENS | CMD_ATTENTION | CMD_DEBUG)) {
                if (opt_values.ckpt) die("./deit %s takes one checkpoint: '%s' and '%s'", command_name(cmd), opt_values.ckpt, argv[a]);
                opt_values.ckpt = argv[a];
                continue;
            }
            if (cmd == CMD_COMPARE || cmd == CMD_BENCH) {
                if (opt_values.num_files >= MAX_FILES) die("at most %d checkpoint files", MAX_FILES);
                opt_values.files[opt_values.num_files++] = argv[a];
                continue;
            }
        }
        if (!f) die("unknown option '%s' for ./deit %s (see ./deit %s --help)", name, command_name(cmd), command_name(cmd));
        flag_given[f - flags] = 1;
        int boolean = f->type == F_INT && f->lo == 0 && f->hi == 1;
        const char *v;
        if (eq) v = eq + 1;
        else if (boolean && (a + 1 >= argc || !strncmp(argv[a + 1], "--", 2))) v = "1";
        else if (a + 1 >= argc) die("option %s needs a value", name);
        else v = argv[++a];
        if (f->type == F_STR) {
            *(const char **)f->value = v;
            continue;
        }
        char *end;
        errno = 0;
        double x = strtod(v, &end);
        if (end == v || *end || errno || !isfinite(x)) die("option %s: '%s' is not a number", f->name, v);
        if (x < f->lo || x > f->hi) die("option %s: %s is out of range [%g, %g]", f->name, v, f->lo, f->hi);
        if ((f->type == F_INT || f->type == F_LONG) && x != floor(x)) die("option %s: '%s' is not a whole number", f->name, v);
        /* a whole number written out in digits is read exactly (a double holds only 53 bits:
           --seed 9007199254740993 would become ...992); "1e3" and the like go through strtod */
        errno = 0;
        long long whole = strtoll(v, &end, 10);
        if (*end || errno) whole = (long long)x;
        if (f->type == F_INT) *(int *)f->value = (int)whole;
        else if (f->type == F_LONG) *(long *)f->value = (long)whole;
        else *(float *)f->value = (float)x;
    }
}

#define UNSET (-1)
static void options_defaults(Options *o) {
    memset(o, 0, sizeof(*o));
    o->model = "tiny", o->arch = "airbench"; /* the default teacher: 90.74% in 45 minutes (experiments/README.md) */
    o->data = getenv("DEIT_DATA") ? getenv("DEIT_DATA") : "data/cifar-10-batches-bin";
    o->dim = o->depth = o->heads = o->dist_token = UNSET, o->patch = 4;
    o->epochs = o->batch = o->randaug = o->nesterov = o->no_shuffle = UNSET;
    o->eval_every = 1;
    o->lr = o->min_lr = o->warmup = o->wd = o->mixup = o->cutmix = o->erase = o->smoothing = o->drop_path = UNSET;
    o->randaug_mag = 9.0f, o->warmup_lr = o->momentum = UNSET, o->kd.alpha = 0.5f, o->kd.tau = 1.0f;
    o->lookahead = UNSET, o->save_every = UNSET;
    o->seed = 1337, o->repeats = 5, o->zoom = 8;
}

static float pick(float v, float fallback) { return v == UNSET ? fallback : v; }

/* --distill: hard by default when there is a --teacher, none without. */
static DistillType distill_type(const Options *o) {
    if (!o->distill) return o->teacher ? DISTILL_HARD : DISTILL_NONE;
    for (int i = 0; i < 3; i++)
        if (!strcmp(o->distill, distill_names[i])) return (DistillType)i;
    die("--distill must be none, soft or hard, not '%s'", o->distill);
    return DISTILL_NONE;
}
static int pick_int(int v, int fallback) { return v == UNSET ? fallback : v; }

/* ---- A run's flags, kept beside its checkpoint as FILE.flags, for --resume FILE ----------------
   A new run writes every flag it was given that decides what it computes, one "--flag value" per
   line (FILE.flags is text). --resume FILE reads them back first, so a bare "--resume FILE" continues
   the run as it was started; flags given again must have the same value, and one that differs is
   named. Not kept: where files go and how the work is done (--out, --log, --threads, --steps,
   --save-every, --matmul, --eval-every, --skip-nonfinite, --force, --resume, --init). */
static int flag_is_setting(const Flag *f) {
    static const char *bookkeeping[] = {"--out", "--log", "--threads", "--steps", "--save-every", "--matmul",
                                        "--eval-every", "--skip-nonfinite", "--force", "--resume", "--init"};
    for (size_t i = 0; i < sizeof(bookkeeping) / sizeof(bookkeeping[0]); i++)
        if (!strcmp(f->name, bookkeeping[i])) return 0;
    return 1;
}
/* --teacher and --data are kept too, but may name another path on resume: the run checks the
   teacher's weights and the data themselves (their hashes in FILE.state). */
static int flag_is_path(const Flag *f) { return !strcmp(f->name, "--teacher") || !strcmp(f->name, "--data"); }

/* The flag's value in another Options (flags[] point into opt_values). */
static void *flag_field(const Flag *f, const Options *o) {
    return (char *)o + ((const char *)f->value - (const char *)&opt_values);
}

static int flag_values_equal(const Flag *f, const Options *a, const Options *b) {
    const void *x = flag_field(f, a), *y = flag_field(f, b);
    switch (f->type) {
    case F_INT: return *(const int *)x == *(const int *)y;
    case F_LONG: return *(const long *)x == *(const long *)y;
    case F_FLOAT: return *(const float *)x == *(const float *)y;
    default: {
        const char *s = *(const char *const *)x, *t = *(const char *const *)y;
        return s == t || (s && t && !strcmp(s, t));
    }
    }
}

static void flag_value_text(char *buf, size_t size, const Flag *f, const Options *o) {
    const void *x = flag_field(f, o);
    if (f->type == F_INT) snprintf(buf, size, "%d", *(const int *)x);
    else if (f->type == F_LONG) snprintf(buf, size, "%ld", *(const long *)x);
    else if (f->type == F_FLOAT) { /* the shortest text that reads back exactly */
        float v = *(const float *)x;
        for (int digits = 6; digits <= 9; digits++) {
            snprintf(buf, size, "%.*g", digits, (double)v);
            if (strtof(buf, NULL) == v) break;
        }
    }
    else snprintf(buf, size, "%s", *(const char *const *)x ? *(const char *const *)x : "");
}

/* Does the flag hold a value in o? Not when it is UNSET (a default train_config picks later) or,
   for a string, NULL. */
static int flag_has_value(const Flag *f, const Options *o) {
    const void *v = flag_field(f, o);
    if (f->type == F_STR) return *(const char *const *)v != NULL;
    double x = f->type == F_INT ? *(const int *)v : f->type == F_LONG ? (double)*(const long *)v : *(const float *)v;
    return x >= f->lo && x <= f->hi;
}

/* Written when a new run starts (path = its --out + ".flags"), atomically: every setting that has a
   value (defaults included, except those chosen later by train_config: they are still unset here). */
static int write_run_flags(const char *path, const Options *o, unsigned cmd) {
    char tmp[4096], value[4096];
    path_printf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return report("%s: cannot open for writing: %s", tmp, strerror(errno));
    for (int i = 0; i < NUM_FLAGS; i++) {
        const Flag *fl = &flags[i];
        if (!(fl->commands & cmd) || !flag_is_setting(fl) || !flag_has_value(fl, o)) continue;
        flag_value_text(value, sizeof(value), fl, o);
        fprintf(f, "%s %s\n", fl->name, value);
    }
    int ok = fflush(f) == 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        remove(tmp);
        return report("%s: cannot write: %s", path, strerror(errno));
    }
    return 0;
}

/* OUT.flags for a new run, once train's run_begin has checked it: a run refused at its start leaves none */
static int record_run_flags(const Options *o, const char *out, int is_teacher) {
    char path[4096];
    path_printf(path, sizeof(path), "%s.flags", out);
    return write_run_flags(path, o, is_teacher ? CMD_TEACHER : CMD_TRAIN);
}

/* --resume FILE: the flags of FILE.flags, then the command line's on top (which must agree). A run
   written before .flags files existed has none: its flags come from the command line alone. */
static void parse_flags(int argc, char **argv, unsigned cmd);
static void resume_flags(int argc, char **argv, unsigned cmd) {
    char path[4096];
    path_printf(path, sizeof(path), "%s.flags", opt_values.resume);
    FILE *f = fopen(path, "r");
    if (!f) return;
    unsigned char given[NUM_FLAGS];
    memcpy(given, flag_given, sizeof(given));
    static char *args[2 + 2 * NUM_FLAGS];
    int n = 0;
    args[n++] = argv[0], args[n++] = argv[1];
    char line[4200];
    while (n + 2 <= 2 + 2 * NUM_FLAGS && fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = 0;
        char *space = strchr(line, ' ');
        if (strncmp(line, "--", 2) || !space) die("%s: not a deit.c flags file (line '%s')", path, line);
        *space = 0;
        for (int k = 0; k < 2; k++) {
            const char *part = k ? space + 1 : line;
            size_t len = strlen(part) + 1;
            args[n] = xmalloc(len); /* kept to the end: the options point into them */
            memcpy(args[n++], part, len);
        }
    }
    fclose(f);
    options_defaults(&opt_values);
    parse_flags(n, args, cmd);
    Options recorded = opt_values;
    memset(flag_given, 0, sizeof(flag_given));
    parse_flags(argc, argv, cmd); /* the command line again, on top */
    for (int i = 0; i < NUM_FLAGS; i++) {
        const Flag *fl = &flags[i];
        if (!given[i] || !flag_is_setting(fl) || flag_is_path(fl) || flag_values_equal(fl, &recorded, &opt_values)) continue;
        char was[4096], now[4096], recorded_as[4200];
        flag_value_text(was, sizeof(was), fl, &recorded);
        flag_value_text(now, sizeof(now), fl, &opt_values);
        int epochs = !strcmp(fl->name, "--epochs"), has = flag_has_value(fl, &recorded);
        if (has) snprintf(recorded_as, sizeof(recorded_as), "%s %s %s", epochs ? "for" : "with", fl->name, was);
        else snprintf(recorded_as, sizeof(recorded_as), "without %s (%s its default)", fl->name, epochs ? "for" : "with");
        if (epochs)
            die("--epochs %s: the run of %s was planned %s (%s), and its schedule with it, so --resume continues "
                "only that; to train on from its weights, start a new run with --init %s --out OTHER.bin", now,
                opt_values.resume, recorded_as, path, opt_values.resume);
        die("%s %s: the run of %s was started %s (%s). --resume continues it with its own flags: leave %s out, or "
            "start a new run from its weights with --init %s --out OTHER.bin", fl->name, now, opt_values.resume,
            recorded_as, path, fl->name, opt_values.resume);
    }
    memcpy(flag_given, given, sizeof(given));
    /* the architecture is the checkpoint's; its flags, recorded or repeated, agree with it */
    Options defaults;
    options_defaults(&defaults);
    opt_values.model = defaults.model, opt_values.arch = defaults.arch, opt_values.patch = defaults.patch;
    opt_values.dim = opt_values.depth = opt_values.heads = opt_values.dist_token = UNSET;
}

/* Is the teacher being trained an airbench? Its recipe is then the default. A run that continues
   (--resume) or starts from a checkpoint (--init) has the architecture of that file. */
static int teacher_is_airbench(const Options *o) {
    const char *from = o->resume ? o->resume : o->init;
    if (!from) return !strcmp(o->arch, "airbench");
    int32_t h[HEADER_INTS];
    long bytes;
    if (read_header(from, h, &bytes)) exit(1);
    return h[0] == TEACHER_MAGIC && h[1] == TEACHER_VERSION_ARCH && h[15] == ARCH_AIRBENCH;
}

/* Fills the training settings from the flags; the student's defaults follow DeiT's recipe
   (paper Table 9) shortened to a night (below), airbench's its own, a ResNet's a standard CIFAR one. */
static TrainConfig train_config(const Options *o, int is_teacher) {
    TrainConfig c;
    memset(&c, 0, sizeof(c));
    /* airbench's recipe (dev/AIRBENCH.md): 10 epochs (its 9.9, rounded) of batch 1024, SGD with
       Nesterov momentum 0.85, lr 1.5 x batch/1024 (its 11.5 per 1024 images of a summed loss,
       for our mean loss) warming up from 0.2x over 23% of the steps, then linearly down to 0.07x;
       weight decay 0.00133 (the same decay per step as its 0.0153); label smoothing 0.2; shifts
       of 2 pixels with the alternating flip; Lookahead. */
    /* The student's defaults are the "overnight" recipe (README): DeiT-Ti/4 for 40 epochs of
       batch 128 with DeiT's augmentation (Table 9), AdamW at lr 2.5e-4 x batch/128 (2x the paper's
       5e-4 x batch/512) after 3 warmup epochs (the paper: 5 of 300). 2-epoch runs of 2.5e-4,
       5e-4, 1e-3 and 2e-3 ranked them in that order (experiments/README.md, "The overnight
       recipe"); 40 epochs fit 10 hours of 2 cores with the teacher. */
    int air = is_teacher && teacher_is_airbench(o);
    c.epochs = pick_int(o->epochs, air ? 10 : is_teacher ? 30 : 40);
    c.batch = pick_int(o->batch, air ? 1024 : 128);
    const char *opt = o->opt ? o->opt : (is_teacher ? "sgd" : "adamw");
    if (!strcmp(opt, "sgd")) c.opt = OPT_SGD;
    else if (!strcmp(opt, "adamw")) c.opt = OPT_ADAMW;
    else die("--opt must be adamw or sgd, not '%s'", opt);
    c.lr = pick(o->lr, air ? 1.5f * c.batch / 1024.0f : c.opt == OPT_ADAMW ? 2.5e-4f * c.batch / 128.0f : 0.1f * c.batch / 128.0f);
    c.min_lr = pick(o->min_lr, air ? 0.07f * c.lr : c.opt == OPT_ADAMW ? 1e-5f : 0.0f);
    if (c.min_lr > c.lr) { /* the cosine would climb instead of decay */
        if (o->min_lr != UNSET) die("--min-lr %g is above the learning rate %g", c.min_lr, c.lr);
        c.min_lr = c.lr; /* a tiny batch: the default lr 2.5e-4 * B / 128 is below the default floor */
    }
    c.warmup_lr = pick(o->warmup_lr, air ? 0.2f * c.lr : 1e-6f);
    c.warmup_epochs = pick(o->warmup, air ? 0.23f * c.epochs : is_teacher ? 1.0f : 3.0f);
    if (o->warmup == UNSET && !air && c.warmup_epochs > 0.2f * c.epochs) { /* a short run: its lr would barely reach the peak */
        c.warmup_epochs = 0.1f * c.epochs;
        fprintf(stderr, "deit: note: %d epochs: the warmup is %.2g epochs (10%%; --warmup sets it)\n", c.epochs, c.warmup_epochs);
    } else if (c.warmup_epochs >= c.epochs) {
        fprintf(stderr, "deit: warning: --warmup %g >= --epochs %d: the learning rate never reaches its peak %g\n", c.warmup_epochs,
                c.epochs, c.lr);
    }
    c.weight_decay = pick(o->wd, air ? 0.00133043f : c.opt == OPT_ADAMW ? 0.05f : 5e-4f);
    c.momentum = pick(o->momentum, air ? 0.85f : 0.9f);
    c.nesterov = pick_int(o->nesterov, is_teacher ? 1 : 0);
    c.lookahead = pick_int(o->lookahead, air);
    c.teacher_tta = o->teacher_tta;
    c.save_every = pick(o->save_every, 10.0f);
    const char *sched = o->sched ? o->sched : (air ? "linear" : "cosine");
    if (!strcmp(sched, "cosine")) c.sched = SCHED_COSINE;
    else if (!strcmp(sched, "linear")) c.sched = SCHED_LINEAR;
    else if (!strcmp(sched, "constant")) c.sched = SCHED_CONSTANT;
    else die("--sched must be cosine, linear or constant, not '%s'", sched);
    const char *aug = o->aug ? o->aug : (air ? "airbench" : is_teacher ? "basic" : "deit");
    AugConfig a = {0};
    if (!strcmp(aug, "deit")) a = (AugConfig){.crop_flip = 1, .randaug_ops = 2, .randaug_mag = 9.0f, .erase_prob = 0.25f,
                                              .mixup_alpha = 0.8f, .cutmix_alpha = 1.0f, .label_smoothing = 0.1f};
    else if (!strcmp(aug, "basic")) a = (AugConfig){.crop_flip = 1};
    else if (!strcmp(aug, "airbench")) a = (AugConfig){.translate = 2, .alternate_flip = 1, .label_smoothing = 0.2f};
    else if (strcmp(aug, "none")) die("--aug must be deit, basic, airbench or none, not '%s'", aug);
    a.flip_seed = (uint64_t)o->seed;
    a.randaug_ops = pick_int(o->randaug, a.randaug_ops);
    a.randaug_mag = o->randaug_mag;
    a.erase_prob = pick(o->erase, a.erase_prob);
    a.mixup_alpha = pick(o->mixup, a.mixup_alpha);
    a.cutmix_alpha = pick(o->cutmix, a.cutmix_alpha);
    a.label_smoothing = pick(o->smoothing, a.label_smoothing);
    c.aug = a;
    c.train_limit = o->train_limit;
    c.shuffle = pick_int(o->no_shuffle, 0) == 0;
    c.max_steps = o->steps;
    c.skip_nonfinite = o->skip_nonfinite;
    c.eval_every = o->eval_every;
    c.kd = o->kd;
    c.seed = (uint64_t)o->seed;
    c.data_dir = o->data;
    c.out = o->out ? o->out : (o->resume ? o->resume : (is_teacher ? "teacher.bin" : "student.bin"));
    c.log = o->log;
    c.resume = o->resume;
    c.teacher_path = o->teacher;
    return c;
}

static DeiTConfig student_config(const Options *o, int num_classes) {
    DeiTConfig c;
    if (deit_preset(&c, o->model)) die("--model must be tiny, small or base, not '%s'", o->model);
    if (o->dim != UNSET) c.dim = o->dim, c.mlp_hidden = 4 * o->dim;
    if (o->depth != UNSET) c.depth = o->depth;
    if (o->heads != UNSET) c.heads = o->heads;
    c.patch_size = o->patch;
    /* default: a distillation token when there is something to distil (DeiT), else a plain ViT */
    int distilling = o->kd.type != DISTILL_NONE;
    c.dist_token = pick_int(o->dist_token, distilling ? 1 : 0);
    if (o->img_size) c.img_size = o->img_size;
    c.num_classes = num_classes;
    if (deit_config_check(&c, "model flags")) exit(1);
    return c;
}

static int data_num_classes(const char *dir) { return dataset_is_cifar100(dir) ? 100 : 10; }

static void print_config(const TrainConfig *c) {
    static const char *sched_names[] = {"cosine", "constant", "linear"};
    fprintf(stderr, "deit: epochs %d, batch %d, %s lr %.3g (min %.3g, warmup %.3g epochs from %.3g, %s), wd %.3g, momentum %.2f%s%s\n",
            c->epochs, c->batch, c->opt == OPT_ADAMW ? "adamw" : "sgd", c->lr, c->min_lr, c->warmup_epochs, c->warmup_lr,
            sched_names[c->sched], c->weight_decay, c->momentum, c->nesterov ? " (Nesterov)" : "", c->lookahead ? ", Lookahead" : "");
    fprintf(stderr, "deit: aug crop+flip %d, shifts %d%s, randaug %d ops m%.0f, erase %.2f, mixup %.2f, cutmix %.2f, label smoothing %.2f\n",
            c->aug.crop_flip, c->aug.translate, c->aug.alternate_flip ? " (alternating flip)" : "", c->aug.randaug_ops,
            c->aug.randaug_mag, c->aug.erase_prob, c->aug.mixup_alpha, c->aug.cutmix_alpha, c->aug.label_smoothing);
}

/* An output that names an input would overwrite it (compared by name: a typo's usual form). */
static void refuse_same_file(const char *out, const char *out_flag, const char *in, const char *in_flag) {
    if (out && in && !strcmp(out, in)) die("%s %s is also the %s file: it would be overwritten", out_flag, out, in_flag);
}

static int cmd_train(const Options *o, int is_teacher) {
    TrainConfig cfg = train_config(o, is_teacher);
    char out_state[4096];
    path_printf(out_state, sizeof(out_state), "%s.state", cfg.out);
    refuse_same_file(cfg.out, "--out", o->teacher, "--teacher");
    const char *checkpoints[] = {cfg.out, out_state, o->init, o->resume, o->teacher};
    const char *checkpoint_flags[] = {"--out", "--out .state", "--init", "--resume", "--teacher"};
    for (int i = 0; i < 5; i++) refuse_same_file(o->log, "--log", checkpoints[i], checkpoint_flags[i]);
    if (o->pos_interp && strcmp(o->pos_interp, "bicubic") && strcmp(o->pos_interp, "bilinear"))
        die("--pos-interp must be bicubic or bilinear, not '%s'", o->pos_interp);
    if (check_writable(cfg.out)) return 1; /* a directory, an unwritable place: said now, not after an epoch */
    if (!o->resume && !o->force && file_exists(cfg.out))
        die("%s exists: --resume %s continues its run, --force 1 starts a new one over it (or choose another --out)", cfg.out,
            cfg.out);
    if (!o->resume) cfg.record_flags = o; /* OUT.flags: what a bare --resume OUT continues with */
    Net net, teacher;
    memset(&teacher, 0, sizeof(teacher));
    int classes = data_num_classes(o->data);
    const char *from = o->resume ? o->resume : o->init;
    if (o->resume && o->init) fprintf(stderr, "deit: warning: --init %s ignored: --resume %s continues that run\n", o->init, o->resume);
    if (from && (o->dim != UNSET || o->depth != UNSET || o->heads != UNSET || o->dist_token != UNSET || o->patch != 4 ||
                 strcmp(o->model, "tiny") || strcmp(o->arch, "airbench")))
        fprintf(stderr, "deit: warning: the architecture comes from %s; --model/--dim/--depth/--heads/--patch/--dist-token/--arch ignored\n", from);
    if (from) {
        if (net_load(&net, from)) return 1;
        if ((net.kind == NET_CNN) != is_teacher) die("%s is a %s checkpoint; use ./deit %s", from,
                                                        net.kind == NET_CNN ? "teacher" : "student", is_teacher ? "train" : "teacher");
    } else if (is_teacher) {
        TeacherConfig tc;
        if (teacher_preset(&tc, o->arch)) die("--arch must be airbench, resnet8, resnet20, resnet56 or resnet20w4, not '%s'", o->arch);
        tc.num_classes = classes;
        net.kind = NET_CNN;
        teacher_build(&net.cnn, &tc);
        teacher_init(&net.cnn, cfg.seed);
        if (tc.arch == ARCH_AIRBENCH) { /* the whitening filters come from the training images */
            Dataset d;
            if (dataset_load(&d, o->data, 1)) return 1;
            airbench_whiten_init(&net.cnn, d.images, d.n, d.mean, d.std);
            dataset_free(&d);
        }
    } else {
        DeiTConfig dc = student_config(o, classes);
        net.kind = NET_DEIT;
        deit_build(&net.deit, &dc);
        deit_init(&net.deit, cfg.seed);
    }
    if (o->img_size && net_img_size(&net) != o->img_size) { /* fine-tune at another resolution */
        int bicubic = !o->pos_interp || !strcmp(o->pos_interp, "bicubic"); /* checked above */
        Net resized = {.kind = NET_DEIT}; /* (--img-size is train's: net is a student) */
        if (o->img_size % net.deit.config.patch_size) die("--img-size %d is not divisible by the patch size %d", o->img_size,
                                                          net.deit.config.patch_size);
        deit_resize(&resized.deit, &net.deit, o->img_size, bicubic);
        fprintf(stderr, "deit: %s resized from %d to %d pixels (position embedding: %s)\n", from ? from : "the model",
                net_img_size(&net), o->img_size, bicubic ? "bicubic" : "bilinear");
        net_free(&net);
        net = resized;
    }
    if (net.kind == NET_DEIT) net.deit.drop_path = pick(o->drop_path, o->aug && strcmp(o->aug, "deit") ? 0.0f : 0.1f);
    if (net.kind == NET_DEIT && o->init && !o->resume) rng_seed(&net.deit.rng, cfg.seed ^ 0xD15C0ull); /* as deit_init */
    if (cfg.kd.type != DISTILL_NONE) {
        if (!o->teacher) die("--distill %s needs --teacher FILE", distill_names[cfg.kd.type]);
        if (net_load(&teacher, o->teacher)) return 1;
        if (net_img_size(&teacher) != net_img_size(&net))
            fprintf(stderr, "deit: the teacher (%d pixels) sees each batch resized from %d pixels (bicubic)\n", net_img_size(&teacher),
                    net_img_size(&net));
    } else if (o->teacher) {
        fprintf(stderr, "deit: warning: --teacher %s is not used: --distill none\n", o->teacher);
    }
    if (cfg.kd.type == DISTILL_NONE && net.kind == NET_DEIT && net.deit.config.dist_token)
        fprintf(stderr, "deit: warning: without distillation the distillation head gets no gradient; "
                        "only the class head's accuracy means anything\n");
    if (net.kind == NET_DEIT) {
        const DeiTConfig *c = &net.deit.config;
        fprintf(stderr, "deit: student dim %d depth %d heads %d patch %d %s token(s), %zu parameters, drop path %.2f, distill %s%s%s\n",
                c->dim, c->depth, c->heads, c->patch_size, c->dist_token ? "class + distillation" : "class", net.deit.num_params,
                net.deit.drop_path, distill_names[cfg.kd.type], o->teacher && cfg.kd.type ? " from " : "",
                o->teacher && cfg.kd.type ? o->teacher : "");
    } else {
        const TeacherConfig *c = &net.cnn.config;
        fprintf(stderr, "deit: teacher %s %d stages x %d blocks, widths", c->arch == ARCH_AIRBENCH ? "airbench" : "ResNet", c->stages, c->blocks);
        for (int s = 0; s < c->stages; s++) fprintf(stderr, " %d", c->widths[s]);
        fprintf(stderr, ", %zu parameters\n", net.cnn.num_params);
    }
    print_config(&cfg);
    int rc = train(&net, teacher.kind ? &teacher : NULL, &cfg);
    net_free(&net);
    net_free(&teacher);
    return rc ? 1 : 0;
}

/* Class names from batches.meta.txt (CIFAR-10), when it is there; "" otherwise. At most 20. */
static void class_names(char names[][32], int C, const char *data_dir) {
    char meta[4096];
    for (int i = 0; i < 20; i++) names[i][0] = 0;
    path_printf(meta, sizeof(meta), "%s/batches.meta.txt", data_dir);
    FILE *mf = fopen(meta, "r");
    for (int i = 0; mf && i < C && i < 20 && fgets(names[i], 32, mf); i++) names[i][strcspn(names[i], "\r\n")] = 0;
    if (mf) fclose(mf);
}

static int cmd_eval(const Options *o) {
    if (!o->ckpt) die("eval needs a checkpoint: ./deit eval FILE (or --ckpt FILE)");
    refuse_same_file(o->logits, "--logits", o->ckpt, "--ckpt");
    Net net;
    if (net_load(&net, o->ckpt)) return 1;
    FILE *logits_file = NULL; /* opened before the evaluation, so that a bad name fails at once */
    if (o->logits && !(logits_file = fopen(o->logits, "wb"))) {
        report("%s: cannot open for writing: %s", o->logits, strerror(errno));
        net_free(&net);
        return 1;
    }
    Dataset test;
    int data_ok = dataset_load(&test, o->data, 0) == 0;
    if (!data_ok || net_fits_data(&net, &test, o->ckpt)) {
        if (data_ok) dataset_free(&test);
        if (logits_file) fclose(logits_file), remove(o->logits);
        net_free(&net);
        return 1;
    }
    int C = test.num_classes;
    float *logits = o->logits ? xmalloc(sizeof(float) * (size_t)test.n * C) : NULL;
    EvalResult r;
    double t0 = now_seconds();
    evaluate(&net, &test, pick_int(o->batch, 100), o->tta, &r, logits);
    double dt = now_seconds() - t0;
    printf("%s on %d %s test images (%.1f img/s)\n", o->ckpt, r.n, test.name, r.n / dt);
    if (net_has_dist(&net))
        printf("accuracy: %.2f%% (heads averaged), class head %.2f%%, distillation head %.2f%%\n", 100.0 * r.correct[HEAD_MEAN] / r.n,
               100.0 * r.correct[HEAD_CLS] / r.n, 100.0 * r.correct[HEAD_DIST] / r.n);
    else
        printf("accuracy: %.2f%%\n", 100.0 * r.correct[HEAD_MEAN] / r.n);
    char names[20][32];
    class_names(names, C, o->data);
    if (C <= 20) {
        printf("per-class accuracy and confusion matrix (rows: true class, columns: predicted):\n");
        for (int i = 0; i < C; i++) {
            int row = 0;
            for (int j = 0; j < C; j++) row += r.confusion[i * C + j];
            printf("  %2d %-10s %6.2f%% |", i, names[i], row ? 100.0 * r.confusion[i * C + i] / row : 0.0);
            for (int j = 0; j < C; j++) printf(" %5d", r.confusion[i * C + j]);
            printf("\n");
        }
    } else {
        printf("per-class accuracy:");
        for (int i = 0; i < C; i++) {
            int row = 0;
            for (int j = 0; j < C; j++) row += r.confusion[i * C + j];
            printf(" %.0f", row ? 100.0 * r.confusion[i * C + i] / row : 0.0);
        }
        printf("\n");
    }
    if (logits) {
        int ok = fwrite(logits, sizeof(float), (size_t)test.n * C, logits_file) == (size_t)test.n * C;
        if (fclose(logits_file) != 0 || !ok) die("%s: cannot write the logits (disk full?)", o->logits);
        printf("wrote %s: float32 logits (%d, %d)\n", o->logits, test.n, C);
        free(logits);
    }
    free(r.confusion);
    dataset_free(&test);
    net_free(&net);
    return 0;
}

static void usage(void) {
    fprintf(stderr,
            "deit.c: DeiT (data-efficient image transformers) in one C file\n"
            "usage: ./deit <command> [options]     (./deit <command> --help lists its options)\n"
            "commands:\n"
            "  demo      the distillation token at work in a few minutes (two small students)\n"
            "  teacher   train the CNN teacher (airbench by default, or a CIFAR ResNet)\n"
            "  train     train the DeiT student, with or without distillation\n"
            "  eval      evaluate a student or teacher checkpoint on the test set\n"
            "  bench     time training and inference steps and the matmul\n"
            "  tokens    cosine similarity of the class and distillation tokens, layer by layer\n"
            "  compare   disagreement between models' (and heads') predictions on the test set\n"
            "  attention attention maps of the class and distillation tokens (PNG files)\n"
            "  debug-state  dump one batch's inputs, logits, loss and gradients (for dev/reference.py)\n"
            "example:\n"
            "  ./deit teacher --out teacher.bin\n"
            "  ./deit train --teacher teacher.bin --out student.bin      (hard distillation, 40 epochs)\n"
            "  ./deit eval student.bin\n");
}

/* ---- ./deit tokens, compare, attention -------------------------------------------------- */
static Dataset load_test_or_die(const char *dir) {
    Dataset d;
    if (dataset_load(&d, dir, 0)) exit(1);
    return d;
}

/* Class vs distillation token: the learned embeddings, the heads, and the tokens after each
   block averaged over the test set (paper Sec. 4: cosine 0.06 at the input, 0.93 at the end). */
static int cmd_tokens(const Options *o) {
    if (!o->ckpt) die("tokens needs a checkpoint: ./deit tokens FILE (or --ckpt FILE)");
    Net net;
    if (net_load(&net, o->ckpt)) return 1;
    if (!net_has_dist(&net)) die("%s: tokens needs a student with a distillation token", o->ckpt);
    DeiT *m = &net.deit;
    int D = m->config.dim, C = m->config.num_classes, L = m->config.depth, T = m->num_tokens;
    printf("%s: class token vs distillation token\n", o->ckpt);
    printf("  learned embeddings:                     cosine %.4f\n", cosine(m->params.cls_token, m->params.dist_token, D));
    float *c0 = xmalloc(sizeof(float) * D), *d0 = xmalloc(sizeof(float) * D);
    for (int i = 0; i < D; i++) c0[i] = m->params.cls_token[i] + m->params.pos_embed[i], d0[i] = m->params.dist_token[i] + m->params.pos_embed[D + i];
    printf("  embeddings + position embedding:        cosine %.4f\n", cosine(c0, d0, D));
    double per_class = 0.0;
    for (int c = 0; c < C; c++) per_class += cosine(m->params.head_w + (size_t)c * D, m->params.head_dist_w + (size_t)c * D, D);
    printf("  head vs head_dist weights: all %.4f, per class (mean) %.4f\n", cosine(m->params.head_w, m->params.head_dist_w, C * D),
           per_class / C);
    Dataset d = load_test_or_die(o->data);
    if (net_fits_data(&net, &d, o->ckpt)) return 1;
    int n = o->limit > 0 && o->limit < d.n ? o->limit : d.n, batch = pick_int(o->batch, 100);
    double *sum = xcalloc((size_t)L + 2, sizeof(double)); /* input, L blocks, final norm */
    int S = m->config.img_size;
    float *images = xmalloc(sizeof(float) * (size_t)batch * 3 * S * S), *targets = xmalloc(sizeof(float) * (size_t)batch * C);
    int *labels = xmalloc(sizeof(int) * batch), *idx = xmalloc(sizeof(int) * batch);
    AugConfig none = {0};
    for (int start = 0; start < n; start += batch) {
        int B = n - start < batch ? n - start : batch;
        for (int b = 0; b < B; b++) idx[b] = start + b;
        make_batch(images, S, targets, labels, &d, idx, B, &none, 0, 0);
        deit_forward(m, images, B, 0);
        for (int b = 0; b < B; b++) {
            const float *x = m->acts.x0 + (size_t)b * T * D;
            sum[0] += cosine(x, x + D, D);
            for (int l = 0; l < L; l++) { /* (B, T, D) in block l, (B, R, D) in the last one */
                x = m->acts.resid2 + (size_t)l * B * T * D + (size_t)b * deit_tokens_out(m, l) * D;
                sum[l + 1] += cosine(x, x + D, D);
            }
            x = m->acts.lnf + (size_t)b * deit_tokens_out(m, L - 1) * D;
            sum[L + 1] += cosine(x, x + D, D);
        }
    }
    printf("  over %d test images, mean cosine of the two tokens:\n  %-14s %.4f\n", n, "input", sum[0] / n);
    for (int l = 0; l < L; l++) printf("  after block %-2d %.4f\n", l + 1, sum[l + 1] / n);
    printf("  %-14s %.4f\n", "final norm", sum[L + 1] / n);
    free(sum), free(images), free(targets), free(labels), free(idx), free(c0), free(d0);
    dataset_free(&d);
    net_free(&net);
    return 0;
}

/* Predictions (argmax) of every head of a model on the first n test images. */
static void predict(int *preds[3], Net *net, const Dataset *d, int n, int batch) {
    int C = d->num_classes;
    int S = net_img_size(net);
    float *images = xmalloc(sizeof(float) * (size_t)batch * 3 * S * S), *targets = xmalloc(sizeof(float) * (size_t)batch * C);
    int *labels = xmalloc(sizeof(int) * batch), *idx = xmalloc(sizeof(int) * batch);
    AugConfig none = {0};
    for (int start = 0; start < n; start += batch) {
        int B = n - start < batch ? n - start : batch;
        for (int b = 0; b < B; b++) idx[b] = start + b;
        make_batch(images, S, targets, labels, d, idx, B, &none, 0, 0);
        net_forward(net, images, B, 0);
        for (int h = 0; h < 3; h++) {
            const float *lg = net_logits(net, h);
            for (int b = 0; b < B; b++) preds[h][start + b] = argmax(lg + (size_t)b * C, C);
        }
    }
    free(images), free(targets), free(labels), free(idx);
}

/* Loads every checkpoint named on the command line once and checks it fits the data: a bad
   last file then fails at once, not after the others have run over the test set. */
static int check_checkpoint_files(const Options *o, const Dataset *d) {
    for (int f = 0; f < o->num_files; f++) {
        Net net;
        if (net_load(&net, o->files[f])) return -1;
        int fits = net_fits_data(&net, d, o->files[f]) == 0;
        net_free(&net);
        if (!fits) return -1;
    }
    return 0;
}

/* Paper Table 4: how often two classifiers disagree on the test set. */
static int cmd_compare(const Options *o) {
    if (o->num_files < 1) die("compare needs checkpoint files: ./deit compare A.bin B.bin ...");
    Dataset d = load_test_or_die(o->data);
    if (check_checkpoint_files(o, &d)) {
        dataset_free(&d);
        return 1;
    }
    int n = o->limit > 0 && o->limit < d.n ? o->limit : d.n, max_entries = 1 + 3 * o->num_files, k = 1;
    int **pred = xmalloc(sizeof(int *) * max_entries);
    char (*name)[96] = xmalloc(sizeof(*name) * max_entries);
    pred[0] = xmalloc(sizeof(int) * n);
    for (int i = 0; i < n; i++) pred[0][i] = d.labels[i];
    snprintf(name[0], sizeof(name[0]), "ground truth");
    for (int f = 0; f < o->num_files; f++) {
        Net net;
        if (net_load(&net, o->files[f])) return 1; /* checked above; only a file changed meanwhile fails here */
        int *p[3];
        for (int h = 0; h < 3; h++) p[h] = xmalloc(sizeof(int) * n);
        predict(p, &net, &d, n, pick_int(o->batch, 100));
        if (net_has_dist(&net)) {
            static const char *heads[3] = {"avg", "cls", "dist"};
            for (int h = 1; h <= 3; h++) { /* class head, distillation head, then averaged */
                pred[k] = p[h % 3];
                snprintf(name[k++], sizeof(name[0]), "%.80s %s", o->files[f], heads[h % 3]);
            }
        } else {
            pred[k] = p[HEAD_MEAN];
            free(p[1]), free(p[2]);
            snprintf(name[k++], sizeof(name[0]), "%.80s", o->files[f]);
        }
        net_free(&net);
    }
    printf("disagreement (%% of %d test images on which two classifiers differ):\n", n);
    for (int i = 0; i < k; i++) printf("  [%d] %s\n", i, name[i]);
    printf("      ");
    for (int j = 0; j < k; j++) printf("   [%d]", j);
    printf("\n");
    for (int i = 0; i < k; i++) {
        printf("  [%d] ", i);
        for (int j = 0; j < k; j++) printf(" %5.2f", 100.0 * disagreement(pred[i], pred[j], n));
        printf("\n");
    }
    for (int i = 0; i < k; i++) free(pred[i]);
    free(pred), free(name);
    dataset_free(&d);
    return 0;
}

/* Where the class and distillation tokens look: last layer per head, and the rollout. The PNG
   files are named PREFIX + "input.png", PREFIX + "cls_rollout.png", ... (PREFIX "DIR/" for
   ./deit attention, "demo_attention_" for ./deit demo). Returns the number written, -1 on error. */
/* --image of attention and demo: an index into the test set, checked before any work */
static void check_image_index(int image, const Dataset *d) {
    if (image < 0 || image >= d->n) die("--image %d: the test set has images 0 .. %d", image, d->n - 1);
}

static int attention_maps(DeiT *m, const Dataset *d, int idx, const char *prefix, int zoom) {
    int L = m->config.depth, NH = m->config.heads, T = m->num_tokens, G = m->config.img_size / m->config.patch_size;
    int first_patch = 1 + m->config.dist_token, C = d->num_classes, W = CIFAR_SIDE * zoom;
    float *image = xmalloc(sizeof(float) * CIFAR_PIXELS), *targets = xmalloc(sizeof(float) * C);
    int label;
    AugConfig none = {0};
    make_batch(image, CIFAR_SIDE, targets, &label, d, &idx, 1, &none, 0, 0);
    deit_forward(m, image, 1, 0);
    const float *att = m->acts.att; /* (L, 1, NH, T, T) */
    float *rollout = xmalloc(sizeof(float) * T * T), *heat = xmalloc(sizeof(float) * G * G);
    attention_rollout(rollout, att, L, NH, T);
    unsigned char *rgb = xmalloc((size_t)W * W * 3);
    const uint8_t *pixels = d->images + (size_t)idx * CIFAR_PIXELS;
    char path[4096];
    int written = 0;
    path_printf(path, sizeof(path), "%sinput.png", prefix);
    overlay_image(rgb, pixels, CIFAR_SIDE, NULL, G, zoom);
    if (write_png(path, rgb, W, W)) written = -1;
    else written++;
    for (int tok = 0; tok < first_patch && written > 0; tok++) {
        const char *tname = tok == 0 ? "cls" : "dist";
        for (int h = 0; h <= NH && written > 0; h++) { /* h < NH: last layer, head h; h == NH: rollout */
            const float *row = h < NH ? att + ((((size_t)(L - 1)) * NH + h) * T + tok) * T : rollout + (size_t)tok * T;
            for (int p = 0; p < G * G; p++) heat[p] = row[first_patch + p];
            if (h < NH) path_printf(path, sizeof(path), "%s%s_last_layer_head%d.png", prefix, tname, h);
            else path_printf(path, sizeof(path), "%s%s_rollout.png", prefix, tname);
            overlay_image(rgb, pixels, CIFAR_SIDE, heat, G, zoom);
            written = write_png(path, rgb, W, W) ? -1 : written + 1;
        }
    }
    free(image), free(targets), free(rollout), free(heat), free(rgb);
    return written;
}

static int cmd_attention(const Options *o) {
    if (!o->ckpt || !o->out) die("attention needs a checkpoint (--ckpt FILE, or FILE) and --out DIR (an existing directory)");
    Net net;
    if (net_load(&net, o->ckpt)) return 1;
    if (net.kind != NET_DEIT) die("%s: attention maps need a student checkpoint", o->ckpt);
    DeiT *m = &net.deit;
    if (m->config.img_size != CIFAR_SIDE) die("%s: attention maps are for %dx%d models", o->ckpt, CIFAR_SIDE, CIFAR_SIDE);
    Dataset d = load_test_or_die(o->data);
    if (net_fits_data(&net, &d, o->ckpt)) return 1;
    check_image_index(o->image, &d);
    char prefix[4096], names[20][32];
    path_printf(prefix, sizeof(prefix), "%s/", o->out);
    int written = attention_maps(m, &d, o->image, prefix, o->zoom), C = m->config.num_classes;
    if (written < 0) return 1;
    int label = d.labels[o->image], pred = argmax(m->acts.logits_mean, C);
    class_names(names, C, o->data);
    printf("test image %d (%s %d, predicted %s %d): wrote %d PNG files of %dx%d to %s/\n", o->image, label < 20 ? names[label] : "",
           label, pred < 20 ? names[pred] : "", pred, written, CIFAR_SIDE * o->zoom, CIFAR_SIDE * o->zoom, o->out);
    dataset_free(&d);
    net_free(&net);
    return 0;
}

/* ---- ./deit demo: the paper's idea in five minutes ------------------------------------------
   Two small students on a class-balanced subset of the training images, identical except that
   the second has the distillation token and learns from the teacher's hard labels through it
   (Sec. 4); then their test accuracies, the cosine of the two tokens layer by layer, how often
   each disagrees with the teacher, and where the two tokens look in one test image.
   Both see crop + flip, then mixup or CutMix (and label smoothing), as in DeiT: on a mixed image
   the teacher's hard label names the class it sees most of, which the mixed target does not
   say. With crop + flip alone its labels are the true labels on ~98% of the training images,
   and the token gained nothing measurable (experiments/README.md, "The demo"). */
static int cmd_demo(const Options *o) {
    double t0 = now_seconds();
    const char *prefix = o->out ? o->out : "demo", *teacher = o->teacher ? o->teacher : DEMO_TEACHER;
    if (!file_exists(teacher))
        die("%s: no such teacher (the repository has it; or train one with ./deit teacher --out teacher.bin and give "
            "--teacher teacher.bin)", teacher);
    Dataset test = load_test_or_die(o->data); /* checked before minutes of training, not after */
    check_image_index(o->image, &test);
    Options run = *o; /* the demo's flags (--seed, --threads, --data, sizes) pass through */
    run.dim = pick_int(o->dim, 64), run.depth = pick_int(o->depth, 4), run.heads = pick_int(o->heads, 2);
    run.patch = flag_was_given("--patch") ? o->patch : 8; /* 16 patches of 8x8: the student costs little beside the teacher */
    run.train_limit = o->train_limit ? o->train_limit : 2000;
    run.epochs = pick_int(o->epochs, 50), run.batch = pick_int(o->batch, 64);
    run.lr = pick(o->lr, 1e-3f), run.warmup = 0.1f * run.epochs, run.aug = "basic";
    run.mixup = 0.8f, run.cutmix = 1.0f, run.smoothing = 0.1f; /* DeiT's (Table 9) */
    run.force = 1, run.save_every = 0, run.eval_every = run.epochs, run.out = NULL;
    char bin[2][4096], log[2][4096];
    static const char *kind[2] = {"none", "dist"};
    for (int k = 0; k < 2; k++) {
        path_printf(bin[k], sizeof(bin[k]), "%s_%s.bin", prefix, kind[k]);
        path_printf(log[k], sizeof(log[k]), "%s_%s.csv", prefix, kind[k]);
        run.out = bin[k], run.log = log[k];
        run.teacher = k ? teacher : NULL, run.kd.type = k ? DISTILL_HARD : DISTILL_NONE, run.dist_token = k;
        fprintf(stderr, "\ndemo: %s: %d training images, %d epochs -> %s\n",
                k ? "DeiT: class + distillation token, hard distillation from the teacher" : "the same student, no distillation",
                run.train_limit, run.epochs, bin[k]);
        if (cmd_train(&run, 0)) return 1;
    }
    EvalResult r[2];
    for (int k = 0; k < 2; k++) {
        Net net;
        if (net_load(&net, bin[k])) return 1;
        evaluate(&net, &test, 100, 0, &r[k], NULL);
        free(r[k].confusion);
        net_free(&net);
    }
    printf("\n== tokens: the class and distillation tokens of %s, layer by layer\n", bin[1]);
    Options a = *o;
    a.ckpt = bin[1], a.limit = 1000;
    if (cmd_tokens(&a)) return 1;
    printf("\n== compare: how often the teacher and the students disagree\n");
    a.files[0] = teacher, a.files[1] = bin[0], a.files[2] = bin[1], a.num_files = 3, a.limit = 0;
    if (cmd_compare(&a)) return 1;
    char png[4096];
    path_printf(png, sizeof(png), "%s_attention_", prefix);
    Net net;
    if (net_load(&net, bin[1])) return 1;
    int image = o->image, written = attention_maps(&net.deit, &test, image, png, 8);
    dataset_free(&test);
    net_free(&net);
    if (written < 0) return 1;
    double n = r[0].n, none = 100.0 * r[0].correct[HEAD_MEAN] / n, dist = 100.0 * r[1].correct[HEAD_MEAN] / n;
    printf("\n== demo (%.1f minutes): test accuracy on %d images\n", (now_seconds() - t0) / 60.0, r[0].n);
    printf("  no distillation:                        %.2f%%\n", none);
    printf("  DeiT, class + distillation token:       %.2f%% (class head %.2f%%, distillation head %.2f%%)\n", dist,
           100.0 * r[1].correct[HEAD_CLS] / n, 100.0 * r[1].correct[HEAD_DIST] / n);
    printf("  the distillation token's gain:          %+.2f points\n", dist - none);
    printf("  attention of test image %d: %sinput.png, %scls_rollout.png, %sdist_rollout.png (and per head)\n", image, png, png, png);
    return 0;
}

static int cmd_bench(const Options *o);

/* ---- ./deit debug-state: one batch, everything an outside reference implementation needs ----
   For checking deit.c against PyTorch (dev/reference.py). With a fixed random batch (images
   N(0,1), seeded labels) and the model in training mode without drop path or augmentation
   (BatchNorm of a ResNet uses batch statistics), writes into the --dump directory:
     images.f32 (B, in_chans, S, S)   labels.i32 (B)   targets.f32 (B, C) (label smoothing applied)
     teacher_logits.f32 (B, C)        only with --teacher (teacher in eval mode)
     logits.f32 (B, C)                the class head (a ResNet's only output)
     logits_dist.f32 (B, C)           only for a student with a distillation token
     loss.txt                         "total base distill" as decimal numbers
     grads.bin                        the gradients of the loss, in the checkpoint format of --ckpt
   All binary files are raw little-endian arrays without header, except grads.bin. */
static void write_raw(const char *dir, const char *name, const void *data, size_t bytes) {
    char path[4096];
    path_printf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, bytes, f) != bytes || fclose(f)) die("%s: cannot write", path);
}

static int cmd_debug_state(const Options *o) {
    if (!o->ckpt || !o->dump) die("debug-state needs --ckpt FILE and --dump DIR");
    Net net, teacher;
    memset(&teacher, 0, sizeof(teacher));
    if (net_load(&net, o->ckpt)) return 1;
    int B = pick_int(o->batch, 4), C = net_num_classes(&net), S = net_img_size(&net);
    int chans = net_in_chans(&net);
    DistillType type = o->kd.type;
    if (type != DISTILL_NONE) {
        if (!o->teacher) die("--distill %s needs --teacher FILE", distill_names[type]);
        if (net_load(&teacher, o->teacher)) return 1;
        if (net_num_classes(&teacher) != C || net_img_size(&teacher) != S || net_in_chans(&teacher) != chans)
            die("%s: the teacher takes %d-channel %dx%d images and predicts %d classes; %s: %d-channel %dx%d, %d classes", o->teacher,
                net_in_chans(&teacher), net_img_size(&teacher), net_img_size(&teacher), net_num_classes(&teacher), o->ckpt, chans,
                S, S, C);
    }
    Rng rng;
    rng_seed(&rng, (uint64_t)o->seed);
    size_t n_img = (size_t)B * chans * S * S;
    float *images = xmalloc(sizeof(float) * n_img), *targets = xmalloc(sizeof(float) * (size_t)B * C);
    int32_t *labels = xmalloc(sizeof(int32_t) * B);
    int *ilabels = xmalloc(sizeof(int) * B);
    for (size_t i = 0; i < n_img; i++) images[i] = rng_normal(&rng);
    for (int b = 0; b < B; b++) ilabels[b] = labels[b] = rng_int(&rng, C);
    smooth_targets(targets, ilabels, pick(o->smoothing, 0.1f), B, C);
    write_raw(o->dump, "images.f32", images, sizeof(float) * n_img);
    write_raw(o->dump, "labels.i32", labels, sizeof(int32_t) * B);
    write_raw(o->dump, "targets.f32", targets, sizeof(float) * (size_t)B * C);
    const float *teacher_logits = NULL;
    if (teacher.kind) {
        net_forward(&teacher, images, B, 0);
        teacher_logits = net_logits(&teacher, HEAD_MEAN);
        write_raw(o->dump, "teacher_logits.f32", teacher_logits, sizeof(float) * (size_t)B * C);
    }
    if (net.kind == NET_DEIT) net.deit.drop_path = 0.0f;
    net_forward(&net, images, B, 1);
    LossParts lp = net_loss_backward(&net, targets, teacher_logits, &o->kd, B);
    write_raw(o->dump, "logits.f32", net_logits(&net, HEAD_CLS), sizeof(float) * (size_t)B * C);
    if (net_has_dist(&net)) write_raw(o->dump, "logits_dist.f32", net_logits(&net, HEAD_DIST), sizeof(float) * (size_t)B * C);
    char text[256], path[4096];
    int len = snprintf(text, sizeof(text), "%.9g %.9g %.9g\n", lp.total, lp.base, lp.distill);
    write_raw(o->dump, "loss.txt", text, (size_t)len);
    /* the gradients in the checkpoint layout: swap them in, save, swap back */
    float *params = net_params(&net);
    size_t n = net_num_params(&net);
    float *saved = xmalloc(sizeof(float) * n);
    memcpy(saved, params, sizeof(float) * n);
    memcpy(params, net_grads(&net), sizeof(float) * n);
    path_printf(path, sizeof(path), "%s/grads.bin", o->dump);
    int rc = net_save(&net, path);
    memcpy(params, saved, sizeof(float) * n);
    printf("debug-state: %s, batch %d, distill %s: loss %.6f (base %.6f, distill %.6f); wrote %s/\n", o->ckpt, B,
           distill_names[type], lp.total, lp.base, lp.distill, o->dump);
    free(saved), free(images), free(targets), free(labels), free(ilabels);
    net_free(&net), net_free(&teacher);
    return rc ? 1 : 0;
}

static int deit_main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage();
        return argc < 2 ? 1 : 0;
    }
    unsigned cmd = 0;
    for (int i = 0; i < NUM_COMMANDS && !cmd; i++) if (!strcmp(argv[1], command_names[i].name)) cmd = command_names[i].cmd;
    if (!cmd) {
        fprintf(stderr, "deit: error: unknown command '%s'\n", argv[1]);
        usage();
        return 1;
    }
    matmul_path(); /* chosen here, before any thread starts, and read-only from then on */
    options_defaults(&opt_values);
    parse_flags(argc, argv, cmd);
    if ((cmd & ALL_TRAIN) && opt_values.resume) resume_flags(argc, argv, cmd);
    opt_values.kd.type = distill_type(&opt_values);
    if (opt_values.matmul && strcmp(opt_values.matmul, "naive") && strcmp(opt_values.matmul, "fast"))
        die("--matmul must be naive or fast, not '%s'", opt_values.matmul);
    if (opt_values.matmul) matmul_use_fast = !strcmp(opt_values.matmul, "fast");
    set_threads(opt_values.threads);
    setvbuf(stdout, NULL, _IOLBF, 0);
    switch (cmd) {
    case CMD_TEACHER: return cmd_train(&opt_values, 1);
    case CMD_TRAIN: return cmd_train(&opt_values, 0);
    case CMD_EVAL: return cmd_eval(&opt_values);
    case CMD_DEBUG: return cmd_debug_state(&opt_values);
    case CMD_TOKENS: return cmd_tokens(&opt_values);
    case CMD_COMPARE: return cmd_compare(&opt_values);
    case CMD_ATTENTION: return cmd_attention(&opt_values);
    case CMD_DEMO: return cmd_demo(&opt_values);
    default: return cmd_bench(&opt_values);
    }
}

/* ============================================================================================
 * III.6 ./deit bench: where the time goes
 * ========================================================================================== */

static double median(double *x, int n) {
    for (int i = 1; i < n; i++) /* insertion sort: n is small */
        for (int j = i; j > 0 && x[j] < x[j - 1]; j--) {
            double t = x[j];
            x[j] = x[j - 1], x[j - 1] = t;
        }
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

/* Peak resident memory from /proc/self/status (Linux); -1 where there is no such file. */
static long peak_memory_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof(line), f))
        if (!strncmp(line, "VmHWM:", 6)) kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

/* Forward FLOPs of one image (a multiply-add counts 2), as computed: block l's queries, projection
   and MLP for the deit_tokens_out(m, l) tokens that leave it (all T, or the heads' in the last). */
static double deit_flops_per_image(const DeiT *m) {
    const DeiTConfig *c = &m->config;
    double D = c->dim, H = c->mlp_hidden, C = c->num_classes, N = m->num_patches, T = m->num_tokens;
    double K = (double)c->in_chans * c->patch_size * c->patch_size, f = 2 * N * K * D + 2 * D * C * (1 + c->dist_token);
    for (int l = 0; l < c->depth; l++) {
        double Tq = deit_tokens_out(m, l);
        f += 2 * T * D * 3 * D + 2 * 2 * Tq * T * D + 2 * Tq * D * D + 2 * 2 * Tq * D * H;
    }
    return f;
}

static double teacher_flops_per_image(Teacher *t) {
    ConvBN **all = xmalloc(sizeof(ConvBN *) * teacher_max_convs(t));
    int n = teacher_convs(t, all);
    double f = 2.0 * teacher_last_width(t) * t->config.num_classes;
    for (int i = 0; i < n; i++) f += 2.0 * all[i]->cout * all[i]->cin * all[i]->ksize * all[i]->ksize * all[i]->hout * all[i]->wout;
    free(all);
    return f;
}

/* Times a training step (forward, backward, optimizer) and inference of a net, median of R. */
static void bench_net(Net *net, int B, int R, double flops_per_image, const char *name) {
    int C = net_num_classes(net), S = net_img_size(net);
    Rng rng;
    rng_seed(&rng, 7);
    float *images = xmalloc(sizeof(float) * (size_t)B * 3 * S * S), *targets = xcalloc((size_t)B * C, sizeof(float));
    for (size_t i = 0; i < (size_t)B * 3 * S * S; i++) images[i] = rng_normal(&rng);
    for (int b = 0; b < B; b++) targets[(size_t)b * C + rng_int(&rng, C)] = 1.0f;
    Optimizer opt;
    optimizer_init(&opt, OPT_ADAMW, net_num_params(net), 0.05f, 0, 0, 0);
    double *t_train = xmalloc(sizeof(double) * (R + 1)), *t_inf = xmalloc(sizeof(double) * (R + 1));
    for (int r = 0; r <= R; r++) { /* r = 0 is the warm-up */
        double t0 = now_seconds();
        net_forward(net, images, B, 1);
        Distillation none = {DISTILL_NONE, 0.5f, 1.0f};
        net_loss_backward(net, targets, NULL, &none, B);
        optimizer_step(&opt, net_params(net), net_grads(net), net_tensors(net), net_num_tensors(net), 1e-4f);
        double t1 = now_seconds();
        net_forward(net, images, B, 0);
        double t2 = now_seconds();
        if (r > 0) t_train[r - 1] = t1 - t0, t_inf[r - 1] = t2 - t1;
    }
    double tt = median(t_train, R), ti = median(t_inf, R);
    printf("%-10s train step   %8.1f img/s  (%.3f s per batch of %d, %.1f GFLOP/s achieved, counting 3x forward)\n", name,
           B / tt, tt, B, 3.0 * flops_per_image * B / tt * 1e-9);
    printf("%-10s inference    %8.1f img/s  (%.3f s per batch, %.1f GFLOP/s, %.3f GFLOP per image forward)\n", name, B / ti, ti,
           flops_per_image * B / ti * 1e-9, flops_per_image * 1e-9);
    optimizer_free(&opt);
    free(images), free(targets), free(t_train), free(t_inf);
}

/* The textbook order i-j-k with B's rows contiguous: the inner loop reads B a column at a time.
   Only for bench, to show what the order of the naive loops (Part I.2) is worth. */
static void matmul_textbook_order(float *C, int ldc, const float *A, int a_rs, int a_cs,
                                  const float *B, int b_rs, int M, int N, int K) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float sum = 0.0f;
            for (int k = 0; k < K; k++) sum += A[(size_t)i * a_rs + (size_t)k * a_cs] * B[(size_t)k * b_rs + j];
            C[(size_t)i * ldc + j] += sum;
        }
}

/* Median seconds of R runs (after a warm-up) of the three products of a linear layer
   (M x K) -> (M x N): forward y = x W^T, dinp = dy W, dweight = dy^T x, with matmul(). */
static void time_linear_products(double sec[3], int M, int K, int N, int R) {
    Rng rng;
    rng_seed(&rng, 3);
    float *x = xmalloc(sizeof(float) * (size_t)M * K), *w = xmalloc(sizeof(float) * (size_t)N * K);
    float *y = xcalloc((size_t)M * N, sizeof(float)), *dx = xcalloc((size_t)M * K, sizeof(float));
    float *dw = xcalloc((size_t)N * K, sizeof(float));
    for (size_t i = 0; i < (size_t)M * K; i++) x[i] = rng_normal(&rng);
    for (size_t i = 0; i < (size_t)N * K; i++) w[i] = rng_normal(&rng);
    double *t = xmalloc(sizeof(double) * 3 * (R + 1));
    for (int r = 0; r <= R; r++) {
        double t0 = now_seconds();
        matmul(y, N, x, K, 1, w, 1, K, M, N, K);       /* y = x W^T       */
        double t1 = now_seconds();
        matmul(dx, K, y, N, 1, w, K, 1, M, K, N);      /* dx = dy W       */
        double t2 = now_seconds();
        matmul(dw, K, y, 1, N, x, K, 1, N, K, M);      /* dW = dy^T x     */
        double t3 = now_seconds();
        if (r > 0) t[r - 1] = t1 - t0, t[R + r - 1] = t2 - t1, t[2 * R + r - 1] = t3 - t2;
    }
    for (int p = 0; p < 3; p++) sec[p] = median(t + p * R, R);
    free(x), free(w), free(y), free(dx), free(dw), free(t);
}

/* GFLOP/s of the fast and the naive matmul on the products of one linear layer. The naive one
   runs on the first 256 rows only (it is slow), and once, for the fc1 shape, in the textbook
   order. */
static void bench_matmul_shape(const char *name, int M, int K, int N, int R) {
    double fast[3], naive[3], flops = 2.0 * M * N * K;
    int saved = matmul_use_fast, m_naive = M < 256 ? M : 256;
    matmul_use_fast = 1;
    time_linear_products(fast, M, K, N, R);
    matmul_use_fast = 0;
    time_linear_products(naive, m_naive, K, N, 1);
    matmul_use_fast = saved;
    double fn = 2.0 * m_naive * N * K;
    printf("matmul %-5s (%5d x %4d) x (%4d x %4d)  fast: %6.1f %6.1f %6.1f   naive: %5.2f %5.2f %5.2f GFLOP/s\n", name, M, K, K,
           N, flops / fast[0] * 1e-9, flops / fast[1] * 1e-9, flops / fast[2] * 1e-9, fn / naive[0] * 1e-9,
           fn / naive[1] * 1e-9, fn / naive[2] * 1e-9);
    if (!strcmp(name, "fc1")) {
        float *x = xcalloc((size_t)m_naive * K, sizeof(float)), *w = xcalloc((size_t)K * N, sizeof(float));
        float *y = xcalloc((size_t)m_naive * N, sizeof(float));
        double t0 = now_seconds();
        matmul_textbook_order(y, N, x, K, 1, w, N, m_naive, N, K);
        printf("matmul %-5s naive loops in the textbook order i-j-k (B read by columns): %.2f GFLOP/s\n", name,
               fn / (now_seconds() - t0) * 1e-9);
        free(x), free(w), free(y);
    }
}

/* Inference images/s of a net at batch B, median of R after a warm-up. */
static double inference_speed(Net *net, int B, int R) {
    int S = net_img_size(net);
    Rng rng;
    rng_seed(&rng, 5);
    float *images = xmalloc(sizeof(float) * (size_t)B * 3 * S * S);
    for (size_t i = 0; i < (size_t)B * 3 * S * S; i++) images[i] = rng_normal(&rng);
    double *t = xmalloc(sizeof(double) * (R + 1));
    for (int r = 0; r <= R; r++) {
        double t0 = now_seconds();
        net_forward(net, images, B, 0);
        if (r > 0) t[r - 1] = now_seconds() - t0;
    }
    double ips = B / median(t, R);
    free(images), free(t);
    return ips;
}

/* The paper's efficiency table (Table 1 and Fig. 1): parameters and inference throughput of
   DeiT-Ti/S/B and the ResNet presets on 32x32 images, and the test accuracy of the checkpoints given. */
static int bench_table(const Options *o) {
    int B = pick_int(o->batch, 64), R = o->repeats;
    Dataset d = {0};
    if (o->num_files) { /* the data and every file are checked before minutes of timing */
        d = load_test_or_die(o->data);
        if (check_checkpoint_files(o, &d)) return 1;
    }
    printf("| model | parameters | inference img/s (batch %d, %d thread(s)) | CIFAR test accuracy |\n| --- | --- | --- | --- |\n", B,
           num_threads());
    for (size_t i = 0; i < sizeof(model_presets) / sizeof(model_presets[0]); i++) {
        Net net = {.kind = NET_DEIT};
        DeiTConfig c;
        deit_preset(&c, model_presets[i].name);
        deit_build(&net.deit, &c);
        deit_init(&net.deit, 1);
        printf("| DeiT-%s/4 (%d/%d/%d) | %.2fM | %.1f | |\n", model_presets[i].name, c.dim, c.depth, c.heads,
               net.deit.num_params / 1e6, inference_speed(&net, B, R));
        net_free(&net);
    }
    for (size_t i = 0; i < sizeof(resnet_presets) / sizeof(resnet_presets[0]); i++) {
        Net net = {.kind = NET_CNN};
        TeacherConfig c;
        teacher_preset(&c, resnet_presets[i].name);
        teacher_build(&net.cnn, &c);
        teacher_init(&net.cnn, 1);
        printf("| %s | %.2fM | %.1f | |\n", resnet_presets[i].name, net.cnn.num_params / 1e6, inference_speed(&net, B, R));
        net_free(&net);
    }
    if (o->num_files) {
        for (int f = 0; f < o->num_files; f++) {
            Net net;
            if (net_load(&net, o->files[f])) return 1;
            EvalResult r;
            evaluate(&net, &d, B, 0, &r, NULL);
            printf("| %s | %.2fM | %.1f | %.2f%% |\n", o->files[f], net_num_params(&net) / 1e6, inference_speed(&net, B, R),
                   100.0 * r.correct[HEAD_MEAN] / r.n);
            free(r.confusion);
            net_free(&net);
        }
        dataset_free(&d);
    }
    return 0;
}

static int cmd_bench(const Options *o) {
    if (o->table) return bench_table(o);
    if (o->num_files) die("bench: checkpoint files (%s...) are measured only with --table 1", o->files[0]);
    TeacherConfig tc; /* the teacher architecture: --teacher NAME or --arch NAME, checked before any timing */
    const char *arch = o->teacher ? o->teacher : o->arch;
    if (o->teacher && strcmp(o->arch, "airbench") && strcmp(o->arch, o->teacher))
        die("bench: --teacher %s and --arch %s name two teachers; give one", o->teacher, o->arch);
    if (teacher_preset(&tc, arch)) die("the teacher must be airbench, resnet8, resnet20, resnet56 or resnet20w4, not '%s'", arch);
    int B = pick_int(o->batch, 64), R = o->repeats;
    Options with_dist = *o; /* the benchmark's student has the distillation token unless told otherwise */
    with_dist.dist_token = pick_int(o->dist_token, 1);
    with_dist.teacher = NULL;
    DeiTConfig c = student_config(&with_dist, 10);
    printf("deit bench: %d thread(s), batch %d, median of %d repeats, built %s OpenMP, matmul %s\n", num_threads(), B, R,
#ifdef _OPENMP
           "with",
#else
           "without",
#endif
           matmul_name());
    printf("student: dim %d depth %d heads %d patch %d, %d tokens, dist token %d\n", c.dim, c.depth, c.heads, c.patch_size,
           1 + c.dist_token + (c.img_size / c.patch_size) * (c.img_size / c.patch_size), c.dist_token);
    int T = 1 + c.dist_token + (c.img_size / c.patch_size) * (c.img_size / c.patch_size), N = T - 1 - c.dist_token;
    printf("matmul GFLOP/s of the three products of each linear layer: forward, dinp, dweight\n");
    bench_matmul_shape("patch", B * N, c.in_chans * c.patch_size * c.patch_size, c.dim, R);
    bench_matmul_shape("qkv", B * T, c.dim, 3 * c.dim, R);
    bench_matmul_shape("proj", B * T, c.dim, c.dim, R);
    bench_matmul_shape("fc1", B * T, c.dim, c.mlp_hidden, R);
    bench_matmul_shape("fc2", B * T, c.mlp_hidden, c.dim, R);
    Net net;
    net.kind = NET_DEIT;
    deit_build(&net.deit, &c);
    deit_init(&net.deit, 1);
    bench_net(&net, B, R, deit_flops_per_image(&net.deit), "student");
    net_free(&net);
    net.kind = NET_CNN;
    teacher_build(&net.cnn, &tc);
    teacher_init(&net.cnn, 1);
    printf("teacher: %s, %zu parameters\n", arch, net.cnn.num_params);
    bench_net(&net, B, R, teacher_flops_per_image(&net.cnn), arch);
    net_free(&net);
    long kb = peak_memory_kb();
    if (kb >= 0) printf("peak memory: %.1f MiB\n", kb / 1024.0);
    return 0;
}

#ifndef TESTING /* test_deit.c includes this file and brings its own main() */
int main(int argc, char **argv) { return deit_main(argc, argv); }
#endif


