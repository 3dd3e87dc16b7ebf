/* One convolution at a time, im2col against Part II's convolution without im2col (trick 6):
 * the best of 4 alternated rounds of conv_forward and conv_backward, on the shapes of ResNet-20
 * (batch 128: its stem, whose backward computes no image gradient, its three stages and its two
 * stride-2 convolutions) and airbench (batch 512). Not part of the build:
 *   cc -O3 -march=native -fopenmp dev/bench_conv.c -lm -o /tmp/bench_conv && OMP_NUM_THREADS=1 /tmp/bench_conv
 * DEIT_KERNEL=avx2 (or portable) times another kernel version. conv_direct_enabled = 2 here:
 * every shape takes the direct path, also where deit.c's rule (conv_direct) keeps im2col. */
#define TESTING
#include "../deit.c"

/* stride 1 or 2 (hw even); with_din 0: no input gradient (a stem) */
static void run_conv(int cin, int cout, int hw, int stride, int with_din, int B) {
    int ho = hw / stride;
    ConvBN l = {.cin = cin, .cout = cout, .ksize = 3, .stride = stride, .pad = 1, .hin = hw, .win = hw, .hout = ho, .wout = ho};
    size_t ni = (size_t)cin * B * hw * hw, no = (size_t)cout * B * ho * ho, nw = (size_t)cout * cin * 9;
    size_t scratch = conv_scratch_size(&l, B);
    float *in = xcalloc(ni, 4), *out = xcalloc(no, 4), *dout = xcalloc(no, 4), *din = xcalloc(ni, 4);
    float *w = xcalloc(nw, 4), *dw = xcalloc(nw, 4), *dw_lanes = xcalloc(nw * CONV_LANES, 4), *w_flip = xcalloc(nw, 4);
    float *col = xcalloc(scratch, 4), *dcol = xcalloc(scratch, 4);
    for (size_t i = 0; i < ni; i++) in[i] = (float)(i % 13) * 0.1f;
    for (size_t i = 0; i < no; i++) dout[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < nw; i++) w[i] = (float)(i % 5) * 0.1f;
    double best[2][2] = {{1e9, 1e9}, {1e9, 1e9}};
    for (int round = 0; round < 4; round++)
        for (int direct = 0; direct < 2; direct++) {
            conv_direct_enabled = direct ? 2 : 0;
            double t0 = now_seconds();
            conv_forward(out, col, NULL, in, w, &l, B);
            double t1 = now_seconds();
            conv_backward(with_din ? din : NULL, 1, dw, dw_lanes, col, dcol, NULL, w_flip, dout, in, w, &l, B);
            double t2 = now_seconds();
            if (t1 - t0 < best[direct][0]) best[direct][0] = t1 - t0;
            if (t2 - t1 < best[direct][1]) best[direct][1] = t2 - t1;
        }
    printf("%3d->%3d on %2dx%-2d%s, batch %3d: forward im2col %7.2f ms, direct %7.2f ms (%.2fx); "
           "backward %7.2f, %7.2f ms (%.2fx)\n", cin, cout, hw, hw, stride == 2 ? " stride 2" : with_din ? "" : " (no din)", B,
           best[0][0] * 1e3, best[1][0] * 1e3,
           best[0][0] / best[1][0], best[0][1] * 1e3, best[1][1] * 1e3, best[0][1] / best[1][1]);
    free(in), free(out), free(dout), free(din), free(w), free(dw), free(dw_lanes), free(w_flip), free(col), free(dcol);
}
static void run(int cin, int cout, int hw, int B) { run_conv(cin, cout, hw, 1, 1, B); }

int main(void) {
    (void)deit_main;
    printf("matmul: %s\n", matmul_name());
    run_conv(3, 16, 32, 1, 0, 128);                                   /* ResNet-20's stem */
    run(16, 16, 32, 128), run(32, 32, 16, 128), run(64, 64, 8, 128); /* its three stages */
    run_conv(16, 32, 32, 2, 1, 128), run_conv(32, 64, 16, 2, 1, 128); /* its two stride-2 convolutions */
    run(24, 64, 31, 512), run(64, 64, 15, 512), run(64, 256, 15, 512), run(256, 256, 7, 512), run(256, 256, 3, 512);
    return 0;
}
