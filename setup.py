"""Build script: the Python packages always; the C++/CUDA extension ``kkattn._C`` when csrc/ has sources.

``KKATTN_BUILD_EXT=0`` skips the extension, ``=1`` requires it (the build fails if it can't). The
default (unset) builds it, and stops with an error naming the fix when torch is not importable at
build time: that is what a plain ``pip install .`` does (build isolation hides the installed torch),
and pip shows a build's output only when it fails, so a skipped kernel would otherwise go unnoticed
and leave a package several times slower. FlashAttention makes the same choice (it needs
``--no-build-isolation``). Building against a torch fetched into the isolated environment is not an
option: the extension's ABI must match the torch it runs with.

The CUDA kernels (csrc/*.cu) are compiled into the same extension when torch is a CUDA build, nvcc
is found (``CUDA_HOME``, else /usr/local/cuda, else ``nvcc`` on PATH) and they are wanted: a GPU is
visible at build time, or ``TORCH_CUDA_ARCH_LIST`` names the architectures, or ``KKATTN_BUILD_CUDA=1``.
A CPU-only machine skips them (the CUDA torch wheel brings an nvcc, and compiling kernels it cannot run
would be most of the install) and says so in one line. ``KKATTN_BUILD_CUDA=0/1`` forces them off/on.
No GPU is needed to compile: without one, ``TORCH_CUDA_ARCH_LIST`` defaults to 8.0;9.0 (A100,
H100/H200), and the CUDA headers that pip's ``nvidia-*`` wheels ship are added to the include path.
"""
import glob
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
NO_TORCH = "torch is not importable at build time"


