// pybind11 bindings of the etta runtime. Tensors arrive through DLPack (any object with
// __dlpack__), are checked here, and are handed to the C ABI as raw pointers.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "dlpack_abi.h"
#include "etta/etta.h"

namespace py = pybind11;
namespace dl = etta::dlpack;

namespace {

// Owns a consumed DLPack capsule's tensor and releases it through the producer's deleter.
class DLPackView {
 public:
  DLPackView(const py::object& obj, const char* name, int64_t stream) : name_(name) {
    if (!py::hasattr(obj, "__dlpack__")) {
      throw py::type_error(std::string(name) + " must support __dlpack__ (a torch.Tensor, numpy array, ...), got " +
                           std::string(py::str(py::type::of(obj))));
    }
    py::tuple device = obj.attr("__dlpack_device__")();
    const int device_type = device[0].cast<int>();
    // CUDA producers order their work before the consumer's stream (1 = legacy default stream).
    py::object capsule = device_type == dl::kCUDA ? obj.attr("__dlpack__")(py::arg("stream") = stream == 0 ? 1 : stream)
                                                  : obj.attr("__dlpack__")();
    PyObject* raw = capsule.ptr();
    if (!PyCapsule_IsValid(raw, "dltensor")) {
      throw py::value_error(std::string(name) + ".__dlpack__() did not return an unused 'dltensor' capsule");
    }
    managed_ = static_cast<dl::ManagedTensor*>(PyCapsule_GetPointer(raw, "dltensor"));
    PyCapsule_SetName(raw, "used_dltensor");
  }
  ~DLPackView() {
    if (managed_ != nullptr && managed_->deleter != nullptr) managed_->deleter(managed_);
  }
  DLPackView(const DLPackView&) = delete;
  DLPackView& operator=(const DLPackView&) = delete;

  const dl::Tensor& tensor() const { return managed_->dl_tensor; }
  void* data() const { return static_cast<char*>(tensor().data) + tensor().byte_offset; }
  const char* name() const { return name_; }

  std::vector<int64_t> shape() const { return {tensor().shape, tensor().shape + tensor().ndim}; }
  int ndim() const { return tensor().ndim; }
  int device_type() const { return tensor().device.device_type; }
  int device_id() const { return tensor().device.device_id; }

  // Strides in elements (DLPack allows null for a compact row-major tensor).
  std::vector<int64_t> strides() const {
    std::vector<int64_t> s(tensor().ndim);
    int64_t expected = 1;
    for (int i = tensor().ndim - 1; i >= 0; --i) {
      s[i] = tensor().strides != nullptr ? tensor().strides[i] : expected;
      expected *= tensor().shape[i];
    }
    return s;
  }

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < tensor().ndim; ++i) n *= tensor().shape[i];
    return n;
  }

  bool contiguous() const {
    // An empty tensor has no layout (torch gives it strides as if each zero-size dim had size 1).
    if (tensor().strides == nullptr || numel() == 0) return true;
    int64_t expected = 1;
    for (int i = tensor().ndim - 1; i >= 0; --i) {
      if (tensor().shape[i] != 1 && tensor().strides[i] != expected) return false;
      expected *= tensor().shape[i];
    }
    return true;
  }

  etta_dtype dtype() const {
    const dl::DataType t = tensor().dtype;
    if (t.lanes == 1 && t.code == dl::kFloat && t.bits == 32) return ETTA_FLOAT32;
    if (t.lanes == 1 && t.code == dl::kFloat && t.bits == 16) return ETTA_FLOAT16;
    if (t.lanes == 1 && t.code == dl::kBfloat && t.bits == 16) return ETTA_BFLOAT16;
    std::ostringstream msg;
    msg << name_ << " has an unsupported dtype (code " << int(t.code) << ", " << int(t.bits)
        << " bits); allowed: float32, float16, bfloat16";
    throw py::type_error(msg.str());
  }

 private:
  const char* name_;
  dl::ManagedTensor* managed_ = nullptr;
};

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

