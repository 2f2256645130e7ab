// pybind11 bindings of the etta runtime. Tensors arrive through DLPack (any object with
// __dlpack__), are checked here, and are handed to the C ABI as raw pointers.
#include <pybind11/pybind11.h>

#include <cstdint>
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

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < tensor().ndim; ++i) n *= tensor().shape[i];
    return n;
  }

  bool contiguous() const {
    if (tensor().strides == nullptr) return true;
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

void check(etta_status status, const char* op) {
  if (status != ETTA_OK) throw std::runtime_error(std::string(op) + " failed: " + etta_status_string(status));
}

// Checks that x and out describe the same contiguous elementwise problem on one device.
void check_elementwise(const DLPackView& x, const DLPackView& out) {
  if (x.shape() != out.shape()) {
    throw py::value_error(std::string("out has shape ") + shape_str(out.shape()) + " but x has shape " +
                          shape_str(x.shape()) + "; they must match");
  }
  if (x.dtype() != out.dtype()) {
    throw py::type_error(std::string("out is ") + dtype_name(out.dtype()) + " but x is " + dtype_name(x.dtype()) +
                         "; they must match");
  }
  if (x.tensor().device.device_type != out.tensor().device.device_type ||
      x.tensor().device.device_id != out.tensor().device.device_id) {
    throw py::value_error("x and out must be on the same device");
  }
  for (const DLPackView* v : {&x, &out}) {
    if (!v->contiguous()) throw py::value_error(std::string(v->name()) + " must be contiguous");
  }
}

void gelu_tanh(const py::object& x_obj, const py::object& out_obj, int64_t stream) {
  DLPackView x(x_obj, "x", stream);
  DLPackView out(out_obj, "out", stream);
  check_elementwise(x, out);
  const etta_dtype dtype = x.dtype();
  if (dtype != ETTA_FLOAT32) {
    throw py::type_error(std::string("gelu_tanh supports float32 only, got ") + dtype_name(dtype));
  }
  const int device_type = x.tensor().device.device_type;
  if (device_type == dl::kCPU || device_type == dl::kCUDAHost) {
    py::gil_scoped_release release;
    check(etta_gelu_tanh_cpu(x.data(), out.data(), x.numel(), dtype), "etta_gelu_tanh_cpu");
  } else if (device_type == dl::kCUDA) {
    check(etta_gelu_tanh_cuda(x.data(), out.data(), x.numel(), dtype, reinterpret_cast<void*>(stream)),
          "etta_gelu_tanh_cuda");
  } else {
    throw py::value_error("x is on an unsupported device type " + std::to_string(device_type) +
                          "; allowed: CPU, CUDA");
  }
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "etta_engine runtime kernels (C ABI in csrc/include/etta/etta.h)";
  m.def("version", &etta_version, "Version of the runtime library.");
  m.def("cuda_compiled", []() { return etta_cuda_compiled() != 0; }, "True if the CUDA kernels were compiled in.");
  m.def("gelu_tanh", &gelu_tanh, py::arg("x"), py::arg("out"), py::arg("stream") = 0,
        "out = gelu_tanh(x), elementwise. x and out: same shape, contiguous, float32, same device. "
        "stream: the cudaStream_t (as an int) to run on for CUDA tensors; 0 = the default stream.");
}
