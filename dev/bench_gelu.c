/* gelu_backward's loop with exp_approx clamped several ways, in ns per number, on 2^20 numbers
 * x ~ N(0, 1) (one thread, best of nothing: the mean of 5 passes after one warm-up). Not part of
 * the build:
 *   cc -O3 -march=native -fno-math-errno dev/bench_gelu.c -lm -o /tmp/bench_gelu && /tmp/bench_gelu
 * "both clamps" is exp_approx as it was up to ccdf005 (x clamped to [-87, 88]); "lower clamp" is
 * deit.c's now. On an Intel Xeon (Sapphire Rapids, GCC 13.3, -march=native) the first ran at
 * 15 ns a number and the second at 1.5; on the AMD EPYC (Zen 5, GCC 12.2) 0.64 and 0.61
 * (dev/SPEED.md, "An Intel Xeon"). */
#define TESTING
#include "../deit.c"

#define EXP_BODY(x)                                                                                              \
    float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;                                                   \
    float r = (x - n * 0.693145752f) - n * 1.42860677e-6f;                                                     \
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720)))))); \
    union { uint32_t bits; float f; } two_n = {.bits = (uint32_t)((int32_t)(n == n ? n : 0.0f) + 127) << 23};
static inline float exp_both(float x) { x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x; EXP_BODY(x) return p * two_n.f; }
static inline float exp_none(float x) { EXP_BODY(x) return p * two_n.f; }
static inline float exp_fmaxf(float x) { x = fmaxf(x, -87.0f); EXP_BODY(x) return p * two_n.f; }

#define GELU_BACKWARD(name, EXP)                                                                                  \
    static void name(float *dinp, const float *dout, const float *inp, size_t n) {                              \
        for (size_t i = 0; i < n; i++) {                                                                         \
            float x = inp[i];                                                                                    \
            float cdf = 0.5f * (1.0f + erf_approx(x * 0.70710678118654752f));                                    \
            float pdf = 0.39894228040143268f * EXP(-0.5f * x * x);                                               \
            dinp[i] += dout[i] * (cdf + x * pdf);                                                                \
        }                                                                                                        \
    }
GELU_BACKWARD(g_both, exp_both)
GELU_BACKWARD(g_lower, exp_approx)
GELU_BACKWARD(g_none, exp_none)
GELU_BACKWARD(g_fmaxf, exp_fmaxf)

int main(void) {
    (void)deit_main;
    size_t n = (size_t)1 << 20;
    float *x = xcalloc(n, 4), *d = xcalloc(n, 4), *o = xcalloc(n, 4);
    Rng rng;
    rng_seed(&rng, 1);
    for (size_t i = 0; i < n; i++) x[i] = rng_normal(&rng), d[i] = 1e-6f * rng_normal(&rng);
    void (*f[])(float *, const float *, const float *, size_t) = {g_both, g_lower, g_none, g_fmaxf};
    const char *name[] = {"both clamps (as was)", "lower clamp (deit.c)", "no clamp", "fmaxf(x, -87)"};
    for (int k = 0; k < 4; k++) {
        f[k](o, d, x, n);
        double t0 = now_seconds();
        for (int r = 0; r < 5; r++) f[k](o, d, x, n);
        printf("%-22s %.2f ns a number\n", name[k], (now_seconds() - t0) / 5 / (double)n * 1e9);
    }
    return 0;
}