const char* dtype_name(etta_dtype d) {
  switch (d) {
    case ETTA_FLOAT32:
      return "float32";
    case ETTA_FLOAT16:
      return "float16";
    case ETTA_BFLOAT16:
      return "bfloat16";
  }
  return "unknown";
}

using View = std::unique_ptr<DLPackView>;

View view(const py::object& obj, const char* name, int64_t stream) {
  return obj.is_none() ? nullptr : std::make_unique<DLPackView>(obj, name, stream);
}

void* data(const View& v) { return v ? v->data() : nullptr; }

// The checks every binding makes, with messages that name the op, the argument and what is allowed.
class Checker {
 public:
  explicit Checker(const char* op) : op_(op) {}

  [[noreturn]] void value_error(const std::string& msg) const { throw py::value_error(std::string(op_) + ": " + msg); }
  [[noreturn]] void type_error(const std::string& msg) const { throw py::type_error(std::string(op_) + ": " + msg); }

  void ndim(const DLPackView& v, int n, const char* layout) const {
    if (v.ndim() != n) {
      value_error(std::string(v.name()) + " must have shape " + layout + ", got " + shape_str(v.shape()));
    }
  }

  void shape(const DLPackView& v, const std::vector<int64_t>& expected, const char* layout) const {
    if (v.shape() != expected) {
      value_error(std::string(v.name()) + " must have shape " + layout + " = " + shape_str(expected) + ", got " +
                  shape_str(v.shape()));
    }
  }

  void same_dtype(const DLPackView& v, const DLPackView& ref) const {
    if (v.dtype() != ref.dtype()) {
      type_error(std::string(v.name()) + " is " + dtype_name(v.dtype()) + " but " + ref.name() + " is " +
                 dtype_name(ref.dtype()) + "; they must match");
    }
  }

  void contiguous(const DLPackView& v) const {
    if (!v.contiguous()) value_error(std::string(v.name()) + " must be contiguous");
  }

  void last_dim_contiguous(const DLPackView& v) const {
    const std::vector<int64_t> s = v.strides();
    if (!s.empty() && v.shape().back() > 1 && s.back() != 1) {
      value_error(std::string(v.name()) + " must have a contiguous last dimension (stride 1), got strides " +
                  shape_str(s));
    }
  }

  void same_device(const DLPackView& v, const DLPackView& ref) const {
    if (v.device_type() != ref.device_type() || v.device_id() != ref.device_id()) {
      value_error(std::string(v.name()) + " and " + ref.name() + " must be on the same device");
    }
  }

  // Runs cpu() or cuda() for the device of `ref`, the GIL released, and turns a status into an error.
  template <class Cpu, class Cuda>
  void run(const DLPackView& ref, Cpu&& cpu, Cuda&& cuda) const {
    etta_status status = ETTA_OK;
    const int type = ref.device_type();
    if (type == dl::kCPU || type == dl::kCUDAHost) {
      py::gil_scoped_release release;
      status = cpu();
    } else if (type == dl::kCUDA) {
      py::gil_scoped_release release;
      status = on_device(ref.device_id(), cuda);
    } else {
      value_error(std::string(ref.name()) + " is on an unsupported device type " + std::to_string(type) +
                  "; allowed: CPU, CUDA");
    }
    if (status != ETTA_OK) throw std::runtime_error(std::string(op_) + " failed: " + etta_status_string(status));
  }

 private:
  // Launches on `device`, restoring the caller's current device afterwards.
  template <class Fn>
  static etta_status on_device(int device, Fn&& fn) {
    int previous = -1;
    etta_status status = etta_cuda_get_device(&previous);
    if (status != ETTA_OK) return status;
    if (previous != device && (status = etta_cuda_set_device(device)) != ETTA_OK) return status;
    status = fn();
    if (previous != device) etta_cuda_set_device(previous);
    return status;
  }

  const char* op_;
};

void* as_stream(int64_t stream) { return reinterpret_cast<void*>(stream); }

