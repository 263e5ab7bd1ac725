/* Dense layer, float32, inference only: out (M x N) = act(x (M x K) @ W
 * (K x N) + b). Theano's Dot22 runs one single-threaded sgemm (the engine
 * sets OpenBLAS to one thread, the parallelism being OpenMP's), and its
 * bias and activation are a separate elementwise pass. Here each OpenMP
 * thread takes a block of the N output columns: one sgemm, then bias and
 * activation over its block while it is in cache. At batch 1 or 2 a dense
 * layer is bound by reading its weights (Lite0's classifier, 1280 x 1000,
 * is 5 MB); split by columns, each thread reads only its share of them.
 * In column-major BLAS terms the row-major product is out^T = W^T x^T:
 * sgemm("N", "N", m = columns, n = M, k = K). */

static void imgclass_dense(const float* x, const float* w, const float* b,
                           float* out, int m, int k, int n, int act) {
    const imgclass_bounds bounds = imgclass_act_bounds(act);
    if (k == 0) {  /* no inputs (BLAS wants k >= 1): out = act(b) */
        for (long i = 0; i < (long)m * n; ++i)
            out[i] = imgclass_clamp(b[i % n], bounds);
        return;
    }
    const int nb = imgclass_block16(n, IMGCLASS_MAX_THREADS());
    const int blocks = (n + nb - 1) / nb;
#pragma omp parallel for schedule(static)
    for (int bi = 0; bi < blocks; ++bi) {
        const int n0 = bi * nb;
        int cols = n - n0 < nb ? n - n0 : nb;
        int rows = m, inner = k, ld = n;
        const float one = 1.f, zero = 0.f;
        char no = 'N';
        sgemm_(&no, &no, &cols, &rows, &inner, &one, (float*)(w + n0), &ld,
               (float*)x, &inner, &zero, out + n0, &ld);
        for (int i = 0; i < m; ++i) {
            float* o = out + (long)i * n + n0;
            for (int j = 0; j < cols; ++j)
                o[j] = imgclass_clamp(o[j] + b[n0 + j], bounds);
        }
    }
}
