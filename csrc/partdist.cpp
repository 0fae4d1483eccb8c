// Library root: defines the `partdist` operator namespace, the
// `partdist_cuda_emulated` namespace (the same ops run by the CUDA backend's code in
// its CPU emulation, for the tests), and a tiny Python module so that
// `import partdist._C` loads the shared library (and with it every
// TORCH_LIBRARY_FRAGMENT of the op families).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(partdist, m) {}
TORCH_LIBRARY(partdist_cuda_emulated, m) {}

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "partdist compiled operators (registered as torch.ops.partdist.*)",
      -1,  // size
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
