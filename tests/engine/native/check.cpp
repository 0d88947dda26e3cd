// The compiled kernels' own check, built without Python for another architecture (tests/engine/
// test_native_arm.py: aarch64 with a cross compiler, run under qemu): the best instruction set of
// the target (NEON, NEON with dot products) against the portable C++ kernels, with 2 threads.
// Exits 0 when they agree.
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <vector>
extern "C" { int rn_isa(); int rn_use_isa(int); void rn_set_threads(int);
void rn_quantize(int, const void*, int, int64_t, int64_t, uint8_t*, uint16_t*, uint16_t*);
void rn_matmul(int, const uint8_t*, const uint16_t*, const uint16_t*, int64_t, int64_t, const float*, int64_t, float*); }
int main() {
    int N = 37, K = 256, M = 3; srand(1);
    std::vector<float> w(N * K), x(M * K);
    for (auto& v : w) v = (rand() / (float)RAND_MAX - 0.5f) * 0.1f;
    for (auto& v : x) v = rand() / (float)RAND_MAX - 0.5f;
    printf("isa %d\n", rn_isa());
    int bad = 0;
    for (int bits = 4; bits <= 8; bits += 4) {
        std::vector<uint8_t> q(N * K); std::vector<uint16_t> d(N * K / 32), m(N * K / 32);
        rn_quantize(bits, w.data(), 0, N, K, q.data(), d.data(), m.data());
        const uint16_t* off = bits == 4 ? m.data() : nullptr;
        std::vector<float> y0(M * N), y1(M * N);
        rn_use_isa(0); rn_matmul(bits, q.data(), d.data(), off, N, K, x.data(), M, y0.data());
        rn_use_isa(-1); rn_set_threads(2); rn_matmul(bits, q.data(), d.data(), off, N, K, x.data(), M, y1.data());
        double md = 0; for (int i = 0; i < M * N; i++) md = fmax(md, fabs(y0[i] - y1[i]));
        printf("bits %d max diff portable vs best %.3g (y0[0]=%f)\n", bits, md, y0[0]);
        bad |= md > 1e-4;
    }
    return bad;
}
