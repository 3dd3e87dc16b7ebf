/*
 * deit.c - DeiT (Touvron et al., "Training data-efficient image transformers & distillation
 * through attention", ICML 2021) in one file of C: the vision transformer with class and
 * distillation tokens, every layer's forward and hand-written backward, the losses of the
 * paper, a ResNet teacher, AdamW/SGD, the CIFAR loader with DeiT's augmentations, and a CLI.
 *
 *   cc -O3 deit.c -lm -o deit        (or: make, for OpenMP and -march=native)
 *
 * Read it in this order, which is the paper's:
 *   1. utilities (checked I/O, random numbers, optional OpenMP)
 *   2. the matmul: the one routine where the time goes, and linear layers built on it
 *   3. the vision transformer, layer by layer: patch embedding, class + distillation tokens and
 *      position embedding, LayerNorm, multi-head self-attention, MLP with GELU, residual with
 *      stochastic depth, the two heads
 *   4. the losses: cross-entropy (label smoothing, soft targets) and distillation (soft, hard)
 *   5. the model: parameters, init, forward, backward, checkpoint file
 *   6. optimizers and the learning-rate schedule
 *   7. the teacher: a CIFAR ResNet (convolution via im2col, BatchNorm, ReLU, pooling)
 *   8. data: CIFAR loader and augmentation
 *   9. training and evaluation, training state and resume
 *  10. the command line
 *
 * Conventions (as in llm.c): a layer is a pair  name_forward(out, ..., inp, ..., sizes)  and
 * name_backward(dinp, ..., dout, ..., sizes); backward functions ACCUMULATE (+=) into their
 * gradient buffers, so the model zeroes all gradients once before each backward pass.
 */
#include "deit.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ============================================================================================
 * 1. Utilities
 * ========================================================================================== */

/* OpenMP is optional. OMP(...) expands to a #pragma omp when compiling with -fopenmp and to
   nothing otherwise, so that -Wall does not warn about unknown pragmas in a plain build. */
#ifdef _OPENMP
#include <omp.h>
#define OMP(...) _Pragma(#__VA_ARGS__)
static int num_threads(void) { return omp_get_max_threads(); }
static int thread_id(void) { return omp_get_thread_num(); }
static void set_threads(int n) { if (n > 0) omp_set_num_threads(n); }
#else
#define OMP(...)
static int num_threads(void) { return 1; }
static int thread_id(void) { return 0; }
static void set_threads(int n) { (void)n; }
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

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) die("out of memory allocating %zu x %zu bytes", n, size);
    return p;
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
    return x / (x + y);
}

/* ============================================================================================
 * 2. The matmul
 *
 * Every linear layer, every convolution (via im2col) and all their backward passes are one
 * product  C += A * B  with A (M x K), B (K x N), C (M x N). The three products of a linear
 * layer only differ in which operand is read transposed, so matmul() takes each operand with
 * a row stride and a column stride:  A(i,k) = A[i*a_rs + k*a_cs],  B(k,j) = B[k*b_rs + j*b_cs].
 * ========================================================================================== */

/* The reference: three loops, obviously right. The tests compare matmul() against it. */
static void matmul_reference(float *C, int ldc, const float *A, int a_rs, int a_cs,
                             const float *B, int b_rs, int b_cs, int M, int N, int K) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double sum = 0.0;
            for (int k = 0; k < K; k++)
                sum += (double)A[(size_t)i * a_rs + (size_t)k * a_cs] * B[(size_t)k * b_rs + (size_t)j * b_cs];
            C[(size_t)i * ldc + j] += (float)sum;
        }
}

/* The fast one. Three tricks, all plain C that the compiler turns into vector instructions:
 *
 * 1. Register tile. The innermost routine (micro_kernel) computes a small MR x NR block of C
 *    in a local array `acc`. For each k it loads MR numbers of A and NR numbers of B and does
 *    MR*NR multiply-adds: every number loaded is used MR or NR times. With constant MR and NR
 *    the compiler keeps `acc` in vector registers and vectorizes the j loop (NR wide).
 * 2. Packing. Before the kernel runs, the part of A it needs is copied into "panels" of MR
 *    rows laid out k by k (MR consecutive floats per k), and B into panels of NR columns (NR
 *    consecutive floats per k). The kernel then reads both with unit stride, whatever the
 *    strides (transposes) of the original operands: this is what lets one routine serve the
 *    forward pass and both backward products. Edges are padded with zeros, so the kernel
 *    always computes a full tile and only the valid part is added to C.
 * 3. Cache blocking. K is cut in slices of KC so a packed A block (MC x KC) stays in L2 and a
 *    B panel (KC x NR) in L1 while they are reused; N is cut in slices of NC so packed B fits
 *    in L3.
 * Threads (OpenMP) split the tiles of C; no two threads ever write the same element of C, so
 * the backward products are race-free and the result does not depend on the thread count.
 */
#define MR 6
#define NR 32
#define KC 256
#define MC 72  /* a multiple of MR */
#define NC 4096 /* a multiple of NR */

static void micro_kernel(int kc, const float *restrict a, const float *restrict b,
                         float *restrict c, int ldc, int m, int n) {
    float acc[MR][NR] = {{0}};
    for (int k = 0; k < kc; k++) {
        for (int i = 0; i < MR; i++) {
            float aik = a[k * MR + i];
            for (int j = 0; j < NR; j++) acc[i][j] += aik * b[k * NR + j];
        }
    }
    if (m == MR && n == NR) {
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) c[(size_t)i * ldc + j] += acc[i][j];
    } else {
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) c[(size_t)i * ldc + j] += acc[i][j];
    }
}