void gelu_tanh(const py::object& x_obj, const py::object& out_obj, const py::object& bias_obj, int64_t stream) {
  const Checker c("gelu_tanh");
  DLPackView x(x_obj, "x", stream), out(out_obj, "out", stream);
  const View bias = view(bias_obj, "bias", stream);
  if (out.shape() != x.shape()) {
    c.value_error("out has shape " + shape_str(out.shape()) + " but x has shape " + shape_str(x.shape()) +
                  "; they must match");
  }
  c.same_dtype(out, x);
  c.same_device(out, x);
  c.contiguous(x);
  c.contiguous(out);
  const int64_t dim = x.ndim() ? x.shape().back() : 1;
  const etta_dtype param_dtype = bias ? bias->dtype() : x.dtype();
  if (bias) {
    c.shape(*bias, {dim}, "(D,) with D = x.shape[-1]");
    c.contiguous(*bias);
    c.same_device(*bias, x);
  }
  const int64_t rows = dim ? x.numel() / dim : 0;
  c.run(
      x, [&] { return etta_gelu_tanh_cpu(x.data(), data(bias), out.data(), rows, dim, x.dtype(), param_dtype); },
      [&] {
        return etta_gelu_tanh_cuda(x.data(), data(bias), out.data(), rows, dim, x.dtype(), param_dtype,
                                   as_stream(stream));
      });
}

void snake_beta(const py::object& x_obj, const py::object& alpha_obj, const py::object& beta_obj,
                const py::object& out_obj, int64_t stream) {
  const Checker c("snake_beta");
  DLPackView x(x_obj, "x", stream), alpha(alpha_obj, "alpha", stream), beta(beta_obj, "beta", stream);
  DLPackView out(out_obj, "out", stream);
  c.ndim(x, 3, "(B, C, S)");
  const int64_t B = x.shape()[0], C = x.shape()[1], S = x.shape()[2];
  (void)x.dtype();  // an unsupported dtype is reported under the name of x
  c.shape(out, x.shape(), "(B, C, S) = x.shape");
  c.same_dtype(out, x);
  c.same_device(out, x);
  c.contiguous(x);
  c.contiguous(out);
  for (const DLPackView* p : {&alpha, &beta}) {
    c.shape(*p, {C}, "(C,) with C = x.shape[1]");
    c.contiguous(*p);
    c.same_device(*p, x);
  }
  (void)alpha.dtype();
  c.same_dtype(beta, alpha);
  c.run(
      x,
      [&] {
        return etta_snake_beta_cpu(x.data(), alpha.data(), beta.data(), out.data(), B, C, S, x.dtype(),
                                   alpha.dtype());
      },
      [&] {
        return etta_snake_beta_cuda(x.data(), alpha.data(), beta.data(), out.data(), B, C, S, x.dtype(),
                                    alpha.dtype(), as_stream(stream));
      });
}

void adaln_modulate(const py::object& x_obj, const py::object& shift_obj, const py::object& scale_obj,
                    const py::object& out_obj, const py::object& weight_obj, double eps, int64_t stream) {
  const Checker c("adaln_modulate");
  DLPackView x(x_obj, "x", stream), shift(shift_obj, "shift", stream), scale(scale_obj, "scale", stream);
  DLPackView out(out_obj, "out", stream);
  const View weight = view(weight_obj, "weight", stream);
  c.ndim(x, 3, "(B, T, D)");
  const int64_t B = x.shape()[0], T = x.shape()[1], D = x.shape()[2];
  c.shape(out, x.shape(), "(B, T, D)");
  c.same_dtype(out, x);
  c.contiguous(x);
  c.contiguous(out);
  for (const DLPackView* p : {&shift, &scale}) {
    c.shape(*p, {B, D}, "(B, D)");
    c.last_dim_contiguous(*p);
    c.same_device(*p, x);
  }
  c.same_dtype(scale, shift);
  c.same_device(out, x);
  if (weight) {
    c.shape(*weight, {D}, "(D,)");
    c.contiguous(*weight);
    c.same_dtype(*weight, shift);
    c.same_device(*weight, x);
  }
  if (!(eps > 0)) c.value_error("eps=" + std::to_string(eps) + " must be positive");
  const int64_t shift_stride = B > 1 ? shift.strides()[0] : D, scale_stride = B > 1 ? scale.strides()[0] : D;
  if (shift_stride < 0 || scale_stride < 0) c.value_error("shift and scale must not have negative strides");
  const float e = static_cast<float>(eps);
  c.run(
      x,
      [&] {
        return etta_adaln_modulate_cpu(x.data(), shift.data(), scale.data(), data(weight), out.data(), B, T, D,
                                       shift_stride, scale_stride, e, x.dtype(), shift.dtype());
      },
      [&] {
        return etta_adaln_modulate_cuda(x.data(), shift.data(), scale.data(), data(weight), out.data(), B, T, D,
                                        shift_stride, scale_stride, e, x.dtype(), shift.dtype(), as_stream(stream));
      });
}

