# Real log lines are long and gcc quotes with U+2018/U+2019: keep them verbatim.
# ruff: noqa: E501, RUF001
"""Failure diagnosis from real build-log excerpts: what gcc, clang, ld, pip, pkg-config,
CMake, meson, cargo, auditwheel and the kernel print when a build fails.

Several excerpts were captured from real builds on this repository's builder (pip 24 /
setuptools / gcc 12 / auditwheel 6) and re-pathed to aarch64; the rest are typed from
what those tools print, with the surrounding noise that makes matching non-trivial.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.classify import Diagnosis, classify, diagnose, is_transient, system_packages_for
from common.states import FailureReason
from tests.wheels import make_wheel

R = FailureReason

PIP_HEAD = """\
Looking in indexes: https://pypi.org/simple
Processing /armwheels/sdist/{name}-1.0.tar.gz
  Installing build dependencies: started
  Installing build dependencies: finished with status 'done'
  Getting requirements to build wheel: started
  Getting requirements to build wheel: finished with status 'done'
  Preparing metadata (pyproject.toml): started
  Preparing metadata (pyproject.toml): finished with status 'done'
Building wheels for collected packages: {name}
  Building wheel for {name} (pyproject.toml): started
  Building wheel for {name} (pyproject.toml): finished with status 'error'
  error: subprocess-exited-with-error

  × Building wheel for {name} (pyproject.toml) did not run successfully.
  │ exit code: 1
  ╰─> [40 lines of output]
      running bdist_wheel
      running build
      running build_py
      running build_ext
"""
PIP_TAIL = """\
      [end of output]

  note: This error originates from a subprocess, and is likely not a problem with pip.
  ERROR: Failed building wheel for {name}
Failed to build {name}
ERROR: Failed to build one or more wheels
"""
GCC = (
    "      gcc -Wsign-compare -DNDEBUG -g -fwrapv -O3 -Wall -fPIC "
    "-I/opt/python/cp311-cp311/include/python3.11 -c {src} -o "
    "build/temp.linux-aarch64-cpython-311/{obj}\n"
)


def pip_build(name: str, body: str) -> bytes:
    """A `pip wheel` failure around the build backend's own output."""
    return (PIP_HEAD.format(name=name) + body + PIP_TAIL.format(name=name)).encode()


FFI_H = pip_build(
    "cffi",
    """\
      Package libffi was not found in the pkg-config search path.
      Perhaps you should add the directory containing `libffi.pc'
      to the PKG_CONFIG_PATH environment variable
      No package 'libffi' found
      building '_cffi_backend' extension
      creating build/temp.linux-aarch64-cpython-311/src/c
"""
    + GCC.format(src="src/c/_cffi_backend.c", obj="src/c/_cffi_backend.o")
    + """\
      src/c/_cffi_backend.c:15:10: fatal error: ffi.h: No such file or directory
         15 | #include <ffi.h>
            |          ^~~~~~~
      compilation terminated.
      error: command '/usr/bin/gcc' failed with exit code 1
""",
)

ZLIB_H_CLANG = pip_build(
    "fastzip",
    """\
      building 'fastzip._compress' extension
      clang -fno-strict-overflow -DNDEBUG -O2 -fPIC -I/opt/python/cp312-cp312/include/python3.12 -c src/_compress.c -o build/temp.linux-aarch64-cpython-312/src/_compress.o
      src/_compress.c:3:10: fatal error: 'zlib.h' file not found
      #include <zlib.h>
               ^~~~~~~~
      1 error generated.
      error: command '/usr/bin/clang' failed with exit code 1
""",
)

OPENSSL_H = pip_build(
    "cryptography",
    """\
      generating cffi module 'build/temp.linux-aarch64-3.8/_openssl.c'
      building '_openssl' extension
      creating build/temp.linux-aarch64-3.8/build
      gcc -pthread -Wno-unused-result -Wsign-compare -DNDEBUG -g -fwrapv -O3 -Wall -fPIC -I/opt/python/cp38-cp38/include/python3.8 -c build/temp.linux-aarch64-3.8/_openssl.c -o build/temp.linux-aarch64-3.8/build/temp.linux-aarch64-3.8/_openssl.o -Wconversion -Wno-error=sign-conversion
      build/temp.linux-aarch64-3.8/_openssl.c:575:10: fatal error: openssl/opensslv.h: No such file or directory
        575 | #include <openssl/opensslv.h>
            |          ^~~~~~~~~~~~~~~~~~~~
      compilation terminated.
      error: command 'gcc' failed with exit status 1
""",
)

NUMPY_H = pip_build(
    "fastmath",
    GCC.format(src="fastmath/_core.c", obj="fastmath/_core.o")
    + """\
      fastmath/_core.c:4:10: fatal error: numpy/arrayobject.h: No such file or directory
          4 | #include "numpy/arrayobject.h"
            |          ^~~~~~~~~~~~~~~~~~~~~
      compilation terminated.
      error: command '/usr/bin/gcc' failed with exit code 1
""",
)

UNKNOWN_H = pip_build(
    "needsheader",
    GCC.format(src="src/speed.c", obj="src/speed.o")
    + """\
      src/speed.c:1:10: fatal error: nosuchlib.h: No such file or directory
          1 | #include <nosuchlib.h>
            |          ^~~~~~~~~~~~~
      compilation terminated.
      error: command '/usr/bin/gcc' failed with exit code 1
""",
)

# Captured on the builder (gcc 12): the error, then gcc's warnings, then setuptools.
SYNTAX_ERROR = pip_build(
    "syn",
    GCC.format(src="src/speed.c", obj="src/speed.o")
    + """\
      src/speed.c: In function ‘f’:
      src/speed.c:2:32: error: expected ‘,’ or ‘;’ before ‘return’
          2 | static int f(void) { int a = 1 return a; }
            |                                ^~~~~~
      src/speed.c:2:26: warning: unused variable ‘a’ [-Wunused-variable]
          2 | static int f(void) { int a = 1 return a; }
            |                          ^
      src/speed.c: At top level:
      src/speed.c:2:12: warning: ‘f’ defined but not used [-Wunused-function]
      error: Command '['gcc', '-fPIC', '-c', 'src/speed.c', '-o', 'build/temp.linux-aarch64-cpython-311/src/speed.o']' returned non-zero exit status 1.
""",
)

# A C++ error in a file under pip's temporary build directory: the path is made relative.
CXX_ERROR_TMPDIR = pip_build(
    "pyfoo",
    """\
      g++ -fPIC -std=c++17 -I/tmp/pip-build-env-q2x8/overlay/lib/python3.11/site-packages/pybind11/include -c /tmp/pip-req-build-7z1k_e3b/src/main.cpp -o build/temp.linux-aarch64-cpython-311/src/main.o
      In file included from /tmp/pip-req-build-7z1k_e3b/src/main.cpp:3:
      /tmp/pip-req-build-7z1k_e3b/src/util.hpp: In member function ‘int Foo::size() const’:
      /tmp/pip-req-build-7z1k_e3b/src/util.hpp:41:12: error: ‘class std::vector<int>’ has no member named ‘length’
         41 |     return items_.length();
            |            ^~~~~~
      error: command '/usr/bin/g++' failed with exit code 1
""",
)

RUST_ERROR = pip_build(
    "rustpkg",
    """\
      running build_rust
      cargo rustc --lib --message-format=json-render-diagnostics --manifest-path Cargo.toml --release -v --features pyo3/extension-module --crate-type cdylib --
         Compiling rustpkg v0.1.0 (/tmp/pip-req-build-abc/rustpkg)
      error[E0425]: cannot find value `count` in this scope
        --> src/lib.rs:12:9
         |
      12 |         count + 1
         |         ^^^^^ not found in this scope

      For more information about this error, try `rustc --explain E0425`.
      error: could not compile `rustpkg` (lib) due to 1 previous error
      error: `cargo rustc --lib --message-format=json-render-diagnostics --manifest-path Cargo.toml --release -v --features pyo3/extension-module --crate-type cdylib --` failed with code 101
""",
)

CYTHON_ERROR = pip_build(
    "cypkg",
    """\
      Compiling cypkg/_fast.pyx because it changed.
      [1/1] Cythonizing cypkg/_fast.pyx

      Error compiling Cython file:
      ------------------------------------------------------------
      ...
      cdef int twice(int x):
          return 2 * y
                     ^
      ------------------------------------------------------------

      cypkg/_fast.pyx:3:15: undeclared name not builtin: y
      Traceback (most recent call last):
        File "/tmp/pip-build-env-1/overlay/lib/python3.11/site-packages/Cython/Build/Dependencies.py", line 1345, in cythonize_one
          raise CompileError(None, pyx_file)
      Cython.Compiler.Errors.CompileError: cypkg/_fast.pyx
""",
)