/* A[i0 .. i0+m) x [k0 .. k0+kc) into panels of MR rows, zero padded. */
static void pack_a(float *restrict dst, const float *A, int a_rs, int a_cs, int i0, int m, int k0, int kc) {
    for (int p = 0; p < m; p += MR) {
        for (int k = 0; k < kc; k++)
            for (int i = 0; i < MR; i++)
                *dst++ = (p + i < m) ? A[(size_t)(i0 + p + i) * a_rs + (size_t)(k0 + k) * a_cs] : 0.0f;
    }
}

/* One panel: B[k0 .. k0+kc) x [j0 .. j0+n) as kc rows of NR, zero padded. */
static void pack_b_panel(float *restrict dst, const float *B, int b_rs, int b_cs, int k0, int kc, int j0, int n) {
    for (int k = 0; k < kc; k++)
        for (int j = 0; j < NR; j++)
            *dst++ = (j < n) ? B[(size_t)(k0 + k) * b_rs + (size_t)(j0 + j) * b_cs] : 0.0f;
}

static float *matmul_packed_b; /* KC x NC, allocated once */

static void matmul(float *C, int ldc, const float *A, int a_rs, int a_cs,
                   const float *B, int b_rs, int b_cs, int M, int N, int K) {
    if (M <= 0 || N <= 0 || K <= 0) return;
    if (!matmul_packed_b) matmul_packed_b = xmalloc(sizeof(float) * KC * NC);
    float *bp = matmul_packed_b;
    for (int j0 = 0; j0 < N; j0 += NC) {
        int nc = N - j0 < NC ? N - j0 : NC;
        int n_panels = (nc + NR - 1) / NR;
        for (int k0 = 0; k0 < K; k0 += KC) {
            int kc = K - k0 < KC ? K - k0 : KC;
            OMP(omp parallel for schedule(static))
            for (int q = 0; q < n_panels; q++) {
                int n = nc - q * NR < NR ? nc - q * NR : NR;
                pack_b_panel(bp + (size_t)q * NR * kc, B, b_rs, b_cs, k0, kc, j0 + q * NR, n);
            }
            /* Work items: (block of MC rows) x (group of 4 B panels). Each packs its A block. */
            int n_blocks = (M + MC - 1) / MC;
            int n_groups = (n_panels + 3) / 4;
            OMP(omp parallel)
            {
                _Alignas(64) float ap[MC * KC];
                int packed_block = -1;
                OMP(omp for schedule(static))
                for (int w = 0; w < n_blocks * n_groups; w++) {
                    int blk = w / n_groups, grp = w % n_groups;
                    int i0 = blk * MC, m = M - i0 < MC ? M - i0 : MC;
                    if (packed_block != blk) {
                        pack_a(ap, A, a_rs, a_cs, i0, m, k0, kc);
                        packed_block = blk;
                    }
                    int q_end = (grp + 1) * 4 < n_panels ? (grp + 1) * 4 : n_panels;
                    for (int q = grp * 4; q < q_end; q++) {
                        int jn = nc - q * NR < NR ? nc - q * NR : NR;
                        for (int p = 0; p < m; p += MR) {
                            int im = m - p < MR ? m - p : MR;
                            micro_kernel(kc, ap + (size_t)p * kc, bp + (size_t)q * NR * kc,
                                         C + (size_t)(i0 + p) * ldc + j0 + q * NR, ldc, im, jn);
                        }
                    }
                }
            }
        }
    }
}

/* Linear layer, y = x W^T + b, with W stored (out, in) as in PyTorch.
     inp (M, K), w (N, K), b (N) -> out (M, N)                                             */
static void linear_forward(float *out, const float *inp, const float *w, const float *b, int M, int K, int N) {
    OMP(omp parallel for schedule(static))
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) out[(size_t)i * N + j] = b ? b[j] : 0.0f;
    matmul(out, N, inp, K, 1, w, 1, K, M, N, K); /* B(k,j) = w[j*K + k]: W read transposed */
}

/* Backward of y = x W^T + b:
     dx = dy W          (M,N)(N,K)  -> (M,K)
     dW = dy^T x        (N,M)(M,K)  -> (N,K)
     db = sum over rows of dy                                                              */
static void linear_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                            const float *w, int M, int K, int N) {
    if (dinp) matmul(dinp, K, dout, N, 1, w, K, 1, M, K, N);
    matmul(dw, K, dout, 1, N, inp, K, 1, N, K, M); /* A(i,k) = dout[k*N + i]: dy read transposed */
    if (db) {
        OMP(omp parallel for schedule(static))
        for (int j0 = 0; j0 < N; j0 += 64) { /* each thread owns a range of columns */
            int j1 = j0 + 64 < N ? j0 + 64 : N;
            for (int i = 0; i < M; i++)
                for (int j = j0; j < j1; j++) db[j] += dout[(size_t)i * N + j];
        }
    }
}

/* ============================================================================================
 * 3. The vision transformer, layer by layer (paper Sec. 3 and 4; ViT of Dosovitskiy et al.)
 * ========================================================================================== */

