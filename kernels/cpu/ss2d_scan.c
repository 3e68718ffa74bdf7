/* SS2D core for CPU inference, float32, channels-last: one pass over the map per direction.
 *
 * For each batch b and block of at most 64 channels [c0, c0 + nc), the four directions are walked one
 * after the other and their outputs summed into y (the caller owns disjoint (b, block) ranges,
 * so no two calls write the same element). Inner loops run over channels, contiguous in the
 * channels-last layout, so the compiler vectorises them (exp / log1p through the C library's
 * vector math, -fopenmp-simd -ffast-math).
 *
 *   x    (batch, L, C)        u, the map after conv + SiLU, row-major positions
 *   pre  (batch, 4, L, C)     delta's pre-activation (dt projection applied), row-major positions
 *   bias (4, C)               delta bias; delta = softplus(pre + bias)
 *   A    (4 * C, N)           state matrix (negative)
 *   Bs, Cs (batch, 4, N, L)
 *   D    (4 * C) or NULL
 *   y    (batch, L, C)        output (the first direction writes it, the others add)
 */
#include <math.h>
#include <string.h>

#define MAX_BLOCK 64
#define MAX_STATE 16

static inline long position(int k, long t, long height, long width) {
    long length = height * width;
    long r = k >= 2 ? length - 1 - t : t;
    return (k % 2 == 0) ? r : (r % height) * width + r / height;
}

static inline float softplus(float v) {
    return v > 20.f ? v : log1pf(expf(v));
}

void ss2d_scan_f32(const float *x, const float *pre, const float *bias, const float *A,
                   const float *Bs, const float *Cs, const float *D, float *y,
                   long batch, long channels, long height, long width, long d_state,
                   long block, long first_task, long last_task) {
    /* task i = (batch i / blocks, channels of block i % blocks); block <= MAX_BLOCK */
    const long length = height * width;
    const long blocks = (channels + block - 1) / block;
    float h[MAX_BLOCK * MAX_STATE];
    for (long task = first_task; task < last_task && task < batch * blocks; ++task) {
        const long b = task / blocks, c0 = (task % blocks) * block;
        const long nc = channels - c0 < block ? channels - c0 : block;
        for (int k = 0; k < 4; ++k) {
            memset(h, 0, sizeof(h));
            const float *bk = bias + k * channels + c0;
            const float *ak = A + (k * channels + c0) * d_state;
            const float *dk = D ? D + k * channels + c0 : NULL;
            const float *Bk = Bs + (b * 4 + k) * d_state * length;
            const float *Ck = Cs + (b * 4 + k) * d_state * length;
            for (long t = 0; t < length; ++t) {
                const long s = position(k, t, height, width);
                const float *xs = x + (b * length + s) * channels + c0;
                const float *ps = pre + ((b * 4 + k) * length + s) * channels + c0;
                float *ys = y + (b * length + s) * channels + c0;
                if (d_state == 1) {
                    const float bv = Bk[s], cv = Ck[s];
#pragma omp simd
                    for (long c = 0; c < nc; ++c) {
                        const float d = softplus(ps[c] + bk[c]);
                        const float u = xs[c];
                        const float hv = expf(d * ak[c]) * h[c] + d * u * bv;
                        h[c] = hv;
                        /* direction 0 writes y (never read: y starts uninitialised) */
                        ys[c] = (k == 0 ? 0.f : ys[c]) + cv * hv + (dk ? dk[c] * u : 0.f);
                    }
                } else {
                    for (long c = 0; c < nc; ++c) {
                        const float d = softplus(ps[c] + bk[c]);
                        const float u = xs[c];
                        float acc = dk ? dk[c] * u : 0.f;
                        for (long n = 0; n < d_state; ++n) {
                            float *hn = h + c * MAX_STATE + n;
                            *hn = expf(d * ak[c * d_state + n]) * *hn +
                                  d * u * Bk[n * length + s];
                            acc += Ck[n * length + s] * *hn;
                        }
                        ys[c] = (k == 0 ? 0.f : ys[c]) + acc;
                    }
                }
            }
        }
    }
}