def _extension():
    switch = os.environ.get("KKATTN_BUILD_EXT", "").strip()
    if switch == "0":
        print("kkattn: KKATTN_BUILD_EXT=0, skipping the C++/CUDA extension", file=sys.stderr)
        return [], {}
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "*.cu")))
    reason = None
    if not sources:
        reason = "csrc/ has no kernel sources yet"
    else:
        try:
            import torch  # noqa: F401  (needs --no-build-isolation to see the installed torch)
        except ImportError:
            reason = NO_TORCH
    if reason == NO_TORCH:
        raise SystemExit(
            "error: kkattn's C++ kernel is compiled against your installed torch, which this build cannot see "
            "(pip's build isolation). Install torch first, then: pip install --no-build-isolation <this package>   "
            "(or set KKATTN_BUILD_EXT=0 to install without the kernel: CPU attention then runs the slower "
            "'chunked' fallback)")
    if reason:
        if switch == "1":
            raise RuntimeError(f"KKATTN_BUILD_EXT=1 but the extension cannot be built: {reason}")
        print(f"kkattn: skipping the C++/CUDA extension: {reason}", file=sys.stderr)
        return [], {}
    cuda_reason = _cuda_unavailable(sources)
    want_cuda = os.environ.get("KKATTN_BUILD_CUDA", "").strip()
    if cuda_reason is None and want_cuda == "" and not _cuda_wanted():
        cuda_reason = ("no GPU visible at build time; to compile the CUDA kernels anyway set KKATTN_BUILD_CUDA=1 "
                       "(or TORCH_CUDA_ARCH_LIST) and reinstall")
    if want_cuda == "1" and cuda_reason:
        raise RuntimeError(f"KKATTN_BUILD_CUDA=1 but the CUDA kernels cannot be built: {cuda_reason}")
    if cuda_reason is None:
        cuda_reason = _select_cuda_archs()
        if cuda_reason and want_cuda == "1":
            raise RuntimeError(f"KKATTN_BUILD_CUDA=1 but the CUDA kernels cannot be built: {cuda_reason}")
    with_cuda = want_cuda != "0" and cuda_reason is None
    if not with_cuda:
        print(f"kkattn: building the CPU kernel only ({'KKATTN_BUILD_CUDA=0' if want_cuda == '0' else cuda_reason})",
              file=sys.stderr)
        sources = [s for s in sources if not s.endswith(".cu")]
    from torch.utils import cpp_extension

    headers = sorted(glob.glob(os.path.join("csrc", "*.h")) + glob.glob(os.path.join("csrc", "*.cuh")))
    # -Wno-psabi: the 8-lane vector helpers are always_inline, so no AVX-ABI boundary is ever crossed.
    cxx = ["-O3", "-fopenmp", "-Wno-psabi"]
    if not with_cuda:
        ext = cpp_extension.CppExtension("kkattn._C", sources, extra_compile_args={"cxx": cxx},
                                         extra_link_args=["-fopenmp"], depends=headers)
        return [ext], {"build_ext": cpp_extension.BuildExtension}
    print(f"kkattn: building the CPU and CUDA kernels (CUDA_HOME={cpp_extension.CUDA_HOME}, "
          f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})", file=sys.stderr)
    nvcc = ["-O3", "--use_fast_math", "-std=c++20", "-lineinfo", "--expt-relaxed-constexpr"]
    ext = cpp_extension.CUDAExtension(
        "kkattn._C", sources, include_dirs=_nvidia_include_dirs(), define_macros=[("KKATTN_WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=["-fopenmp"], depends=headers)
    return [ext], {"build_ext": cpp_extension.BuildExtension}


def _cuda_wanted() -> bool:
    """Build the CUDA kernels without being asked: a GPU is visible, or the architectures are named."""
    import torch

    return bool(os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()) or torch.cuda.is_available()


def _cuda_unavailable(sources):
    """Why the CUDA kernels cannot be compiled here, or None. Sets CUDA_HOME when it finds nvcc."""
    import shutil

    import torch

    if not any(s.endswith(".cu") for s in sources):
        return "csrc/ has no CUDA sources"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not a CUDA build"
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home:
        nvcc = "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else shutil.which("nvcc")
        if nvcc is None:
            return "nvcc not found (set CUDA_HOME)"
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if not os.path.exists(os.path.join(home, "bin", "nvcc")):
        return f"no nvcc under CUDA_HOME={home}"
    os.environ["CUDA_HOME"] = home  # read by torch.utils.cpp_extension when it is imported
    return None


def _select_cuda_archs():
    """Set TORCH_CUDA_ARCH_LIST to the architectures the kernels can be built for; return why none, or None.

    The kernels need sm_80 or newer (bf16 WMMA).  Default: the visible GPU's architecture, or without
    one (CI) Ampere and Hopper plus PTX, which newer GPUs compile at load time.  Older entries of a
    given list are dropped with a message instead of failing the whole install.
    """
    import torch

    given = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if not given:
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            given = f"{major}.{minor}+PTX"
        else:
            given = "8.0;9.0+PTX"
    archs = [a for a in given.replace(",", ";").replace(" ", ";").split(";") if a]
    keep = [a for a in archs if _arch_number(a) >= 8.0]
    if len(keep) < len(archs):
        dropped = ", ".join(a for a in archs if a not in keep)
        print(f"kkattn: the CUDA kernels need sm_80 or newer; not building them for {dropped}", file=sys.stderr)
    if not keep:
        return f"no architecture at or above sm_80 in TORCH_CUDA_ARCH_LIST={given!r}"
    os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(keep)
    return None


def _arch_number(arch: str) -> float:
    """``"8.6+PTX"`` → 8.6; named ones (``"Hopper"``) count as new enough; unreadable ones as too old."""
    names = {"ampere": 8.0, "ada": 8.9, "hopper": 9.0, "blackwell": 10.0}
    base = arch.split("+")[0].strip().lower()
    try:
        return names[base] if base in names else float(base.rstrip("a"))
    except ValueError:
        return 0.0


def _nvidia_include_dirs():
    """CUDA headers (cusparse.h, cublas_v2.h, ...) that torch's headers include, from pip's nvidia-* wheels."""
    dirs = []
    for base in sys.path:
        dirs += sorted(glob.glob(os.path.join(base, "nvidia", "*", "include")))
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


ext_modules, cmdclass = _extension()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