/* ---- 3.1 Patch embedding ---------------------------------------------------------------
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

/* ---- 3.2 Class token, distillation token, position embedding ---------------------------
   x[b] = [cls + pos_0, dist + pos_1, patch_1 + pos_2, ..., patch_N + pos_{T-1}]
   Without a distillation token: [cls + pos_0, patch_1 + pos_1, ...].                       */
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

/* ---- 3.3 LayerNorm (eps 1e-6), over the last dimension of each of R rows ----------------
   y = (x - mean) * rstd * w + b,   rstd = 1 / sqrt(var + eps)                              */
#define LN_EPS 1e-6f
static void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                              const float *b, int R, int D) {
    OMP(omp parallel for schedule(static))
    for (int r = 0; r < R; r++) {
        const float *x = inp + (size_t)r * D;
        float m = 0.0f;
        for (int i = 0; i < D; i++) m += x[i];
        m /= D;
        float v = 0.0f;
        for (int i = 0; i < D; i++) v += (x[i] - m) * (x[i] - m);
        v /= D;
        float s = 1.0f / sqrtf(v + LN_EPS);
        float *y = out + (size_t)r * D;
        for (int i = 0; i < D; i++) y[i] = (x[i] - m) * s * w[i] + b[i];
        mean[r] = m;
        rstd[r] = s;
    }
}

/* With xhat = (x - mean) * rstd and g = dy * w:
     dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
     dw = sum over rows of dy * xhat,   db = sum over rows of dy                             */
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
        int i1 = i0 + 16 < D ? i0 + 16 : D;
        for (int r = 0; r < R; r++) {
            const float *x = inp + (size_t)r * D, *dy = dout + (size_t)r * D;
            for (int i = i0; i < i1; i++) {
                dw[i] += dy[i] * (x[i] - mean[r]) * rstd[r];
                db[i] += dy[i];
            }
        }
    }
}

/* ---- 3.4 Multi-head self-attention ------------------------------------------------------
   qkv (B, T, 3D) holds, for each token, q (D) then k (D) then v (D); head h owns numbers
   [h*hd, (h+1)*hd) of each, hd = D/NH. For each image b, head h, query token t:
     score[t2] = q_t . k_t2 / sqrt(hd)       for all T tokens t2 (no mask: every token sees all)
     att[t]    = softmax(score)
     out_t     = sum over t2 of att[t][t2] v_t2      written to out[b, t, h*hd ...]
   Loops run over contiguous memory: k and v of one head are first copied transposed
   (kT[i][t2]) so the dot products become vector updates over t2.                             */
static void attention_forward(float *out, float *att, const float *qkv, int B, int T, int D, int NH) {
    int hd = D / NH;
    float scale = 1.0f / sqrtf((float)hd);
    OMP(omp parallel)
    {
        float *kT = xmalloc(sizeof(float) * (size_t)hd * T);
        OMP(omp for collapse(2) schedule(static))
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++) {
                const float *base = qkv + (size_t)b * T * 3 * D;
                for (int t2 = 0; t2 < T; t2++)
                    for (int i = 0; i < hd; i++) kT[(size_t)i * T + t2] = base[(size_t)t2 * 3 * D + D + h * hd + i];
                for (int t = 0; t < T; t++) {
                    const float *q = base + (size_t)t * 3 * D + h * hd;
                    float *a = att + (((size_t)b * NH + h) * T + t) * T;
                    for (int t2 = 0; t2 < T; t2++) a[t2] = 0.0f;
                    for (int i = 0; i < hd; i++) {
                        float qi = q[i] * scale;
                        const float *k = kT + (size_t)i * T;
                        for (int t2 = 0; t2 < T; t2++) a[t2] += qi * k[t2];
                    }
                    float maxv = -FLT_MAX, sum = 0.0f;
                    for (int t2 = 0; t2 < T; t2++) maxv = a[t2] > maxv ? a[t2] : maxv;
                    for (int t2 = 0; t2 < T; t2++) {
                        a[t2] = expf(a[t2] - maxv);
                        sum += a[t2];
                    }
                    float inv = 1.0f / sum;
                    for (int t2 = 0; t2 < T; t2++) a[t2] *= inv;
                    float *o = out + ((size_t)b * T + t) * D + h * hd;
                    for (int i = 0; i < hd; i++) o[i] = 0.0f;
                    for (int t2 = 0; t2 < T; t2++) {
                        const float *v = base + (size_t)t2 * 3 * D + 2 * D + h * hd;
                        float w = a[t2];
                        for (int i = 0; i < hd; i++) o[i] += w * v[i];
                    }
                }
            }
        free(kT);
    }
}

/* Backward, for one image b, head h, query t, with dout_t the gradient of out_t:
     datt[t2]   = dout_t . v_t2
     dv_t2     += att[t][t2] * dout_t
     dscore[t2] = att[t][t2] * (datt[t2] - sum_u att[t][u] datt[u])      (softmax backward)
     dq_t      += scale * sum_t2 dscore[t2] k_t2
     dk_t2     += scale * dscore[t2] q_t
   Each (b, h) writes only its own slice of dqkv, so the parallel loop is race-free.          */