UNDEFINED_REFERENCE = pip_build(
    "linky",
    """\
      gcc -shared build/temp.linux-aarch64-cpython-311/src/a.o -o build/lib.linux-aarch64-cpython-311/linky/_a.cpython-311-aarch64-linux-gnu.so
      /usr/bin/ld: build/temp.linux-aarch64-cpython-311/src/a.o: in function `run':
      /tmp/pip-req-build-x/src/a.c:10:(.text+0x1c): undefined reference to `helper_init'
      collect2: error: ld returned 1 exit status
      error: command '/usr/bin/gcc' failed with exit code 1
""",
)

# Captured on the builder: ld from binutils 2.40 appends the errno text.
CANNOT_FIND_LZ = pip_build(
    "zipper",
    GCC.format(src="src/zipper.c", obj="src/zipper.o")
    + """\
      gcc -shared -Wl,-O1 build/temp.linux-aarch64-cpython-311/src/zipper.o -L/usr/local/lib -lz -o build/lib.linux-aarch64-cpython-311/zipper/_zipper.cpython-311-aarch64-linux-gnu.so
      /usr/bin/ld: cannot find -lz: No such file or directory
      collect2: error: ld returned 1 exit status
      error: command '/usr/bin/gcc' failed with exit code 1
""",
)

CANNOT_FIND_LOPENBLAS_OLD_LD = pip_build(
    "solver",
    """\
      gcc -shared build/temp.linux-aarch64-3.9/solver/_lin.o -lopenblas -lgfortran -o build/lib.linux-aarch64-3.9/solver/_lin.cpython-39-aarch64-linux-gnu.so
      /opt/rh/devtoolset-10/root/usr/libexec/gcc/aarch64-redhat-linux/10/ld: cannot find -lopenblas
      collect2: error: ld returned 1 exit status
      error: command 'gcc' failed with exit status 1
""",
)

PKGCONFIG_XMLSEC = pip_build(
    "xmlsec",
    """\
      Traceback (most recent call last):
        File "/tmp/pip-build-env-8k/overlay/lib/python3.11/site-packages/pkgconfig/pkgconfig.py", line 248, in parse
          raise PackageNotFoundError(package)
      pkgconfig.pkgconfig.PackageNotFoundError: xmlsec1 not found
      During handling of the above exception, another exception occurred:
      setup.py:125: PkgConfigError: Package xmlsec1 was not found in the pkg-config search path.
      Perhaps you should add the directory containing `xmlsec1.pc'
      to the PKG_CONFIG_PATH environment variable
      Package 'xmlsec1', required by 'virtual:world', not found
      error: Unable to invoke pkg-config.
""",
)

MESON_CAIRO = pip_build(
    "pycairo",
    """\
      + meson setup --reconfigure /tmp/pip-req-build-c /tmp/pip-req-build-c/.mesonpy-5a -Dbuildtype=release
      The Meson build system
      Version: 1.4.0
      Project name: pycairo
      C compiler for the host machine: cc (gcc 12.2.0 "cc (Debian 12.2.0-14) 12.2.0")
      Host machine cpu family: aarch64
      Found pkg-config: YES (/usr/bin/pkg-config) 1.8.1
      Run-time dependency cairo found: NO (tried pkgconfig and cmake)

      ../cairo/meson.build:31:12: ERROR: Dependency "cairo" not found, tried pkgconfig and cmake

      A full log can be found at /tmp/pip-req-build-c/.mesonpy-5a/meson-logs/meson-log.txt
""",
)

# Captured on the builder (CMake 3.25).
CMAKE_HDF5 = pip_build(
    "h5thing",
    """\
      -- The C compiler identification is GNU 12.2.0
      -- Detecting C compiler ABI info
      -- Detecting C compiler ABI info - done
      -- Could NOT find ZLIB (missing: ZLIB_LIBRARY ZLIB_INCLUDE_DIR)
      CMake Error at /usr/share/cmake-3.25/Modules/FindPackageHandleStandardArgs.cmake:230 (message):
        Could NOT find HDF5 (missing: HDF5_LIBRARIES HDF5_INCLUDE_DIRS) (found
        version "")
      Call Stack (most recent call first):
        /usr/share/cmake-3.25/Modules/FindPackageHandleStandardArgs.cmake:600 (_FPHSA_FAILURE_MESSAGE)
        /usr/share/cmake-3.25/Modules/FindHDF5.cmake:1007 (find_package_handle_standard_args)
        CMakeLists.txt:3 (find_package)

      -- Configuring incomplete, errors occurred!
""",
)

# An optional package's CMake *warning* must not hide the real compile error after it.
CMAKE_WARNING_THEN_ERROR = pip_build(
    "optpkg",
    """\
      CMake Warning at CMakeLists.txt:12 (find_package):
        By not providing "FindTBB.cmake" in CMAKE_MODULE_PATH this project has
        asked CMake to find a package configuration file provided by "TBB", but
        CMake did not find one.
      -- Configuring done
      -- Generating done
      [ 50%] Building CXX object CMakeFiles/_core.dir/src/core.cpp.o
      /tmp/pip-req-build-o/src/core.cpp:88:5: error: ‘span’ is not a member of ‘std’
      gmake[2]: *** [CMakeFiles/_core.dir/build.make:76: CMakeFiles/_core.dir/src/core.cpp.o] Error 1
""",
)

CMAKE_PYBIND11 = pip_build(
    "bound",
    """\
      CMake Error at CMakeLists.txt:5 (find_package):
        By not providing "Findpybind11.cmake" in CMAKE_MODULE_PATH this project has
        asked CMake to find a package configuration file provided by "pybind11",
        but CMake did not find one.
      -- Configuring incomplete, errors occurred!
""",
)

PG_CONFIG = b"""\
Processing /armwheels/sdist/psycopg2-2.9.9.tar.gz
  Preparing metadata (setup.py): started
  Preparing metadata (setup.py): finished with status 'error'
  error: subprocess-exited-with-error

  \xc3\x97 python setup.py egg_info did not run successfully.
  \xe2\x94\x82 exit code: 1
  \xe2\x95\xb0\xe2\x94\x80> [23 lines of output]
      running egg_info
      creating /tmp/pip-pip-egg-info-x/psycopg2.egg-info

      Error: pg_config executable not found.

      pg_config is required to build psycopg2 from source.  Please add the directory
      containing pg_config to the $PATH or specify the full executable path with the
      option:

          python setup.py build_ext --pg-config /path/to/pg_config build ...
      [end of output]

  note: This error originates from a subprocess, and is likely not a problem with pip.
error: metadata-generation-failed
"""

NO_GCC = pip_build(
    "needscc",
    """\
      building 'needscc._speed' extension
      creating build/temp.linux-aarch64-cpython-311/src
      gcc -Wsign-compare -DNDEBUG -g -fwrapv -O3 -Wall -fPIC -c src/speed.c -o build/temp.linux-aarch64-cpython-311/src/speed.o
      error: command 'gcc' failed: No such file or directory
""",
)

NO_GFORTRAN = pip_build(
    "fortpkg",
    """\
      running config_fc
      customize Gnu95FCompiler
      gfortran -Wall -g -ffixed-form -fno-second-underscore -fPIC -O3 -funroll-loops -c src/lapack_lite.f -o build/temp/src/lapack_lite.o
      /bin/sh: 1: gfortran: not found
      error: Command "gfortran -Wall -g -ffixed-form -c src/lapack_lite.f" failed with exit status 127
""",
)

NO_CMAKE = pip_build(
    "cmakepkg",
    """\
      running build_ext
      bash: cmake: command not found
      Traceback (most recent call last):
        File "setup.py", line 41, in build_extension
          subprocess.check_call(["cmake", ext.sourcedir] + cmake_args, cwd=self.build_temp)
      subprocess.CalledProcessError: Command '['cmake', '/tmp/pip-req-build-p']' returned non-zero exit status 127.
""",
)

NO_CARGO = b"""\
Processing /armwheels/sdist/orjsonish-3.9.0.tar.gz
  Installing build dependencies: started
  Installing build dependencies: finished with status 'done'
  Getting requirements to build wheel: started
  Getting requirements to build wheel: finished with status 'done'
  Preparing metadata (pyproject.toml): started
  Preparing metadata (pyproject.toml): finished with status 'error'
  error: subprocess-exited-with-error

  \xc3\x97 Preparing metadata (pyproject.toml) did not run successfully.
  \xe2\x94\x82 exit code: 1
  \xe2\x95\xb0\xe2\x94\x80> [6 lines of output]

      Cargo, the Rust package manager, is not installed or is not on PATH.
      This package requires Rust and Cargo to compile extensions. Install it through
      the system's package manager or via https://rustup.rs/

      Checking for Rust toolchain....
      [end of output]

  note: This error originates from a subprocess, and is likely not a problem with pip.
error: metadata-generation-failed
"""