void gated_residual(const py::object& x_obj, const py::object& gate_obj, const py::object& y_obj,
                    const py::object& out_obj, int64_t stream) {
  const Checker c("gated_residual");
  DLPackView x(x_obj, "x", stream), gate(gate_obj, "gate", stream), y(y_obj, "y", stream);
  DLPackView out(out_obj, "out", stream);
  c.ndim(x, 3, "(B, T, D)");
  const int64_t B = x.shape()[0], T = x.shape()[1], D = x.shape()[2];
  for (const DLPackView* p : {&y, &out}) {
    c.shape(*p, x.shape(), "(B, T, D)");
    c.same_dtype(*p, x);
    c.contiguous(*p);
    c.same_device(*p, x);
  }
  c.contiguous(x);
  c.shape(gate, {B, D}, "(B, D)");
  c.last_dim_contiguous(gate);
  c.same_device(gate, x);
  const int64_t gate_stride = B > 1 ? gate.strides()[0] : D;
  if (gate_stride < 0) c.value_error("gate must not have a negative stride");
  c.run(
      x,
      [&] {
        return etta_gated_residual_cpu(x.data(), gate.data(), y.data(), out.data(), B, T, D, gate_stride, x.dtype(),
                                       gate.dtype());
      },
      [&] {
        return etta_gated_residual_cuda(x.data(), gate.data(), y.data(), out.data(), B, T, D, gate_stride, x.dtype(),
                                        gate.dtype(), as_stream(stream));
      });
}

// True if the byte ranges of two dense tensors overlap.
bool overlaps(const DLPackView& a, const DLPackView& b) {
  const auto begin = [](const DLPackView& v) { return reinterpret_cast<uintptr_t>(v.data()); };
  const auto end = [&](const DLPackView& v) {
    return begin(v) + static_cast<uintptr_t>(v.numel()) * ((v.tensor().dtype.bits + 7) / 8);
  };
  return a.numel() > 0 && b.numel() > 0 && begin(a) < end(b) && begin(b) < end(a);
}