static void attention_backward(float *dqkv, const float *dout, const float *qkv, const float *att,
                               int B, int T, int D, int NH) {
    int hd = D / NH;
    float scale = 1.0f / sqrtf((float)hd);
    OMP(omp parallel)
    {
        float *vT = xmalloc(sizeof(float) * (size_t)hd * T);
        float *datt = xmalloc(sizeof(float) * (size_t)T);
        OMP(omp for collapse(2) schedule(static))
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++) {
                const float *base = qkv + (size_t)b * T * 3 * D;
                float *dbase = dqkv + (size_t)b * T * 3 * D;
                for (int t2 = 0; t2 < T; t2++)
                    for (int i = 0; i < hd; i++) vT[(size_t)i * T + t2] = base[(size_t)t2 * 3 * D + 2 * D + h * hd + i];
                for (int t = 0; t < T; t++) {
                    const float *a = att + (((size_t)b * NH + h) * T + t) * T;
                    const float *dy = dout + ((size_t)b * T + t) * D + h * hd;
                    const float *q = base + (size_t)t * 3 * D + h * hd;
                    float *dq = dbase + (size_t)t * 3 * D + h * hd;
                    for (int t2 = 0; t2 < T; t2++) datt[t2] = 0.0f;
                    for (int i = 0; i < hd; i++) {
                        const float *v = vT + (size_t)i * T;
                        for (int t2 = 0; t2 < T; t2++) datt[t2] += dy[i] * v[t2];
                    }
                    float dot = 0.0f;
                    for (int t2 = 0; t2 < T; t2++) dot += a[t2] * datt[t2];
                    for (int t2 = 0; t2 < T; t2++) {
                        const float *k = base + (size_t)t2 * 3 * D + D + h * hd;
                        float *dk = dbase + (size_t)t2 * 3 * D + D + h * hd;
                        float *dv = dbase + (size_t)t2 * 3 * D + 2 * D + h * hd;
                        float ds = a[t2] * (datt[t2] - dot) * scale;
                        for (int i = 0; i < hd; i++) {
                            dv[i] += a[t2] * dy[i];
                            dq[i] += ds * k[i];
                            dk[i] += ds * q[i];
                        }
                    }
                }
            }
        free(vT);
        free(datt);
    }
}

/* ---- 3.5 MLP: linear, GELU (exact, with erf), linear -------------------------------------
   gelu(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))
   gelu'(x) = Phi(x) + x phi(x),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)                        */
static void gelu_forward(float *out, const float *inp, size_t n) {
    OMP(omp parallel for schedule(static))
    for (size_t i = 0; i < n; i++) out[i] = 0.5f * inp[i] * (1.0f + erff(inp[i] * 0.70710678118654752f));
}

static void gelu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
    OMP(omp parallel for schedule(static))
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
        float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
        dinp[i] += dout[i] * (cdf + x * pdf);
    }
}

/* ---- 3.6 Residual connection with stochastic depth (drop path) ---------------------------
   out = x + scale[b] * branch, where scale[b] is 1 at inference and, in training, 0 with
   probability rate or 1/(1 - rate) otherwise, drawn per sample (Huang et al. 2016).
   Backward: dx += dout,  dbranch += scale[b] * dout.                                        */
static void drop_path_sample(float *scale, float rate, int B, Rng *rng) {
    float keep = 1.0f - rate;
    for (int b = 0; b < B; b++) scale[b] = (rate > 0.0f) ? (rng_uniform(rng) < keep ? 1.0f / keep : 0.0f) : 1.0f;
}

static void residual_forward(float *out, const float *x, const float *branch, const float *scale, int B, size_t n) {
    OMP(omp parallel for schedule(static))
    for (int b = 0; b < B; b++) {
        float s = scale[b];
        for (size_t i = (size_t)b * n; i < (size_t)(b + 1) * n; i++) out[i] = x[i] + s * branch[i];
    }
}

static void residual_backward(float *dx, float *dbranch, const float *dout, const float *scale, int B, size_t n) {
    OMP(omp parallel for schedule(static))
    for (int b = 0; b < B; b++) {
        float s = scale[b];
        for (size_t i = (size_t)b * n; i < (size_t)(b + 1) * n; i++) {
            dx[i] += dout[i];
            dbranch[i] += s * dout[i];
        }
    }
}

/* ---- 3.7 The heads read one token: the class token (t = 0) or the distillation token (t = 1) */
static void select_token_forward(float *out, const float *x, int t, int B, int T, int D) {
    for (int b = 0; b < B; b++) memcpy(out + (size_t)b * D, x + ((size_t)b * T + t) * D, sizeof(float) * D);
}

static void select_token_backward(float *dx, const float *dout, int t, int B, int T, int D) {
    for (int b = 0; b < B; b++)
        for (int i = 0; i < D; i++) dx[((size_t)b * T + t) * D + i] += dout[(size_t)b * D + i];
}

/* ============================================================================================
 * 4. Losses (paper Sec. 4 "Distillation through attention")
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

/* ---- Soft distillation (Hinton et al.), as in the reference implementation:
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
     none: loss = CE(head, targets)
     soft: loss = (1 - alpha) CE(head, targets) + alpha * soft(head_dist, teacher)
     hard: loss = (1 - alpha) CE(head, targets) + alpha * CE(head_dist, argmax teacher)
   Without a distillation token the distillation term uses the class head as well.          */
