// gradnorm_ideal[shared]'s step after the forward, in C++ (libtorch): what mtlbench's per-task
// loop costs without Python. Built by `bench_peers.py --native` (torch.utils.cpp_extension); not
// part of mtlbench. Same update and guarantees as mtlbench.train.train_step with
// strategy=gradnorm_ideal (params=shared, rescale=none, heads=weighted, eps=1e-8):
//   per task i: g_i, head_i = autograd::grad(L_i, shared + head_i), retaining the graph but last;
//   ||g_i|| from float32 per-tensor norms added up in double; h_i = 1 / ||g_i|| as float32 (a
//   norm of 0, or whose reciprocal overflows, counts as 1e-8, i.e. h_i = 1e8);
//   shared .grad = sum_i h_i g_i (one fused add per task); head i's .grad = h_i head_i;
//   the update is applied only if the losses, weights and head gradients are finite (torch's
//   fused check, one flag) and sum_i |h_i| ||g_i|| < float32 max / 4 (so is every shared entry).
#include <torch/extension.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

using torch::Tensor;

std::tuple<Tensor, bool> gradnorm_step(std::vector<Tensor> losses,
                                       std::vector<std::vector<Tensor>> heads,
                                       std::vector<Tensor> shared) {
  pybind11::gil_scoped_release no_gil;  // the autograd engine runs without the GIL
  const size_t n = losses.size();
  std::vector<Tensor> total;
  std::vector<float> weights(n);
  std::vector<Tensor> checked;
  double bound = 0.0;
  for (size_t i = 0; i < n; ++i) {
    std::vector<Tensor> inputs(heads[i]);
    inputs.insert(inputs.end(), shared.begin(), shared.end());
    auto found = torch::autograd::grad({losses[i]}, inputs, {}, /*retain_graph=*/i + 1 < n);
    const auto nh = static_cast<std::ptrdiff_t>(heads[i].size());
    std::vector<Tensor> rest(found.begin() + nh, found.end());
    double squared = 0.0;
    for (const auto& norm : at::_foreach_norm(rest)) {
      const double v = norm.item<double>();
      squared += v * v;
    }
    const double norm = std::sqrt(squared);
    float h = static_cast<float>(1.0 / norm);
    if (!std::isfinite(h)) h = 1e8f;
    weights[i] = h;
    bound += std::abs(static_cast<double>(h)) * norm;
    if (total.empty()) {
      total = at::_foreach_mul(rest, h);
    } else {
      at::_foreach_add_(total, rest, h);
    }
    for (std::ptrdiff_t k = 0; k < nh; ++k) {
      Tensor g = found[k] * h;  // (not in place: autograd may return one tensor for two inputs)
      heads[i][k].mutable_grad() = g;
      checked.push_back(g);
    }
  }
  for (size_t j = 0; j < shared.size(); ++j) shared[j].mutable_grad() = total[j];
  const auto on = losses[0].options().dtype(torch::kFloat);
  Tensor w = torch::tensor(weights).to(on.device());
  checked.push_back(w);
  for (const auto& loss : losses) checked.push_back(loss.detach());
  Tensor found_inf = torch::zeros({1}, on);
  at::_amp_foreach_non_finite_check_and_unscale_(checked, found_inf, torch::ones({1}, on));
  const bool finite = found_inf.item<float>() == 0.0f &&
                      bound < std::numeric_limits<float>::max() / 4.0;  // false for NaN
  return {w, finite};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gradnorm_step", &gradnorm_step,
        "gradnorm_ideal[shared]'s per-task gradients, weights, update and finiteness check");
}
