// Runs the megalodon CUDA kernels (crates/megalodon/src/cuda.rs) on the CPU, one call per thread index in order,
// and checks each against naive formulas (TSN backward: against central differences of the emulated forward).
// No GPU or toolkit needed; sequential emulation cannot reveal races (every kernel writes only what its thread owns).
// Run: bash scripts/megalodon-kernels/run.sh
#include "mega_kernels.h"
#include <complex>
#include <cstdio>
#include <vector>
#include <random>
#include <functional>
typedef std::complex<double> cd;
static std::mt19937_64 rng(7);
static std::vector<float> rnd(size_t n, double lo, double hi) { std::uniform_real_distribution<double> u(lo, hi); std::vector<float> v(n); for (auto& x : v) x = (float)u(rng); return v; }
static void launch(unsigned long long threads, std::function<void()> k) {
  blockDim.x = 256; unsigned long long blocks = (threads + 255) / 256;
  for (unsigned long long b = 0; b < blocks; ++b) { blockIdx.x = (unsigned)b; for (unsigned t = 0; t < 256; ++t) { threadIdx.x = t; k(); } }
}
static double rel(const std::vector<double>& a, const std::vector<double>& b) { double n = 0, d = 0; for (size_t i = 0; i < a.size(); ++i) { n += (a[i]-b[i])*(a[i]-b[i]); d += b[i]*b[i]; } return sqrt(n / (d + 1e-300)); }
static std::vector<double> dbl(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }
static int fails = 0;
static void check(const char* what, double e, double tol) { printf("%-28s rel %.3e %s\n", what, e, e < tol ? "ok" : "FAIL"); if (!(e < tol)) ++fails; }