typedef enum { DISTILL_NONE = 0, DISTILL_SOFT = 1, DISTILL_HARD = 2 } DistillType;
static const char *distill_names[] = {"none", "soft", "hard"};

typedef struct {
    double total, base, distill; /* in double: they are averages of many terms */
} LossParts;

/* Computes the loss and ADDS its gradient wrt the logits into dlogits / dlogits_dist.
   scratch must hold B*C floats (used for the hard targets). */
static LossParts deit_loss(float *dlogits, float *dlogits_dist, float *scratch, const float *logits,
                           const float *logits_dist, const float *targets, const float *teacher_logits,
                           DistillType type, float alpha, float tau, int B, int C) {
    LossParts p = {0, 0, 0};
    const float *kd_logits = logits_dist ? logits_dist : logits; /* head receiving distillation */
    float *kd_dlogits = logits_dist ? dlogits_dist : dlogits;
    p.base = cross_entropy_forward(logits, targets, B, C);
    if (type == DISTILL_NONE || !teacher_logits) {
        p.total = p.base;
        if (dlogits) cross_entropy_backward(dlogits, logits, targets, 1.0f, B, C);
        return p;
    }
    if (type == DISTILL_SOFT) {
        p.distill = distill_soft_forward(kd_logits, teacher_logits, tau, B, C);
        if (dlogits) distill_soft_backward(kd_dlogits, kd_logits, teacher_logits, tau, alpha, B, C);
    } else {
        hard_targets(scratch, teacher_logits, B, C);
        p.distill = cross_entropy_forward(kd_logits, scratch, B, C);
        if (dlogits) cross_entropy_backward(kd_dlogits, kd_logits, scratch, alpha, B, C);
    }
    if (dlogits) cross_entropy_backward(dlogits, logits, targets, 1.0f - alpha, B, C);
    p.total = (1.0 - alpha) * p.base + alpha * p.distill;
    return p;
}

/* ============================================================================================
 * 5. The model: DeiT = ViT + distillation token
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

/* The table of parameter tensors, in checkpoint order, with their sizes and decay flags. */
static void deit_tensor_table(TensorInfo *t, const DeiTConfig *c) {
    size_t D = c->dim, L = c->depth, H = c->mlp_hidden, C = c->num_classes;
    size_t K = (size_t)c->in_chans * c->patch_size * c->patch_size;
    size_t N = (size_t)(c->img_size / c->patch_size) * (c->img_size / c->patch_size);
    size_t T = 1 + c->dist_token + N, dt = c->dist_token;
    TensorInfo table[NUM_PARAM_TENSORS] = {
        {"patch_w", 0, D * K, 1, 1},    {"patch_b", 0, D, 0, 1},
        {"cls_token", 0, D, 0, 1},      {"dist_token", 0, dt * D, 0, 1},
        {"pos_embed", 0, T * D, 0, 1},  {"ln1_w", 0, L * D, 0, 1},
        {"ln1_b", 0, L * D, 0, 1},      {"qkv_w", 0, L * 3 * D * D, 1, 1},
        {"qkv_b", 0, L * 3 * D, 0, 1},  {"proj_w", 0, L * D * D, 1, 1},
        {"proj_b", 0, L * D, 0, 1},     {"ln2_w", 0, L * D, 0, 1},
        {"ln2_b", 0, L * D, 0, 1},      {"fc1_w", 0, L * H * D, 1, 1},
        {"fc1_b", 0, L * H, 0, 1},      {"fc2_w", 0, L * D * H, 1, 1},
        {"fc2_b", 0, L * D, 0, 1},      {"lnf_w", 0, D, 0, 1},
        {"lnf_b", 0, D, 0, 1},          {"head_w", 0, C * D, 1, 1},
        {"head_b", 0, C, 0, 1},         {"head_dist_w", 0, dt * C * D, 1, 1},
        {"head_dist_b", 0, dt * C, 0, 1},
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

/* Init as the reference: linear weights (the patch embedding included: it is a linear map
   here), class/distillation tokens and position embedding ~ trunc normal(0.02); biases 0;
   LayerNorm weight 1, bias 0. */
static void deit_init(DeiT *m, uint64_t seed) {
    Rng rng;
    rng_seed(&rng, seed);
    memset(m->params_memory, 0, sizeof(float) * m->num_params);
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        const TensorInfo *t = &m->tensors[i];
        float *p = m->params_memory + t->offset;
        if (strstr(t->name, "ln") == t->name && strstr(t->name, "_w"))
            for (size_t j = 0; j < t->size; j++) p[j] = 1.0f;
        else if (t->decay || !strcmp(t->name, "cls_token") || !strcmp(t->name, "dist_token") ||
                 !strcmp(t->name, "pos_embed"))
            trunc_normal(p, t->size, 0.02f, &rng);
    }
    rng_seed(&m->rng, seed ^ 0xD15C0ull);
}

/* Activations are laid out like the parameters: a table of sizes, one allocation. */
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
        Bs * D, Bs * D, Bs * C, Bs * C, Bs * C, Bs * C,             /* cls_out ... scratch */
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
            &s->logits_mean, &s->scratch};                                                       \
        memcpy(arr, tmp, sizeof(tmp));                                                           \
    } while (0)
    ACT_PTRS(a, ptrs);
    ACT_PTRS(g, gptrs);
