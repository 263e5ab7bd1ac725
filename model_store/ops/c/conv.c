/* Dense convolution (groups = 1, any kernel, stride and zero padding) +
 * bias + activation, optionally followed by max pooling, NCHW float32,
 * inference only. Theano's CorrMM builds the same im2col columns and runs
 * the same sgemm, but then an elementwise pass adds the bias and applies
 * the activation over the whole output in memory, and Pool reads it all
 * again on one core (digits-cnn: 40% of its predictor's time). Here each
 * OpenMP thread takes an even share of the images; per image: the columns
 * into a per-thread buffer, one single-threaded sgemm, bias and activation
 * while the output is in cache, then (when pooling) the max of each window
 * into the output, the unpooled planes never leaving the thread's buffer.
 *
 * Row-major out (F x P) = W (F x K) @ cols (K x P) is, in column-major BLAS
 * terms, out^T (P x F) = cols^T (P x K) @ W^T (K x F). */

/* The im2col columns of one image: cols[(ci * kh + ky) * kw + kx][oy * wo
 * + ox] = x[ci][oy * s + ky - pt][ox * s + kx - pl], zero outside. */
static void imgclass_im2col(const float* __restrict x, float* __restrict cols,
                            int c, int h, int w, int kh, int kw, int s,
                            int pt, int pl, int ho, int wo) {
    for (int ci = 0; ci < c; ++ci)
        for (int ky = 0; ky < kh; ++ky)
            for (int kx = 0; kx < kw; ++kx) {
                float* row = cols + ((long)(ci * kh + ky) * kw + kx) * ho * wo;
                /* Output columns whose input column lies inside the image. */
                int ox0 = 0, ox1 = wo;
                while (ox0 < wo && ox0 * s + kx - pl < 0) ++ox0;
                while (ox1 > ox0 && (ox1 - 1) * s + kx - pl >= w) --ox1;
                for (int oy = 0; oy < ho; ++oy) {
                    float* dst = row + (long)oy * wo;
                    const int iy = oy * s + ky - pt;
                    if (iy < 0 || iy >= h) {
                        memset(dst, 0, sizeof(float) * wo);
                        continue;
                    }
                    const float* src = x + ((long)ci * h + iy) * w + kx - pl;
                    for (int ox = 0; ox < ox0; ++ox) dst[ox] = 0.f;
                    if (s == 1)
                        for (int ox = ox0; ox < ox1; ++ox) dst[ox] = src[ox];
                    else
                        for (int ox = ox0; ox < ox1; ++ox) dst[ox] = src[ox * s];
                    for (int ox = ox1; ox < wo; ++ox) dst[ox] = 0.f;
                }
            }
}

/* Max over windows of ph x pw cells every (psh, psw) of each of the f
 * planes (ho x wo) of `in`, into `out` (hp x wp planes), windows wholly
 * inside the plane (Theano's ignore_border). The first cell starts the
 * maximum and a later one replaces it when greater (maxss, no branch), as
 * Theano's C Pool does: a NaN counts only in a window's first cell. With
 * `nans` (the planes hold a NaN), a NaN anywhere in a window makes its
 * maximum NaN instead, as NumPy's maximum does and as the ops before the
 * pooling keep it, so that a NaN output never comes out finite. That is a
 * second pass, only for images with a NaN: a NaN test per cell in the
 * first pass (a select or a branch) cost digits-cnn 15% to 2x its time;
 * imgclass_bias_act finds the NaN a vector at a time, at no cost seen. */