void residual_modulate(const py::object& x_obj, const py::object& gate_obj, const py::object& y_obj,
                       const py::object& shift_obj, const py::object& scale_obj, const py::object& x_out_obj,
                       const py::object& out_obj, const py::object& weight_obj, double eps, int64_t stream) {
  const Checker c("residual_modulate");
  DLPackView x(x_obj, "x", stream), gate(gate_obj, "gate", stream), y(y_obj, "y", stream);
  DLPackView shift(shift_obj, "shift", stream), scale(scale_obj, "scale", stream);
  DLPackView x_out(x_out_obj, "x_out", stream), out(out_obj, "out", stream);
  const View weight = view(weight_obj, "weight", stream);
  c.ndim(x, 3, "(B, T, D)");
  const int64_t B = x.shape()[0], T = x.shape()[1], D = x.shape()[2];
  (void)x.dtype();  // an unsupported dtype is reported under the name of x
  // y holds the sub-layer's output of the first n batch rows, the rows that get a residual.
  const int64_t n = y.ndim() == 3 ? y.shape()[0] : -1;
  if (n < 0 || n > B || (n < 1 && B > 0) || y.shape()[1] != T || y.shape()[2] != D) {
    c.value_error("y must have shape (n, T, D) with 1 <= n <= B = " + std::to_string(B) +
                  " and (T, D) = x.shape[1:] = " + shape_str({T, D}) + ", got " + shape_str(y.shape()));
  }
  c.same_dtype(y, x);
  c.contiguous(y);
  c.same_device(y, x);
  for (const DLPackView* p : {&x_out, &out}) {
    c.shape(*p, x.shape(), "(B, T, D) = x.shape");
    c.same_dtype(*p, x);
    c.contiguous(*p);
    c.same_device(*p, x);
  }
  c.contiguous(x);
  c.shape(gate, {n, D}, "(n, D) with n = y.shape[0]");
  for (const DLPackView* p : {&shift, &scale}) c.shape(*p, {B, D}, "(B, D)");
  for (const DLPackView* p : {&gate, &shift, &scale}) {
    c.last_dim_contiguous(*p);
    c.same_device(*p, x);
  }
  (void)gate.dtype();
  c.same_dtype(shift, gate);
  c.same_dtype(scale, gate);
  if (weight) {
    c.shape(*weight, {D}, "(D,)");
    c.contiguous(*weight);
    c.same_dtype(*weight, gate);
    c.same_device(*weight, x);
  }
  if (!(eps > 0)) c.value_error("eps=" + std::to_string(eps) + " must be positive");
  if (overlaps(out, x) || overlaps(out, x_out)) c.value_error("out must not overlap x or x_out");
  if (x_out.data() != x.data() && overlaps(x_out, x)) c.value_error("x_out must be x itself or not overlap it");
  const int64_t gate_stride = n > 1 ? gate.strides()[0] : D;
  const int64_t shift_stride = B > 1 ? shift.strides()[0] : D, scale_stride = B > 1 ? scale.strides()[0] : D;
  if (gate_stride < 0 || shift_stride < 0 || scale_stride < 0) {
    c.value_error("gate, shift and scale must not have negative strides");
  }
  const float e = static_cast<float>(eps);
  c.run(
      x,
      [&] {
        return etta_residual_modulate_cpu(x.data(), gate.data(), y.data(), shift.data(), scale.data(), data(weight),
                                          x_out.data(), out.data(), B, n, T, D, gate_stride, shift_stride,
                                          scale_stride, e, x.dtype(), gate.dtype());
      },
      [&] {
        return etta_residual_modulate_cuda(x.data(), gate.data(), y.data(), shift.data(), scale.data(), data(weight),
                                           x_out.data(), out.data(), B, n, T, D, gate_stride, shift_stride,
                                           scale_stride, e, x.dtype(), gate.dtype(), as_stream(stream));
      });
}

// RoPE of `slices` (B, T, H, D) tensors read from `x` (strides: batch, seq, slice, head) into `outs`.
void rope_impl(const Checker& c, const DLPackView& x, std::vector<const DLPackView*> outs, const int64_t strides[4],
               int64_t B, int64_t T, int64_t H, int64_t D, double base, bool inverse, int64_t stream) {
  if (D % 2) c.value_error("the head dim must be even, got " + std::to_string(D));
  if (!(base > 1.0)) c.value_error("base=" + std::to_string(base) + " must be > 1");
  c.last_dim_contiguous(x);
  for (const DLPackView* o : outs) {
    c.shape(*o, {B, T, H, D}, "(B, T, H, D)");
    c.same_dtype(*o, x);
    c.contiguous(*o);
    c.same_device(*o, x);
  }
  std::vector<void*> ptrs;
  for (const DLPackView* o : outs) ptrs.push_back(o->data());
  const int64_t slices = static_cast<int64_t>(ptrs.size());
  const float b = static_cast<float>(base);
  c.run(
      x,
      [&] { return etta_rope_cpu(x.data(), strides, ptrs.data(), slices, B, T, H, D, b, inverse, x.dtype()); },
      [&] {
        return etta_rope_cuda(x.data(), strides, ptrs.data(), slices, B, T, H, D, b, inverse, x.dtype(),
                              as_stream(stream));
      });
}