#undef ACT_PTRS
    size_t total = 0;
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) {
        m->act_sizes[i] = sizes[i];
        total += sizes[i];
    }
    m->num_acts = total;
    m->acts_memory = xcalloc(total, sizeof(float));
    m->grads_acts_memory = xcalloc(total, sizeof(float));
    size_t off = 0;
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) {
        *ptrs[i] = m->acts_memory + off;
        *gptrs[i] = m->grads_acts_memory + off;
        off += sizes[i];
    }
    m->batch_size = B;
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

    const float *x = a->x0;
    for (int l = 0; l < L; l++) {
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
        attention_forward(atty, att, qkv, B, T, D, NH);
        linear_forward(attproj, atty, p->proj_w + (size_t)l * D * D, p->proj_b + l * D, B * T, D, D);
        residual_forward(resid1, x, attproj, scale1, B, (size_t)T * D);
        /* x = x + drop_path(MLP(LayerNorm(x))) */
        layernorm_forward(ln2, ln2_mean, ln2_rstd, resid1, p->ln2_w + l * D, p->ln2_b + l * D, B * T, D);
        linear_forward(fc1, ln2, p->fc1_w + (size_t)l * H * D, p->fc1_b + l * H, B * T, D, H);
        gelu_forward(gelu, fc1, BTH);
        linear_forward(fc2, gelu, p->fc2_w + (size_t)l * D * H, p->fc2_b + l * D, B * T, H, D);
        residual_forward(resid2, resid1, fc2, scale2, B, (size_t)T * D);
        x = resid2;
    }
    layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, x, p->lnf_w, p->lnf_b, B * T, D);
    select_token_forward(a->cls_out, a->lnf, 0, B, T, D);
    linear_forward(a->logits, a->cls_out, p->head_w, p->head_b, B, D, C);
    if (c->dist_token) {
        select_token_forward(a->dist_out, a->lnf, 1, B, T, D);
        linear_forward(a->logits_dist, a->dist_out, p->head_dist_w, p->head_dist_b, B, D, C);
        for (size_t i = 0; i < (size_t)B * C; i++) a->logits_mean[i] = 0.5f * (a->logits[i] + a->logits_dist[i]);
    } else {
        memcpy(a->logits_mean, a->logits, sizeof(float) * B * C);
    }
}

static void deit_zero_grad(DeiT *m) {
    memset(m->grads_memory, 0, sizeof(float) * m->num_params);
    if (m->grads_acts_memory) memset(m->grads_acts_memory, 0, sizeof(float) * m->num_acts);
}

/* Loss of the last forward pass; adds dloss/dlogits into grads_acts (zero_grad first).
   targets (B, C) are the (smoothed / mixed) label distributions; teacher_logits may be NULL. */
static LossParts deit_loss_backward_start(DeiT *m, const float *targets, const float *teacher_logits,
                                          DistillType type, float alpha, float tau, int B) {
    int dist = m->config.dist_token;
    return deit_loss(m->grads_acts.logits, dist ? m->grads_acts.logits_dist : NULL, m->acts.scratch,
                     m->acts.logits, dist ? m->acts.logits_dist : NULL, targets, teacher_logits, type, alpha,
                     tau, B, m->config.num_classes);
}