int main() {
  const unsigned R = 3, D = 5, N = 4, L = 150, B = 2, S = 1;
  auto cre = rnd(R*D*N, -1, 1), cim = rnd(R*D*N, -1, 1), m = rnd(D*N, -0.1, -0.01), ph = rnd(D*N, -3, 3);
  auto q = [&](unsigned i) { return std::polar(exp((double)m[i]), (double)ph[i]); };
  // power_sum forward
  std::vector<float> out(R*D*L, 0.f);
  unsigned tiles = (L + 63) / 64;
  launch((unsigned long long)R*D*tiles, [&]{ megalodon_power_sum_v1(cre.data(), cim.data(), m.data(), ph.data(), out.data(), R, D, N, L, S); });
  std::vector<double> want(R*D*L, 0.0);
  for (unsigned r = 0; r < R; ++r) for (unsigned d = 0; d < D; ++d) for (unsigned j = 0; j < L; ++j) { double a = 0; for (unsigned n = 0; n < N; ++n) { unsigned ci = (r*D+d)*N+n; a += (cd(cre[ci], cim[ci]) * std::pow(q(d*N+n), (double)(j+S))).real(); } want[(r*D+d)*L+j] = a; }
  check("power_sum fwd", rel(dbl(out), want), 1e-5);
  // power_sum backward vs naive sums
  auto g = rnd(R*D*L, -1, 1);
  std::vector<float> dcre(R*D*N), dcim(R*D*N), dmr(R*D*N), dphr(R*D*N);
  launch((unsigned long long)R*D*N, [&]{ megalodon_power_sum_bwd_v1(g.data(), cre.data(), cim.data(), m.data(), ph.data(), dcre.data(), dcim.data(), dmr.data(), dphr.data(), R, D, N, L, S); });
  std::vector<double> wcre(R*D*N), wcim(R*D*N), wm(R*D*N), wph(R*D*N);
  for (unsigned r = 0; r < R; ++r) for (unsigned d = 0; d < D; ++d) for (unsigned n = 0; n < N; ++n) {
    unsigned ci = (r*D+d)*N+n; cd c(cre[ci], cim[ci]); double a=0,b=0,cm=0,cp=0;
    for (unsigned j = 0; j < L; ++j) { double k = j + S; cd w = std::pow(q(d*N+n), k); double gj = g[(r*D+d)*L+j]; a += gj*w.real(); b += gj*w.imag(); cd cw = c*w; cm += gj*k*cw.real(); cp += gj*k*cw.imag(); }
    wcre[ci] = a; wcim[ci] = -b; wm[ci] = cm; wph[ci] = -cp; }
  check("power_sum bwd dc_re", rel(dbl(dcre), wcre), 1e-5); check("power_sum bwd dc_im", rel(dbl(dcim), wcim), 1e-5);
  check("power_sum bwd dm (per r)", rel(dbl(dmr), wm), 1e-5); check("power_sum bwd dphase (per r)", rel(dbl(dphr), wph), 1e-5);
  // decayed_sum forward and backward
  auto x = rnd(B*L*D, -1, 1);
  std::vector<float> ds(2*B*D*N);
  launch((unsigned long long)B*D*N, [&]{ megalodon_decayed_sum_v1(x.data(), m.data(), ph.data(), ds.data(), B, L, D, N); });
  std::vector<double> wds(2*B*D*N);
  for (unsigned b = 0; b < B; ++b) for (unsigned d = 0; d < D; ++d) for (unsigned n = 0; n < N; ++n) { cd s = 0; for (unsigned j = 0; j < L; ++j) s += std::pow(q(d*N+n), (double)(L-1-j)) * (double)x[(b*L+j)*D+d]; wds[(b*D+d)*N+n] = s.real(); wds[B*D*N+(b*D+d)*N+n] = s.imag(); }
  check("decayed_sum fwd", rel(dbl(ds), wds), 1e-5);
  auto gd = rnd(2*B*D*N, -1, 1);
  std::vector<float> dmb(B*D*N), dphb(B*D*N), dx(B*L*D, 0.f);
  launch((unsigned long long)B*D*N, [&]{ megalodon_decayed_sum_bwd_q_v1(gd.data(), x.data(), m.data(), ph.data(), dmb.data(), dphb.data(), B, L, D, N); });
  launch((unsigned long long)B*D*tiles, [&]{ megalodon_decayed_sum_bwd_x_v1(gd.data(), m.data(), ph.data(), dx.data(), B, L, D, N); });
  std::vector<double> wdm(B*D*N), wdph(B*D*N), wdx(B*L*D, 0.0);
  for (unsigned b = 0; b < B; ++b) for (unsigned d = 0; d < D; ++d) for (unsigned n = 0; n < N; ++n) {
    unsigned o = (b*D+d)*N+n; cd G(gd[o], gd[B*D*N+o]); cd T = 0;
    for (unsigned j = 0; j < L; ++j) { double k = L-1-j; cd w = std::pow(q(d*N+n), k); T += k * w * (double)x[(b*L+j)*D+d]; wdx[(b*L+j)*D+d] += (std::conj(G) * w).real(); }
    wdm[o] = (std::conj(G) * T).real(); wdph[o] = -(std::conj(G) * T).imag(); }
  check("decayed_sum bwd dm (per b)", rel(dbl(dmb), wdm), 1e-5); check("decayed_sum bwd dphase", rel(dbl(dphb), wdph), 1e-5); check("decayed_sum bwd dx", rel(dbl(dx), wdx), 1e-5);
  // conv rows: causal and anticausal
  auto k = rnd(D*L, -1, 1); std::vector<float> cy(B*D*L), cz(B*D*L);
  auto xr = rnd(B*D*L, -1, 1);
  launch((unsigned long long)B*D*L, [&]{ megalodon_conv_rows_v1(xr.data(), k.data(), cy.data(), B*D, D, L, 0); });
  launch((unsigned long long)B*D*L, [&]{ megalodon_conv_rows_v1(xr.data(), k.data(), cz.data(), B*D, D, L, 1); });
  std::vector<double> wy(B*D*L, 0), wz(B*D*L, 0);
  for (unsigned r = 0; r < B*D; ++r) for (unsigned t = 0; t < L; ++t) { for (unsigned j = 0; j <= t; ++j) wy[r*L+t] += k[(r%D)*L+j]*xr[r*L+t-j]; for (unsigned j = 0; j + t < L; ++j) wz[r*L+t] += k[(r%D)*L+j]*xr[r*L+t+j]; }
  check("conv causal", rel(dbl(cy), wy), 1e-5); check("conv anticausal", rel(dbl(cz), wz), 1e-5);
  // CEMA scan vs naive recurrence
  const unsigned Ls = 40;
  auto p = rnd(D*N, 0.1, 0.9), gre = rnd(D*N, -1, 1), gim = rnd(D*N, -1, 1), om = rnd(D, -0.3, 0.3), hr = rnd(B*D*N, -1, 1), hi = rnd(B*D*N, -1, 1), xs = rnd(B*Ls*D, -1, 1);
  std::vector<float> ys(B*Ls*D), hro(B*D*N), hio(B*D*N);
  launch((unsigned long long)B*D, [&]{ megalodon_cema_scan_v1(xs.data(), p.data(), m.data(), ph.data(), gre.data(), gim.data(), om.data(), hr.data(), hi.data(), ys.data(), hro.data(), hio.data(), B, Ls, D, N); });
  std::vector<double> wys(B*Ls*D), whr(B*D*N), whi(B*D*N);
  for (unsigned b = 0; b < B; ++b) for (unsigned d = 0; d < D; ++d) { std::vector<cd> h(N); for (unsigned n = 0; n < N; ++n) h[n] = cd(hr[(b*D+d)*N+n], hi[(b*D+d)*N+n]);
    for (unsigned t = 0; t < Ls; ++t) { double xv = xs[(b*Ls+t)*D+d], a = 0; for (unsigned n = 0; n < N; ++n) { h[n] = q(d*N+n)*h[n] + (double)p[d*N+n]*xv; a += (cd(gre[d*N+n], gim[d*N+n])*h[n]).real(); } wys[(b*Ls+t)*D+d] = a + om[d]*xv; }
    for (unsigned n = 0; n < N; ++n) { whr[(b*D+d)*N+n] = h[n].real(); whi[(b*D+d)*N+n] = h[n].imag(); } }
  check("cema scan y", rel(dbl(ys), wys), 1e-5); check("cema scan h_re", rel(dbl(hro), whr), 1e-5); check("cema scan h_im", rel(dbl(hio), whi), 1e-5);
  // TSN forward and backward: the backward against central differences of the emulated forward (in f32: loose).
  const unsigned Bt = 2, Lt = 9, Dt = 6, Gt = 2; const float eps = 1e-5f;
  auto tx = rnd(Bt*Lt*Dt, -2, 4), tw = rnd(Dt, -0.2, 0.2), tb = rnd(Dt, -0.2, 0.2), tm = rnd(Bt*Gt, -1, 1), tv = rnd(Bt*Gt, 0.5, 2);
  std::vector<unsigned> tc = {5, 5}; std::vector<unsigned char> mask(Bt*Lt, 0); mask[3] = 1; mask[Lt+7] = 1;
  auto wout = rnd(Bt*Lt*Dt, -1, 1);
  auto fwd = [&](const std::vector<float>& xx, const std::vector<float>& ww, const std::vector<float>& bb, const std::vector<float>& mm, const std::vector<float>& vv) {
    std::vector<float> y(Bt*Lt*Dt), m1(Bt*Gt), v1(Bt*Gt); std::vector<unsigned> c1(Bt);
    launch(Bt*Gt, [&]{ megalodon_tsn_fwd_v1(xx.data(), ww.data(), bb.data(), mm.data(), vv.data(), tc.data(), mask.data(), y.data(), m1.data(), v1.data(), c1.data(), Bt, Lt, Dt, Gt, eps, 1); });
    double l = 0; for (size_t i = 0; i < y.size(); ++i) l += (double)y[i]*wout[i]; return l; };
  std::vector<float> gdx(Bt*Lt*Dt), dwb(Bt*Dt, 0.f), dbb(Bt*Dt, 0.f), dmean(Bt*Gt), dvar(Bt*Gt), dc1(Bt*Gt*Lt), dc2(Bt*Gt*Lt);
  launch(Bt*Gt, [&]{ megalodon_tsn_bwd_v1(tx.data(), wout.data(), tw.data(), tm.data(), tv.data(), tc.data(), mask.data(), gdx.data(), dwb.data(), dbb.data(), dmean.data(), dvar.data(), dc1.data(), dc2.data(), Bt, Lt, Dt, Gt, eps, 1); });
  auto fd = [&](std::vector<float> v, int which) { std::vector<double> out(v.size()); for (size_t i = 0; i < v.size(); ++i) { float h = 1e-2f * std::max(1.0f, fabsf(v[i])); auto a = v, b = v; a[i] += h; b[i] -= h;
      double la, lb; switch (which) { case 0: la = fwd(a, tw, tb, tm, tv); lb = fwd(b, tw, tb, tm, tv); break; case 1: la = fwd(tx, a, tb, tm, tv); lb = fwd(tx, b, tb, tm, tv); break; case 2: la = fwd(tx, tw, a, tm, tv); lb = fwd(tx, tw, b, tm, tv); break; case 3: la = fwd(tx, tw, tb, a, tv); lb = fwd(tx, tw, tb, b, tv); break; default: la = fwd(tx, tw, tb, tm, a); lb = fwd(tx, tw, tb, tm, b); }
      out[i] = (la - lb) / (2.0 * ((double)a[i] - (double)b[i]) / 2.0); } return out; };
  std::vector<double> dw(Dt, 0), db(Dt, 0); for (unsigned b = 0; b < Bt; ++b) for (unsigned f = 0; f < Dt; ++f) { dw[f] += dwb[b*Dt+f]; db[f] += dbb[b*Dt+f]; }
  check("tsn bwd dx (vs FD)", rel(dbl(gdx), fd(tx, 0)), 2e-3); check("tsn bwd dw (vs FD)", rel(dw, fd(tw, 1)), 2e-3); check("tsn bwd db (vs FD)", rel(db, fd(tb, 2)), 2e-3);
  check("tsn bwd dmean (vs FD)", rel(dbl(dmean), fd(tm, 3)), 2e-3); check("tsn bwd dvar (vs FD)", rel(dbl(dvar), fd(tv, 4)), 2e-3);
  printf("%d failures\n", fails); return fails != 0;
}