NO_RUSTC_SETUPTOOLS_RUST = pip_build(
    "bcryptish",
    """\
      running build_rust
      error: can't find Rust compiler

      If you are using an outdated pip version, it is possible a prebuilt wheel is available for this package but pip is not able to install from it. Installing from the wheel would avoid the need for a Rust compiler.
""",
)

MESON_NO_FORTRAN = pip_build(
    "scipyish",
    """\
      The Meson build system
      Project name: scipyish
      C compiler for the host machine: cc (gcc 12.2.0 "cc (Debian 12.2.0-14) 12.2.0")

      ../meson.build:1:0: ERROR: Unknown compiler(s): [['gfortran'], ['flang-new'], ['flang'], ['nvfortran'], ['pgfortran'], ['ifort'], ['ifx'], ['g95']]
      The following exception(s) were encountered:
      Running `gfortran --version` gave "[Errno 2] No such file or directory: 'gfortran'"
""",
)

# Captured on the builder: setup.py imports Cython without declaring it.
CYTHON_UNDECLARED = b"""\
Processing /armwheels/sdist/cy-1.0.tar.gz
  Installing build dependencies: started
  Installing build dependencies: finished with status 'done'
  Getting requirements to build wheel: started
  Getting requirements to build wheel: finished with status 'error'
  error: subprocess-exited-with-error

  \xc3\x97 Getting requirements to build wheel did not run successfully.
  \xe2\x94\x82 exit code: 1
  \xe2\x95\xb0\xe2\x94\x80> [19 lines of output]
      Traceback (most recent call last):
        File "/opt/_internal/pipx/venvs/pip/lib/python3.11/site-packages/pip/_vendor/pyproject_hooks/_in_process/_in_process.py", line 381, in main
          json_out["return_val"] = hook(**hook_input["kwargs"])
                                   ^^^^^^^^^^^^^^^^^^^^^^^^^^^^
        File "/tmp/pip-build-env-a8_fdus3/overlay/lib/python3.11/site-packages/setuptools/build_meta.py", line 317, in run_setup
          exec(code, locals())  # noqa: S102 # exec is intentional here
          ^^^^^^^^^^^^^^^^^^^^
        File "<string>", line 1, in <module>
      ModuleNotFoundError: No module named 'Cython'
      [end of output]

  note: This error originates from a subprocess, and is likely not a problem with pip.
ERROR: Failed to build 'file:///armwheels/sdist/cy-1.0.tar.gz' when getting requirements to build wheel
"""

NUMPY_UNDECLARED = CYTHON_UNDECLARED.replace(b"'Cython'", b"'numpy'")
DISTUTILS_GONE = CYTHON_UNDECLARED.replace(b"'Cython'", b"'distutils'").replace(
    b"python3.11", b"python3.12"
)

# Captured on the builder: the index host does not resolve.
NO_DIST_NETWORK = b"""\
Processing /armwheels/sdist/net-1.0.tar.gz
  Installing build dependencies: started
  Installing build dependencies: finished with status 'error'
  error: subprocess-exited-with-error

  \xc3\x97 installing build dependencies did not run successfully.
  \xe2\x94\x82 exit code: 1
  \xe2\x95\xb0\xe2\x94\x80> [8 lines of output]
      WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection broken by 'NameResolutionError("HTTPSConnection(host='pypi.org', port=443): Failed to resolve 'pypi.org' ([Errno -3] Temporary failure in name resolution)")': /simple/setuptools/
      WARNING: Retrying (Retry(total=3, connect=None, read=None, redirect=None, status=None)) after connection broken by 'NameResolutionError("HTTPSConnection(host='pypi.org', port=443): Failed to resolve 'pypi.org' ([Errno -3] Temporary failure in name resolution)")': /simple/setuptools/
      ERROR: Could not find a version that satisfies the requirement setuptools>=40.8.0 (from versions: none)
      ERROR: No matching distribution found for setuptools>=40.8.0
      [end of output]

  note: This error originates from a subprocess, and is likely not a problem with pip.
ERROR: Failed to build 'file:///armwheels/sdist/net-1.0.tar.gz' when installing build dependencies
"""

# Captured on the builder: the requirement does not exist on the index.
NO_DIST_MISSING = b"""\
Processing /armwheels/sdist/miss-1.0.tar.gz
  Installing build dependencies: started
  Installing build dependencies: finished with status 'error'
  error: subprocess-exited-with-error

  \xc3\x97 installing build dependencies did not run successfully.
  \xe2\x94\x82 exit code: 1
  \xe2\x95\xb0\xe2\x94\x80> [7 lines of output]
      Collecting setuptools>=40.8.0
        Downloading setuptools-80.9.0-py3-none-any.whl (1.2 MB)
           \xe2\x94\x81\xe2\x94\x81\xe2\x94\x81\xe2\x94\x81 1.2/1.2 MB 9.1 MB/s eta 0:00:00
      ERROR: Could not find a version that satisfies the requirement nosuch-build-helper>=1.0 (from versions: none)
      ERROR: No matching distribution found for nosuch-build-helper>=1.0
      [end of output]

  note: This error originates from a subprocess, and is likely not a problem with pip.
ERROR: Failed to build 'file:///armwheels/sdist/miss-1.0.tar.gz' when installing build dependencies
"""

NO_DIST_PIN = NO_DIST_MISSING.replace(
    b"nosuch-build-helper>=1.0 (from versions: none)",
    b"cython<0.30,>=0.29.36 (from versions: 3.0.0, 3.0.10, 3.0.11, 3.1.0)",
).replace(b"nosuch-build-helper>=1.0\n", b"cython<0.30,>=0.29.36\n")

NO_DIST_OLD_PIN = b"""\
      Collecting setuptools
        Using cached setuptools-80.9.0-py3-none-any.whl (1.2 MB)
      Collecting wheel
        Using cached wheel-0.45.1-py3-none-any.whl (72 kB)
      ERROR: Ignored the following versions that require a different python version: 1.21.2 Requires-Python >=3.7,<3.11; 1.21.3 Requires-Python >=3.7,<3.11; 1.21.4 Requires-Python >=3.7,<3.11
      ERROR: Could not find a version that satisfies the requirement numpy==1.21.4 (from versions: 1.26.0, 1.26.4, 2.0.0, 2.1.3)
      ERROR: No matching distribution found for numpy==1.21.4
      [end of output]
"""

NETWORK_READ_TIMEOUT = b"""\
      Collecting setuptools>=61
        Downloading setuptools-80.9.0-py3-none-any.whl (1.2 MB)
      ERROR: Exception:
      Traceback (most recent call last):
        File "/opt/_internal/pip/_vendor/urllib3/response.py", line 438, in _error_catcher
          yield
        File "/opt/_internal/pip/_vendor/urllib3/response.py", line 561, in read
          data = self._fp_read(amt) if not fp_closed else b""
      TimeoutError: The read operation timed out

      During handling of the above exception, another exception occurred:

      Traceback (most recent call last):
        File "/opt/_internal/pip/_internal/cli/base_command.py", line 180, in exc_logging_wrapper
          status = run_func(*args)
      pip._vendor.urllib3.exceptions.ReadTimeoutError: HTTPSConnectionPool(host='files.pythonhosted.org', port=443): Read timed out.
      [end of output]
"""

NETWORK_503 = b"""\
      Collecting cython>=3
        Downloading https://files.pythonhosted.org/packages/ab/cd/Cython-3.0.11-cp311-cp311-manylinux_2_17_aarch64.whl (3.4 MB)
      ERROR: HTTP error 503 while getting https://files.pythonhosted.org/packages/ab/cd/Cython-3.0.11-cp311-cp311-manylinux_2_17_aarch64.whl
      ERROR: Could not install requirement cython>=3 from https://files.pythonhosted.org/packages/ab/cd/Cython-3.0.11-cp311-cp311-manylinux_2_17_aarch64.whl because of HTTP error 503 Server Error: Service Unavailable for url: https://files.pythonhosted.org/packages/ab/cd/Cython-3.0.11-cp311-cp311-manylinux_2_17_aarch64.whl
"""

CARGO_OFFLINE = pip_build(
    "rusty",
    """\
      running build_rust
          Updating crates.io index
      warning: spurious network error (3 tries remaining): [6] Couldn't resolve host name (Could not resolve host: index.crates.io)
      error: failed to get `pyo3` as a dependency of package `rusty v0.1.0 (/tmp/pip-req-build-r)`

      Caused by:
        download of config.json failed

      Caused by:
        [6] Couldn't resolve host name (Could not resolve host: index.crates.io)
""",
)

OSERROR_NOT_NETWORK = b"""\
      Collecting setuptools>=61
      ERROR: Could not install packages due to an OSError: [Errno 13] Permission denied: '/usr/lib/python3/dist-packages/setuptools'
"""