/* Backward pass: the forward's layers in reverse, from grads_acts.logits(_dist) to grads. */
static void deit_backward(DeiT *m, const float *images, int B) {
    (void)images;
    const DeiTConfig *c = &m->config;
    int L = c->depth, D = c->dim, H = c->mlp_hidden, NH = c->heads, C = c->num_classes;
    int N = m->num_patches, T = m->num_tokens;
    size_t BTD = (size_t)B * T * D, BTH = (size_t)B * T * H, BT = (size_t)B * T;
    ParameterTensors *p = &m->params, *g = &m->grads;
    ActivationTensors *a = &m->acts, *da = &m->grads_acts;

    if (c->dist_token) {
        linear_backward(da->dist_out, g->head_dist_w, g->head_dist_b, da->logits_dist, a->dist_out,
                        p->head_dist_w, B, D, C);
        select_token_backward(da->lnf, da->dist_out, 1, B, T, D);
    }
    linear_backward(da->cls_out, g->head_w, g->head_b, da->logits, a->cls_out, p->head_w, B, D, C);
    select_token_backward(da->lnf, da->cls_out, 0, B, T, D);
    const float *x_last = a->resid2 + (size_t)(L - 1) * BTD;
    float *dx_last = da->resid2 + (size_t)(L - 1) * BTD;
    layernorm_backward(dx_last, g->lnf_w, g->lnf_b, da->lnf, x_last, p->lnf_w, a->lnf_mean, a->lnf_rstd, B * T, D);

    for (int l = L - 1; l >= 0; l--) {
        const float *x = l == 0 ? a->x0 : a->resid2 + (size_t)(l - 1) * BTD;
        float *dx = l == 0 ? da->x0 : da->resid2 + (size_t)(l - 1) * BTD;
        float *scale1 = a->drop_scale + (size_t)l * 2 * B, *scale2 = scale1 + B;
        float *ln1 = a->ln1 + l * BTD, *ln1_mean = a->ln1_mean + l * BT, *ln1_rstd = a->ln1_rstd + l * BT;
        float *qkv = a->qkv + l * 3 * BTD, *att = a->att + (size_t)l * B * NH * T * T;
        float *atty = a->atty + l * BTD, *resid1 = a->resid1 + l * BTD;
        float *ln2 = a->ln2 + l * BTD, *ln2_mean = a->ln2_mean + l * BT, *ln2_rstd = a->ln2_rstd + l * BT;
        float *fc1 = a->fc1 + l * BTH, *gelu = a->gelu + l * BTH;
        float *dln1 = da->ln1 + l * BTD, *dqkv = da->qkv + l * 3 * BTD, *datty = da->atty + l * BTD;
        float *dattproj = da->attproj + l * BTD, *dresid1 = da->resid1 + l * BTD;
        float *dln2 = da->ln2 + l * BTD, *dfc1 = da->fc1 + l * BTH, *dgelu = da->gelu + l * BTH;
        float *dfc2 = da->fc2 + l * BTD, *dresid2 = da->resid2 + l * BTD;

        /* MLP branch */
        residual_backward(dresid1, dfc2, dresid2, scale2, B, (size_t)T * D);
        linear_backward(dgelu, g->fc2_w + (size_t)l * D * H, g->fc2_b + l * D, dfc2, gelu,
                        p->fc2_w + (size_t)l * D * H, B * T, H, D);
        gelu_backward(dfc1, dgelu, fc1, BTH);
        linear_backward(dln2, g->fc1_w + (size_t)l * H * D, g->fc1_b + l * H, dfc1, ln2,
                        p->fc1_w + (size_t)l * H * D, B * T, D, H);
        layernorm_backward(dresid1, g->ln2_w + l * D, g->ln2_b + l * D, dln2, resid1, p->ln2_w + l * D,
                           ln2_mean, ln2_rstd, B * T, D);
        /* attention branch */
        residual_backward(dx, dattproj, dresid1, scale1, B, (size_t)T * D);
        linear_backward(datty, g->proj_w + (size_t)l * D * D, g->proj_b + l * D, dattproj, atty,
                        p->proj_w + (size_t)l * D * D, B * T, D, D);
        attention_backward(dqkv, datty, qkv, att, B, T, D, NH);
        linear_backward(dln1, g->qkv_w + (size_t)l * 3 * D * D, g->qkv_b + l * 3 * D, dqkv, ln1,
                        p->qkv_w + (size_t)l * 3 * D * D, B * T, D, 3 * D);
        layernorm_backward(dx, g->ln1_w + l * D, g->ln1_b + l * D, dln1, x, p->ln1_w + l * D, ln1_mean,
                           ln1_rstd, B * T, D);
    }
    tokens_backward(da->patch_emb, g->cls_token, g->dist_token, g->pos_embed, da->x0, B, N, D, c->dist_token);
    patch_embed_backward(g->patch_w, g->patch_b, da->patch_emb, a->patches, B, c->in_chans, c->img_size,
                         c->patch_size, D);
}

/* ---- Checkpoint file: 256 int32 header, then the parameters as float32, little-endian ----
   Written to FILE.tmp and renamed over FILE, so a crash never leaves a half-written file. */
static int host_is_little_endian(void) {
    const uint32_t one = 1;
    return *(const unsigned char *)&one == 1;
}