static void imgclass_max_pool(const float* __restrict in, float* __restrict out,
                              int f, int ho, int wo, int ph, int pw, int psh,
                              int psw, int hp, int wp, int nans) {
    for (int fi = 0; fi < f; ++fi) {
        const float* plane = in + (long)fi * ho * wo;
        float* o = out + (long)fi * hp * wp;
        for (int py = 0; py < hp; ++py)
            for (int px = 0; px < wp; ++px) {
                const float* cell = plane + (long)py * psh * wo + px * psw;
                float m = cell[0];
                for (int a = 0; a < ph; ++a)
                    for (int bb = 0; bb < pw; ++bb) {
                        const float v = cell[(long)a * wo + bb];
                        m = v > m ? v : m;
                    }
                o[py * wp + px] = m;
            }
    }
    if (!nans) return;
    for (int fi = 0; fi < f; ++fi) {
        const float* plane = in + (long)fi * ho * wo;
        float* o = out + (long)fi * hp * wp;
        for (int py = 0; py < hp; ++py)
            for (int px = 0; px < wp; ++px) {
                const float* cell = plane + (long)py * psh * wo + px * psw;
                for (int a = 0; a < ph; ++a)
                    for (int bb = 0; bb < pw; ++bb) {
                        const float v = cell[(long)a * wo + bb];
                        if (v != v) o[py * wp + px] = v;
                    }
            }
    }
}

/* row[0..p) = act(row + bias); whether a result is NaN (whole vectors,
 * so that the NaN test costs one compare and one or per vector). */
static int imgclass_bias_act(float* row, long p, float bias,
                             imgclass_bounds bounds) {
    typedef int imgclass_iw __attribute__((vector_size(IMGCLASS_VW * 4)));
    imgclass_iw nan_lanes = {};
    long j = 0;
    for (; j + IMGCLASS_VW <= p; j += IMGCLASS_VW) {
        const imgclass_vw v = imgclass_clampv(
            imgclass_load<imgclass_vw>(row + j) + bias, bounds);
        memcpy(row + j, &v, sizeof v);
        nan_lanes |= v != v;
    }
    int nans = 0;
    for (int lane = 0; lane < IMGCLASS_VW; ++lane) nans |= nan_lanes[lane];
    for (; j < p; ++j) {
        row[j] = imgclass_clamp(row[j] + bias, bounds);
        nans |= row[j] != row[j];
    }
    return nans != 0;
}

/* 0, or 1 when a per-thread buffer could not be allocated. Pooling
 * (ph, pw, psh, psw) = (1, 1, 1, 1) means none. */
static int imgclass_conv(const float* x, const float* w, const float* b,
                         float* out, int n, int c, int f, int h, int wd,
                         int kh, int kw, int s, int pt, int pb, int pl, int pr,
                         int ph, int pw, int psh, int psw, int act) {
    const imgclass_bounds bounds = imgclass_act_bounds(act);
    const int ho = (h + pt + pb - kh) / s + 1, wo = (wd + pl + pr - kw) / s + 1;
    const int pooled = ph != 1 || pw != 1 || psh != 1 || psw != 1;
    const int hp = pooled ? (ho - ph) / psh + 1 : ho;
    const int wp = pooled ? (wo - pw) / psw + 1 : wo;
    const long p = (long)ho * wo, k = (long)c * kh * kw;
    int failed = 0;
#pragma omp parallel
    {
        long begin, end;
        imgclass_share(n, &begin, &end);
        float* cols = begin < end ? (float*)malloc(sizeof(float) * k * p) : NULL;
        float* planes = begin < end && pooled
            ? (float*)malloc(sizeof(float) * f * p) : NULL;
        if (begin < end && (!cols || (pooled && !planes))) {
#pragma omp atomic write
            failed = 1;
            end = begin;
        }
        int m = (int)p, nf = f, kk = (int)k;
        const float one = 1.f, zero = 0.f;
        char no = 'N';
        for (long i = begin; i < end; ++i) {
            imgclass_im2col(x + i * c * h * wd, cols, c, h, wd, kh, kw, s, pt,
                            pl, ho, wo);
            float* o = pooled ? planes : out + i * f * p;
            sgemm_(&no, &no, &m, &nf, &kk, &one, cols, &m, (float*)w, &kk,
                   &zero, o, &m);
            int nans = 0;
            for (int fi = 0; fi < f; ++fi)
                nans |= imgclass_bias_act(o + fi * p, p, b[fi], bounds);
            if (pooled)
                imgclass_max_pool(planes, out + i * f * hp * wp, f, ho, wo,
                                  ph, pw, psh, psw, hp, wp, nans);
        }
        free(cols);
        free(planes);
    }
    return failed;
}