# Captured on the builder.
UNSUPPORTED_PYTHON = b"""\
Processing /armwheels/sdist/rp-1.0.tar.gz
  Installing build dependencies: started
  Installing build dependencies: finished with status 'done'
  Getting requirements to build wheel: started
  Getting requirements to build wheel: finished with status 'done'
  Preparing metadata (pyproject.toml): started
  Preparing metadata (pyproject.toml): finished with status 'done'
ERROR: Package 'rp' requires a different Python: 3.11.7 not in '>=3.12'
"""

OLD_NUMPY_SETUP = pip_build(
    "numpy",
    """\
      Traceback (most recent call last):
        File "<string>", line 2, in <module>
        File "setup.py", line 30, in <module>
          raise RuntimeError("Python version >= 3.7 required.")
      RuntimeError: Python version >= 3.7 required.
""",
)

OOM_CC1PLUS = pip_build(
    "bigcxx",
    """\
      g++ -fPIC -O3 -std=c++17 -c src/generated_tables.cpp -o build/temp.linux-aarch64-cpython-311/src/generated_tables.o
      g++ -fPIC -O3 -std=c++17 -c src/other.cpp -o build/temp.linux-aarch64-cpython-311/src/other.o
      g++: fatal error: Killed signal terminated program cc1plus
      compilation terminated.
      src/other.cpp:12:1: error: expected declaration before ‘}’ token
      error: command '/usr/bin/g++' failed with exit code 1
""",
)

OOM_VIRTUAL = pip_build(
    "bigc",
    """\
      gcc -fPIC -O2 -c src/huge_switch.c -o build/temp.linux-aarch64-cpython-311/src/huge_switch.o
      virtual memory exhausted: Cannot allocate memory
      error: command '/usr/bin/gcc' failed with exit code 1
""",
)

OOM_OLD_GCC = pip_build(
    "oldgcc",
    """\
      gcc -pthread -fPIC -c pandas/_libs/groupby.c -o build/temp.linux-aarch64-3.8/pandas/_libs/groupby.o
      gcc: internal compiler error: Killed (program cc1)
      Please submit a full bug report,
      with preprocessed source if appropriate.
      See <http://bugzilla.redhat.com/bugzilla> for instructions.
      error: command 'gcc' failed with exit status 4
""",
)

OOM_RUST = pip_build(
    "rustbig",
    """\
         Compiling rustbig v0.1.0 (/tmp/pip-req-build-q)
      memory allocation of 1073741824 bytes failed
      error: could not compile `rustbig` (lib)

      Caused by:
        process didn't exit successfully: `rustc --crate-name rustbig ...` (signal: 6, SIGABRT: process abort signal)
""",
)

QEMU_CRASH = pip_build(
    "emu",
    """\
      gcc -fPIC -O2 -c src/a.c -o build/temp.linux-aarch64-cpython-311/src/a.o
      qemu: uncaught target signal 11 (Segmentation fault) - core dumped
      gcc: internal compiler error: Segmentation fault signal terminated program cc1
      Please submit a full bug report, with preprocessed source (by using -freport-bug).
      error: command '/usr/bin/gcc' failed with exit code 4
""",
)

DISK_FULL = pip_build(
    "bigdata",
    """\
      copying bigdata/data/table.bin -> build/lib.linux-aarch64-cpython-311/bigdata/data
      error: [Errno 28] No space left on device: 'build/lib.linux-aarch64-cpython-311/bigdata/data/table.bin'
""",
)

FALLBACK_EXCEPTION = pip_build(
    "numpyish",
    """\
      Running from numpy source directory.
      Traceback (most recent call last):
        File "setup.py", line 480, in <module>
          setup_package()
      RuntimeError: Broken toolchain: cannot link a simple C program
""",
)

# Captured on the builder (auditwheel 6), re-pathed to aarch64: `show`, then `repair`.
AUDITWHEEL_TOO_RECENT = b"""\
::armwheels:: auditwheel show
\naw-1.0-cp311-cp311-linux_aarch64.whl is consistent with the following
platform tag: "manylinux_2_26_aarch64".

The wheel references external versioned symbols in these
system-provided shared libraries: libc.so.6 with versions
{'GLIBC_2.25', 'GLIBC_2.17'}

This constrains the platform tag to "manylinux_2_26_aarch64". In order
to achieve a more compatible tag, you would need to recompile a new
wheel from source on a system with earlier versions of these
libraries, such as a recent manylinux image.
::armwheels:: auditwheel repair --plat manylinux2014_aarch64
INFO:auditwheel.wheel_abi:setting libc to glibc
INFO:auditwheel.main_repair:Repairing aw-1.0-cp311-cp311-linux_aarch64.whl
usage: auditwheel [-h] [-V] [-v] command ...
auditwheel: error: cannot repair "/armwheels/out/dist/aw-1.0-cp311-cp311-linux_aarch64.whl" \
to "manylinux2014_aarch64" ABI because of the presence of too-recent versioned symbols. \
You'll need to compile the wheel on an older toolchain.
"""

# Captured on this repository's x86_64 builder host (auditwheel 6.8, g++ 12): a C++
# extension whose sized `operator delete` needs CXXABI_1.3.9, past manylinux2014.
# auditwheel wraps its sets over several lines, in no particular order.
AUDITWHEEL_CXXABI = b"""\
::armwheels:: auditwheel show
INFO:auditwheel.wheel_abi:setting libc to glibc

cxxdemo-1.0-cp311-cp311-linux_x86_64.whl is consistent with the
following platform tag: "manylinux_2_24_x86_64".

The wheel references external versioned symbols in these
system-provided shared libraries: libgcc_s.so.1 with versions
{'GCC_3.0'}, libstdc++.so.6 with versions {'CXXABI_1.3',
'CXXABI_1.3.9', 'GLIBCXX_3.4'}

This constrains the platform tag to "manylinux_2_24_x86_64". In order
to achieve a more compatible tag, you would need to recompile a new
wheel from source on a system with earlier versions of these
libraries, such as a recent manylinux image.
::armwheels:: auditwheel repair --plat manylinux2014_x86_64
INFO:auditwheel.main_repair:Repairing cxxdemo-1.0-cp311-cp311-linux_x86_64.whl
usage: auditwheel [-h] [-V] [-v] command ...
auditwheel: error: cannot repair "/armwheels/out/dist/cxxdemo-1.0-cp311-cp311-linux_x86_64.whl" \
to "manylinux2014_x86_64" ABI because of the presence of too-recent versioned symbols. \
You'll need to compile the wheel on an older toolchain.
"""
# The same with a std::string (the C++11 ABI, GLIBCXX_3.4.21): two families too new.
AUDITWHEEL_CXX11_STRING = AUDITWHEEL_CXXABI.replace(
    b"""\
{'GCC_3.0'}, libstdc++.so.6 with versions {'CXXABI_1.3',
'CXXABI_1.3.9', 'GLIBCXX_3.4'}""",
    b"""\
{'GCC_3.0'}, libstdc++.so.6 with versions {'GLIBCXX_3.4.21',
'GLIBCXX_3.4', 'CXXABI_1.3.9', 'CXXABI_1.3'}""",
)

AUDITWHEEL_MISSING_LIB = b"""\
::armwheels:: auditwheel repair --plat manylinux2014_aarch64
INFO:auditwheel.main_repair:Repairing foo-1.0-cp311-cp311-linux_aarch64.whl
Traceback (most recent call last):
  File "/usr/local/bin/auditwheel", line 8, in <module>
    sys.exit(main())
  File "/usr/local/lib/python3.11/site-packages/auditwheel/repair.py", line 94, in repair_wheel
    raise ValueError(msg)
ValueError: Cannot repair wheel, because required library "libfoo.so.2" could not be located
"""

# gcc's own colours (GCC_COLORS default), as seen when a build forces -fdiagnostics-color.
ANSI_FFI = pip_build(
    "coloured",
    GCC.format(src="src/c.c", obj="src/c.o")
    + "      \x1b[01m\x1b[Ksrc/c.c:2:10:\x1b[m\x1b[K \x1b[01;31m\x1b[Kfatal error: \x1b[m\x1b[K"
    "ffi.h: No such file or directory\n"
    "          2 | #include \x1b[01;31m\x1b[K<ffi.h>\x1b[m\x1b[K\n"
    "      compilation terminated.\n",
)


@dataclass(frozen=True)
class Case:
    log: bytes
    reason: FailureReason
    summary: str  # a substring the one-line summary must contain
    exit_code: int = 11
    transient: bool = False
    missing: str | None = None


