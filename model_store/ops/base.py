"""What the fast Theano ops share: C sources, OpenMP, BLAS linking, versions.

The ops compile through Theano's own C linker, so their modules land in
Theano's compile cache (``base_compiledir``, see ``model_store.engine``) and a
second process reuses them. The cache key holds the op's ``__props__``, the
compile flags and ``c_code_cache_version``, which includes a digest of the C
sources below and of this package's Python modules (their ``c_code``
templates): editing either recompiles, nothing else does.

Theano compiles with ``-O3`` and the equivalent of ``-march=native`` (it
expands the flags g++ uses for this CPU, e.g. AVX2/AVX-512, into the compile
arguments, which are part of the cache key). That is acceptable for a cache
that is per machine, so the kernels add no vector flags of their own.
"""

from __future__ import annotations

import hashlib
import os

from model_store.engine import T, theano

_C_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c")

#: Activation name -> the code the C kernels switch on (c/fastops.h).
ACTIVATIONS = {"identity": 0, "relu": 1, "relu6": 2}


def c_source(*names: str) -> str:
    """The text of C files in ``model_store/ops/c``, concatenated."""
    texts = []
    for name in names:
        with open(os.path.join(_C_DIR, name)) as handle:
            texts.append(handle.read())
    return "\n".join(texts)


def _sources_digest() -> str:
    """A digest of the C files and of the Python modules of this package,
    whose ``c_code`` templates are C code too (a template that changed
    while the C files did not was once matched to a module compiled from
    the old one)."""
    digest = hashlib.sha256()
    here = os.path.dirname(_C_DIR)
    paths = [os.path.join(_C_DIR, name) for name in sorted(os.listdir(_C_DIR))]
    paths += [os.path.join(here, name) for name in sorted(os.listdir(here))
              if name.endswith(".py")]
    for path in paths:
        digest.update(os.path.relpath(path, here).encode())
        with open(path, "rb") as handle:
            digest.update(handle.read())
    return digest.hexdigest()[:16]


_DIGEST = _sources_digest()


class InferenceOp(theano.gof.OpenMPOp):
    """A float32 C op for predictors; the training graph uses plain ops.

    Subclasses set ``__props__`` and ``_c_files`` and write ``c_code``.
    """

    _c_files: tuple = ()
    uses_blas = False

    def __init__(self, activation: str):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, "
                             f"got {activation!r}")
        super().__init__()
        self.activation = activation

    def grad(self, inputs, output_grads):
        raise NotImplementedError(
            f"{type(self).__name__} is an inference-only op (predictors): "
            f"build the training graph with the plain Theano convolution "
            f"(model_store.kernels), not model_store.ops")

    def c_code_cache_version(self):
        blas = theano.tensor.blas_headers.blas_header_version() \
            if self.uses_blas else ()
        return (1, _DIGEST, self.openmp, blas)

    def c_support_code(self):
        code = c_source("fastops.h", *self._c_files)
        if self.uses_blas:
            code = theano.tensor.blas_headers.blas_header_text() + code
        return code

    def c_compile_args(self):
        args = super().c_compile_args()
        if self.uses_blas:
            args = theano.tensor.blas.ldflags(libs=False, flags=True) + args
        return args

    def c_libraries(self):
        return theano.tensor.blas.ldflags() if self.uses_blas else []

    def c_lib_dirs(self):
        return theano.tensor.blas.ldflags(libs=False, libs_dir=True) \
            if self.uses_blas else []

    def c_header_dirs(self):
        return theano.tensor.blas.ldflags(libs=False, include_dir=True) \
            if self.uses_blas else []


def c_contiguous_inputs(arrays: dict, fail: str) -> str:
    """C that declares ``PyArrayObject* NAME`` for each ``NAME: input`` of
    ``arrays``: a C-contiguous reference to Theano's input array (a copy
    when it is strided), or NULL for an input of None (an optional input
    the op does not take); when NumPy cannot make a copy (MemoryError set),
    releases what it took and runs ``fail``. :func:`c_release_inputs`
    releases them at the end."""
    taken = {name: value for name, value in arrays.items() if value is not None}
    lines = [f"PyArrayObject* {name} = "
             f"PyArray_GETCONTIGUOUS((PyArrayObject*){value});"
             for name, value in taken.items()]
    lines += [f"PyArrayObject* {name} = NULL;" for name, value in arrays.items()
              if value is None]
    lines.append(f"if ({' || '.join('!' + name for name in taken)}) {{")
    lines.append("    /* A copy NumPy could not allocate (it set MemoryError). */")
    lines.append(f"    {c_release_inputs(arrays)}")
    lines.append(f"    {fail}")
    lines.append("}")
    return "\n    ".join(lines)


def c_release_inputs(arrays) -> str:
    """C that releases the references :func:`c_contiguous_inputs` took."""
    return " ".join(f"Py_XDECREF({name});" for name in arrays)


def int_params(*names: str):
    """A Theano ``ParamsType`` of int32 fields: settings of an op that its
    C code reads at run time instead of having them written in."""
    return theano.gof.ParamsType(**{name: theano.scalar.int32
                                    for name in names})


def float32_tensor(value, ndim: int, what: str):
    """``value`` as an ``ndim``-D float32 Theano variable, or a clear error."""
    variable = T.as_tensor_variable(value)
    if variable.ndim != ndim or variable.dtype != "float32":
        raise TypeError(f"{what} must be a {ndim}-D float32 tensor, got "
                        f"{variable.ndim}-D {variable.dtype}")
    return variable


def output_type(x):
    """A 4-D float32 output whose batch axis broadcasts like ``x``'s."""
    return T.TensorType("float32", (x.broadcastable[0], False, False, False))()