static int write_file_atomic(const char *path, const int32_t *header, const float *data, size_t n) {
    if (!host_is_little_endian()) return report("%s: this program writes little-endian files only", path);
    size_t len = strlen(path);
    char *tmp = xmalloc(len + 5);
    memcpy(tmp, path, len);
    memcpy(tmp + len, ".tmp", 5);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        report("%s: cannot open for writing: %s", tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    int ok = fwrite(header, sizeof(int32_t), HEADER_INTS, f) == HEADER_INTS;
    ok = ok && fwrite(data, sizeof(float), n, f) == n;
    ok = (fflush(f) == 0) && ok;
    ok = (fclose(f) == 0) && ok;
    if (!ok) {
        report("%s: write failed (disk full?): %s; %s was left as it was", tmp, strerror(errno), path);
        remove(tmp);
        free(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        report("%s: cannot rename to %s: %s", tmp, path, strerror(errno));
        remove(tmp);
        free(tmp);
        return -1;
    }
    free(tmp);
    return 0;
}

/* Reads a whole file whose length must be exactly 4 * (HEADER_INTS + expected floats); the
   caller checks the header first with read_header. */
static int read_header(const char *path, int32_t *header, long *file_bytes) {
    if (!host_is_little_endian()) return report("%s: this program reads little-endian files only", path);
    FILE *f = fopen(path, "rb");
    if (!f) return report("%s: cannot open: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return report("%s: cannot seek", path); }
    *file_bytes = ftell(f);
    rewind(f);
    size_t got = fread(header, sizeof(int32_t), HEADER_INTS, f);
    fclose(f);
    if (got != HEADER_INTS) return report("%s: too short for a checkpoint header (%ld bytes, need %d)", path, *file_bytes, HEADER_INTS * 4);
    return 0;
}

static int read_floats_after_header(const char *path, float *data, size_t n, long file_bytes) {
    long long expect = (long long)HEADER_INTS * 4 + (long long)n * 4;
    if ((long long)file_bytes != expect)
        return report("%s: file is %ld bytes but its header describes %lld (%zu parameters): truncated or not this format",
                      path, file_bytes, expect, n);
    FILE *f = fopen(path, "rb");
    if (!f) return report("%s: cannot open: %s", path, strerror(errno));
    fseek(f, HEADER_INTS * 4, SEEK_SET);
    size_t got = fread(data, sizeof(float), n, f);
    fclose(f);
    if (got != n) return report("%s: short read (%zu of %zu floats)", path, got, n);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(data[i])) return report("%s: parameter %zu is not a finite number", path, i);
    return 0;
}

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
    return deit_config_check(c, path);
}

/* Loads a student checkpoint into a new model. Returns 0, or -1 after printing why not. */
static int deit_load(DeiT *m, const char *path) {
    int32_t header[HEADER_INTS];
    long bytes = 0;
    DeiTConfig cfg;
    if (read_header(path, header, &bytes) || deit_config_from_header(&cfg, header, path)) return -1;
    deit_build(m, &cfg);
    if (read_floats_after_header(path, m->params_memory, m->num_params, bytes)) {
        deit_free(m);
        return -1;
    }
    return 0;
}

/* ============================================================================================
 * 6. Optimizers and learning-rate schedule
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
} Optimizer;

static void optimizer_init(Optimizer *o, OptType type, size_t n, float weight_decay, float momentum, int nesterov) {
    memset(o, 0, sizeof(*o));
    o->type = type;
    o->beta1 = 0.9f;
    o->beta2 = 0.999f;
    o->eps = 1e-8f;
    o->weight_decay = weight_decay;
    o->momentum = momentum;
    o->nesterov = nesterov;
    o->n = n;
    o->m = xcalloc(n, sizeof(float));
    o->v = xcalloc(n, sizeof(float));
}

static void optimizer_free(Optimizer *o) {
    free(o->m);
    free(o->v);
    o->m = o->v = NULL;
}

/* One step over every trainable tensor of the table, as PyTorch's AdamW and SGD do it:
   AdamW:  p -= lr * wd * p  (decoupled decay, only where decay is on)
           m = b1 m + (1-b1) g,  v = b2 v + (1-b2) g^2
           p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
   SGD:    g += wd * p (only where decay is on);  buf = momentum buf + g
           p -= lr * buf,   or with Nesterov  p -= lr * (g + momentum buf)                   */
static void optimizer_step(Optimizer *o, float *params, const float *grads, const TensorInfo *tensors,
                           int num_tensors, float lr) {
    o->step++;
    float bc1 = 1.0f - powf(o->beta1, (float)o->step), bc2 = 1.0f - powf(o->beta2, (float)o->step);
    for (int t = 0; t < num_tensors; t++) {
        const TensorInfo *ti = &tensors[t];
        if (!ti->trainable || ti->size == 0) continue;
        float wd = ti->decay ? o->weight_decay : 0.0f;
        float *p = params + ti->offset, *m = o->m + ti->offset, *v = o->v + ti->offset;
        const float *g = grads + ti->offset;
        long n = (long)ti->size;
        if (o->type == OPT_ADAMW) {
            OMP(omp parallel for schedule(static))
            for (long i = 0; i < n; i++) {
                p[i] -= lr * wd * p[i];
                m[i] = o->beta1 * m[i] + (1.0f - o->beta1) * g[i];
                v[i] = o->beta2 * v[i] + (1.0f - o->beta2) * g[i] * g[i];
                p[i] -= lr * (m[i] / bc1) / (sqrtf(v[i] / bc2) + o->eps);
            }
        } else {
            OMP(omp parallel for schedule(static))
            for (long i = 0; i < n; i++) {
                float gi = g[i] + wd * p[i];
                m[i] = o->momentum * m[i] + gi;
                p[i] -= lr * (o->nesterov ? gi + o->momentum * m[i] : m[i]);
            }
        }
    }
}

/* Learning rate at a step: linear warmup from warmup_lr to lr, then cosine down to min_lr
   (or constant). Steps, not epochs, so the rate changes smoothly within an epoch. */
typedef enum { SCHED_COSINE = 0, SCHED_CONSTANT = 1 } SchedType;

static float lr_at(long step, long total_steps, long warmup_steps, float lr, float min_lr, float warmup_lr,
                   SchedType sched) {
    if (step < warmup_steps) return warmup_lr + (lr - warmup_lr) * (float)step / (float)warmup_steps;
    if (sched == SCHED_CONSTANT || total_steps <= warmup_steps) return lr;
    double progress = (double)(step - warmup_steps) / (double)(total_steps - warmup_steps);
    if (progress > 1.0) progress = 1.0;
    return min_lr + 0.5f * (lr - min_lr) * (float)(1.0 + cos(3.14159265358979 * progress));
}

/* ============================================================================================
 * 10. The command line  (sections 7-9 follow in later commits)
 * ========================================================================================== */
#ifndef TESTING
static void usage(void) {
    fprintf(stderr,
            "deit.c: DeiT (data-efficient image transformers) in one C file\n"
            "usage: ./deit <command> [options]     (./deit <command> --help for its options)\n"
            "commands:\n"
            "  teacher   train the CNN teacher (a CIFAR ResNet)\n"
            "  train     train the DeiT student, with or without distillation\n"
            "  eval      evaluate a student or teacher checkpoint on the test set\n"
            "  bench     time training and inference steps and the matmul\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage();
        return argc < 2 ? 1 : 0;
    }
    fprintf(stderr, "deit: error: unknown command '%s'\n", argv[1]);
    usage();
    return 1;
}
#endif