void rope(const py::object& x_obj, const py::object& out_obj, double base, bool inverse, int64_t stream) {
  const Checker c("rope");
  DLPackView x(x_obj, "x", stream), out(out_obj, "out", stream);
  c.ndim(x, 4, "(B, T, H, D)");
  const std::vector<int64_t> s = x.strides();
  const int64_t strides[4] = {s[0], s[1], 0, s[2]};
  rope_impl(c, x, {&out}, strides, x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3], base, inverse, stream);
}

void rope_qk(const py::object& qkv_obj, const py::object& q_obj, const py::object& k_obj, double base, bool inverse,
             int64_t stream) {
  const Checker c("rope_qk");
  DLPackView qkv(qkv_obj, "qkv", stream), q(q_obj, "q", stream), k(k_obj, "k", stream);
  c.ndim(qkv, 5, "(B, T, 3, H, D)");
  const std::vector<int64_t> shape = qkv.shape(), s = qkv.strides();
  if (shape[2] != 3) c.value_error("qkv must have shape (B, T, 3, H, D), got " + shape_str(shape));
  const int64_t strides[4] = {s[0], s[1], s[2], s[3]};
  rope_impl(c, qkv, {&q, &k}, strides, shape[0], shape[1], shape[3], shape[4], base, inverse, stream);
}

