/* Popcount GEMM for packed binary layers: out[r][o] = popcount(op(x[r], w[o])) summed over `words` 64-bit words,
   op = xnor (+-1 inputs) or and ({0,1} inputs). Loaded with ctypes by binexp.export.popcount; it holds no Python
   API, so one build serves every Python version on the machine. */
#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#endif

static inline int popcount64(uint64_t v) { return __builtin_popcountll(v); }

void popcount_gemm(const uint64_t *x, const uint64_t *w, int32_t *out, int64_t rows, int64_t cols, int64_t words,
                   int use_and) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const uint64_t *xr = x + r * words;
        int32_t *orow = out + r * cols;
        for (int64_t o = 0; o < cols; ++o) {
            const uint64_t *wo = w + o * words;
            int32_t acc = 0;
            if (use_and) {
                for (int64_t k = 0; k < words; ++k) acc += popcount64(xr[k] & wo[k]);
            } else {
                for (int64_t k = 0; k < words; ++k) acc += popcount64(~(xr[k] ^ wo[k]));
            }
            orow[o] = acc;
        }
    }
}

int popcount_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