CASES: dict[str, Case] = {
    "missing ffi.h beats the earlier pkg-config probe": Case(
        FFI_H,
        R.MISSING_SYSTEM_LIBRARY,
        "missing header ffi.h: install libffi-dev (Debian) / libffi-devel (CentOS)",
        missing="ffi.h",
    ),
    "missing zlib.h (clang)": Case(
        ZLIB_H_CLANG,
        R.MISSING_SYSTEM_LIBRARY,
        "missing header zlib.h: install zlib1g-dev (Debian) / zlib-devel (CentOS)",
    ),
    "missing openssl header": Case(
        OPENSSL_H,
        R.MISSING_SYSTEM_LIBRARY,
        "missing header openssl/opensslv.h: install libssl-dev (Debian) / openssl-devel (CentOS)",
    ),
    "numpy header is a python build dependency": Case(
        NUMPY_H,
        R.MISSING_DEPENDENCY,
        "numpy/arrayobject.h from Python package numpy: add numpy to build-system.requires",
        missing="numpy",
    ),
    "unknown header: named, no guess": Case(
        UNKNOWN_H, R.MISSING_SYSTEM_LIBRARY, "missing header nosuchlib.h"
    ),
    "cannot find -lz": Case(
        CANNOT_FIND_LZ,
        R.MISSING_SYSTEM_LIBRARY,
        "missing library libz: install zlib1g-dev (Debian) / zlib-devel (CentOS)",
        missing="libz",
    ),
    "cannot find -lopenblas (old ld)": Case(
        CANNOT_FIND_LOPENBLAS_OLD_LD,
        R.MISSING_SYSTEM_LIBRARY,
        "missing library libopenblas: install libopenblas-dev (Debian) / openblas-devel",
    ),
    "pkg-config not found": Case(
        PKGCONFIG_XMLSEC,
        R.MISSING_SYSTEM_LIBRARY,
        "pkg-config cannot find xmlsec1: install libxmlsec1-dev (Debian) / xmlsec1-devel",
    ),
    "meson dependency": Case(
        MESON_CAIRO,
        R.MISSING_SYSTEM_LIBRARY,
        "meson cannot find dependency cairo: install libcairo2-dev (Debian) / cairo-devel",
    ),
    "cmake could NOT find (the optional -- line is skipped)": Case(
        CMAKE_HDF5,
        R.MISSING_SYSTEM_LIBRARY,
        "CMake cannot find HDF5: install libhdf5-dev (Debian) / hdf5-devel (CentOS)",
    ),
    "cmake warning does not hide the compile error": Case(
        CMAKE_WARNING_THEN_ERROR,
        R.COMPILE_ERROR,
        "src/core.cpp:88:5: error: ‘span’ is not a member of ‘std’",
    ),
    "cmake pybind11 is a python build dependency": Case(
        CMAKE_PYBIND11,
        R.MISSING_DEPENDENCY,
        "CMake cannot find pybind11, a Python build dependency: add pybind11 to",
    ),
    "pg_config": Case(
        PG_CONFIG,
        R.MISSING_SYSTEM_LIBRARY,
        "pg_config not found (development files of libpq): install libpq-dev (Debian) / "
        "postgresql-devel (CentOS)",
    ),
    "syntax error quotes file:line": Case(
        SYNTAX_ERROR,
        R.COMPILE_ERROR,
        "src/speed.c:2:32: error: expected ‘,’ or ‘;’ before ‘return’",
    ),
    "c++ error under pip's temp dir": Case(
        CXX_ERROR_TMPDIR,
        R.COMPILE_ERROR,
        "src/util.hpp:41:12: error: ‘class std::vector<int>’ has no member named ‘length’",
    ),
    "rust compile error": Case(
        RUST_ERROR,
        R.COMPILE_ERROR,
        "src/lib.rs:12:9: error[E0425]: cannot find value `count` in this scope",
    ),
    "cython compile error": Case(
        CYTHON_ERROR, R.COMPILE_ERROR, "Cython: cypkg/_fast.pyx:3:15: undeclared name"
    ),
    "undefined reference": Case(
        UNDEFINED_REFERENCE, R.COMPILE_ERROR, "link error: undefined reference to `helper_init`"
    ),
    "fallback quotes the exception": Case(
        FALLBACK_EXCEPTION,
        R.COMPILE_ERROR,
        "RuntimeError: Broken toolchain: cannot link a simple C program",
    ),
    "no gcc": Case(
        NO_GCC,
        R.MISSING_BUILD_TOOL,
        "missing build tool gcc: install gcc (Debian) / gcc (CentOS)",
        missing="gcc",
    ),
    "no gfortran": Case(
        NO_GFORTRAN,
        R.MISSING_BUILD_TOOL,
        "missing build tool gfortran: install gfortran (Debian) / gcc-gfortran (CentOS)",
    ),
    "no cmake": Case(NO_CMAKE, R.MISSING_BUILD_TOOL, "missing build tool cmake"),
    "no cargo (maturin)": Case(
        NO_CARGO, R.MISSING_BUILD_TOOL, "missing Rust compiler (cargo/rustc): install a Rust"
    ),
    "no rustc (setuptools-rust)": Case(
        NO_RUSTC_SETUPTOOLS_RUST, R.MISSING_BUILD_TOOL, "missing Rust compiler"
    ),
    "meson without fortran compiler": Case(
        MESON_NO_FORTRAN, R.MISSING_BUILD_TOOL, "missing build tool gfortran"
    ),
    "cython not declared": Case(
        CYTHON_UNDECLARED,
        R.MISSING_DEPENDENCY,
        "missing Python build dependency Cython (No module named 'Cython'): "
        "add Cython to build-system.requires",
        missing="Cython",
    ),
    "numpy not declared": Case(
        NUMPY_UNDECLARED, R.MISSING_DEPENDENCY, "missing Python build dependency numpy"
    ),
    "distutils gone in 3.12": Case(
        DISTUTILS_GONE,
        R.UNSUPPORTED_PYTHON,
        "imports distutils, removed from the standard library in Python 3.12",
    ),
    "no matching distribution: network": Case(
        NO_DIST_NETWORK,
        R.NETWORK,
        "could not download build dependency setuptools>=40.8.0 (Temporary failure in name",
        transient=True,
    ),
    "no matching distribution: truly missing": Case(
        NO_DIST_MISSING,
        R.MISSING_DEPENDENCY,
        "build dependency nosuch-build-helper>=1.0 not found on the package index",
    ),
    "no matching distribution: pin matches nothing": Case(
        NO_DIST_PIN,
        R.MISSING_DEPENDENCY,
        "no release of build dependency cython<0.30,>=0.29.36 matches (have: 3.0.0,",
    ),
    "no matching distribution: pin too old for this python": Case(
        NO_DIST_OLD_PIN,
        R.UNSUPPORTED_PYTHON,
        "build dependency numpy==1.21.4 has no release for this Python",
    ),
    "network read timeout": Case(
        NETWORK_READ_TIMEOUT,
        R.NETWORK,
        "network error: ReadTimeoutError: HTTPSConnectionPool(host='files.pythonhosted.org'",
        transient=True,
    ),
    "network http 503": Case(
        NETWORK_503, R.NETWORK, "network error: 503 Server Error", transient=True
    ),
    "cargo offline": Case(CARGO_OFFLINE, R.NETWORK, "cargo could not fetch pyo3", transient=True),
    "oserror that is not the network": Case(
        OSERROR_NOT_NETWORK, R.COMPILE_ERROR, "building the wheel failed"
    ),
    "unsupported python (pip)": Case(
        UNSUPPORTED_PYTHON,
        R.UNSUPPORTED_PYTHON,
        "rp requires Python >=3.12, this build uses 3.11.7",
    ),
    "unsupported python (setup.py)": Case(
        OLD_NUMPY_SETUP, R.UNSUPPORTED_PYTHON, "Python version >= 3.7 required"
    ),
    "oom: cc1plus killed beats the compile error after it": Case(
        OOM_CC1PLUS,
        R.OUT_OF_MEMORY,
        "out of memory: cc1plus was killed",
        transient=True,
        missing="cc1plus",
    ),
    "oom: virtual memory exhausted": Case(
        OOM_VIRTUAL, R.OUT_OF_MEMORY, "out of memory (virtual memory exhausted)", transient=True
    ),
    "oom: old gcc internal compiler error": Case(
        OOM_OLD_GCC, R.OUT_OF_MEMORY, "out of memory: cc1 was killed", transient=True
    ),
    "oom: rust allocation failure": Case(
        OOM_RUST, R.OUT_OF_MEMORY, "memory allocation of 1073741824 bytes failed", transient=True
    ),
    "oom: docker killed the container": Case(
        b"      g++ -c src/big.cpp\n",
        R.OUT_OF_MEMORY,
        "out of memory: the build was killed (SIGKILL)",
        exit_code=137,
        transient=True,
    ),
    "emulator crash": Case(
        QEMU_CRASH,
        R.BUILDER_ERROR,
        "the emulator crashed: qemu: uncaught target signal 11 (Segmentation fault)",
        transient=True,
    ),
    "disk full": Case(
        DISK_FULL, R.BUILDER_ERROR, "the builder ran out of disk space", transient=True
    ),
    "timeout note in the log": Case(
        b"      [ 45%] Building CXX object src/x.o\n"
        b"::armwheels:: killed after the time limit of 3600 s\n",
        R.TIMEOUT,
        "build exceeded the time limit of 3600 s",
        exit_code=137,
    ),
    "auditwheel too-recent symbols": Case(
        AUDITWHEEL_TOO_RECENT,
        R.AUDITWHEEL_REJECTED,
        "auditwheel cannot repair to manylinux2014_aarch64: too-recent versioned symbols; "
        "the wheel needs manylinux_2_26_aarch64 (libc.so.6 GLIBC_2.25)",
        exit_code=13,
    ),
    "auditwheel missing library": Case(
        AUDITWHEEL_MISSING_LIB,
        R.AUDITWHEEL_REJECTED,
        "auditwheel: required library libfoo.so.2 could not be located",
        exit_code=13,
    ),
    "ansi colours are stripped": Case(
        ANSI_FFI,
        R.MISSING_SYSTEM_LIBRARY,
        "missing header ffi.h: install libffi-dev (Debian) / libffi-devel (CentOS)",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_diagnosis_of_real_logs(case: Case) -> None:
    found = diagnose(case.exit_code, case.log)
    assert found.reason is case.reason, found
    assert case.summary in found.summary, found.summary
    assert found.transient is case.transient
    assert is_transient(found.reason, found.summary) is case.transient
    if case.missing is not None:
        assert found.missing == case.missing
    assert_one_safe_line(found.summary)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_classify_is_the_compatible_pair(case: Case) -> None:
    found = diagnose(case.exit_code, case.log)
    assert classify(case.exit_code, case.log) == (found.reason, found.summary)


def assert_one_safe_line(summary: str) -> None:
    assert summary and len(summary) <= 240
    assert summary.isprintable(), repr(summary)  # no newline, control or bidi characters


@pytest.mark.parametrize(
    ("exit_code", "reason", "summary"),
    [
        (10, R.NO_INTERPRETER, "the build image has no interpreter for this tag"),
        (11, R.COMPILE_ERROR, "building the wheel failed"),
        (12, R.PURE_PYTHON, "the build produced a pure-Python wheel, not an ARM one"),
        (13, R.AUDITWHEEL_REJECTED, "auditwheel could not repair the wheel"),
        (14, R.BUILDER_ERROR, "the build environment is broken"),
        (15, R.SMOKE_TEST_FAILED, "the repaired wheel did not install or import"),
        (137, R.OUT_OF_MEMORY, "out of memory: the build was killed (SIGKILL)"),
        (1, R.BUILDER_ERROR, "build script exited with 1"),
        (-9, R.BUILDER_ERROR, "build script exited with -9"),
    ],
)
def test_exit_code_alone(exit_code: int, reason: FailureReason, summary: str) -> None:
    assert classify(exit_code, b"") == (reason, summary)


def test_no_interpreter_names_the_tag() -> None:
    log = b"::armwheels:: no interpreter for cp314\n"
    assert classify(10, log) == (
        R.NO_INTERPRETER,
        "the build image has no interpreter for cp314",
    )


def test_exit_codes_of_later_steps_ignore_build_noise() -> None:
    """A pure-Python result is not a compile error because the log has an error: line."""
    assert classify(12, SYNTAX_ERROR)[0] is R.PURE_PYTHON
    assert classify(15, FFI_H)[0] is R.SMOKE_TEST_FAILED


def test_backend_flags_win_over_the_log() -> None:
    assert diagnose(11, SYNTAX_ERROR, timed_out=True) == Diagnosis(
        R.TIMEOUT, "build exceeded the time limit"
    )
    oom = diagnose(11, SYNTAX_ERROR, oom_killed=True)
    assert oom.reason is R.OUT_OF_MEMORY and oom.transient
    assert classify(11, OOM_CC1PLUS, oom_killed=True) == (
        R.OUT_OF_MEMORY,
        "out of memory: cc1plus was killed",
    )


def test_first_real_error_wins() -> None:
    log = pip_build(
        "two",
        "      src/a.c:7:3: error: unknown type name ‘uint128_t’\n"
        "      src/b.c:1:10: fatal error: yaml.h: No such file or directory\n",
    )
    assert classify(11, log) == (
        R.COMPILE_ERROR,
        "src/a.c:7:3: error: unknown type name ‘uint128_t’",
    )
    swapped = pip_build(
        "two",
        "      src/b.c:1:10: fatal error: yaml.h: No such file or directory\n"
        "      src/a.c:7:3: error: unknown type name ‘uint128_t’\n",
    )
    assert classify(11, swapped) == (
        R.MISSING_SYSTEM_LIBRARY,
        "missing header yaml.h: install libyaml-dev (Debian) / libyaml-devel (CentOS)",
    )


@pytest.mark.parametrize(
    ("line", "summary"),
    [
        ("x.c:1:10: fatal error: libxml/xpath.h: No such file or directory", "libxml2-dev"),
        ("x.c:1:10: fatal error: libxslt/xslt.h: No such file or directory", "libxslt-devel"),
        ("x.c:1:10: fatal error: ft2build.h: No such file or directory", "freetype-devel"),
        ("x.c:1:10: fatal error: libpq-fe.h: No such file or directory", "postgresql-devel"),
        ("x.c:1:10: fatal error: mysql.h: No such file or directory", "default-libmysqlclient"),
        ("x.c:1:10: fatal error: Python.h: No such file or directory", "python3-devel"),
        ("x.c:1:10: fatal error: sasl/sasl.h: No such file or directory", "cyrus-sasl-devel"),
        ("x.c:1:10: fatal error: systemd/sd-journal.h: No such file or directory", "systemd"),
        ("x.c:1:10: fatal error: rocksdb/db.h: No such file or directory", "rocksdb/db.h"),
        ("/usr/bin/ld: cannot find -lgfortran", "gcc-gfortran"),
        ("/usr/bin/ld: cannot find -lboost_python311", "boost-devel"),
        ("/usr/bin/ld: cannot find -l:libsnappy.so.1", "libsnappy.so.1: install libsnappy-dev"),
        ("ld.lld: error: unable to find library -lssl", "libssl: install libssl-dev"),
        ("No package 'libffi' found", "pkg-config cannot find libffi: install libffi-dev"),
        ("Requested 'glib-2.0 >= 2.56' but version of GLib is 2.50.3", "glib-2.0 >= 2.56"),
    ],
)
def test_tables(line: str, summary: str) -> None:
    found = diagnose(11, pip_build("pkg", f"      {line}\n"))
    assert found.reason is R.MISSING_SYSTEM_LIBRARY, found
    assert summary in found.summary
    if "rocksdb" in line:  # not in the table: named, and no guess from the bare file name
        assert found.hint is None


LXML_SETUP = pip_build(
    "lxml",
    """\
      Building lxml version 5.3.0.
      Building without Cython.
      Error: Please make sure the libxml2 and libxslt development packages are installed.
""",
)


@pytest.mark.parametrize(
    ("log", "apt", "yum"),
    [
        (FFI_H, ["libffi-dev"], ["libffi-devel"]),
        (CANNOT_FIND_LZ, ["zlib1g-dev"], ["zlib-devel"]),
        (PG_CONFIG, ["libpq-dev"], ["postgresql-devel"]),
        (MESON_CAIRO, ["libcairo2-dev"], ["cairo-devel"]),
        (LXML_SETUP, ["libxml2-dev", "libxslt1-dev"], ["libxml2-devel", "libxslt-devel"]),
        (NO_GFORTRAN, ["gfortran"], ["gcc-gfortran"]),
    ],
    ids=["header", "library", "config-script", "meson", "lxml", "tool"],
)
def test_packages_for_the_image_package_manager(log: bytes, apt: list[str], yum: list[str]) -> None:
    """The farm installs what the diagnosis names: one package name per list item."""
    found = diagnose(11, log)
    assert found.packages is not None, found
    assert system_packages_for(found, "apt-get") == apt
    assert system_packages_for(found, "yum") == yum
    assert system_packages_for(found, "dnf") == yum
    assert system_packages_for(found, "apk") == []
    # The hint a human reads names the same packages.
    assert found.hint is not None and all(name in found.hint for name in apt + yum)


@pytest.mark.parametrize("log", [SYNTAX_ERROR, UNKNOWN_H, NO_CARGO, NUMPY_H])
def test_no_packages_when_none_is_known(log: bytes) -> None:
    """A compile error, an unknown header, a Rust toolchain, a Python build dependency:
    nothing a system package manager could install."""
    found = diagnose(11, log)
    assert found.packages is None
    assert system_packages_for(found, "apt-get") == []


# Pillow 11's setup.py without libjpeg: it writes its sentence, then raises twice.
PILLOW_NO_JPEG = pip_build(
    "pillow",
    """\
      running build_ext


      The headers or library files could not be found for jpeg,
      a required dependency when compiling Pillow from source.

      Please see the install instructions at:
         https://pillow.readthedocs.io/en/latest/installation/basic-installation.html

      Traceback (most recent call last):
        File "<string>", line 1014, in <module>
        File "/tmp/pip-build-env-8c0v2ul1/overlay/lib/python3.11/site-packages/setuptools/__init__.py", line 117, in setup
          return distutils.core.setup(**attrs)
        File "<string>", line 836, in build_extensions
      RequiredDependencyException: jpeg

      During handling of the above exception, another exception occurred:

      Traceback (most recent call last):
        File "/opt/python/cp311-cp311/lib/python3.11/site-packages/pip/_vendor/pyproject_hooks/_in_process/_in_process.py", line 389, in <module>
          main()
        File "<string>", line 1027, in <module>
      RequiredDependencyException:

      The headers or library files could not be found for jpeg,
      a required dependency when compiling Pillow from source.

      Please see the install instructions at:
         https://pillow.readthedocs.io/en/latest/installation/basic-installation.html


""",
)


@pytest.mark.parametrize(
    ("body", "missing", "apt", "yum"),
    [
        pytest.param(
            "      RequiredDependencyException: zlib\n",
            "zlib",
            ["zlib1g-dev"],
            ["zlib-devel"],
            id="pillow-exception",
        ),
        pytest.param(
            "      The headers or library files could not be found for xcb,\n"
            "      which was requested by the option flag '-C xcb=enable'\n",
            "xcb",
            ["libxcb1-dev"],
            ["libxcb-devel"],
            id="pillow-requested",
        ),
        pytest.param(
            "      ValueError: --enable-jpeg2000 requested but jpeg2000 not found, aborting.\n",
            "jpeg2000",
            ["libopenjp2-7-dev"],
            ["openjpeg2-devel"],
            id="pillow-old-enable",
        ),
        pytest.param(
            "      The headers or library files could not be found for imagequant,\n",
            "imagequant",
            ["libimagequant-dev"],
            ["libimagequant-devel"],
            id="pillow-imagequant",
        ),
        pytest.param(
            "      The headers or library files could not be found for lcms,\n",
            "lcms",
            ["liblcms2-dev"],
            ["lcms2-devel"],
            id="pillow-lcms",
        ),
        pytest.param(
            "      configure: error: libbzip2 development files not found\n\n"
            "      The CRAM format may use bzip2 compression, which is implemented in HTSlib\n"
            "      by using compression routines from libbzip2 <http://www.bzip.org/>.\n",
            "libbzip2",
            ["libbz2-dev"],
            ["bzip2-devel"],
            id="htslib-configure",
        ),
        pytest.param(
            "      configure: error: libcurl library not found\n",
            "libcurl",
            ["libcurl4-openssl-dev"],
            ["libcurl-devel"],
            id="library-not-found",
        ),
        pytest.param(
            "      Exception: Could not find library zstd\n",
            "zstd",
            ["libzstd-dev"],
            ["libzstd-devel"],
            id="could-not-find-library",
        ),
        pytest.param(
            "      RuntimeError: Unable to find the lz4 library\n",
            "lz4",
            ["liblz4-dev"],
            ["lz4-devel"],
            id="unable-to-find",
        ),
        pytest.param(
            "      Please install the libxml2 development package and try again.\n",
            "libxml2",
            ["libxml2-dev"],
            ["libxml2-devel"],
            id="please-install",
        ),
        pytest.param(
            "      RuntimeError: Unable to load dependency HDF5, make sure HDF5 is installed properly\n",
            "HDF5",
            ["libhdf5-dev"],
            ["hdf5-devel"],
            id="h5py",
        ),
        pytest.param(
            "      __main__.ConfigurationError: Could not run curl-config: "
            "[Errno 2] No such file or directory: 'curl-config'\n",
            "libcurl",
            ["libcurl4-openssl-dev"],
            ["libcurl-devel"],
            id="pycurl",
        ),
        pytest.param(
            "      Error: pg_config executable not found.\n",
            "libpq",
            ["libpq-dev"],
            ["postgresql-devel"],
            id="psycopg2",
        ),
        pytest.param(
            "      Package libffi was not found in the pkg-config search path.\n"
            "      Perhaps you should add the directory containing `libffi.pc'\n",
            "libffi",
            ["libffi-dev"],
            ["libffi-devel"],
            id="cffi-pkg-config",
        ),
    ],
)
def test_setup_scripts_own_words(body: str, missing: str, apt: list[str], yum: list[str]) -> None:
    """What setup.py files print when a library is missing names it, and its packages."""
    found = diagnose(11, pip_build("pkg", body + "      error: setup script failed\n"))
    assert found.reason is R.MISSING_SYSTEM_LIBRARY, found
    assert found.missing == missing
    assert system_packages_for(found, "apt-get") == apt
    assert system_packages_for(found, "dnf") == yum
    assert_one_safe_line(found.summary)


def test_pillow_without_libjpeg() -> None:
    found = diagnose(11, PILLOW_NO_JPEG)
    assert found.reason is R.MISSING_SYSTEM_LIBRARY, found
    assert found.summary == (
        "missing headers or library files of jpeg: "
        "install libjpeg-dev (Debian) / libjpeg-turbo-devel (CentOS)"
    )
    assert found.packages == ("libjpeg-dev", "libjpeg-turbo-devel")


def test_development_files_of_an_unknown_library_are_named() -> None:
    found = diagnose(11, pip_build("pkg", "      error: SDL2 development files not found\n"))
    assert found.reason is R.MISSING_SYSTEM_LIBRARY
    assert (found.missing, found.packages) == ("SDL2", None)
    assert found.summary == "missing SDL2 development files"


@pytest.mark.parametrize(
    "probe",
    [
        "Warning: OpenCV development files not found - building without OpenCV support.",
        "zlib library not found, building without compression",
        "lz4 library not found; falling back to the bundled copy",
        "ERROR: SKiDL library not found. Please install it.",  # a Python module
        "the library not found message",
    ],
)
def test_probes_and_unknown_names_do_not_blame_a_library(probe: str) -> None:
    """A probe that carries on, or a name no table knows, leaves the real error in charge."""
    log = pip_build(
        "pkg", f"      {probe}\n      src/a.c:7:3: error: unknown type name ‘uint128_t’\n"
    )
    assert diagnose(11, log).reason is R.COMPILE_ERROR
    alone = diagnose(11, pip_build("pkg", f"      {probe}\n"))
    assert alone.reason is R.COMPILE_ERROR and alone.packages is None


def test_pkgconfig_probe_alone_is_reported() -> None:
    """A CMake `--` probe line counts once CMake says the package was required."""
    log = (
        b"-- Checking for module 'libnosuch'\n"
        b"--   Package 'libnosuch', required by 'virtual:world', not found\n"
        b"CMake Error at /usr/share/cmake-3.25/Modules/FindPkgConfig.cmake:607 (message):\n"
        b"  A required package was not found\n"
    )
    assert classify(11, log) == (R.MISSING_SYSTEM_LIBRARY, "pkg-config cannot find libnosuch")


def test_is_transient() -> None:
    assert is_transient(R.OUT_OF_MEMORY)
    assert is_transient(R.NETWORK, "anything")
    assert not is_transient(R.TIMEOUT)
    assert not is_transient(R.COMPILE_ERROR, SYNTAX_ERROR)
    assert not is_transient(R.MISSING_SYSTEM_LIBRARY, FFI_H)
    assert is_transient(R.BUILDER_ERROR, DISK_FULL)
    assert is_transient(R.COMPILE_ERROR, "internal compiler error: Segmentation fault")
    assert not is_transient(R.BUILDER_ERROR, b"venv failed")


def test_random_bytes_do_not_crash() -> None:
    noise = os.urandom(5 * 1024 * 1024)
    for code in (1, 11, 13, 137):
        found = diagnose(code, noise)
        assert_one_safe_line(found.summary)


def test_only_the_tail_is_read() -> None:
    """The real error after megabytes of noise is found; one before the tail is not."""
    log = b"src/early.c:1:1: error: gone\n" + os.urandom(3 * 1024 * 1024) + b"\n" + FFI_H
    assert classify(11, log)[1].startswith("missing header ffi.h")
    assert "early" not in classify(11, b"src/early.c:1:1: error: gone\n" + b"x\n" * 300_000)[1]


@pytest.mark.parametrize(
    "log",
    [
        b"\x1b]" * 200_000,
        b"\x1b[" * 200_000,
        b"a:1:" * 100_000,
        (b"a:1:" * 400 + b"\n") * 200,
        (b" " * 1999 + b"\n") * 150,
        (b"Could not find a version that satisfies the requirement " + b"x" * 3000) * 100,
        (b'  CMake Warning at x:1:\n  By not providing "Find' + b"a" * 70 + b'.cmake"\n') * 5000,
        b"--   Package 'a', required by 'b', not found\n" * 6000,
        (b"x.f90:1:1:\n" + b"y" * 290 + b"\n") * 800,
        b"libc.so.6 with versions {" + b"'GLIBC_2.1', " * 20_000,
        (b"A" * 79 + b"Erro: x\n") * 3000,
        (b"/bin/sh: 1: " * 200 + b"\n") * 100,
        (b"pg_config " * 200 + b"\n") * 100,
        (b"x" * 1990 + b" library\n") * 130,
        (b"a-" * 995 + b" development\n") * 130,
        (b"Could not find library " * 80 + b"\n") * 150,
        (b"RequiredDependencyException: " * 60 + b"\n") * 150,
        (b"Please install the " * 100 + b"\n") * 150,
        (b"zlib library not found " * 85 + b"\n") * 150,
    ],
    ids=lambda log: repr(log[:16]),
)
def test_hostile_logs_are_fast(log: bytes) -> None:
    """Logs are written by arbitrary sdist code: no pattern may go quadratic on them."""
    for code in (11, 13):
        started = time.perf_counter()
        found = diagnose(code, log)
        assert time.perf_counter() - started < 2.0
        assert_one_safe_line(found.summary)


def test_summary_is_sanitised_for_the_web() -> None:
    log = pip_build(
        "evil",
        "      src/x.c:1:1: error: \u202etxt.exe\x07 <script>alert(1)</script> " + "A" * 600 + "\n",
    )
    reason, summary = classify(11, log)
    assert reason is R.COMPILE_ERROR
    assert_one_safe_line(summary)
    assert "\u202e" not in summary and summary.endswith("...")


@pytest.mark.parametrize(
    ("log", "needs"),
    [
        (AUDITWHEEL_CXXABI, "(libstdc++.so.6 CXXABI_1.3.9)"),
        (AUDITWHEEL_CXX11_STRING, "(libstdc++.so.6 CXXABI_1.3.9, GLIBCXX_3.4.21)"),
    ],
    ids=["cxxabi", "cxxabi-and-glibcxx"],
)
def test_auditwheel_names_the_symbols_past_the_refused_policy(log: bytes, needs: str) -> None:
    """Only what manylinux2014 forbids: not GLIBCXX_3.4 (numerically above CXXABI_1.3.9,
    but another family, and allowed), nor libgcc_s's GCC_3.0."""
    assert classify(13, log) == (
        R.AUDITWHEEL_REJECTED,
        "auditwheel cannot repair to manylinux2014_x86_64: too-recent versioned symbols; "
        f"the wheel needs manylinux_2_24_x86_64 {needs}",
    )


def test_auditwheel_symbols_without_policy_data_are_newest_per_family() -> None:
    """A policy auditwheel does not know: no family hides another's newest version."""
    log = AUDITWHEEL_CXXABI.replace(b"manylinux2014_x86_64", b"manylinux2014_nosucharch")
    summary = classify(13, log)[1]
    assert summary.endswith("(libgcc_s.so.1 GCC_3.0; libstdc++.so.6 CXXABI_1.3.9, GLIBCXX_3.4)")


CXX_SIZED_DELETE = """\
#include <Python.h>
#include <new>
struct Box { long a, b, c; };
static PyObject *run(PyObject *, PyObject *) {
    Box *box = new Box();
    ::operator delete(static_cast<void *>(box), sizeof(Box));  // CXXABI_1.3.9
    return PyLong_FromLong(1);
}
static PyMethodDef methods[] = {{"run", run, METH_NOARGS, nullptr}, {nullptr, nullptr, 0, nullptr}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "cxxdemo", nullptr, -1, methods};
PyMODINIT_FUNC PyInit_cxxdemo(void) { return PyModule_Create(&module); }
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_real_auditwheel_refusal_of_a_new_cxxabi_symbol(tmp_path: Path) -> None:
    """auditwheel itself, on a C++ extension built here with g++, refused manylinux2014."""
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        pytest.skip("needs Python.h")
    source = tmp_path / "cxxdemo.cpp"
    source.write_text(CXX_SIZED_DELETE)
    library = tmp_path / f"cxxdemo{sysconfig.get_config_var('EXT_SUFFIX')}"
    subprocess.run(
        [
            "g++",
            "-shared",
            "-fPIC",
            "-O2",
            "-std=c++17",
            "-fsized-deallocation",
            f"-I{include}",
            str(source),
            "-o",
            str(library),
        ],
        check=True,
    )
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    wheel = tmp_path / f"cxxdemo-1.0-{tag}-{tag}-linux_{platform.machine()}.whl"
    wheel.write_bytes(
        make_wheel(wheel.name, modules=(), extra={library.name: library.read_bytes()})
    )
    auditwheel = [sys.executable, "-m", "auditwheel"]
    plat = f"manylinux2014_{platform.machine()}"
    show = subprocess.run([*auditwheel, "show", str(wheel)], capture_output=True, text=True)
    repair = subprocess.run(
        [*auditwheel, "repair", "--plat", plat, "-w", str(tmp_path / "out"), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert repair.returncode != 0, repair.stderr
    log = show.stdout + show.stderr + repair.stdout + repair.stderr
    found = diagnose(13, log.encode())
    assert found.reason is R.AUDITWHEEL_REJECTED
    assert found.summary.startswith(f"auditwheel cannot repair to {plat}: too-recent"), found
    assert found.summary.endswith("(libstdc++.so.6 CXXABI_1.3.9)"), found.summary


def test_a_distribution_wheel_loading_a_foreign_library_says_which() -> None:
    log = (
        b"::armwheels:: distribution target: tagging linux_armv7l.linux_armv8l, recording\n"
        b"::armwheels:: tagged demo-1.0-cp311-cp311-linux_armv7l.linux_armv8l.whl\n"
        b"::armwheels:: the wheel loads a library from outside the distribution:"
        b" /opt/vendor/libfoo.so.1 belongs to no package of this system\n"
    )
    assert classify(13, log) == (
        R.AUDITWHEEL_REJECTED,
        "the wheel loads a library from outside the distribution: /opt/vendor/libfoo.so.1"
        " belongs to no package of this system",
    )


# pyyaml 6.0.4 without libyaml's headers (a real cross build's log, cut): its optional
# extension does not compile, setup.py "falls back to pure Python", and the platform-
# tagged wheel has no compiled file, which auditwheel refuses.
PYYAML_FELL_BACK = b"""building 'yaml._yaml' extension
aarch64-linux-gnu-gcc --sysroot=/armwheels/sysroot -fPIC -c yaml/_yaml.c -o build/temp.linux-aarch64-cpython-311/yaml/_yaml.o
In file included from yaml/_yaml.c:1270:
yaml/_yaml.h:2:10: fatal error: yaml.h: No such file or directory
    2 | #include <yaml.h>
      |          ^~~~~~~~
compilation terminated.
Error compiling module, falling back to pure Python
installing to build/bdist.linux-aarch64/wheel
::armwheels:: built pyyaml-6.0.4-cp311-cp311-linux_aarch64.whl
::armwheels:: auditwheel repair --plat manylinux2014_aarch64
INFO:auditwheel.main_repair:This does not look like a platform wheel, no ELF executable or shared library file (including compiled Python C extension) found in the wheel archive
"""


@pytest.mark.parametrize(
    ("exit_code", "log"),
    [
        (13, PYYAML_FELL_BACK),
        (12, PYYAML_FELL_BACK.replace(b"linux_aarch64.whl", b"none-any.whl")),
    ],
)
def test_an_extension_left_out_for_a_missing_library_names_the_library(
    exit_code: int, log: bytes
) -> None:
    """The wheel without compiled code is the symptom; the missing header is the cause,
    and its package is what the farm installs before building again."""
    found = diagnose(exit_code, log)
    assert found.reason is FailureReason.MISSING_SYSTEM_LIBRARY
    assert found.summary.startswith("the compiled extension was left out: missing header yaml.h")
    assert system_packages_for(found, "apt-get") == ["libyaml-dev"]


def test_a_wheel_without_compiled_code_and_no_missing_library_stays_refused() -> None:
    log = PYYAML_FELL_BACK.replace(b"fatal error: yaml.h: No such file or directory", b"")
    found = diagnose(13, log)
    assert found.reason is FailureReason.AUDITWHEEL_REJECTED
    assert "does not look like a platform wheel" in found.summary