void guided_update(const py::object& x_obj, const py::object& v_cond_obj, const py::object& x_out_obj,
                   const py::object& v_uncond_obj, const py::object& v_prev_obj, const py::object& v_out_obj,
                   double guidance, double a, double b, int64_t stream) {
  const Checker c("guided_update");
  DLPackView x(x_obj, "x", stream), v_cond(v_cond_obj, "v_cond", stream), x_out(x_out_obj, "x_out", stream);
  const View v_uncond = view(v_uncond_obj, "v_uncond", stream), v_prev = view(v_prev_obj, "v_prev", stream);
  const View v_out = view(v_out_obj, "v_out", stream);
  std::vector<const DLPackView*> all = {&x, &v_cond, &x_out};
  for (const View* v : {&v_uncond, &v_prev, &v_out}) {
    if (*v) all.push_back(v->get());
  }
  for (const DLPackView* p : all) {
    c.shape(*p, x.shape(), "x.shape");
    c.contiguous(*p);
    c.same_device(*p, x);
    c.same_dtype(*p, p == &x || p == &x_out ? x : v_cond);
  }
  const float w = static_cast<float>(guidance), fa = static_cast<float>(a), fb = static_cast<float>(b);
  c.run(
      x,
      [&] {
        return etta_guided_update_cpu(x.data(), v_cond.data(), data(v_uncond), data(v_prev), x_out.data(),
                                      data(v_out), x.numel(), w, fa, fb, x.dtype(), v_cond.dtype());
      },
      [&] {
        return etta_guided_update_cuda(x.data(), v_cond.data(), data(v_uncond), data(v_prev), x_out.data(),
                                       data(v_out), x.numel(), w, fa, fb, x.dtype(), v_cond.dtype(),
                                       as_stream(stream));
      });
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() =
      "etta_engine runtime kernels (C ABI in csrc/include/etta/etta.h). Tensors are any objects with __dlpack__ "
      "(torch, numpy, ...), on the CPU or a CUDA device; CUDA ops launch on `stream` (a cudaStream_t as an int, "
      "0 = the legacy default stream) on the tensors' device. Arithmetic is fp32; storage float32/float16/bfloat16.";
  m.def("version", &etta_version, "Version of the runtime library.");
  m.def("cuda_compiled", []() { return etta_cuda_compiled() != 0; }, "True if the CUDA kernels were compiled in.");
  m.def("gelu_tanh", &gelu_tanh, py::arg("x"), py::arg("out"), py::arg("bias") = py::none(), py::arg("stream") = 0,
        "out = gelu_tanh(x + bias). x, out: same shape and dtype, contiguous; bias: (x.shape[-1],) or None.");
  m.def("snake_beta", &snake_beta, py::arg("x"), py::arg("alpha"), py::arg("beta"), py::arg("out"),
        py::arg("stream") = 0,
        "out = x + sin(exp(alpha[:, None]) * x)^2 / (exp(beta[:, None]) + 1e-9) (Snake-beta, log-scale parameters). "
        "x, out: (B, C, S), same dtype, contiguous (out may be x); alpha, beta: (C,), contiguous, one dtype.");
  m.def("adaln_modulate", &adaln_modulate, py::arg("x"), py::arg("shift"), py::arg("scale"), py::arg("out"),
        py::arg("weight") = py::none(), py::arg("eps") = 1e-6, py::arg("stream") = 0,
        "out = layer_norm(x, weight, eps) * (1 + scale[:, None]) + shift[:, None]. x, out: (B, T, D) contiguous; "
        "shift, scale: (B, D) with contiguous rows (any row stride); weight: (D,) or None.");
  m.def("gated_residual", &gated_residual, py::arg("x"), py::arg("gate"), py::arg("y"), py::arg("out"),
        py::arg("stream") = 0,
        "out = x + gate[:, None] * y. x, y, out: (B, T, D) contiguous (out may be x); gate: (B, D), contiguous rows.");
  m.def("residual_modulate", &residual_modulate, py::arg("x"), py::arg("gate"), py::arg("y"), py::arg("shift"),
        py::arg("scale"), py::arg("x_out"), py::arg("out"), py::arg("weight") = py::none(), py::arg("eps") = 1e-6,
        py::arg("stream") = 0,
        "Gated residual and AdaLN-modulate in one pass: x_out = x + gate[:, None] * y on the first n = y.shape[0] "
        "batch rows (x_out = x on the others), out = layer_norm(x_out, weight, eps) * (1 + scale[:, None]) + "
        "shift[:, None], the LayerNorm reading x_out as stored (rounded to x.dtype). x, x_out, out: (B, T, D) "
        "contiguous, x's dtype (x_out may be x; out overlaps neither); y: (n, T, D) contiguous with 1 <= n <= B, "
        "x's dtype; gate: (n, D), shift, scale: (B, D), with contiguous rows (any row stride); weight: (D,) or "
        "None; gate, shift, scale and weight share a dtype.");
  m.def("rope", &rope, py::arg("x"), py::arg("out"), py::arg("base") = 16384.0, py::arg("inverse") = false,
        py::arg("stream") = 0,
        "out = RoPE(x) (rotate-half, positions 0..T-1). x: (B, T, H, D), any strides with a contiguous last dim; "
        "out: (B, T, H, D) contiguous. inverse=True rotates by -theta (the backward).");
  m.def("rope_qk", &rope_qk, py::arg("qkv"), py::arg("q"), py::arg("k"), py::arg("base") = 16384.0,
        py::arg("inverse") = false, py::arg("stream") = 0,
        "q, k = RoPE(qkv[:, :, 0]), RoPE(qkv[:, :, 1]) in one launch. qkv: (B, T, 3, H, D), any strides with a "
        "contiguous last dim; q, k: (B, T, H, D) contiguous.");
  m.def("guided_update", &guided_update, py::arg("x"), py::arg("v_cond"), py::arg("x_out"),
        py::arg("v_uncond") = py::none(), py::arg("v_prev") = py::none(), py::arg("v_out") = py::none(),
        py::arg("guidance") = 1.0, py::arg("a") = 1.0, py::arg("b") = 0.0, py::arg("stream") = 0,
        "v = v_uncond + guidance * (v_cond - v_uncond) (v = v_cond without v_uncond); x_out = x + a * v + b * v_prev; "
        "v_out = v. All of x's shape and contiguous; x, x_out share a dtype, the v tensors share another.");
}
